"""Checkpoints of a training run: bit-exact resume, refusal of foreign or corrupt ones, and the finished run's
outputs kept as hard links so an object that Snakemake discarded after an interrupt is restored, not retrained."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pipeline.config import Config
from pipeline.io import atomic_write, atomic_write_json
from pipeline.nerf.model import Model


class CheckpointMismatch(RuntimeError):
    """A checkpoint from another config, prompt or seed; refused rather than silently loaded."""


def identity(cfg: Config, prompt_id: str, text: str, seed: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed."""
    return {"config_digest": cfg.digest(), "prompt_id": prompt_id, "prompt": text, "seed": seed}


CHECKPOINT = "checkpoint.safetensors"
"""One file per checkpoint: weights, Adam moments, and in its metadata the step, the run's identity and Adam's
scalars. Written by one atomic rename, so weights and step can never disagree after a kill."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed (corrupt, from another run, out of range or non-finite)."""


def save_checkpoint(directory: Path, model: Model, opt: torch.optim.Optimizer, step: int, ident: dict) -> None:
    """Atomically write weights + Adam moments + step + identity as one safetensors file (never a non-finite one)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state = opt.state_dict()
    scalars: dict[str, Any] = {}
    for idx, s in state["state"].items():
        for k, v in s.items():
            if torch.is_tensor(v) and v.ndim > 0:
                tensors[f"opt.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = float(v)
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{directory}: refusing to checkpoint non-finite {bad[0]} at step {step}")
    meta = {"step": str(step), "identity": json.dumps(ident, sort_keys=True), "opt_scalars": json.dumps(scalars)}
    atomic_write(directory / CHECKPOINT, lambda p: save_file(tensors, str(p), metadata=meta))


def checkpoint_step(directory: Path) -> int | None:
    """The step of the checkpoint in `directory` (None if there is none)."""
    from safetensors import safe_open

    path = directory / CHECKPOINT
    if not path.exists():
        return None
    with safe_open(str(path), "pt") as fh:
        return int((fh.metadata() or {})["step"])


def load_checkpoint(directory: Path, model: Model, opt: torch.optim.Optimizer, ident: dict, total_steps: int) -> int:
    """Restore a checkpoint; return the next step (0 if none). Refuses one from another config/prompt/seed, one
    whose step is not inside this run, and a corrupt or non-finite one, each with the fix in the message."""
    from safetensors import safe_open

    path = directory / CHECKPOINT
    if not path.exists():
        return 0
    fix = f"delete {directory} to start this object over"
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        step, saved = int(meta["step"]), json.loads(meta["identity"])
        opt_scalars = json.loads(meta["opt_scalars"])
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a truncated or foreign file
        raise CheckpointError(
            f"{path}: not a readable training checkpoint ({type(exc).__name__}: {exc}); {fix}"
        ) from None
    if saved != ident:
        diff = [k for k in ident if saved.get(k) != ident[k]]
        raise CheckpointMismatch(
            f"{directory}: checkpoint was written for a different {', '.join(diff)} ({saved}); {fix}"
        )
    if not 0 < step < total_steps:
        raise CheckpointError(f"{path}: step {step} is outside this run's 1..{total_steps - 1}; {fix}")
    if any(v.is_floating_point() and not torch.isfinite(v).all() for v in tensors.values()):
        raise CheckpointError(f"{path}: holds NaN/Inf values; {fix}")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[str, Any] = {"state": {}, "param_groups": opt.state_dict()["param_groups"]}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state["state"].setdefault(int(idx), {})[name] = v
    for key, v in opt_scalars.items():
        idx, name = key.split(".", 1)
        state["state"].setdefault(int(idx), {})[name] = torch.tensor(v)
    opt.load_state_dict(state)
    return step


FINAL = ("model.safetensors", "metrics.json")
"""A finished run's outputs, kept as hard links in checkpoint/final-<name> (no extra disk space)."""


def _link_replace(src: Path, dst: Path) -> None:
    """dst becomes a hard link to src, atomically (a copy where the filesystem has no hard links)."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        tmp.write_bytes(src.read_bytes())
    os.replace(tmp, dst)


def keep_final(ckpt_dir: Path, out: Path, record: dict) -> None:
    """After the outputs are written: link them into ckpt_dir with the run's identity and code, drop the resumable
    checkpoint (its Adam state is no longer needed)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for name in FINAL:
        _link_replace(out / name, ckpt_dir / f"final-{name}")
    atomic_write_json(ckpt_dir / "final.json", record)
    (ckpt_dir / CHECKPOINT).unlink(missing_ok=True)


def restore_final(ckpt_dir: Path, out: Path, record: dict) -> dict[str, Any] | None:
    """A finished run of the same identity and code whose outputs were discarded (e.g. by Snakemake after an
    interrupt): put them back and return its metrics; None (and the stale record removed) otherwise."""
    rec = ckpt_dir / "final.json"
    if not rec.exists():
        return None
    try:
        same = json.loads(rec.read_text()) == record and all((ckpt_dir / f"final-{n}").exists() for n in FINAL)
    except (OSError, json.JSONDecodeError):
        same = False
    if not same:
        for name in ("final.json", *(f"final-{n}" for n in FINAL)):
            (ckpt_dir / name).unlink(missing_ok=True)
        return None
    for name in FINAL:
        _link_replace(ckpt_dir / f"final-{name}", out / name)
    return json.loads((out / "metrics.json").read_text())
