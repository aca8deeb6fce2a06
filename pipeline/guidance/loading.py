"""Resolve a guidance model (hub name or local directory) and load its diffusers/transformers components offline.

Components are loaded one by one through their own `from_pretrained`, with the classes named in the directory's
`model_index.json` (exactly what `DiffusionPipeline.from_pretrained` does), so a user's own checkpoint works as long as
it is a diffusers pipeline directory. `HF_HOME`, `HF_HUB_CACHE` and `HF_HUB_OFFLINE` are honoured by huggingface_hub.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Any

from pipeline.guidance.base import GuidanceLoadError

LICENCE_HINT = {
    "DeepFloyd/": " DeepFloyd IF is gated: accept the licence at https://huggingface.co/DeepFloyd/IF-I-XL-v1.0 and run "
    "`hf auth login` first."
}


def resolve_model_dir(model: str) -> Path:
    """A local diffusers directory for `model`: the path itself, or the hub snapshot in the local cache/download."""
    path = Path(model).expanduser()
    looks_local = model.startswith((".", "/", "~")) or path.exists() or model.count("/") != 1
    if looks_local:
        if not path.is_dir():
            raise GuidanceLoadError(
                f"guidance.model {model!r}: no such directory ({path.resolve()}). Set guidance.model to a diffusers "
                "pipeline directory (saved with `pipeline.save_pretrained(dir)`) or to a hub name like "
                "'stabilityai/stable-diffusion-2-1-base'."
            )
        root = path
    else:
        from huggingface_hub import constants, snapshot_download

        try:
            root = Path(
                snapshot_download(
                    model,
                    allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors"],
                    ignore_patterns=["*.fp16.*", "*.non_ema.*", "*ema-only*"],
                )
            )
        except Exception as exc:
            hint = "".join(v for k, v in LICENCE_HINT.items() if model.startswith(k))
            raise GuidanceLoadError(
                f"guidance.model {model!r}: not a local directory and could not be fetched from the Hugging Face hub "
                f"(cache: {constants.HF_HUB_CACHE}; HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}): "
                f"{type(exc).__name__}. Download it on a machine with network: `hf download {model}` "
                f"(then copy the cache or point guidance.model at the snapshot directory).{hint}"
            ) from None
    if not (root / "model_index.json").is_file():
        raise GuidanceLoadError(
            f"guidance.model {model!r}: {root} is not a diffusers pipeline directory (no model_index.json); "
            "save one with `pipeline.save_pretrained(dir)`"
        )
    return root


def verify_checksums(root: Path) -> None:
    """Bundled pipeline directories record the sha256 of their weight files in `train.json` (key "sha256", paths
    relative to the directory); a missing or different file is an error that says how to restore it."""
    record = root / "train.json"
    if not record.is_file():
        return
    expected = json.loads(record.read_text()).get("sha256") or {}
    fix = "restore it (`git checkout -- models/`) or retrain (`snakemake bundled_models`)"
    for rel, digest in expected.items():
        path = root / rel
        if not path.is_file():
            raise GuidanceLoadError(f"{path}: missing (its sha256 is recorded in {record}); {fix}")
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != digest:
            raise GuidanceLoadError(
                f"{path}: sha256 {actual[:12]}… does not match {digest[:12]}… recorded in {record}; the file is "
                f"corrupted or was replaced: {fix}"
            )


def model_index(root: Path) -> dict[str, Any]:
    return json.loads((root / "model_index.json").read_text())


def load_component(root: Path, name: str, **kwargs: Any) -> Any:
    """Load component `name` (e.g. 'unet') with the class that model_index.json names for it."""
    index = model_index(root)
    entry = index.get(name)
    if not entry or entry[0] is None:
        raise GuidanceLoadError(f"{root}: model_index.json has no '{name}' component; is this the right kind of model?")
    library, cls_name = entry
    try:
        cls = getattr(importlib.import_module(library), cls_name)
        if name == "tokenizer":
            return cls.from_pretrained(root / name)
        return cls.from_pretrained(root, subfolder=name, **kwargs)
    except Exception as exc:
        raise GuidanceLoadError(
            f"{root / name}: could not load {library}.{cls_name} ({type(exc).__name__}: {exc}); the files may be "
            "missing or corrupted: download the model again"
        ) from None
