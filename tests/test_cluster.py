"""Jobs as separately submitted processes (cluster-generic executor) and SIGKILL + retry → identical result."""

import json
import os
import signal
import subprocess
import sys
import time

import yaml
from safetensors.torch import load_file

from tests.conftest import run_snakemake
from tests.test_train import TINY


def _tiny(workdir):
    cfg = {
        **TINY,
        "prompts": {"select": ["a red cube"]},
        "train": {**TINY["train"], "steps": 40, "checkpoint_every": 5},
    }
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    return workdir


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
    wd = _tiny(workdir)
    run_snakemake(
        wd,
        "results/primitives/world-w10-uniform/config.yaml",
        "results/primitives/prompts.json",
        "--configfile",
        "tiny.yaml",
    )
    cfg_path = wd / "results/primitives/world-w10-uniform/config.yaml"
    pid = json.loads((wd / "results/primitives/prompts.json").read_text())["selected"][0]
    env = {**os.environ, "PYTHONPATH": str(wd), "TQDM_DISABLE": "1"}

    def cmd(out):
        return [
            sys.executable,
            "-m",
            "pipeline.train",
            "--params",
            str(cfg_path),
            "--prompts",
            str(wd / "results/primitives/prompts.json"),
            "--prompt-id",
            pid,
            "--seed",
            "0",
            "--out",
            str(out),
        ]

    full = wd / "full" / "v" / pid / "seed0"
    subprocess.run(cmd(full), cwd=wd, env={**env}, check=True, capture_output=True)
    killed = wd / "killed" / "v" / pid / "seed0"
    proc = subprocess.Popen(cmd(killed), cwd=wd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoint/checkpoint.safetensors").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    from pipeline.train import checkpoint_step

    step = checkpoint_step(killed / "checkpoint")
    assert 0 < step < 40 and not (killed / "model.safetensors").exists()
    subprocess.run(cmd(killed), cwd=wd, env=env, check=True, capture_output=True)
    assert json.loads((killed / "metrics.json").read_text())["resumed_from"] >= step
    a, b = load_file(str(full / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert all(__import__("torch").equal(a[k], b[k]) for k in a)
