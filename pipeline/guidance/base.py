"""The guidance seam: everything model-specific about a frozen 2D diffusion prior.

A :class:`Guidance` knows how to embed text (cached per string), its discrete noise schedule ᾱ_t
(α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t)), how to turn a render into the space it denoises (pixels in [−1, 1], or a VAE
latent), and how to predict ε for conditional and unconditional embeddings in one batched call. SDS, the schedules
and the weightings (pipeline/sds.py) are written once against this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch
from torch import Tensor


class GuidanceLoadError(RuntimeError):
    """A guidance model could not be found or loaded; the message says where we looked and how to get it."""


class Guidance(ABC):
    kind: Literal["pixel", "latent"]
    """pixel: x is the render itself; latent: x is the VAE latent of the (resized) render."""
    alphas_cumprod: Tensor
    """ᾱ_t for t = 0 … T−1, float32 [T], on `device`."""
    device: torch.device
    dtype: torch.dtype
    """Dtype of the denoiser (fp16/bf16 on GPU, fp32 on CPU); x and ε are handed back in float32."""

    def __init__(self) -> None:
        self._text_cache: dict[str, Tensor] = {}

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def embed(self, texts: list[str]) -> Tensor:
        """Embeddings [B, ...] of `texts`, each computed once and cached (prompt × view suffix, and "")."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing and getattr(self, "_released", False):
            raise RuntimeError(f"text encoder was released; {missing[0]!r} was not embedded before (embed it first)")
        if missing:
            with torch.no_grad():
                new = self._encode_text(missing)
            for t, e in zip(missing, new, strict=True):
                self._text_cache[t] = e
        return torch.stack([self._text_cache[t] for t in texts])

    def release_text_encoder(self) -> None:
        """Free the text encoder once every text a run needs is cached (T5-XXL holds ~9.5 GB of GPU memory that only a
        handful of embeddings ever need). Later `embed` calls may only ask for cached texts. Here: nothing to free."""
        return None

    @abstractmethod
    def _encode_text(self, texts: list[str]) -> Tensor:
        """Embeddings [B, ...] of distinct texts (no grad)."""

    @abstractmethod
    def encode(self, images: Tensor) -> Tensor:
        """Renders [B, 3, H, W] in [0, 1] → x [B, C, h, w] float32, differentiable w.r.t. `images`."""

    @abstractmethod
    def predict_noise(self, z_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor) -> tuple[Tensor, Tensor]:
        """(ε_c, ε_u), each [B, C, h, w] float32, for noisy z_t [B, C, h, w] at integer timesteps t [B].

        Implementations run conditional and unconditional passes as one batch and never record gradients.
        """

    def predict_noise_negatives(
        self, z_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor, negatives: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(ε_c, ε_u, ε_neg) with ε_neg [B, K, C, h, w] for negative embeddings [B, K, ...] (Perp-Neg). This default
        calls :meth:`predict_noise` once per negative; batched priors override it with one call."""
        eps_c, eps_u = self.predict_noise(z_t, t, cond, uncond)
        eps_neg = [self.predict_noise(z_t, t, negatives[:, k], uncond)[0] for k in range(negatives.shape[1])]
        return eps_c, eps_u, torch.stack(eps_neg, 1)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """Resolve `guidance.dtype`: auto is fp16 on CUDA and fp32 on a CPU."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
