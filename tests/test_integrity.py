"""Integrity against hostile or careless input and against crashes: no code from data, deterministic files, resume
after a torn write."""

import json

import pytest
import torch

from pipeline.config import from_dict
from pipeline.guidance.base import GuidanceLoadError
from pipeline.guidance.loading import load_component
from pipeline.nerf.model import Model, load_model, save_model
from pipeline.train import _truncate_log

TINY = {"nerf": {"kind": "grid", "resolution": 8}, "tracking": {"enabled": False}}


def test_a_model_directory_cannot_run_its_own_code(tmp_path, monkeypatch):
    """model_index.json naming a module of the directory (or any library but diffusers/transformers) is refused
    before any import: the payload never runs."""
    model = tmp_path / "models" / "evilmodel"
    model.mkdir(parents=True)
    (tmp_path / "models" / "__init__.py").write_text("")
    (model / "__init__.py").write_text("")
    marker = tmp_path / "pwned"
    (model / "payload.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Tok: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for entry in (["models.evilmodel.payload", "Tok"], ["os", "system"], ["diffusers", "__class__"]):
        (model / "model_index.json").write_text(json.dumps({"_class_name": "X", "tokenizer": entry}))
        with pytest.raises(GuidanceLoadError, match="model_index.json: component 'tokenizer'"):
            load_component(model, "tokenizer")
    assert not marker.exists()


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
