"""The bad-input and crash catalogue (issue: scale-out and robustness)."""

import errno
import os
import pickle

import pytest
import torch

from pipeline.config import from_dict
from pipeline.evaluate import ClipScorer, EvaluationError
from pipeline.train import claim_gpu_slot, save_checkpoint, train
from tests.test_train import TINY


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder should be")  # unwritable even for root
    with pytest.raises(OSError, match="results/out: output folder is not writable"):
        train(from_dict(TINY), "p", "a red cube.", 0, blocker / "out", object())


def test_disk_full_during_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import pipeline.train as tr
    from pipeline.train import Model

    cfg = from_dict(TINY)
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
    assert '"step": 3' in (tmp_path / "checkpoint.json").read_text()
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
    code = f"from pipeline.train import claim_gpu_slot; import sys; print(claim_gpu_slot(2, {str(tmp_path)!r}))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == "1"
    code = code.replace("claim_gpu_slot(2", "claim_gpu_slot(1")
    busy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert busy.returncode != 0 and "all 1 GPUs are held" in busy.stderr
