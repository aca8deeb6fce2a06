"""2D diffusion priors behind one interface (see base.py); `build_guidance` picks one by `guidance.name`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import Config
from pipeline.registry import Registry

if TYPE_CHECKING:  # torch is imported where a model is built: the workflow reads the registry while it plans jobs
    import torch

    from pipeline.guidance.base import Guidance, GuidanceLoadError

__all__ = ["GUIDANCE", "Guidance", "GuidanceLoadError", "build_guidance", "compile_unet", "needs_gpu"]

WORLD_UNET_DIR = "models/world-unet"


Builder = Callable[[Config, "torch.device", "torch.dtype", "str | Path | None"], "Guidance"]
GUIDANCE: Registry[Builder] = Registry("guidance model")
"""guidance.name → a builder (cfg, device, dtype, world bank) → Guidance. Properties: `needs_gpu` (only practical
on a GPU: training with train.device auto and no CUDA stops at once, cluster jobs ask for a GPU, and the workflow
checks before any job starts), `default_model` (the hub name used when guidance.model is empty) and `components`
(what is downloaded and loaded)."""


@GUIDANCE.register("world")
def _world(cfg: Config, device: torch.device, dtype: torch.dtype, world_bank: str | Path | None) -> Guidance:
    from pipeline.world.prior import ClosedFormWorldPrior

    return ClosedFormWorldPrior.from_config(cfg, device, world_bank)


@GUIDANCE.register("world-unet")
def _world_unet(cfg: Config, device: torch.device, dtype: torch.dtype, world_bank: str | Path | None) -> Guidance:
    from pipeline.guidance.diffusers_prior import PixelDiffusersGuidance

    return PixelDiffusersGuidance(cfg.guidance.model or WORLD_UNET_DIR, device, dtype)


@GUIDANCE.register(
    "stable-diffusion",
    needs_gpu=True,
    default_model="stabilityai/stable-diffusion-2-1-base",
    components=("tokenizer", "text_encoder", "unet", "scheduler", "vae"),  # StableDiffusionGuidance.components
)
def _stable_diffusion(cfg: Config, device: torch.device, dtype: torch.dtype, world_bank: str | Path | None) -> Guidance:
    from pipeline.guidance.stable_diffusion import StableDiffusionGuidance

    model = cfg.guidance.model or GUIDANCE.prop("stable-diffusion", "default_model")
    return StableDiffusionGuidance(model, device, dtype, cfg.guidance.latent_resolution)


@GUIDANCE.register(
    "deepfloyd-if",
    needs_gpu=True,
    default_model="DeepFloyd/IF-I-XL-v1.0",
    components=("tokenizer", "text_encoder", "unet", "scheduler"),  # DeepFloydIFGuidance.components
)
def _deepfloyd_if(cfg: Config, device: torch.device, dtype: torch.dtype, world_bank: str | Path | None) -> Guidance:
    from pipeline.guidance.deepfloyd_if import DeepFloydIFGuidance

    return DeepFloydIFGuidance(cfg.guidance.model or GUIDANCE.prop("deepfloyd-if", "default_model"), device, dtype)


def needs_gpu(name: str) -> bool:
    """Whether the registered guidance model `name` is only practical on a GPU."""
    return bool(GUIDANCE.prop(name, "needs_gpu", False))


def build_guidance(cfg: Config, device: torch.device, world_bank: str | Path | None = None) -> Guidance:
    """The guidance model named by `cfg.guidance.name`, on `device`, frozen. `world_bank` is the closed-form world
    prior's rendered bank (the `world_bank` rule's output); without it the bank is rendered in memory."""
    from pipeline.guidance.base import pick_dtype

    g = cfg.guidance
    guidance = GUIDANCE.get(g.name)(cfg, device, pick_dtype(g.dtype, device), world_bank)
    if g.name == "world":  # the closed-form prior has no U-Net to compile
        return guidance
    return compile_unet(guidance, g.compile, device)


def compile_unet(guidance: Guidance, mode: str, device: torch.device) -> Guidance:
    """Apply `guidance.compile` to a diffusers prior's U-Net: off, default (torch.compile) or reduce-overhead
    (torch.compile with CUDA graphs, which exist only on CUDA devices)."""
    import torch

    from pipeline.guidance.base import GuidanceLoadError

    if mode == "off":
        return guidance
    if mode == "reduce-overhead" and device.type != "cuda":
        raise GuidanceLoadError(
            f"guidance.compile=reduce-overhead records CUDA graphs, which need a CUDA device (this run is on "
            f"{device.type}); use guidance.compile: default or off"
        )
    guidance.unet = torch.compile(guidance.unet, mode=None if mode == "default" else mode)
    return guidance


def __getattr__(name: str) -> Any:
    """`Guidance` and `GuidanceLoadError` from base.py (which imports torch), loaded on first use."""
    if name in ("Guidance", "GuidanceLoadError"):
        from pipeline.guidance import base

        return getattr(base, name)
    raise AttributeError(f"module 'pipeline.guidance' has no attribute {name!r}")
