"""Integrity against crashes and for reproducibility: deterministic files, resume after a torn write. The bad inputs
themselves are one table, tests/test_bad_inputs.py."""

import json

import pytest
import torch

from pipeline.config import from_dict
from pipeline.nerf.model import Model, load_model, save_model
from pipeline.train import _truncate_log

TINY = {"nerf": {"kind": "grid", "resolution": 8}, "tracking": {"enabled": False}}


def test_model_files_are_byte_identical_for_identical_models(tmp_path):
    """The same weights, config and identity give the same bytes (safetensors writes its metadata in hash order;
    we sort it), so DVC sees no change where there is none; and the file loads back."""
    cfg = from_dict(TINY)
    torch.manual_seed(0)
    model = Model(cfg)
    ident = {"prompt_id": "p", "seed": 0, "prompt": "a red cube", "config_digest": cfg.digest()}
    save_model(tmp_path / "a.safetensors", model, cfg, ident)
    save_model(tmp_path / "b.safetensors", model, cfg, dict(ident))
    a, b = (tmp_path / "a.safetensors").read_bytes(), (tmp_path / "b.safetensors").read_bytes()
    assert a == b
    n = int.from_bytes(a[:8], "little")
    assert n % 8 == 0
    header = json.loads(a[8 : 8 + n])
    assert list(header) == sorted(header) and list(header["__metadata__"]) == ["config", "git_sha", "identity"]
    back, cfg2, ident2 = load_model(tmp_path / "a.safetensors")
    assert ident2 == ident and cfg2.to_dict() == json.loads(json.dumps(cfg.to_dict()))
    for (k, v), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_resume_drops_a_torn_last_log_line(tmp_path):
    """A full disk or a kill mid-write leaves a partial last line; resume drops it (and any later step) instead of
    failing for good."""
    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in range(5)]
    log.write_text("\n".join(lines) + "\n" + '{"step": 5, "lo')
    _truncate_log(log, 4)
    assert log.read_text() == "\n".join(lines[:4]) + "\n"
    log.write_text("\n".join(lines) + "\n\x00\x00garbage\n")
    _truncate_log(log, 10)
    assert log.read_text() == "\n".join(lines) + "\n"


def test_evaluation_refuses_non_finite_views_when_called_directly():
    from pipeline.evaluate import EvaluationError, evaluate
    from pipeline.prompts import normalize

    views = {"color": torch.full((2, 3, 8, 8), float("nan")), "geo": torch.zeros(2, 3, 8, 8)}
    objects = [{"prompt_id": "p", "seed": 0, "text": "a red cube", "views": views}]
    with pytest.raises(EvaluationError, match="p seed 0: color views contain NaN/Inf"):
        evaluate(objects, [normalize("a red cube")], [], "mean", True)
