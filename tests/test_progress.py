"""The console's training progress (pipeline/progress.py): each running object's step, speed and ETA."""

import json
import logging

import pytest
import yaml

from pipeline import progress
from pipeline.progress import ObjectProgress, Watcher, object_progress, render


def _log(folder, steps, t0=1000.0, dt=0.5, torn=False):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"step": s, "loss": 1.0, "time": t0 + dt * s}) for s in range(steps)]
    (folder / "log.jsonl").write_text("\n".join(lines) + "\n" + ('{"step": 99, "lo' if torn else ""))


def test_an_object_s_step_speed_and_eta_come_from_its_log(tmp_path):
    _log(tmp_path / "a", 40, dt=0.5, torn=True)  # 40 steps done at 2 steps/s; a line being written is skipped
    p = object_progress(tmp_path / "a", 400, "a/seed0")
    assert (p.state, p.step, p.steps, p.rate, p.eta) == ("training", 40, 400, 2.0, 180.0)
    assert object_progress(tmp_path / "none", 400, "b").state == "waiting"
    (tmp_path / "done").mkdir()
    for name in ("metrics.json", "model.safetensors"):
        (tmp_path / "done" / name).write_text("{}")
    assert object_progress(tmp_path / "done", 400, "c") == ObjectProgress("c", "done", 400, 400)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "diverged.json").write_text("{}")
    assert object_progress(tmp_path / "bad", 400, "d").state == "failed"
    _log(tmp_path / "one", 1)
    assert object_progress(tmp_path / "one", 400, "e").rate is None  # one step: no speed yet


def test_the_speed_is_measured_over_the_recent_steps(tmp_path):
    """A resumed or slowed-down object: the ETA follows its recent speed, not its average since step 0."""
    folder = tmp_path / "a"
    _log(folder, 100, dt=0.1)
    with open(folder / "log.jsonl", "a") as fh:
        for s in range(100, 150):
            fh.write(json.dumps({"step": s, "time": 1000.0 + 10 + (s - 100) * 1.0}) + "\n")
    p = object_progress(folder, 200, "a")
    assert p.rate == 1.0 and p.eta == 50.0


def test_the_block_is_a_summary_and_one_short_line_per_running_object():
    objs = [
        ObjectProgress("a-red-cube/seed0", "training", 120, 400, 2.0),
        ObjectProgress("a-blue-sphere/seed0", "training", 80, 400, 4.0),
        ObjectProgress("a-cone/seed0", "waiting", 0, 400),
        ObjectProgress("a-torus/seed0", "done", 400, 400),
        ObjectProgress("a-cube/seed1", "failed", 0, 400),
    ]
    assert render(objs) == [
        "training: 1 of 5 objects done, 2 running, 1 waiting, 1 failed; all done in ≈ 2m47s",
        "  a-red-cube/seed0     120/400  2.0 steps/s  ETA 2m20s",
        "  a-blue-sphere/seed0   80/400  4.0 steps/s  ETA 1m20s",
        "  failed: a-cube/seed1 diverged (its diverged.json says why)",
    ]
    lockstep = [
        ObjectProgress("a/seed0", "training", 364, 400, 1.0),
        ObjectProgress("b/seed0", "training", 331, 400, 1.0),
    ]
    assert render(lockstep)[0].endswith("all done in ≈ 1m09s")  # b's own 69 s, not the 52 s of pooled speed
    many = [ObjectProgress(f"p{i}/seed0", "training", 1, 10) for i in range(15)]
    block = render(many)
    assert block[0] == "training: 0 of 15 objects done, 15 running, 0 waiting, 0 failed"  # speeds not known yet
    assert block[1] == "  p0/seed0    1/10  measuring speed" and block[-1] == "  … and 3 more" and len(block) == 14


def test_the_watcher_prints_only_when_an_object_moved(tmp_path):
    objects = {"a/seed0": (tmp_path / "a", 10), "b/seed0": (tmp_path / "b", 10)}
    w = Watcher(objects, 1.0, print)
    assert w.look() is None  # the state at start is not news
    _log(tmp_path / "a", 3)
    block = w.look()
    assert block is not None and block[0].startswith("training: 0 of 2 objects done, 1 running, 1 waiting")
    assert w.look() is None  # nothing moved
    for name in ("a", "b"):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "metrics.json").write_text("{}")
        (tmp_path / name / "model.safetensors").write_text("{}")
    assert w.look() is None  # all done: Snakemake's own summary says so


def test_the_interval_comes_from_the_environment(monkeypatch, caplog):
    logger = logging.getLogger("test-progress")
    monkeypatch.setenv(progress.ENV, "0")
    assert progress.start({"a": ("x", 1)}, logger) is None
    monkeypatch.setenv(progress.ENV, "soon")
    with caplog.at_level(logging.WARNING):
        w = progress.start({"a": ("x", 1)}, logger)
    assert w is not None and w.every == progress.DEFAULT_EVERY
    assert "LAB_PROGRESS_EVERY='soon' is not a number of seconds" in caplog.text
    w.stop()


@pytest.mark.e2e
def test_a_workflow_run_shows_each_training_object_on_its_console(workdir):
    """Snakemake's onstart starts the watcher in the main process: the console gets the block while the jobs
    train; a dry run prints none of it."""
    import os
    import subprocess
    import sys

    tiny = {
        "prompts": {"select": ["a red cube", "a blue sphere"]},
        "world": {"images_per_caption": 4, "resolution": 16},
        "render": {"resolution": 16, "samples": 16},
        "nerf": {"kind": "grid", "resolution": 12},
        "shading": {"albedo_steps": 2},
        "train": {"steps": 300, "batch_views": 1, "checkpoint_every": 100, "warmup_steps": 1},
        "tracking": {"enabled": False},
    }
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    env = {**os.environ, "PYTHONPATH": str(workdir), progress.ENV: "0.5"}
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "tiny.yaml", "--retries", "0"]
    dry = subprocess.run([*cmd, "-n", "--until", "train"], cwd=workdir, capture_output=True, text=True, env=env)
    assert dry.returncode == 0 and "training:" not in dry.stdout + dry.stderr
    run = subprocess.run([*cmd, "--until", "train"], cwd=workdir, capture_output=True, text=True, env=env)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    blocks = [line for line in out.splitlines() if line.startswith("training: ")]
    assert blocks and all(" of 2 objects done" in b for b in blocks), out[-3000:]
    assert any("/300  " in line and line.lstrip().startswith("a-red-cube-") for line in out.splitlines()), out[-3000:]
    # a failed job's own located error, one line on the console (not only in its log file)
    model = next(workdir.glob("results/primitives/*/a-red-cube-*/seed0/model.safetensors"))
    model.write_bytes(model.read_bytes()[:100])
    bad = subprocess.run([*cmd, "--until", "mesh"], cwd=workdir, capture_output=True, text=True, env=env)
    assert bad.returncode != 0
    failed = [line for line in (bad.stdout + bad.stderr).splitlines() if line.startswith("failed: ")]
    variant = model.parents[2].name
    where = (
        f"failed: mesh/{variant}/{model.parents[1].name}-seed0: {model.relative_to(workdir)}: not a readable model ("
    )
    assert len(failed) == 1 and failed[0].startswith(where), bad.stdout[-3000:] + bad.stderr[-3000:]
    assert failed[0].endswith("delete it and run the workflow again (its training job writes it anew)")


def test_failures_are_the_jobs_own_located_errors(tmp_path):
    logs = tmp_path / "logs"
    (logs / "views" / "v").mkdir(parents=True)
    (logs / "views" / "v" / "p-seed0.log").write_text("warming up\nerror: a/mesh.ply: not a mesh.ply; delete it\n")
    (logs / "views" / "v" / "q-seed0.log").write_text("Traceback (most recent call last):\n  x\nKeyError: 'opacity'\n")
    (logs / "views" / "v" / "fine-seed0.log").write_text("rendered 8 views\n")
    old = logs / "views" / "v" / "old-seed0.log"
    old.write_text("error: from an earlier run\n")
    import os

    os.utime(old, (1000.0, 1000.0))
    assert progress.failures([logs, tmp_path / "absent"], since=2000.0) == [
        "failed: views/v/p-seed0: a/mesh.ply: not a mesh.ply; delete it",
        "failed: views/v/q-seed0: KeyError: 'opacity'",
    ]
