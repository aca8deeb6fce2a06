"""How big a trained world object looks, against its primitive: per model, the evaluation views' silhouettes
({opacity > 0.5}, 8 azimuths at the evaluation elevation, mid-range distance and focal) against the primitive's
rendered from the same cameras, as a silhouette IoU and a linear scale √(area / true area), and the share of
soft-edged pixels (0.05 < opacity < 0.95), at two render resolutions.

pipeline.geometry's `iou_scaled` / `scale` find the scale at which the occupied *volume* best matches the truth; this
asks whether the object also *looks* that small, i.e. whether an undersized IoU is a soft density ramp inside a
right-sized silhouette (the threshold cutting inside the ramp) or an object that SDS drew small. Same renderer, same
cameras and same mask IoU as the views and geometry stages.

    python benchmarks/silhouette_scale.py /tmp/recipe-probe/<tree>-<digest>/a-red-sphere-0/model.safetensors [...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import Config
from pipeline.geometry import render_opacity, silhouette_iou
from pipeline.nerf.cameras import orbit_cameras
from pipeline.nerf.model import load_model
from pipeline.world.scenes import parse_caption


def silhouette_measures(
    field: torch.nn.Module, cfg: Config, shape: str, resolution: int, samples: int = 96, views: int = 8
) -> dict[str, float]:
    """sil_iou, scale (linear, from the mask areas), soft (soft-edged pixels a view) and true_soft of `field`
    against primitive `shape`, both rendered from the evaluation cameras of `cfg`."""
    cams = orbit_cameras(cfg.camera, [i * 360.0 / views for i in range(views)])
    got, true = (render_opacity(f, cfg, shape, cams, resolution, samples) for f in (field, None))
    area = (got > 0.5).float().sum() / (true > 0.5).float().sum().clamp(min=1)

    def soft(o: torch.Tensor) -> float:
        return float(((o > 0.05) & (o < 0.95)).float().sum()) / views

    return {
        "sil_iou": silhouette_iou(got, true),
        "scale": float(area.sqrt()),
        "soft": soft(got),
        "true_soft": soft(true),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model.safetensors files of world objects")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| model | resolution | silhouette IoU | linear scale | soft-edged px a view (truth) |")
    print("|---|---|---|---|---|")
    for path in args.models:
        name = "/".join(Path(path).parts[-3:-1])
        model, cfg, ident = load_model(path)
        _, shape = parse_caption(ident["prompt"])
        for res in args.resolutions:
            m = silhouette_measures(model.field, cfg, shape, res)
            soft = f"{m['soft']:.0f} ({m['true_soft']:.0f})"
            print(f"| {name} | {res} | {m['sil_iou']:.3f} | {m['scale']:.3f} | {soft} |")


if __name__ == "__main__":
    main()
