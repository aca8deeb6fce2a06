"""Crashes, full disks, kills and shared machines: what a job leaves behind when it dies, and the guards around it.
The bad inputs themselves are one table, tests/test_bad_inputs.py."""

import errno
import os
import pickle

import pytest
import torch

from pipeline.checkpoint import checkpoint_step, save_checkpoint
from pipeline.config import from_dict
from pipeline.devices import claim_gpu_slot
from pipeline.evaluate import ClipScorer, EvaluationError
from pipeline.train import train
from tests.test_train import TINY


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder should be")  # unwritable even for root
    with pytest.raises(OSError, match="results/out: output folder is not writable"):
        train(from_dict(TINY), "p", "a red cube.", 0, blocker / "out", object())


def test_a_full_disk_mid_training_resumes_to_byte_identical_files(tmp_path, monkeypatch):
    """ENOSPC on the second checkpoint write stops the job with the disk's error; once space is back the next run
    resumes from the first checkpoint to the same bytes as a run that never stopped."""
    import pipeline.checkpoint as ck
    from pipeline.world.prior import ClosedFormWorldPrior, generate_bank

    cfg = from_dict(TINY)
    prior = ClosedFormWorldPrior(generate_bank(cfg), torch.device("cpu"))
    train(cfg, "p", "a red cube.", 0, tmp_path / "full", prior)
    real, calls = ck.save_file, []

    def fills_up(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(ck, "save_file", fills_up)
    with pytest.raises(OSError, match="No space left"):
        train(cfg, "p", "a red cube.", 0, tmp_path / "cut", prior)
    monkeypatch.undo()
    assert checkpoint_step(tmp_path / "cut" / "checkpoint") == cfg.train.checkpoint_every
    assert train(cfg, "p", "a red cube.", 0, tmp_path / "cut", prior)["resumed_from"] == cfg.train.checkpoint_every
    full, cut = (tmp_path / "full" / "model.safetensors"), (tmp_path / "cut" / "model.safetensors")
    assert full.read_bytes() == cut.read_bytes()


def test_disk_full_during_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import pipeline.checkpoint as tr
    from pipeline.nerf.model import Model

    cfg = from_dict({**TINY, "nerf": {"kind": "grid", "resolution": 12}})
    model = Model(cfg)
    opt = torch.optim.Adam(model.parameters())
    ident = {"x": 1}
    save_checkpoint(tmp_path, model, opt, 3, ident)
    before = (tmp_path / "checkpoint.safetensors").read_bytes()

    def full(tensors, path, metadata=None):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tr, "save_file", full)
    with torch.no_grad():
        model.field.grid += 1
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, model, opt, 6, ident)
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == before
    assert checkpoint_step(tmp_path) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") or ".tmp." in p.name]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/dreamfusion-pwned",))


def test_malicious_checkpoint_is_not_executed(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"visual.proj": Evil()}, fh)
    if os.path.exists("/tmp/dreamfusion-pwned"):
        os.remove("/tmp/dreamfusion-pwned")
    with pytest.raises(EvaluationError):
        ClipScorer(str(path), torch.device("cpu"))
    assert not os.path.exists("/tmp/dreamfusion-pwned")


def test_gpu_slots_are_exclusive(tmp_path):
    import subprocess
    import sys

    assert claim_gpu_slot(2, tmp_path) == 0
    code = f"from pipeline.devices import claim_gpu_slot; import sys; print(claim_gpu_slot(2, {str(tmp_path)!r}))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == "1"
    code = code.replace("claim_gpu_slot(2", "claim_gpu_slot(1")
    busy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert busy.returncode != 0 and "all 1 GPUs are held" in busy.stderr


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_get_the_umask_permissions(tmp_path, umask, mode):
    """mkstemp made every result 0600 whatever the umask: unreadable to teammates and cluster jobs."""
    from pipeline.io import atomic_write_json, atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_json(tmp_path / "sub" / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "sub" / "b.json").stat().st_mode & 0o777 == mode


def test_atomic_write_fsyncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    import pipeline.io as io

    calls = []
    real = io.fsync_dir
    monkeypatch.setattr(io, "fsync_dir", lambda d: (calls.append(str(d)), real(d)))
    io.atomic_write_text(tmp_path / "a.txt", "x")
    assert calls == [str(tmp_path)]


@pytest.mark.parametrize("guidance", ["stable-diffusion", "deepfloyd-if"])
def test_a_gpu_prior_without_a_gpu_stops_at_once(monkeypatch, guidance):
    """A tiny SD sat at 0/3 steps for 8 minutes on the CPU instead of saying there is no GPU."""
    from pipeline.devices import NoGPU, pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        NoGPU, match=f"guidance.name={guidance} needs a CUDA GPU and none is visible.*train.device: cpu"
    ):
        pick_device(from_dict({"guidance": {"name": guidance}}))
    assert pick_device(from_dict({"guidance": {"name": guidance}, "train": {"device": "cpu"}})).type == "cpu"
    assert pick_device(from_dict({"guidance": {"name": "world"}})).type == "cpu"
    with pytest.raises(NoGPU, match="train.device is 'cuda' but no CUDA device is visible"):
        pick_device(from_dict({"train": {"device": "cuda"}}))


def test_train_cli_reports_a_missing_gpu_in_one_line(tmp_path):
    import subprocess
    import sys

    from pipeline.config import save_resolved

    save_resolved(from_dict({"guidance": {"name": "stable-diffusion"}}), tmp_path / "config.yaml")
    (tmp_path / "prompts.json").write_text('{"prompts": [{"id": "p", "text": "a cat"}]}')
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "pipeline.train", "--params", str(tmp_path / "config.yaml")]
    cmd += [
        "--prompts",
        str(tmp_path / "prompts.json"),
        "--prompt-id",
        "p",
        "--seed",
        "0",
        "--out",
        str(tmp_path / "o"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'config.yaml'}: guidance.name=stable")
    assert "Traceback" not in proc.stderr


def _tiny_run(tmp_path, steps=6):
    from pipeline.nerf.model import Model

    cfg = from_dict({**TINY, "train": {**TINY["train"], "steps": steps}})
    model = Model(cfg)
    opt = torch.optim.Adam(model.parameters())
    return cfg, model, opt


def test_checkpoint_is_one_file_with_its_step(tmp_path):
    """Weights and step used to be two renames: a kill between them resumed new weights at an old step."""
    from pipeline.checkpoint import identity, load_checkpoint

    cfg, model, opt = _tiny_run(tmp_path)
    ident = identity(cfg, "p", "a red cube.", 0)
    save_checkpoint(tmp_path, model, opt, 3, ident)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors"]
    assert load_checkpoint(tmp_path, model, opt, ident, cfg.train.steps) == 3


def test_non_finite_checkpoint_is_never_written_or_resumed(tmp_path):
    from safetensors.torch import load_file, save_file

    from pipeline.checkpoint import CheckpointError, identity, load_checkpoint

    cfg, model, opt = _tiny_run(tmp_path)
    ident = identity(cfg, "p", "a red cube.", 0)
    with torch.no_grad():
        next(model.parameters())[..., 0] = float("nan")
    with pytest.raises(CheckpointError, match="refusing to checkpoint non-finite"):
        save_checkpoint(tmp_path, model, opt, 2, ident)
    assert not (tmp_path / "checkpoint.safetensors").exists()
    cfg, model, opt = _tiny_run(tmp_path)
    save_checkpoint(tmp_path, model, opt, 2, ident)
    path = tmp_path / "checkpoint.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))
    next(iter(tensors.values()))[..., 0] = float("nan")
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="holds NaN/Inf values"):
        load_checkpoint(tmp_path, model, opt, ident, cfg.train.steps)


def test_nan_field_is_a_mesh_error_not_an_empty_success(tmp_path):
    from pipeline.mesh import NonFiniteField, extract
    from pipeline.nerf.model import Model

    cfg = from_dict({**TINY, "nerf": {"kind": "grid", "resolution": 12}})
    model = Model(cfg)
    with torch.no_grad():
        model.field.grid[0, 0, 2, 2, 2] = float("nan")
    with pytest.raises(NonFiniteField, match="densities are NaN/Inf: the model is corrupt"):
        extract(model.field, 16, 1.0, torch.device("cpu"))


def test_temp_files_of_a_killed_writer_are_removed_when_training_starts(tmp_path):
    import tempfile

    from pipeline.io import remove_stale_temps

    (tmp_path / "checkpoint").mkdir(parents=True)
    stale = [
        tempfile.mkstemp(prefix=".checkpoint.safetensors.", suffix=".tmp.safetensors", dir=tmp_path / "checkpoint"),
        tempfile.mkstemp(prefix=".log.jsonl.", suffix=".tmp.jsonl", dir=tmp_path),
    ]
    (tmp_path / "checkpoint" / ".tmpXn8H29").write_bytes(b"half a checkpoint")  # safetensors' own temp file
    stale.append((None, str(tmp_path / "checkpoint" / ".tmpXn8H29")))
    keep = [tmp_path / "log.jsonl", tmp_path / ".write-test-other", tmp_path / "checkpoint" / "final.json"]
    keep.append(tmp_path / ".tmpXn8H29x")  # not a temp name: kept
    for p in keep:
        p.write_text("{}")
    train(from_dict({**TINY, "train": {**TINY["train"], "steps": 2}}), "p", "a red cube.", 0, tmp_path)
    assert not any(os.path.exists(p) for _, p in stale)
    assert (tmp_path / ".write-test-other").exists() and (tmp_path / ".tmpXn8H29x").exists()
    assert remove_stale_temps(tmp_path / "nowhere") == []


def test_train_cli_refuses_a_world_bank_of_another_config_in_one_line(tmp_path):
    """A bank built with other settings (or a corrupt one) is refused by the training job with one located line."""
    import subprocess
    import sys

    from pipeline.config import save_resolved
    from pipeline.world.prior import generate_bank, save_bank

    small = {"world": {"images_per_caption": 2, "resolution": 8}, "render": {"resolution": 8, "samples": 8}}
    save_bank(generate_bank(from_dict(small)), tmp_path / "bank.safetensors", from_dict(small))
    other = {**small, "world": {"images_per_caption": 3, "resolution": 8}, "tracking": {"enabled": False}}
    save_resolved(from_dict(other), tmp_path / "config.yaml")
    (tmp_path / "prompts.json").write_text('{"prompts": [{"id": "p", "text": "a red cube."}]}')
    cmd = [sys.executable, "-m", "pipeline.train", "--params", str(tmp_path / "config.yaml"), "--prompts"]
    cmd += [str(tmp_path / "prompts.json"), "--prompt-id", "p", "--seed", "0", "--out", str(tmp_path / "o")]
    cmd += ["--world-bank", str(tmp_path / "bank.safetensors")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'bank.safetensors'}: world bank was built with other settings than this config; rebuild it"
    )


def test_a_password_in_the_tracking_uri_never_reaches_a_file(tmp_path):
    """$MLFLOW_TRACKING_URI with a user and password, pointing at a server that is down: training goes on (tracking
    never fails a job), gives up on the server within seconds, and no file it writes, nor its output, holds the
    password."""
    import subprocess
    import sys
    import time

    from pipeline.config import save_resolved

    small = {
        "world": {"images_per_caption": 2, "resolution": 8},
        "render": {"resolution": 8, "samples": 8},
        "nerf": {"kind": "grid", "resolution": 8},
        "train": {"steps": 2, "batch_views": 1, "warmup_steps": 1},
        "shading": {"albedo_steps": 1},
    }
    save_resolved(from_dict(small), tmp_path / "config.yaml")
    (tmp_path / "prompts.json").write_text('{"prompts": [{"id": "p", "text": "a red cube."}]}')
    cmd = [sys.executable, "-m", "pipeline.train", "--params", str(tmp_path / "config.yaml"), "--prompts"]
    cmd += [str(tmp_path / "prompts.json"), "--prompt-id", "p", "--seed", "0", "--out", str(tmp_path / "o")]
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://alice:s3cr3t-planted@127.0.0.1:9"}
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.time() - t0 < 120
    assert "live MLflow logging to http://127.0.0.1:9 disabled" in proc.stderr
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and b"s3cr3t-planted" in p.read_bytes()]
    assert leaks == [] and "s3cr3t-planted" not in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def small_object(tmp_path_factory):
    """A tiny trained object with its mesh and views, as the workflow leaves them."""
    from pipeline.mesh import main as mesh_main
    from pipeline.views import main as views_main
    from tests.test_workflow import TINY as WORKFLOW_TINY

    out = tmp_path_factory.mktemp("object")
    cfg = from_dict({**WORKFLOW_TINY, "sweep": {}, "tracking": {"enabled": False}})
    from pipeline.world.prior import ClosedFormWorldPrior, generate_bank

    train(cfg, "a-red-cube", "a red cube.", 0, out, ClosedFormWorldPrior(generate_bank(cfg), torch.device("cpu")))
    mesh_main(["--model", str(out / "model.safetensors"), "--out-dir", str(out)])
    views_main(["--model", str(out / "model.safetensors"), "--mesh", str(out / "mesh.ply"), "--out-dir", str(out)])
    return out


@pytest.mark.parametrize("stage", ["mesh", "views", "geometry"])
def test_a_full_disk_or_a_blocked_folder_ends_a_stage_with_one_line(small_object, tmp_path, monkeypatch, stage):
    """ENOSPC while a stage writes, or a file where its output folder should be: one line naming the file and the
    fix, exit code 1, no traceback, nothing half-written."""
    import importlib

    module = importlib.import_module(f"pipeline.{stage}")
    model = str(small_object / "model.safetensors")
    args = {
        "mesh": lambda out: ["--model", model, "--out-dir", str(out)],
        "views": lambda out: ["--model", model, "--mesh", str(small_object / "mesh.ply"), "--out-dir", str(out)],
        "geometry": lambda out: [
            "--model",
            model,
            "--mesh",
            str(small_object / "mesh.ply"),
            "--views",
            str(small_object / "views.npz"),
            "--out",
            str(out / "geometry.json"),
        ],
    }[stage]

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(module, "atomic_write_json", full)
    with pytest.raises(SystemExit) as exc:
        module.main(args(tmp_path / "full"))
    assert str(exc.value).startswith("error: ") and "the disk is full: free space and run again" in str(exc.value)
    assert "\n" not in str(exc.value)
    monkeypatch.undo()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(SystemExit) as exc:
        module.main(args(blocker / "out"))
    assert str(exc.value).startswith(f"error: {blocker}") and "check the path and run again" in str(exc.value)
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
