"""How much empty-space skipping could save: the share of ray samples that lie in occupied cells of trained fields.

Trilinear interpolation is a convex combination of a cell's 8 corners, so σ(x) ≤ max over the cell's corners. A
sample whose cell bound gives α = 1 − exp(−σ_max·δ) < τ contributes at most τ to its ray and could be skipped (no
field query, no backward through the grid); with 48 samples per ray, at most 1 − (1 − τ)^48 of a ray's opacity is
lost. For every trained object this prints, at the training setting (4 random cameras, 32², 48 samples, midpoint
samples), the share of samples that must still be evaluated per threshold τ, for the freshly initialised field too.

    python benchmarks/probes/bench_occupancy.py \
        [--models 'results/primitives/world-w10-uniform/*/seed0/model.safetensors']
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipeline.config import Config  # noqa: E402
from pipeline.config import load as load_config  # noqa: E402
from pipeline.nerf.cameras import rays, sample_cameras  # noqa: E402
from pipeline.nerf.field import GridField  # noqa: E402
from pipeline.nerf.model import Model, load_model  # noqa: E402
from pipeline.nerf.renderer import _ray_box  # noqa: E402

THRESHOLDS = (1e-4, 1e-3, 1e-2)


def kept_fraction(field: GridField, cfg: Config, tau: float, views: int = 4, seed: int = 0) -> float:
    """Share of the training samples whose cell bound on α is ≥ `tau`."""
    with torch.no_grad():
        density = field._volume(False)[:, :1]  # [1, 1, R, R, R] (z, y, x)
        cell_max = F.max_pool3d(density, 2, stride=1)[0, 0]  # [R-1]^3: max over each cell's 8 corners
        r = cell_max.shape[0]
        cams = sample_cameras(cfg.camera, views, torch.Generator().manual_seed(seed))
        origins, dirs = rays(cams, cfg.render.resolution)
        near, far = _ray_box(origins, dirs, field.bound)
        s = cfg.render.samples
        delta = (far - near)[..., None] / s
        ts = near[..., None] + (torch.arange(s) + 0.5) * delta
        pts = origins[..., None, :] + dirs[..., None, :] * ts[..., None]
        cell = ((pts / field.bound + 1) * 0.5 * r).floor().long().clamp(0, r - 1)
        bound = cell_max[cell[..., 2], cell[..., 1], cell[..., 0]]
        alpha = 1 - torch.exp(-bound * delta)
        return float((alpha >= tau).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="results/primitives/world-w10-uniform/*/seed0/model.safetensors")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"), help="for the freshly initialised field")
    args = ap.parse_args()
    paths = sorted(glob.glob(args.models))
    if not paths:
        raise SystemExit(f"no trained models match {args.models!r}; run `snakemake --cores all` first")
    header = "| field | " + " | ".join(f"τ = {t:g}" for t in THRESHOLDS) + " |"
    print(header + "\n|" + "---|" * (len(THRESHOLDS) + 1))
    cfg = load_config(args.params)
    rows = [("initial (blob)", Model(cfg).field, cfg)]
    for p in paths:
        model, mcfg, ident = load_model(p)
        rows.append((ident["prompt"], model.field, mcfg))
    for name, field, c in rows:
        if not isinstance(field, GridField) or field.mlp is not None:
            print(f"| {name} | (not a dense grid without MLP: the cell bound does not apply) |")
            continue
        print(f"| {name} | " + " | ".join(f"{100 * kept_fraction(field, c, t):.1f} %" for t in THRESHOLDS) + " |")
    print(
        f"\nlargest opacity a ray can lose ({cfg.render.samples} samples, all skipped): "
        + ", ".join(f"τ = {t:g}: {100 * (1 - (1 - t) ** cfg.render.samples):.1f} %" for t in THRESHOLDS)
    )


if __name__ == "__main__":
    main()
