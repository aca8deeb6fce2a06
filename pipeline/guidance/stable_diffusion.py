"""Stable Diffusion (latent): the render is resized to `latent_resolution`, VAE-encoded (gradients flow through the
encoder) and scaled; SDS acts on the latent. Default: stabilityai/stable-diffusion-2-1-base."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.guidance.base import GuidanceLoadError
from pipeline.guidance.diffusers_prior import DiffusersGuidance
from pipeline.guidance.loading import load_component


class StableDiffusionGuidance(DiffusersGuidance):
    kind = "latent"
    components = (*DiffusersGuidance.components, "vae")

    def __init__(self, model: str, device: torch.device, dtype: torch.dtype, latent_resolution: int = 512) -> None:
        super().__init__(model, device, dtype)
        self.vae = load_component(self.root, "vae", self.variant, torch_dtype=dtype).to(device).eval()
        self.vae.requires_grad_(False)  # frozen, but differentiable w.r.t. its input
        self.latent_resolution = latent_resolution
        self._check_resolution()

    def _check_resolution(self) -> None:
        """The render is resized to latent_resolution, which the VAE divides by its scale factor and the U-Net by 2
        per down block: a size that does not divide fails (or silently crops) deep inside the first training step."""
        vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        unet_factor = 2 ** (len(self.unet.config.block_out_channels) - 1)
        if self.latent_resolution % (vae_factor * unet_factor):
            raise GuidanceLoadError(
                f"guidance.latent_resolution {self.latent_resolution} does not suit {self.root}: its VAE downsamples "
                f"{vae_factor}x and its U-Net {unet_factor}x more, so set it to a multiple of "
                f"{vae_factor * unet_factor} (the model was trained at {self.unet.config.sample_size * vae_factor})"
            )

    def encode(self, images: Tensor) -> Tensor:
        """Renders [B, 3, H, W] in [0, 1] → scaled VAE latent means [B, 4, r/8, r/8] (float32)."""
        r = self.latent_resolution
        x = F.interpolate(images, (r, r), mode="bilinear", align_corners=False) * 2 - 1
        posterior = self.vae.encode(x.to(self.dtype)).latent_dist
        return posterior.mean.float() * self.vae.config.scaling_factor
