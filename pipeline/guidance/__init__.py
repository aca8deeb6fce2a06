"""2D diffusion priors behind one interface (see base.py); `build_guidance` picks one by `guidance.name`."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import Config
from pipeline.guidance.base import Guidance, GuidanceLoadError, pick_dtype

__all__ = ["Guidance", "GuidanceLoadError", "build_guidance"]

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

        return PixelDiffusersGuidance(g.model or WORLD_UNET_DIR, device, dtype)
    if g.name == "stable-diffusion":
        from pipeline.guidance.stable_diffusion import StableDiffusionGuidance

        return StableDiffusionGuidance(g.model, device, dtype, g.latent_resolution)
    if g.name == "deepfloyd-if":
        from pipeline.guidance.deepfloyd_if import DeepFloydIFGuidance

        return DeepFloydIFGuidance(g.model, device, dtype)
    raise ValueError(f"unknown guidance.name {g.name!r}")
