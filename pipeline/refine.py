"""The second, sharp stage: the first stage's soft density becomes a signed distance, trained on by SDS.

A NeRF trained by SDS settles into a soft density (docs/recipe.md: even the true shape, given as a density, drifts
back to fog under its own gradients), so its iso-surface is lumpy. Magic3D answers with a second stage on a sharp
surface representation initialised from the first (DMTet); Fantasia3D and NeuS use a signed distance. Here:

1. The first stage's density on its finest grid is thresholded at the mesh stage's iso-level, small islands dropped
   (`mesh.min_component_fraction`), and turned into a signed distance z (positive inside, exact Euclidean distance
   transforms of the inside and the outside), the albedo copied node for node, the background kept.
2. A dense grid of that resolution renders σ = density_max · sigmoid(z / width) (NeuS's logistic density, the profile
   the world's primitives are drawn with), the width annealed by `refine.sdf_width`; SDS trains it from there with
   the eikonal term (z stays a distance) and the curvature term (flat faces stay flat), at a small step
   (`refine.lr`), with every shading mode from the start (the albedo already is what the first stage learnt).

The same loop as the first stage (pipeline/train.py: checkpoints, resume, several objects a job), its outputs in
`<object>/refined/`; its checkpoint identity includes the first stage's sha256.

    python -m pipeline.refine --params results/primitives/world-w10-uniform/config.yaml \\
        --prompts results/primitives/prompts.json --model <object>/model.safetensors --out <object>/refined
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Config, ConfigError, from_dict
from pipeline.config import load as load_config
from pipeline.nerf.model import Model, ModelFileError, load_model


def refine_config(cfg: Config) -> Config:
    """The second stage's config: the first's, with the field a dense distance grid at the first stage's finest
    resolution and the optimisation taken from `refine.*`."""
    n, r = cfg.nerf, cfg.refine
    if n.mlp_hidden:
        raise ConfigError("refine.enabled needs a decoder-free field (nerf.mlp_hidden: 0): it reads the grid's nodes")
    d = cfg.to_dict()
    d["nerf"].update(
        kind="grid",
        resolution=n.levels[-1] if n.kind == "pyramid" else n.resolution,
        density_activation="sdf",
        blob="none",
        blob_cap=0.0,
        density_shift=0.0,
        density_scale=1.0,
        sdf_width=r.sdf_width,
    )
    d["train"].update(
        steps=r.steps,
        lr=r.lr,
        warmup_steps=min(cfg.train.warmup_steps, r.steps // 10),
        eikonal_weight=r.eikonal_weight,
        curvature_weight=r.curvature_weight,
        entropy_weight=0.0,  # the logistic density is binary by construction
        z_variance_weight=0.0,
        tv_weight=0.0,
        orientation_weight=0.0,  # normals come from the distance itself
    )
    d["shading"]["albedo_steps"] = 0
    if r.t_max:
        d["schedule"].update(name="uniform", t_max=r.t_max)
    if r.render_resolution:
        d["render"]["resolution"] = r.render_resolution
    d["refine"]["enabled"] = False
    for key in ("sweep", "ablation"):
        d[key] = {}
    return from_dict(d, "refine (the second stage's config)")


def signed_distance(inside: np.ndarray, spacing: float) -> np.ndarray:
    """z [R, R, R] from an occupancy grid: + the distance to the nearest outside node inside, − the distance to the
    nearest inside node outside, each less half a node (the surface lies between the two), in world units."""
    from scipy.ndimage import distance_transform_edt

    if not inside.any() or inside.all():
        raise ValueError("the first stage's object is empty or fills its box: nothing to refine")
    d_in = distance_transform_edt(inside)
    d_out = distance_transform_edt(~inside)
    return (np.where(inside, d_in - 0.5, -(d_out - 0.5)) * spacing).astype(np.float32)


def drop_islands(inside: np.ndarray, min_fraction: float) -> np.ndarray:
    """The occupancy without connected parts smaller than `min_fraction` of the largest (the mesh stage's rule)."""
    from scipy.ndimage import label

    labels, count = label(inside)
    if count <= 1:
        return inside
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1
    return np.isin(labels, keep)


def initial_refined(first: Model, first_cfg: Config, cfg: Config) -> Model:
    """The second stage's model at step 0: the first stage's surface as a distance, its albedo and background."""
    from pipeline.mesh import default_threshold

    field = first.field
    field.set_step(None)
    with torch.no_grad():
        volume = field._volume(False)[0]  # [4, R, R, R]: σ and albedo logits on the finest nodes (z, y, x)
    inside = volume[0].cpu().numpy() > (first_cfg.mesh.threshold or default_threshold(first_cfg))
    inside = drop_islands(inside, first_cfg.mesh.min_component_fraction)
    model = Model(cfg)
    if model.field.grid.shape[-1] != volume.shape[-1]:
        raise ValueError(f"refine: grid {model.field.grid.shape[-1]}³ against the first stage's {volume.shape[-1]}³")
    with torch.no_grad():
        model.field.grid[0, 0] = torch.from_numpy(signed_distance(inside, field.spacing))
        model.field.grid[0, 1:4] = volume[1:4].cpu()
        model.background.load_state_dict(first.background.state_dict())
    return model


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def targets(cfg: Config, prompts: dict[str, dict], models: list[Path], outs: list[Path]) -> list:
    """The training targets of a refine job: each first-stage model's prompt and seed (from its identity), the
    second stage's init from it."""
    from pipeline.train import Target

    out = []
    for model_path, folder in zip(models, outs, strict=True):
        first, first_cfg, ident = load_model(model_path)
        pid, seed = ident["prompt_id"], int(ident["seed"])
        if pid not in prompts:
            raise ModelFileError(f"{model_path}: prompt id {pid!r} is not in the prompts file")

        def init(first=first, first_cfg=first_cfg) -> Model:
            return initial_refined(first, first_cfg, cfg)

        out.append(Target(pid, prompts[pid]["text"], seed, folder, init, file_digest(model_path)))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", required=True, help="the variant's resolved config (YAML): its refine.* settings")
    ap.add_argument("--prompts", required=True, help="prompts.json from the prepare stage")
    ap.add_argument("--model", required=True, nargs="+", help="first-stage model.safetensors, one per object")
    ap.add_argument("--out", required=True, nargs="+", help="the second stage's folder, one per object")
    ap.add_argument("--world-bank", default=None, help="bank .safetensors for guidance.name=world")
    args = ap.parse_args(argv)
    from pipeline.checkpoint import CheckpointError, CheckpointMismatch
    from pipeline.devices import NoGPU, pick_device
    from pipeline.guidance import GuidanceLoadError, build_guidance
    from pipeline.io import located_os_errors
    from pipeline.prompts import PromptFileError, read_prompts_json
    from pipeline.train import Interrupted, TrainingDiverged, train_many

    if len(args.model) != len(args.out):
        raise SystemExit(f"error: {len(args.model)} --model and {len(args.out)} --out given; one of each per object")
    try:
        cfg = refine_config(load_config(args.params))
        prompts = {p["id"]: p for p in read_prompts_json(args.prompts)["prompts"]}
        with located_os_errors():
            jobs = targets(cfg, prompts, [Path(m) for m in args.model], [Path(o) for o in args.out])
            device = pick_device(cfg)
            guidance = build_guidance(cfg, device, args.world_bank)
            metrics = train_many(cfg, jobs, guidance, device=device)
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        raise SystemExit(128 + exc.signum) from None
    except (
        ConfigError,
        ModelFileError,
        PromptFileError,
        NoGPU,
        GuidanceLoadError,
        CheckpointError,
        CheckpointMismatch,
        TrainingDiverged,
        ValueError,
    ) as exc:
        raise SystemExit(f"error: {exc}") from None
    for m in metrics:
        print(json.dumps({k: m[k] for k in ("prompt", "final_loss", "wall_seconds", "steps_per_second")}))


if __name__ == "__main__":
    main()
