"""clip-anytorch helpers: a quiet import (it imports the deprecated pkg_resources, hence the setuptools<81 pin)
and CLIP's image preprocessing for tensors."""

from __future__ import annotations

import warnings
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def preprocess(images: Tensor, resolution: int) -> Tensor:
    """[B, 3, H, W] in [0, 1] → CLIP input: antialiased bicubic resize to `resolution`, CLIP normalisation."""
    if images.shape[-1] != resolution:
        images = F.interpolate(images, (resolution, resolution), mode="bicubic", align_corners=False, antialias=True)
    return (images.clamp(0, 1) - MEAN.to(images.device)) / STD.to(images.device)


def import_clip() -> ModuleType:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        import clip

    return clip
