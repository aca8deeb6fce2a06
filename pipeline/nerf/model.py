"""What SDS optimises (the field and its background) and its file, `model.safetensors`.

Every stage after training reads objects through :func:`load_model`; training writes them with :func:`save_model`.
The file carries the resolved config and the object's identity in its metadata, so a model is self-describing, and
its bytes depend only on its contents (the header's keys are written in sorted order), so two identical runs give
byte-identical files and DVC sees no change where there is none.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from pipeline.config import Config
from pipeline.io import atomic_write
from pipeline.nerf.field import build_field
from pipeline.nerf.renderer import Background
from pipeline.provenance import git_sha


class ModelFileError(ValueError):
    """A model.safetensors that cannot be read back (truncated, foreign, or weights that do not fit its config)."""


class Model(nn.Module):
    """What SDS optimises: the field and the background."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.field = build_field(cfg.nerf)
        self.background = Background(cfg.render)


def initial_model(cfg: Config, seed: int) -> Model:
    """The model as training starts it: drawn from the object's seed alone (not from whatever loading the guidance
    drew before it), so the untrained init can be rebuilt and scored (pipeline.geometry's iou_gain)."""
    torch.manual_seed(seed)
    return Model(cfg)


def deterministic_safetensors(tensors: dict[str, Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes whose JSON header has sorted keys: the library writes its metadata map in hash order, so the
    same tensors and metadata could give different bytes from one process to the next. Offsets are relative to the
    data section, which is left untouched; the header is padded with spaces to 8 bytes as the format asks."""
    raw = safetensors_bytes(tensors, metadata=metadata)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + n :]


def save_model(path: Path, model: Model, cfg: Config, ident: dict) -> None:
    """Atomically write the model with its resolved config, identity and code version in the metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "config": json.dumps(cfg.to_dict()),
        "identity": json.dumps(ident),
        "git_sha": git_sha(),
    }
    data = deterministic_safetensors(tensors, meta)
    atomic_write(path, lambda p: Path(p).write_bytes(data))


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[Model, Config, dict]:
    """A trained model.safetensors → (Model, its Config, its identity)."""
    from safetensors import safe_open

    from pipeline.config import from_dict

    fix = "delete it and run the workflow again (its training job writes it anew)"
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a truncated or foreign file
        raise ModelFileError(f"{path}: not a readable model ({type(exc).__name__}: {exc}); {fix}") from None
    if "config" not in meta or "identity" not in meta:
        raise ModelFileError(f"{path}: not a model written by pipeline.train (no config metadata); {fix}")
    cfg = from_dict(json.loads(meta["config"]), f"{path} (metadata)")
    model = Model(cfg)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise ModelFileError(f"{path}: weights do not fit its own config ({first}); {fix}") from None
    return model.to(device).eval(), cfg, json.loads(meta["identity"])
