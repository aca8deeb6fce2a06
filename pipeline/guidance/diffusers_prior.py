"""Guidance from a diffusers UNet2DConditionModel: the shared core of Stable Diffusion, DeepFloyd IF and the
bundled learned prior. Subclasses add how renders are encoded (pixels or VAE latents)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.guidance.base import Guidance
from pipeline.guidance.loading import load_component, resolve_model_dir, verify_checksums


class DiffusersGuidance(Guidance):
    """Text encoder + tokenizer + UNet + scheduler (ᾱ_t) loaded from a diffusers pipeline directory."""

    components: tuple[str, ...] = ("tokenizer", "text_encoder", "unet", "scheduler")
    """What is downloaded and loaded from the pipeline directory (nothing else: no safety checker, no root files)."""

    def __init__(self, model: str, device: torch.device, dtype: torch.dtype) -> None:
        # fp16 runs load (and download) the fp16 weight files where the model has them: half the bytes, no fp32 copy
        self.variant = "fp16" if dtype == torch.float16 else None
        self.root: Path = resolve_model_dir(model, self.components, self.variant)
        verify_checksums(self.root)
        self._setup(
            load_component(self.root, "tokenizer"),
            load_component(self.root, "text_encoder", self.variant, torch_dtype=dtype),
            load_component(self.root, "unet", self.variant, torch_dtype=dtype),
            load_component(self.root, "scheduler"),
            device,
            dtype,
        )

    @classmethod
    def from_modules(cls, tokenizer, text_encoder, unet, scheduler, device: torch.device, dtype: torch.dtype, **extra):
        """Build from in-memory components (benchmarks with random weights); `extra` sets e.g. vae."""
        self = cls.__new__(cls)
        self.root, self.variant = Path("<in memory>"), None
        for k, v in extra.items():
            setattr(self, k, v.to(device=device, dtype=dtype).eval().requires_grad_(False) if hasattr(v, "to") else v)
        self._setup(tokenizer, text_encoder.to(dtype), unet.to(dtype), scheduler, device, dtype)
        return self

    def _setup(self, tokenizer, text_encoder, unet, scheduler, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.device, self.dtype = device, dtype
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.to(device).eval()
        self.unet = unet.to(device).eval()
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        for module in (self.text_encoder, self.unet):
            module.requires_grad_(False)

    MAX_TOKENS = 77
    """Prompt length in tokens: SD's CLIP context, and what IF's pipeline and threestudio pad T5 prompts to (a T5
    tokenizer saved without `model_max_length` reports ~1e30 and padding to it overflows)."""

    def _encode_text(self, texts: list[str]) -> Tensor:
        tok = self.tokenizer(
            texts,
            padding="max_length",
            max_length=min(self.tokenizer.model_max_length, self.MAX_TOKENS),
            truncation=True,
            return_tensors="pt",
        )
        kwargs = {}
        if "attention_mask" in tok and self.text_encoder.config.model_type == "t5":
            kwargs["attention_mask"] = tok.attention_mask.to(self.device)
        return self.text_encoder(tok.input_ids.to(self.device), **kwargs)[0].to(self.dtype)

    def release_text_encoder(self) -> None:
        self._released = True
        self.text_encoder = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _eps(self, z: Tensor, tt: Tensor, emb: Tensor, channels: int) -> Tensor:
        """ε for a batch of noisy inputs, timesteps and embeddings (float32); v-prediction models converted."""
        out = self.unet(z.to(self.dtype), tt.to(self.device), encoder_hidden_states=emb.to(self.dtype)).sample
        out = out[:, :channels].float()
        if self.prediction_type == "v_prediction":  # ε = α_t v + σ_t z_t
            ab = self.alphas_cumprod[tt.to(self.device)].view(-1, 1, 1, 1)
            out = ab.sqrt() * out + (1 - ab).sqrt() * z.to(self.dtype).float()
        return out

    @torch.no_grad()
    def predict_noise(self, z_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor) -> tuple[Tensor, Tensor]:
        out = self._eps(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([cond, uncond]), z_t.shape[1])
        eps_c, eps_u = out.chunk(2)
        return eps_c, eps_u

    @torch.no_grad()
    def predict_noise_negatives(
        self, z_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor, negatives: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One U-Net batch of (2 + K)·B: conditional, unconditional and the K negatives of each view."""
        b, k = negatives.shape[:2]
        out = self._eps(
            torch.cat([z_t, z_t, z_t.repeat_interleave(k, 0)]),
            torch.cat([t, t, t.repeat_interleave(k, 0)]),
            torch.cat([cond, uncond, negatives.flatten(0, 1)]),
            z_t.shape[1],
        )
        return out[:b], out[b : 2 * b], out[2 * b :].view(b, k, *out.shape[1:])


class PixelDiffusersGuidance(DiffusersGuidance):
    """Pixel-space prior (DeepFloyd IF stage I, the bundled learned prior): x = 2·render − 1 at the UNet's size."""

    kind = "pixel"

    def encode(self, images: Tensor) -> Tensor:
        size = self.unet.config.sample_size
        if images.shape[-1] != size:
            images = F.interpolate(images, (size, size), mode="bilinear", align_corners=False, antialias=True)
        return images.float() * 2 - 1
