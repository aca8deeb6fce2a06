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


WEIGHTLESS = ("tokenizer", "scheduler")
"""Components without weights (no dtype, no variant)."""


def download_patterns(components: tuple[str, ...], variant: str | None) -> tuple[list[str], list[str]]:
    """(allow, ignore) patterns for `snapshot_download` that fetch exactly what the guidance loads: model_index.json
    and the named components' configs and tokenizer files, and their weights in one precision only (the `variant`
    files, e.g. `*.fp16.safetensors` or sharded `*.fp16-00001-of-00002.safetensors`, else the full-precision ones).
    Root-level checkpoints (SD's `v2-1_512-*.safetensors`), other components (IF's safety checker, watermarker) and
    the other precision are never downloaded."""
    allow = ["model_index.json"]
    for c in components:
        allow += [f"{c}/*.json", f"{c}/*.txt", f"{c}/*.model"]
        if c in WEIGHTLESS:
            continue
        if variant:
            allow += [f"{c}/*.{variant}.safetensors", f"{c}/*.{variant}-*.safetensors"]
        else:
            allow.append(f"{c}/*.safetensors")
    ignore = ["*.non_ema*", "*ema-only*"] + ([] if variant else ["*.fp16*"])
    return allow, ignore


def is_local(model: str) -> bool:
    """`model` names a local directory (a path, or anything that is not an `owner/name` hub id)."""
    return model.startswith((".", "/", "~")) or Path(model).expanduser().exists() or model.count("/") != 1


def resolve_model_dir(model: str, components: tuple[str, ...] = (), variant: str | None = None) -> Path:
    """A local diffusers directory for `model`: the path itself, or the hub snapshot in the local cache/download
    (only `components`, weights in the `variant` precision when given; see `download_patterns`)."""
    path = Path(model).expanduser()
    if is_local(model):
        if not path.is_dir():
            raise GuidanceLoadError(
                f"guidance.model {model!r}: no such directory ({path.resolve()}). Set guidance.model to a diffusers "
                "pipeline directory (saved with `pipeline.save_pretrained(dir)`) or to a hub name like "
                "'stabilityai/stable-diffusion-2-1-base'."
            )
        root = path
    else:
        from huggingface_hub import constants, snapshot_download

        allow, ignore = download_patterns(components or ("tokenizer", "text_encoder", "unet", "scheduler"), variant)
        try:
            root = Path(snapshot_download(model, allow_patterns=allow, ignore_patterns=ignore))
        except Exception as exc:
            hint = "".join(v for k, v in LICENCE_HINT.items() if model.startswith(k))
            include = " ".join(f"--include '{a}'" for a in allow)
            raise GuidanceLoadError(
                f"guidance.model {model!r}: not a local directory and could not be fetched from the Hugging Face hub "
                f"(cache: {constants.HF_HUB_CACHE}; HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}): "
                f"{type(exc).__name__}. Download it on a machine with network: `hf download {model} {include}` "
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
    """The directory's model_index.json, which must be a readable JSON object (GuidanceLoadError naming it if not)."""
    path = root / "model_index.json"
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GuidanceLoadError(f"{path}: missing; is {root} a model directory saved by diffusers?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GuidanceLoadError(f"{path}: not readable JSON ({exc}); download the model again") from None
    if not isinstance(index, dict):
        raise GuidanceLoadError(f"{path}: must be a JSON object naming each component; download the model again")
    return index


def weights_variant(root: Path, name: str, variant: str | None) -> str | None:
    """`variant` if component `name` has weight files in it (e.g. diffusion_pytorch_model.fp16.safetensors), else
    None: a directory saved without variants loads its full-precision files and is cast to the dtype."""
    if not variant or not (root / name).is_dir():
        return None
    files = [p.name for p in (root / name).iterdir()]
    return variant if any(f".{variant}." in f or f".{variant}-" in f for f in files) else None


LIBRARIES = ("diffusers", "transformers")
"""The only libraries a model directory may name classes from: a model_index.json that names any other module would
make loading a model import (and so run) code that came with the data. diffusers refuses the same unless told to
trust remote code; this project never does."""


def component_class(root: Path, name: str, library: Any, cls_name: Any) -> type:
    """The class model_index.json names for component `name`, if it is a public class of diffusers or transformers;
    anything else is refused before any import."""
    where = f"{root / 'model_index.json'}: component '{name}'"
    if library not in LIBRARIES or not isinstance(cls_name, str) or not cls_name.isidentifier():
        raise GuidanceLoadError(
            f"{where} names {library!r}.{cls_name!r}; only classes of {' or '.join(LIBRARIES)} are loaded (a model "
            "directory never brings its own code). Fix the index or use a directory saved by diffusers"
        )
    cls = getattr(importlib.import_module(library), cls_name, None)
    if not isinstance(cls, type) or cls_name.startswith("_") or not hasattr(cls, "from_pretrained"):
        raise GuidanceLoadError(f"{where}: {library}.{cls_name} is not a loadable {library} class")
    return cls


def load_component(root: Path, name: str, variant: str | None = None, **kwargs: Any) -> Any:
    """Load component `name` (e.g. 'unet') with the class that model_index.json names for it; weights from the
    `variant` files (fp16) when the directory has them."""
    index = model_index(root)
    entry = index.get(name)
    if not entry or entry[0] is None:
        raise GuidanceLoadError(f"{root}: model_index.json has no '{name}' component; is this the right kind of model?")
    if not isinstance(entry, list) or len(entry) != 2:
        raise GuidanceLoadError(
            f"{root / 'model_index.json'}: component '{name}' must be [library, class], got {entry!r}; fix the index "
            "or use a directory saved by diffusers"
        )
    library, cls_name = entry
    cls = component_class(root, name, library, cls_name)
    try:
        if name == "tokenizer":
            return cls.from_pretrained(root / name)
        found = weights_variant(root, name, variant) if name not in WEIGHTLESS else None
        if found:
            kwargs["variant"] = found
        return cls.from_pretrained(root, subfolder=name, **kwargs)
    except Exception as exc:
        raise GuidanceLoadError(
            f"{root / name}: could not load {library}.{cls_name} ({type(exc).__name__}: {exc}); the files may be "
            "missing or corrupted: download the model again"
        ) from None
