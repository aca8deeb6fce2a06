"""Jobs as separately submitted processes (cluster-generic executor) and SIGKILL + retry → identical result."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from safetensors.torch import load_file

from tests.conftest import run_snakemake
from tests.test_train import TINY


def _tiny(workdir, **train):
    cfg = {
        **TINY,
        "prompts": {"select": ["a red cube"]},
        "train": {**TINY["train"], "steps": 40, "checkpoint_every": 5, **train},
    }
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    return workdir


def _train_cli(workdir, **train):
    """A tiny one-prompt variant configured by the workflow, and `python -m pipeline.train` for it: (work dir, prompt
    id, environment, command builder taking the output folder)."""
    wd = _tiny(workdir, **train)
    cfg = "results/primitives/world-w10-uniform/config.yaml"
    run_snakemake(wd, cfg, "results/primitives/prompts.json", "--configfile", "tiny.yaml")
    pid = json.loads((wd / "results/primitives/prompts.json").read_text())["selected"][0]
    env = {**os.environ, "PYTHONPATH": str(wd), "TQDM_DISABLE": "1"}

    def cmd(out):
        return [
            sys.executable, "-m", "pipeline.train", "--params", str(wd / cfg),
            "--prompts", str(wd / "results/primitives/prompts.json"),
            "--prompt-id", pid, "--seed", "0", "--out", str(out),
        ]  # fmt: skip

    return wd, pid, env, cmd


def test_cluster_generic_runs_each_job_as_a_submitted_process(workdir):
    wd = _tiny(workdir)
    submit = wd / "submit.sh"
    submit.write_text(
        '#!/bin/bash\n# a local "cluster": start the job script in the background, print a job id\n'
        'nohup bash "$@" > "$(dirname "$0")/job-$$.out" 2>&1 &\necho $!\n'
    )
    submit.chmod(0o755)
    target = "results/primitives/world-w10-uniform/a-red-cube-97fc58e3/seed0/model.safetensors"
    run_snakemake(
        wd,
        "--configfile",
        "tiny.yaml",
        "--executor",
        "cluster-generic",
        "--cluster-generic-submit-cmd",
        str(submit),
        "--jobs",
        "2",
        "--seconds-between-status-checks",
        "1",
        "--latency-wait",
        "5",
        target,
    )
    assert (wd / target).exists()
    assert len(list(wd.glob("job-*.out"))) >= 3  # prepare, configure, bank, train each submitted


def test_sigkill_mid_training_then_retry_resumes_to_the_same_weights(workdir):
    wd, pid, env, cmd = _train_cli(workdir)
    full = wd / "full" / "v" / pid / "seed0"
    subprocess.run(cmd(full), cwd=wd, env={**env}, check=True, capture_output=True)
    killed = wd / "killed" / "v" / pid / "seed0"
    proc = subprocess.Popen(cmd(killed), cwd=wd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoint/checkpoint.safetensors").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    from pipeline.checkpoint import checkpoint_step

    step = checkpoint_step(killed / "checkpoint")
    assert 0 < step < 40 and not (killed / "model.safetensors").exists()
    subprocess.run(cmd(killed), cwd=wd, env=env, check=True, capture_output=True)
    assert json.loads((killed / "metrics.json").read_text())["resumed_from"] >= step
    a, b = load_file(str(full / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert all(__import__("torch").equal(a[k], b[k]) for k in a)
    assert (full / "model.safetensors").read_bytes() == (killed / "model.safetensors").read_bytes()


def test_sigint_mid_training_checkpoints_that_step_and_resumes_to_the_same_weights(workdir):
    """Ctrl-C (SIGINT) or a scheduler's SIGTERM: training stops after the current step with a checkpoint there and
    exits 130/143; the next run resumes to the weights of an uninterrupted run."""
    wd, pid, env, cmd = _train_cli(workdir)
    from pipeline.checkpoint import checkpoint_step

    full = wd / "full" / pid / "seed0"
    subprocess.run(cmd(full), cwd=wd, env=env, check=True, capture_output=True)
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        cut = wd / sig.name / pid / "seed0"
        proc = subprocess.Popen(cmd(cut), cwd=wd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while not (cut / "log.jsonl").exists() or len((cut / "log.jsonl").read_text().splitlines()) < 7:
            assert time.time() < deadline
            time.sleep(0.02)
        proc.send_signal(sig)
        err = proc.communicate()[1]
        assert proc.returncode == code, err
        step = checkpoint_step(cut / "checkpoint")
        assert f"interrupted: {sig.name} after step {step} of 40" in err and 7 <= step < 40
        assert len((cut / "log.jsonl").read_text().splitlines()) == step  # nothing of the unfinished step kept
        subprocess.run(cmd(cut), cwd=wd, env=env, check=True, capture_output=True)
        assert json.loads((cut / "metrics.json").read_text())["resumed_from"] == step
        a, b = load_file(str(full / "model.safetensors")), load_file(str(cut / "model.safetensors"))
        assert all(__import__("torch").equal(a[k], b[k]) for k in a)
        assert (full / "model.safetensors").read_bytes() == (cut / "model.safetensors").read_bytes()


def test_ctrl_c_on_snakemake_keeps_the_training_done(workdir):
    """Ctrl-C on a running workflow (SIGINT to its process group, as a terminal sends it): the interrupted training
    keeps a checkpoint of the step it reached, and the next run resumes from it instead of step 0."""
    wd = _tiny(workdir)
    cfg = yaml.safe_load((wd / "tiny.yaml").read_text())
    cfg["train"]["steps"] = 400
    cfg["train"]["checkpoint_every"] = 1000  # no periodic checkpoint: only the interrupt's own can exist
    (wd / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(wd), "TQDM_DISABLE": "1"}
    args = [sys.executable, "-m", "snakemake", "--cores", "2", "--until", "train", "--configfile", "tiny.yaml"]
    proc = subprocess.Popen(
        args,
        cwd=wd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    obj = None
    deadline = time.time() + 180
    while obj is None or len((obj / "log.jsonl").read_text().splitlines()) < 50:
        assert time.time() < deadline and proc.poll() is None
        found = list(wd.glob("results/primitives/world-w10-uniform/*/seed0/log.jsonl"))
        obj = found[0].parent if found else None
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    from pipeline.checkpoint import checkpoint_step

    step = checkpoint_step(obj / "checkpoint")
    assert step is not None and step >= 50 and not (obj / "model.safetensors").exists()
    assert len((obj / "log.jsonl").read_text().splitlines()) == step  # the step it reached, not an older one
    run_snakemake(wd, "--until", "train", "--configfile", "tiny.yaml")
    assert json.loads((obj / "metrics.json").read_text())["resumed_from"] == step


@pytest.mark.e2e
def test_twenty_random_sigkills_all_resume_to_the_same_weights(workdir):
    """Issue #19's bar: 20 SIGKILLs at random points (start-up, any step, inside a checkpoint write — one every step
    here —, the final writes) and each restart resumes; the end result is byte-identical to an uninterrupted run, its
    log the same step for step, and no temp file of a killed write is left behind."""
    import random

    import torch

    wd, pid, env, cmd = _train_cli(workdir, steps=80, checkpoint_every=1)
    full = wd / "full" / pid / "seed0"
    t0 = time.time()
    subprocess.run(cmd(full), cwd=wd, env=env, check=True, capture_output=True)
    wall = time.time() - t0
    cut = wd / "cut" / pid / "seed0"
    rng = random.Random(19)
    kills, log = 0, cut / "log.jsonl"
    while kills < 20:
        lines = len(log.read_text().splitlines()) if log.exists() else 0
        proc = subprocess.Popen(cmd(cut), cwd=wd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kills % 4 == 0:  # anywhere, start-up included
            time.sleep(rng.uniform(0, wall))
        else:  # inside the loop: after 1-3 more logged steps, at a random moment of the next
            want, deadline = lines + rng.randint(1, 3), time.time() + 120
            while proc.poll() is None and (not log.exists() or len(log.read_text().splitlines()) < want):
                assert time.time() < deadline
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.05))
        if proc.poll() is not None:  # finished before the kill landed: start over so every kill hits a live run
            assert proc.returncode == 0
            shutil.rmtree(wd / "cut")
            continue
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    subprocess.run(cmd(cut), cwd=wd, env=env, check=True, capture_output=True)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (full / "model.safetensors").read_bytes() == (cut / "model.safetensors").read_bytes()  # what DVC hashes

    def steps(path):
        return [{k: v for k, v in json.loads(ln).items() if "time" not in k} for ln in path.read_text().splitlines()]

    assert steps(cut / "log.jsonl") == steps(full / "log.jsonl")
    assert not [p for p in cut.rglob(".*") if ".tmp" in p.name]
