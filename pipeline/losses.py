"""The regularisers added to the SDS loss, as one table: name → weight key in `train:` → value.

Each term's weight is a scheduled value of `train.<name>_weight` (a number, or [start_step, start, end, end_step]);
a term whose weight is 0 at a step is not computed at that step. The training step adds them in the table's order
(threestudio's `lambda_x` · `loss_x` manner), so the loop reads as the algorithm and a new regulariser is one function
and one line here (plus its weight in `pipeline/config.py`'s TrainConfig).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.config import TrainConfig, scheduled
from pipeline.nerf.model import Model
from pipeline.nerf.renderer import RenderOutput, normal_roughness


def orientation(model: Model, res: RenderOutput, cfg: TrainConfig) -> Tensor:
    """Ref-NeRF's orientation penalty: normals facing away from the camera on opaque rays."""
    return res.orientation


def opacity(model: Model, res: RenderOutput, cfg: TrainConfig) -> Tensor:
    """DreamFusion's opacity penalty, a smooth |opacity| (against density everywhere)."""
    return torch.sqrt(res.opacity**2 + 0.01).mean()


def binary_opacity(model: Model, res: RenderOutput, cfg: TrainConfig) -> Tensor:
    """Entropy of each ray's opacity: pushes rays to empty or opaque."""
    a = res.opacity.clamp(1e-5, 1 - 1e-5)
    return (-(a * a.log() + (1 - a) * (1 - a).log())).mean()


def total_variation(model: Model, res: RenderOutput, cfg: TrainConfig) -> Tensor:
    """Total variation of the finest density grid (against lumps)."""
    return model.field.total_variation()


def normal_smoothness(model: Model, res: RenderOutput, cfg: TrainConfig) -> Tensor:
    """Roughness of the rendered normal map (stable-dreamfusion's 2D normal smoothness)."""
    return normal_roughness(res.normal)


def eikonal(model: Model, res: RenderOutput, cfg: TrainConfig) -> Tensor:
    """|∇z| = 1 for a signed-distance field."""
    return model.field.eikonal()


def curvature(model: Model, res: RenderOutput, cfg: TrainConfig) -> Tensor:
    """Squared Laplacian of a signed distance near its surface (Neuralangelo)."""
    return model.field.curvature(cfg.curvature_band)


def z_variance(model: Model, res: RenderOutput, cfg: TrainConfig) -> Tensor | None:
    """HiFA's depth variance along opaque rays (None when no ray is opaque)."""
    opaque = res.opacity.detach() > 0.5
    return res.z_variance[opaque].mean() if opaque.any() else None


@dataclass(frozen=True)
class Term:
    weight: str
    """The `train:` key of its (scheduled) weight."""
    value: Callable[[Model, RenderOutput, TrainConfig], Tensor | None]


REGULARISERS: dict[str, Term] = {
    "orientation": Term("orientation_weight", orientation),
    "opacity": Term("opacity_weight", opacity),
    "binary_opacity": Term("entropy_weight", binary_opacity),
    "total_variation": Term("tv_weight", total_variation),
    "normal_smoothness": Term("normal_smooth_weight", normal_smoothness),
    "eikonal": Term("eikonal_weight", eikonal),
    "curvature": Term("curvature_weight", curvature),
    "z_variance": Term("z_variance_weight", z_variance),
}


def weights(cfg: TrainConfig, step: int) -> dict[str, float]:
    """Each regulariser's weight at `step`."""
    return {name: scheduled(getattr(cfg, term.weight), step) for name, term in REGULARISERS.items()}


def add_regularisers(
    loss: Tensor, model: Model, res: RenderOutput, cfg: TrainConfig, weight: dict[str, float]
) -> Tensor:
    """loss + Σ weight · term over the table, in its order (`weight` from :func:`weights` at this step); terms of
    weight 0 are skipped."""
    for name, w in weight.items():
        if w > 0:
            value = REGULARISERS[name].value(model, res, cfg)
            if value is not None:
                loss = loss + w * value
    return loss
