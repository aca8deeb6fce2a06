"""Why an object's 3D IoU is what it is: per trained world object, the occupied volume against the true one, recall
and precision at the mesh stage's threshold, and the IoU the same field would score at other density thresholds.

pipeline.geometry scores at one threshold (the mesh stage's iso-level, ln 2 / (bound/4)); a field whose density ramps
up softly inside the surface reads as undersized there (recall < precision), one with a filled hole or a haze as
oversized (precision < recall). Same grid, same truth, same code as pipeline.geometry.

    python benchmarks/probes/iou_vs_threshold.py \
        [--models 'results/primitives/world-w10-uniform/*/seed0/model.safetensors']
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.geometry import GRID, grid_points, volume_scores
from pipeline.mesh import default_threshold, density_grid
from pipeline.nerf.model import initial_model, load_model
from pipeline.world.scenes import parse_caption, sdf

THRESHOLDS = (0.5, 1.0, 5.0, 10.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="results/primitives/world-w10-uniform/*/seed*/model.safetensors")
    args = ap.parse_args()
    paths = sorted(glob.glob(args.models))
    if not paths:
        raise SystemExit(f"no models match {args.models!r}; run the workflow first (snakemake --cores all)")
    print(
        "| object | seed | field | occupied / true | recall | precision | IoU at τ | "
        + " | ".join(f"IoU at σ > {t:g}" for t in THRESHOLDS)
        + " | median σ inside | max σ |"
    )
    print("|---" * (9 + len(THRESHOLDS)) + "|")
    for p in paths:
        model, cfg, ident = load_model(p)
        _, shape = parse_caption(ident["prompt"])
        tau = cfg.mesh.threshold or default_threshold(cfg)
        true_sdf = sdf(shape, grid_points(cfg.nerf.bound))
        true = true_sdf < 0
        for name, field in (("init", initial_model(cfg, int(ident["seed"])).field), ("trained", model.field)):
            sigma = torch.from_numpy(density_grid(field, GRID, torch.device("cpu"))).reshape(-1)
            occ = sigma > tau
            inter = (occ & true).sum().item()
            ious = [volume_scores(sigma, true_sdf, t)["iou"] for t in (tau, *THRESHOLDS)]
            print(
                f"| {ident['prompt']} | {ident['seed']} | {name} | {occ.sum().item() / true.sum().item():.2f} | "
                f"{inter / true.sum().item():.2f} | {inter / max(1, occ.sum().item()):.2f} | "
                + " | ".join(f"{v:.3f}" for v in ious)
                + f" | {sigma[true].median().item():.1f} | {sigma.max().item():.1f} |"
            )


if __name__ == "__main__":
    main()
