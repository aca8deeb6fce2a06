"""Names of the measures the pipeline reports, shared by the evaluation, the report and tracking (no torch here)."""

from __future__ import annotations

from pathlib import Path

GEOMETRY = ("iou", "fog", "chamfer", "normal_consistency", "silhouette_iou", "iou_gain", "iou_scaled")
"""Geometry against the truth, defined in pipeline/geometry.py."""


def clip_short_name(name: str) -> str:
    """A CLIP model's short name: a checkpoint path's stem, or the clip-anytorch name itself (ViT-B/32)."""
    return Path(name).stem if Path(name).suffix in (".pt", ".pth") else name
