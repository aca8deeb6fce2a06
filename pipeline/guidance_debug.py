"""What the guidance wants (threestudio's `guidance_eval`, stable-dreamfusion's `--save_guidance`): for one render,
at a few timesteps, the noisy input z_t the prior sees and its one-step denoised estimate x̂₀ under classifier-free
guidance, as an image strip. A prior that asks for a different object, a Janus face or an oversaturated colour shows
it here long before the 3D result does.

Layout: one row per timestep t (ascending); columns: the render, z_t, x̂₀ = (z_t − σ_t ε̂) / α_t, and for latent
priors everything decoded through the VAE. Written by training every `train.guidance_debug_every` steps to
previews/guidance-step<N>.png.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.config import GuidanceConfig
from pipeline.guidance import Guidance
from pipeline.sds import cfg_combine

TIMESTEPS = (0.1, 0.3, 0.6, 0.9)
"""Fractions of the prior's T."""


def to_image(guidance: Guidance, x: Tensor) -> Tensor:
    """The guidance's space → RGB [B, 3, H, W] in [0, 1] (pixels: rescaled; latents: decoded by the VAE)."""
    if guidance.kind == "latent":
        vae = guidance.vae  # type: ignore[attr-defined]
        x = vae.decode((x / vae.config.scaling_factor).to(guidance.dtype)).sample.float()
    return ((x[:, :3] + 1) / 2).clamp(0, 1)


@torch.no_grad()
def strip(
    guidance: Guidance,
    render: Tensor,
    cond: Tensor,
    uncond: Tensor,
    cfg: GuidanceConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """[rows·H', 3·W'] image ([3, ...] in [0, 1]) for one render [1, 3, H, W] and its embeddings [1, ...]."""
    x = guidance.encode(render).float()
    n = len(TIMESTEPS)
    t = torch.tensor([round(f * (guidance.num_timesteps - 1)) for f in TIMESTEPS], device=x.device)
    ab = guidance.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    noise = torch.randn((n, *x.shape[1:]), generator=generator, dtype=torch.float32).to(x.device)
    z_t = ab.sqrt() * x.expand(n, -1, -1, -1) + (1 - ab).sqrt() * noise
    eps_c, eps_u = guidance.predict_noise(z_t, t, cond.expand(n, *cond.shape[1:]), uncond.expand(n, *uncond.shape[1:]))
    eps = cfg_combine(eps_c.float(), eps_u.float(), cfg.scale, cfg.convention)
    x0 = (z_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    noisy, denoised = to_image(guidance, z_t), to_image(guidance, x0)
    size = noisy.shape[-2:]
    shown = torch.nn.functional.interpolate(render.float(), size=size, mode="bilinear", align_corners=False)
    rows = [torch.cat([shown[0], noisy[i], denoised[i]], dim=-1) for i in range(n)]
    return torch.cat(rows, dim=-2).cpu()
