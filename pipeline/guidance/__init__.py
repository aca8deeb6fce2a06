"""2D diffusion priors behind one interface (see base.py); `build_guidance` picks one by `guidance.name`."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import Config
from pipeline.guidance.base import Guidance, GuidanceLoadError, pick_dtype

__all__ = ["Guidance", "GuidanceLoadError", "build_guidance", "compile_unet"]

WORLD_UNET_DIR = "models/world-unet"


def build_guidance(cfg: Config, device: torch.device, world_bank: str | Path | None = None) -> Guidance:
    """The guidance model named by `cfg.guidance.name`, on `device`, frozen. `world_bank` is the closed-form world
    prior's rendered bank (the `world_bank` rule's output); without it the bank is rendered in memory."""
    g = cfg.guidance
    dtype = pick_dtype(g.dtype, device)
    if g.name == "world":
        from pipeline.world.prior import ClosedFormWorldPrior

        return ClosedFormWorldPrior.from_config(cfg, device, world_bank)
    if g.name == "world-unet":
        from pipeline.guidance.diffusers_prior import PixelDiffusersGuidance

        guidance = PixelDiffusersGuidance(g.model or WORLD_UNET_DIR, device, dtype)
    elif g.name == "stable-diffusion":
        from pipeline.guidance.stable_diffusion import StableDiffusionGuidance

        guidance = StableDiffusionGuidance(g.model, device, dtype, g.latent_resolution)
    elif g.name == "deepfloyd-if":
        from pipeline.guidance.deepfloyd_if import DeepFloydIFGuidance

        guidance = DeepFloydIFGuidance(g.model, device, dtype)
    else:
        raise ValueError(f"unknown guidance.name {g.name!r}")
    return compile_unet(guidance, g.compile, device)


def compile_unet(guidance: Guidance, mode: str, device: torch.device) -> Guidance:
    """Apply `guidance.compile` to a diffusers prior's U-Net: off, default (torch.compile) or reduce-overhead
    (torch.compile with CUDA graphs, which exist only on CUDA devices)."""
    if mode == "off":
        return guidance
    if mode == "reduce-overhead" and device.type != "cuda":
        raise GuidanceLoadError(
            f"guidance.compile=reduce-overhead records CUDA graphs, which need a CUDA device (this run is on "
            f"{device.type}); use guidance.compile: default or off"
        )
    guidance.unet = torch.compile(guidance.unet, mode=None if mode == "default" else mode)
    return guidance
