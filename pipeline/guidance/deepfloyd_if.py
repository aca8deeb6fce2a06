"""DeepFloyd IF stage I (pixel, 64×64): the closest open model to the Imagen base model DreamFusion used.
The UNet also predicts a variance (6 output channels); only ε (the first 3) is used. Default: DeepFloyd/IF-I-XL-v1.0."""

from __future__ import annotations

import torch

from pipeline.guidance.diffusers_prior import PixelDiffusersGuidance


class DeepFloydIFGuidance(PixelDiffusersGuidance):
    def __init__(self, model: str, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(model, device, dtype)
