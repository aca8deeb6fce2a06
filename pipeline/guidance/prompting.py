"""What each view of a training step is conditioned on: the prompt with its view suffix, the negative (unconditional)
text, and, with Perp-Neg, the other views' prompts as perpendicular negatives. Counter-measures against the Janus
(multi-face) problem, the way the open reimplementations offer them:

* ``guidance.negative_prompt``: the unconditional text of classifier-free guidance (threestudio ``negative_prompt``,
  stable-dreamfusion ``--negative``); ε̂ then steers away from it. Empty = the usual unconditional "".
* ``guidance.negative_view_prompts``: per view, the opposite views are added to the negative text (stable-dreamfusion
  ``--negative_dir_text``): front → "back view", back → "front view", side → "front view, back view",
  overhead → "bottom view".
* ``guidance.perp_neg``: Perp-Neg (Armandpour et al. 2023, threestudio ``use_perp_neg``). The positive embedding is
  interpolated by azimuth between the front, side and back prompts; the neighbouring views' prompts are negatives whose
  guidance directions e_i = ε(y_i) − ε_u enter only through their component perpendicular to the positive direction
  e_+ = ε(y) − ε_u, with negative weights w_i that decay with the distance to that view:

      ε̂ = ε_u + s (e_+ + Σ_i w_i (e_i − ⟨e_i, e_+⟩/‖e_+‖² e_+))

  (s = ω + 1 under the dreamfusion convention, s under the diffusers one; with no negatives it is plain CFG). The
  weight curves are threestudio's defaults, f(r) = a·exp(−b r) + c (:data:`PERP_NEG_CURVES`). Overhead views keep
  plain CFG. Perp-Neg interpolates text embeddings, so it needs a prior with continuous ones (world-unet, Stable
  Diffusion, DeepFloyd IF), not the closed-form world prior, whose embeddings are caption indices.

The prompter embeds every text a run can need once, before the text encoder is released, and then only indexes the
cache (and interpolates, for Perp-Neg).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.config import GuidanceConfig
from pipeline.guidance.base import Guidance
from pipeline.nerf.cameras import VIEW_SUFFIXES, view_suffix

OPPOSITE_VIEWS = {
    "front view": "back view",
    "back view": "front view",
    "side view": "front view, back view",
    "overhead view": "bottom view",
}
"""The negative text added per view by `negative_view_prompts` (stable-dreamfusion's `negative_dir_text`)."""

PERP_NEG_CURVES = {
    "front-side": (4.0, 0.5, -2.426),
    "side-front": (4.0, 0.5, -2.426),
    "side-back": (1.0, 0.5, -0.606),
    "front-side-back": (1.0, 0.5, 0.967),
}
"""(a, b, c) of the negative weights f(r) = a·exp(−b r) + c (threestudio's `perp_neg_f_fs`, `_sf`, `_sb`, `_fsb`).
f_fs(1) = f_sf(1) = 0: a view is never its own negative."""


def decay(curve: str, r: float) -> float:
    a, b, c = PERP_NEG_CURVES[curve]
    return a * math.exp(-b * r) + c


def perpendicular(x: Tensor, y: Tensor) -> Tensor:
    """The component of each x [B, ...] perpendicular to y [B, ...] (per sample, over all other dims)."""
    dims = tuple(range(1, x.dim()))
    coef = (x * y).sum(dims, keepdim=True) / (y * y).sum(dims, keepdim=True).clamp_min(1e-6)
    return x - coef * y


def perp_neg_combine(eps_u: Tensor, eps_pos: Tensor, eps_neg: Tensor, weights: Tensor, scale: float) -> Tensor:
    """ε̂ = ε_u + scale (e_+ + Σ_k w_k ⊥(e_k, e_+)) for eps_neg [B, K, ...] and weights [B, K]; `scale` is s in the
    diffusers convention (the caller turns ω into ω + 1)."""
    e_pos = eps_pos - eps_u
    direction = e_pos
    for k in range(eps_neg.shape[1]):
        w = weights[:, k].view(-1, *([1] * (e_pos.dim() - 1))).to(e_pos.dtype)
        direction = direction + w * perpendicular(eps_neg[:, k] - eps_u, e_pos)
    return eps_u + scale * direction


@dataclass
class Conditioning:
    """Embeddings for one step's B views."""

    cond: Tensor
    """[B, ...] the prompt (with its view suffix, or Perp-Neg's interpolated embedding)."""
    uncond: Tensor
    """[B, ...] the negative / unconditional text."""
    negatives: Tensor | None = None
    """Perp-Neg: [B, K, ...] the other views' prompts."""
    neg_weights: Tensor | None = None
    """Perp-Neg: [B, K] their weights (≤ 0)."""


class ViewPrompter:
    """Builds a step's :class:`Conditioning` from the camera angles, per `guidance.*` (module docstring)."""

    def __init__(self, guidance: Guidance, text: str, cfg: GuidanceConfig) -> None:
        if cfg.perp_neg and not cfg.view_suffix:
            raise ValueError("guidance.perp_neg needs guidance.view_suffix: true (it interpolates the view prompts)")
        self.guidance, self.cfg = guidance, cfg
        self.text = text
        self.base = text.rstrip(".")
        if cfg.perp_neg and not torch.is_floating_point(guidance.embed([self.positive("front view")])):
            raise ValueError(
                "guidance.perp_neg needs a prior with continuous text embeddings (world-unet, stable-diffusion, "
                "deepfloyd-if); the closed-form world prior's are caption indices"
            )

    def positive(self, view: str | None) -> str:
        return f"{self.base}, {view}" if self.cfg.view_suffix else self.text

    def negative(self, view: str | None) -> str:
        parts = [self.cfg.negative_prompt] if self.cfg.negative_prompt else []
        if self.cfg.negative_view_prompts and view is not None:
            parts.append(OPPOSITE_VIEWS[view])
        return ", ".join(parts)

    def texts(self) -> list[str]:
        """Every text a run can ask for (embedded once, before the text encoder is released)."""
        views = list(VIEW_SUFFIXES) if self.cfg.view_suffix else [None]
        return list(dict.fromkeys([*map(self.positive, views), *map(self.negative, views)]))

    def __call__(self, elevation: list[float], azimuth: list[float]) -> Conditioning:
        views = [view_suffix(e, a) if self.cfg.view_suffix else None for e, a in zip(elevation, azimuth, strict=True)]
        g = self.guidance
        uncond = g.embed([self.negative(v) for v in views])
        if not self.cfg.perp_neg:
            cond = g.embed([self.positive(v) for v in views])
            return Conditioning(cond, uncond)
        front, side, back = (g.embed([self.positive(v)])[0] for v in ("front view", "side view", "back view"))
        conds, negs, weights = [], [], []
        for view, az in zip(views, azimuth, strict=True):
            az = (az + 180.0) % 360.0 - 180.0  # (−180, 180], 0 = front
            if view == "overhead view":
                conds.append(g.embed([self.positive(view)])[0])
                negs += [front, side]
                weights.append([0.0, 0.0])
            elif abs(az) < 90.0:  # front ↔ side; r = 1 is fully front
                r = 1.0 - abs(az) / 90.0
                conds.append(r * front + (1.0 - r) * side)
                negs += [front, side]
                weights.append([-decay("front-side", r), -decay("side-front", 1.0 - r)])
            else:  # side ↔ back; r = 1 is fully side, 0 fully back
                r = 2.0 - abs(az) / 90.0
                conds.append(r * side + (1.0 - r) * back)
                negs += [side, front]
                weights.append([-decay("side-back", r), -decay("front-side-back", r)])
        b = len(views)
        neg = torch.stack(negs).view(b, 2, *front.shape)
        return Conditioning(torch.stack(conds), uncond, neg, torch.tensor(weights, dtype=torch.float32))
