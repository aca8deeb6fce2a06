"""Before any job starts: can this machine run the configured variants? A GPU preset without CUDA, or without its
weights in the local Hugging Face cache, stops `snakemake -n` and the real run with one message that lists what is
missing and the exact commands, instead of failing inside every training job's log.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from pipeline.config import Config
from pipeline.guidance import GUIDANCE, needs_gpu

LICENCES = {
    "DeepFloyd/": "accept the licence at https://huggingface.co/DeepFloyd/IF-I-XL-v1.0 (logged in), then "
    "`hf auth login` with a token of that account"
}


def _cached(model: str) -> bool:
    """A hub model's model_index.json is in the local cache (or `model` is a local pipeline directory)."""
    from pipeline.guidance.loading import is_local  # torch: only where a GPU preset is checked

    if is_local(model):
        return (Path(model).expanduser() / "model_index.json").is_file()
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model, "model_index.json"), str)


def weights_problem(cfg: Config) -> str | None:
    """What is missing for the variant's guidance weights, with the command that fetches them (None if present)."""
    from pipeline.guidance.loading import download_patterns, is_local

    g = cfg.guidance
    model = g.model or GUIDANCE.prop(g.name, "default_model")
    if _cached(model):
        return None
    if is_local(model):
        return f"guidance.model {model!r}: no diffusers pipeline directory there (no model_index.json)"
    variant = None if g.dtype == "float32" else "fp16"
    allow, _ = download_patterns(GUIDANCE.prop(g.name, "components"), variant)
    steps = [f"{v}" for k, v in LICENCES.items() if model.startswith(k)]
    steps.append("`hf download " + model + " --include " + " ".join(f"'{a}'" for a in allow) + "`")
    return f"guidance.name={g.name}: the weights of {model} are not in the local Hugging Face cache; " + "; then ".join(
        steps
    )


def problems(variants: Iterable[Config], check_cuda: bool) -> list[str]:
    """Every reason the variants cannot train here, once each. `check_cuda` is off when jobs go to a cluster (the
    submitting machine need not have a GPU)."""
    found: list[str] = []
    for cfg in variants:
        if not needs_gpu(cfg.guidance.name) or cfg.train.device == "cpu":
            continue
        if check_cuda:
            import torch

            if not torch.cuda.is_available():
                found.append(
                    f"guidance.name={cfg.guidance.name} needs a CUDA GPU and none is visible here "
                    "(torch.cuda.is_available() is False): run on a GPU machine or through a cluster profile "
                    f"(--profile profiles/slurm; {SUBMIT_ONLY}=1 on a machine that only submits), or set "
                    "train.device: cpu to train on the CPU anyway (very slow)"
                )
        weights = weights_problem(cfg)
        if weights:
            found.append(weights)
    return list(dict.fromkeys(found))


SUBMIT_ONLY = "DREAMFUSION_SUBMIT_ONLY"
"""Set to 1 on a machine that only plans or submits jobs that run elsewhere: its lack of a GPU is not checked."""


def cluster_executor(argv: list[str], environ: dict[str, str] | os._Environ) -> bool:
    """Whether this Snakemake invocation sends its jobs elsewhere (--executor, a --profile whose config names one,
    or $DREAMFUSION_SUBMIT_ONLY=1), so the local machine's lack of a GPU does not matter."""
    from pipeline import yamlio

    if environ.get(SUBMIT_ONLY) == "1":
        return True
    profiles = [environ["SNAKEMAKE_PROFILE"]] if environ.get("SNAKEMAKE_PROFILE") else []
    for i, arg in enumerate(argv):
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if arg in ("--executor", "-e") or arg.startswith("--executor="):
            name = arg.split("=", 1)[1] if "=" in arg else value
            if name not in ("local", "dryrun", "touch"):
                return True
        if arg == "--profile" or arg.startswith("--profile="):
            profiles.append(arg.split("=", 1)[1] if "=" in arg else value)
    for profile in profiles:
        config = Path(profile) / "config.yaml"
        if config.is_file():
            data = yamlio.load(config) or {}
            if data.get("executor") not in (None, "local", "dryrun", "touch"):
                return True
    return False
