"""Is the true shape a fixed point of SDS under the world prior? Start training at the answer and watch it drift.

Each prompt is trained twice with the same recipe (params.yaml, `--config`, `--set`), seed and bank:
- `truth`: the field starts as the world's own primitive (its density and colour written into the finest grid,
  the other levels zero, every level unlocked from step 0),
- `init`: the recipe's own init (blob), every level unlocked from step 0 as well, so the two differ only in where
  they start.
Printed per object: 3D IoU, IoU at best scale and fog (pipeline.geometry) at step 0 and after training. If training
from the truth ends where training from the blob ends, the recipe's objects are what the prior prefers, and a
better optimiser cannot beat them: the limit is the prior (its bank, its caption-only conditioning), not the
recipe. If the truth holds, the limit is the path from the init.

    python benchmarks/truth_fixed_point.py [--prompts "a green cube" ...] [--set key=value ...] [--jobs 2] \
        [--sheet docs/truth-fixed-point.png]

`--sheet` writes a picture: per object, the evaluation views (colour, then textureless) after training from the
init (upper row) and from the truth (lower row). `--softness 0.05` starts from a soft-edged truth instead (same
iso-surface, density ramping over ≈ 0.3): does SDS sharpen the right shape, or blur it like the blob?

Needs a field without MLP decoder (`nerf.mlp_hidden: 0`, the world's default), whose grid holds density and albedo
logits directly. A development tool like recipe_probe.py (same training, bank and geometry code).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")

from benchmarks.recipe_probe import probe_settings, shape_scores, world_bank
from pipeline import config as cfgmod

STARTS = ("truth", "init")
SHARP = 0.002
"""The truth's default surface softness: σ = 60 sigmoid(logit(τ/60) − sdf / softness), so the mesh iso-level τ is the
true surface at any softness and the density reaches 60 inside (0.002: within a fifth of a 64³ voxel; 0.05: a soft
edge about 0.3 wide)."""
SIGMA_MAX = 60.0  # the world renders' density inside (pipeline.world.scenes.PrimitiveField)


def truth_model(cfg: cfgmod.Config, text: str, seed: int, softness: float = SHARP):
    """The recipe's model with the true primitive in its finest grid: pre-activation density
    softplus⁻¹(σ_true) − blob (so the blob the field adds cancels), albedo logits of the caption's colour; σ_true is
    the world's density inside, with its iso-level τ on the true surface (`SHARP`)."""
    import torch

    from pipeline.mesh import default_threshold
    from pipeline.nerf.model import initial_model
    from pipeline.world.scenes import COLOURS, parse_caption, sdf

    if cfg.nerf.mlp_hidden:
        raise SystemExit("truth_fixed_point needs nerf.mlp_hidden: 0 (grid values are density and albedo logits)")
    model = initial_model(cfg, seed)
    field = model.field
    colour, shape = parse_caption(text)
    r = field.resolution
    axis = torch.linspace(-cfg.nerf.bound, cfg.nerf.bound, r)
    zz, yy, xx = torch.meshgrid(axis, axis, axis, indexing="ij")  # the grids' (D, H, W) = (z, y, x) layout
    pts = torch.stack([xx, yy, zz], -1)
    tau = cfg.mesh.threshold or default_threshold(cfg)
    sigma = SIGMA_MAX * torch.sigmoid(torch.logit(torch.tensor(tau / SIGMA_MAX)) - sdf(shape, pts) / softness)
    if cfg.nerf.density_activation == "exp":
        pre = sigma.clamp(min=1e-4).log()
    elif cfg.nerf.density_activation == "sdf":
        pre = -sdf(shape, pts)  # the truth as a distance: the width schedule is the softness
    elif cfg.nerf.density_activation == "sigmoid":
        pre = torch.logit(sigma / cfg.nerf.density_max, eps=1e-6)
    else:
        pre = torch.log(torch.expm1(sigma.clamp(min=1e-4)))
    albedo = torch.tensor(COLOURS[colour]).clamp(0.02, 0.98)
    finest = field.levels[-1] if hasattr(field, "levels") else field.grid
    with torch.no_grad():
        for p in field.parameters():
            p.zero_()
        finest[0, 0] = (pre - cfg.nerf.density_shift - field.blob_grid[0, 0]) / cfg.nerf.density_scale
        finest[0, 1:4] = torch.logit(albedo)[:, None, None, None]
    return model


def _one(args: tuple[dict, str, int, str, float, str]) -> dict:
    data, text, seed, start, softness, bank = args
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    import pipeline.train as trainmod
    from pipeline.guidance import build_guidance
    from pipeline.nerf.model import load_model

    cfg = cfgmod.from_dict(data)
    tree = Path(__file__).resolve().parents[1].name
    arm = start if start == "init" or softness == SHARP else f"{start}{softness:g}"
    out = Path(f"/tmp/truth-fixed-point/{tree}-{cfg.digest()}/{text[:-1].replace(' ', '-')}-{seed}-{arm}")
    t0 = time.time()
    first = truth_model(cfg, text, seed, softness) if start == "truth" else trainmod.initial_model(cfg, seed)
    before = shape_scores(cfg, first, text)
    if not (out / "model.safetensors").exists():
        with mock.patch.object(trainmod, "initial_model", lambda cfg, seed: first):  # train() builds its model so
            trainmod.train(cfg, text, text, seed, out, build_guidance(cfg, torch.device("cpu"), bank))
    model, _, _ = load_model(out / "model.safetensors", torch.device("cpu"))
    after = shape_scores(cfg, model, text)
    return {
        "prompt": text,
        "seed": seed,
        "start": start,
        "before": before,
        "after": after,
        "out": str(out),
        "seconds": round(time.time() - t0, 1),
    }


def write_sheet(path: Path, rows: list[dict]) -> None:
    """Colour and textureless evaluation views of every trained object, one row each, in the order given."""
    import imageio.v3 as iio
    import numpy as np
    import torch

    from pipeline.io import atomic_write
    from pipeline.nerf.cameras import orbit_cameras
    from pipeline.nerf.model import load_model
    from pipeline.views import _grid, eval_azimuths, render_views

    images = []
    for r in rows:
        model, cfg, _ = load_model(Path(r["out"]) / "model.safetensors", torch.device("cpu"))
        cams = orbit_cameras(cfg.camera, eval_azimuths(cfg.views.azimuths))
        with torch.no_grad():
            views = render_views(model, cfg, cams, cfg.views.resolution, cfg.views.samples)
        images += list(views["color"]) + list(views["textureless"])
    grid = _grid([i[None] for i in images], nrow=len(images) // len(rows))
    big = np.kron(grid, np.ones((2, 2, 1), dtype=np.uint8))
    atomic_write(path, lambda p: iio.imwrite(p, big, extension=".png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="a preset merged over params.yaml as `--configfile` does")
    ap.add_argument("--set", action="append", default=[], help="dotted.key=value (YAML value)")
    ap.add_argument("--prompts", nargs="*", default=["a green cube", "a yellow cone", "a purple torus", "a red sphere"])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument(
        "--softness", type=float, default=SHARP, help="the truth's surface softness (a soft-edged truth: 0.05)"
    )
    ap.add_argument("--sheet", type=Path, help="write the views of every object (init above truth) to this PNG")
    args = ap.parse_args()
    data = probe_settings(args.config, args.set)
    data.setdefault("nerf", {})["unlock_steps"] = [0, 0]  # the truth lives in the finest level: all levels on
    cfg = cfgmod.from_dict(data)
    from pipeline.prompts import normalize

    bank = world_bank(cfg)
    prompts = [normalize(p) for p in args.prompts]
    jobs = [(data, p, s, start, args.softness, str(bank)) for p in prompts for s in args.seeds for start in STARTS]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = list(pool.map(_one, jobs))
    print("| object | start | IoU step 0 → end | IoU at best scale (scale) | fog step 0 → end |")
    print("|---|---|---|---|---|")
    for r in rows:
        b, a = r["before"], r["after"]
        print(
            f"| {r['prompt'][:-1]} (seed {r['seed']}) | {r['start']} | {b['iou']:.3f} → {a['iou']:.3f} | "
            f"{b['iou_scaled']:.3f} ({b['scale']:.2f}) → {a['iou_scaled']:.3f} ({a['scale']:.2f}) | "
            f"{100 * b['fog']:.1f} → {100 * a['fog']:.1f} % |"
        )
    summary = {
        start: {
            k: round(sum(r["after"][k] for r in rows if r["start"] == start) / len(prompts) / len(args.seeds), 4)
            for k in ("iou", "iou_scaled", "fog")
        }
        for start in STARTS
    }
    print(json.dumps({"set": args.set, "digest": cfg.digest(), "after": summary}))
    if args.sheet:
        write_sheet(args.sheet, sorted(rows, key=lambda r: (r["prompt"], r["seed"], r["start"] != "init")))


if __name__ == "__main__":
    main()
