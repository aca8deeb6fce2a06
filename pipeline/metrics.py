"""The measures the pipeline reports, as one table: the evaluation, the report, the findings, MLflow and the DVC
metrics all read names, labels, directions and valid ranges from here (no torch here).

Adding a measure is one `Metric` line below and its computation: a geometry measure is a key of each object's
`geometry.json` (pipeline/geometry.py), an R-precision measure a score of `rprecision.json` (pipeline/evaluate.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    """How the findings name it."""
    higher_is_better: bool
    column: str = ""
    """Its column header in the report's geometry table (geometry measures)."""
    source: str = "geometry"
    """geometry: a key of geometry.json; rprecision: from rprecision.json."""
    percent: bool = False
    matters: float = 0.05
    """The smallest difference worth detecting (in the metric's own unit, a fraction for percentages)."""
    valid: tuple[float, float] = (0.0, 1.0)
    """The range every per-object value must lie in: a value outside it is a corrupt intermediate, never averaged."""

    def fmt(self, x: float | None, signed: bool = False) -> str:
        if x is None or not math.isfinite(x):
            return "–"
        v, digits = (100 * x, 1) if self.percent else (x, 3)
        return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"

    @property
    def unit(self) -> str:
        return " points" if self.percent else ""

    @property
    def header(self) -> str:
        return f"{self.column or self.label} {'↑' if self.higher_is_better else '↓'}"


METRICS: tuple[Metric, ...] = (
    Metric("iou", "3D IoU", True, "3D IoU", matters=0.05),
    Metric("fog", "fog (density mass outside the shape)", False, "fog", matters=0.02),
    Metric("chamfer", "Chamfer distance", False, "Chamfer", matters=0.01, valid=(0.0, math.inf)),
    Metric("normal_consistency", "normal consistency", True, "normal consistency", matters=0.03, valid=(-1.0, 1.0)),
    Metric("silhouette_iou", "silhouette IoU", True, "silhouette IoU", matters=0.05),
    Metric(
        "surface_error",
        "mean distance of the mesh surface from the true surface",
        False,
        "mesh surface error",
        matters=0.005,
        valid=(0.0, math.inf),
    ),
    Metric("mesh_iou", "3D IoU of the exported mesh's solid", True, "mesh IoU", matters=0.05),
    Metric("watertight", "watertight meshes (share)", True, "watertight", matters=0.1),
    Metric(
        "iou_gain",
        "3D IoU gained by training (over the untrained init)",
        True,
        "IoU gain over init",
        matters=0.05,
        valid=(-1.0, 1.0),
    ),
    Metric("iou_scaled", "3D IoU at the best isotropic scale of the truth", True, "IoU at best scale", matters=0.05),
    Metric(
        "mesh_silhouette_iou",
        "silhouette IoU of the exported mesh against the field's renders",
        True,
        "mesh silhouette vs field",
        matters=0.02,
    ),
    Metric(
        "mesh_colour_psnr",
        "colour PSNR (dB) of the exported mesh against the field's albedo renders",
        True,
        "mesh colour PSNR vs field (dB)",
        matters=1.0,
        valid=(0.0, 100.0),
    ),
    Metric(
        "texture_psnr_gain",
        "colour PSNR (dB) the UV texture gains over vertex colours (same mesh, same field renders)",
        True,
        "texture gain over vertex colours (dB)",
        matters=0.5,
        valid=(-100.0, 100.0),
    ),
    Metric("color", "colour R-precision (%)", True, source="rprecision", percent=True, matters=0.05),
    Metric("shape", "shape hit (%)", True, source="rprecision", percent=True, matters=0.05),
)
"""Every reported measure, in report order."""

GEOMETRY = tuple(m.key for m in METRICS if m.source == "geometry")
"""Geometry against the truth, defined in pipeline/geometry.py."""


def metric(key: str) -> Metric:
    return next(m for m in METRICS if m.key == key)


def clip_short_name(name: str) -> str:
    """A CLIP model's short name: a checkpoint path's stem, or the clip-anytorch name itself (ViT-B/32)."""
    return Path(name).stem if Path(name).suffix in (".pt", ".pth") else name
