"""Geometry against the truth: how well a trained object matches the bundled world's analytic primitive.

R-precision over 36 captions saturates long before shapes are right; these measures do not. Every object of the
bundled world names its shape ("a red cube."), whose signed distance `sdf` (pipeline.world.scenes) is known exactly.
Definitions (one place; the report, MLflow and DVC use these names):

* **iou** — 3D IoU of the field's occupied set with the true solid, on a `GRID`³ grid of points spanning
  [−bound, bound]³ (the mesh stage's sampling): occupied = {σ > τ} with τ the mesh stage's iso-level
  (`mesh.threshold`, 0 = ln 2 / (bound/4)); true = {sdf < 0}. |occ ∩ true| / |occ ∪ true| (0 when both are empty).
* **fog** — the share of the field's density mass lying more than `FOG_MARGIN` outside the true surface:
  Σ σ·[sdf > margin] / Σ σ over the same grid (0 for an empty field, which scores iou 0 instead).
* **chamfer** — symmetric Chamfer distance (world units, not squared) between `SURFACE_POINTS` points sampled
  uniformly on the extracted mesh and as many on the true surface: ½ (mean_a min_b ‖a − b‖ + mean_b min_a ‖a − b‖).
  The true surface is marching cubes of the sdf on a `TRUTH_GRID`³ grid. None when the mesh is empty.
* **normal_consistency** — mean |n_a · n_b| over nearest-neighbour pairs in both directions between those point
  sets, normals from the mesh faces and from the sdf gradient (1 = every normal agrees). None for an empty mesh.
* **silhouette_iou** — mean over the evaluation views of the IoU of {opacity > 0.5} of the field's views
  (views.npz) with that of the true primitive rendered from the same cameras.
* **iou_scaled** — the best 3D IoU (same occupied set) against the true solid scaled about the origin, {sdf(x/s) < 0}
  for s in `SCALES` (0.60 … 1.40, step 0.01; ties go to the scale nearest 1), and that `scale` in geometry.json. A
  prior conditioned on a caption cannot tell an object's absolute size from the camera's distance and focal length,
  so iou partly measures size; iou_scaled measures the shape (one fixed camera
  makes the same recipe's objects 1.1–1.7× too large, the default camera spread 0.74–0.88×).
* **surface_error** — mean |sdf| of the true primitive at `SURFACE_POINTS` points sampled uniformly on the extracted
  mesh (world units; primitives have radius ≈ 0.5): how far the surface a user takes away lies from the true one.
  None for an empty mesh.
* **mesh_iou** — 3D IoU of the extracted mesh's solid with the true solid on the `GRID`³ grid of iou: a point is
  inside the mesh by ray parity (open3d's occupancy, the mean of `OCCUPANCY_RAYS` rays). iou scores the field at the
  iso-level; this scores what was exported from it. 0 for an empty mesh.
* **watertight** — 1 if the extracted mesh is a closed 2-manifold (`pipeline.mesh.watertight`: every edge shared by
  exactly two faces, every vertex manifold), else 0; its mean is the share of watertight meshes. 0 for an empty mesh.
* **iou_gain** — iou − init_iou: what training added to the init's 3D IoU. init_iou (and init_fog) score the
  untrained field the object started from (`pipeline.train.initial_model`, same config and seed) like iou: a density
  init shaped like a ball already overlaps radius-0.5 primitives (recipe2's capped blob alone: IoU 0.54), and
  this says how much of an object's IoU the SDS steps earned.

    python -m pipeline.geometry --model .../model.safetensors --mesh .../mesh.ply --views .../views.npz \\
        --out .../geometry.json
"""

from __future__ import annotations

import argparse
import json
import math
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pipeline.config import Config
from pipeline.io import atomic_write_json, located_os_errors
from pipeline.metrics import GEOMETRY as METRICS

GRID = 64
"""Grid points per axis for iou and fog."""
FOG_MARGIN = 0.1
"""Distance outside the true surface beyond which density counts as fog (world units; primitives have radius ≈ 0.5)."""
SURFACE_POINTS = 20_000
"""Points sampled on each surface for chamfer and normal consistency."""
TRUTH_GRID = 160
"""Marching-cubes grid of the true surface."""
OCCUPANCY_RAYS = 3
"""Rays per point voting inside/outside for mesh_iou (one ray grazing an edge can miscount its crossings)."""
SCALES = tuple(round(0.6 + 0.01 * i, 2) for i in range(81))
"""Isotropic scales of the truth searched by iou_scaled."""


class GeometryError(ValueError):
    """An object whose geometry cannot be scored (not a world caption, non-finite field)."""


def grid_points(bound: float, resolution: int = GRID) -> Tensor:
    """[R³, 3] points of the mesh stage's grid over [−bound, bound]³ (axes x, y, z, 'ij' order)."""
    axis = torch.linspace(-bound, bound, resolution)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


def _iou(a: Tensor, b: Tensor) -> float:
    """|a ∩ b| / |a ∪ b| of two boolean masks (0 when both are empty)."""
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else 0.0


def volume_scores(sigma: Tensor, true_sdf: Tensor, threshold: float, margin: float = FOG_MARGIN) -> dict[str, float]:
    """iou and fog from densities σ [P] and the true sdf [P] at the same points."""
    if not torch.isfinite(sigma).all():
        raise GeometryError("the field has non-finite densities")
    iou = _iou(sigma > threshold, true_sdf < 0)
    mass = sigma.clamp(min=0).double()
    total = mass.sum().item()
    fog = (mass * (true_sdf > margin)).sum().item() / total if total > 0 else 0.0
    return {"iou": float(iou), "fog": float(fog)}


def scale_aligned_iou(
    sigma: Tensor, sdf_at: Callable[[Tensor], Tensor], points: Tensor, threshold: float
) -> tuple[float, float]:
    """(best IoU, its scale) of {σ > τ} against {sdf_at(x / s) < 0} over `SCALES`, ties to the scale nearest 1."""
    occ = sigma > threshold
    best_iou, best_scale = -1.0, 1.0
    for s in sorted(SCALES, key=lambda s: (abs(s - 1.0), s)):
        iou = _iou(occ, sdf_at(points / s) < 0)
        if iou > best_iou:
            best_iou, best_scale = iou, s
    return float(best_iou), float(best_scale)


def true_surface(shape: str, n: int = SURFACE_POINTS, resolution: int = TRUTH_GRID, seed: int = 0):
    """(points [n, 3], unit normals [n, 3]) sampled uniformly on the analytic surface of `shape`."""
    import mcubes

    from pipeline.world.scenes import sdf

    extent = 0.75  # every primitive lies well inside |x| < 0.6
    pts = grid_points(extent, resolution)
    d = sdf(shape, pts).reshape(resolution, resolution, resolution).numpy()
    verts, faces = mcubes.marching_cubes(-d, 0.0)
    verts = verts * (2 * extent / (resolution - 1)) - extent
    points, _ = sample_mesh(verts, faces, n, seed)
    # central differences, not autograd: points land exactly on the cube's faces, where the clamps of its sdf have
    # zero gradient (autograd gave zero normals there)
    p = torch.as_tensor(points, dtype=torch.float64)
    eps = 1e-4
    offsets = torch.eye(3, dtype=torch.float64) * eps
    grad = torch.stack([(sdf(shape, p + o) - sdf(shape, p - o)) / (2 * eps) for o in offsets], -1)
    normals = torch.nn.functional.normalize(grad, dim=-1).float().numpy()
    return points, normals


def sample_mesh(verts: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(points [n, 3], face normals [n, 3]) uniform on the triangle mesh's area, deterministic for a seed."""
    rng = np.random.default_rng(seed)
    tri = verts[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = np.linalg.norm(cross, axis=1)
    idx = rng.choice(len(faces), size=n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[idx]
    points = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    normals = cross[idx] / np.maximum(area[idx, None], 1e-12)
    return points, normals


def surface_scores(
    points: np.ndarray, normals: np.ndarray, true_points: np.ndarray, true_normals: np.ndarray
) -> dict[str, float]:
    """chamfer and normal_consistency between two oriented point sets (nearest neighbours by KD-tree)."""
    from scipy.spatial import cKDTree

    d_ab, i_ab = cKDTree(true_points).query(points)
    d_ba, i_ba = cKDTree(points).query(true_points)
    chamfer = 0.5 * (d_ab.mean() + d_ba.mean())
    nc_ab = np.abs((normals * true_normals[i_ab]).sum(1)).mean()
    nc_ba = np.abs((true_normals * normals[i_ba]).sum(1)).mean()
    return {"chamfer": float(chamfer), "normal_consistency": float(0.5 * (nc_ab + nc_ba))}


def mesh_scores(verts: np.ndarray, faces: np.ndarray, shape: str, bound: float) -> dict[str, float | None]:
    """chamfer, normal_consistency, surface_error, mesh_iou and watertight of a triangle mesh against primitive
    `shape` (see the module docstring)."""
    import open3d as o3d

    from pipeline.mesh import watertight
    from pipeline.world.scenes import sdf

    if not len(faces):
        return {"chamfer": None, "normal_consistency": None, "surface_error": None, "mesh_iou": 0.0, "watertight": 0.0}
    points, normals = sample_mesh(verts, faces, SURFACE_POINTS, seed=1)
    out: dict[str, float | None] = dict(surface_scores(points, normals, *true_surface(shape)))
    out["surface_error"] = float(sdf(shape, torch.from_numpy(points).float()).abs().mean())
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(verts.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    grid = grid_points(bound)
    query = o3d.core.Tensor(grid.numpy().astype(np.float32))
    inside = torch.from_numpy(scene.compute_occupancy(query, nsamples=OCCUPANCY_RAYS).numpy() > 0.5)
    out["mesh_iou"] = _iou(inside, sdf(shape, grid) < 0)
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(verts), o3d.utility.Vector3iVector(faces))
    out["watertight"] = float(watertight(mesh))
    return out


def silhouette_iou(opacity: Tensor, true_opacity: Tensor) -> float:
    """Mean per-view IoU of {opacity > 0.5} masks [N, 1, H, W] (a view where both are empty counts 1), with the views
    stage's mask IoU."""
    from pipeline.views import silhouette_iou as mask_iou

    a, b = (opacity[:, 0] > 0.5).numpy(), (true_opacity[:, 0] > 0.5).numpy()
    return float(np.mean([mask_iou(x, y) for x, y in zip(a, b, strict=True)]))


def render_opacity(
    field: torch.nn.Module | None, cfg: Config, shape: str, cams: Any, resolution: int, samples: int
) -> Tensor:
    """Opacity [N, 1, H, W] of `field` (None: primitive `shape`, the truth) from `cams`, lit as the views stage
    renders, without gradients."""
    from pipeline.nerf.renderer import Background, Shading, render_chunked
    from pipeline.world.scenes import PrimitiveField

    field = field if field is not None else PrimitiveField(shape, bound=cfg.nerf.bound)
    with torch.no_grad():
        return render_chunked(
            field,
            cams,
            resolution,
            samples,
            Shading.lit(len(cams), cfg.shading),
            Background(cfg.render),
            chunk=2,
            normal_eps=cfg.render.normal_eps,
        ).opacity


def field_scores(field: torch.nn.Module, cfg: Config, shape: str, seed: int) -> dict[str, Any]:
    """The field's volume measures against primitive `shape` on the mesh stage's grid and iso-level: iou, fog,
    iou_scaled and scale, and the init's (`pipeline.train.initial_model` of `seed`) init_iou, init_fog and iou_gain."""
    from pipeline.mesh import default_threshold, density_grid
    from pipeline.nerf.model import initial_model
    from pipeline.world.scenes import sdf

    device = next(field.parameters()).device
    threshold = cfg.mesh.threshold or default_threshold(cfg)
    sigma = torch.from_numpy(density_grid(field, GRID, device)).reshape(-1)
    points = grid_points(cfg.nerf.bound)
    true_sdf = sdf(shape, points)
    out: dict[str, Any] = volume_scores(sigma, true_sdf, threshold)
    out.update(shape=shape, threshold=threshold, grid=GRID, fog_margin=FOG_MARGIN)
    out["iou_scaled"], out["scale"] = scale_aligned_iou(sigma, lambda p: sdf(shape, p), points, threshold)
    init = initial_model(cfg, seed).field
    init_sigma = torch.from_numpy(density_grid(init, GRID, torch.device("cpu"))).reshape(-1)
    init_scores = volume_scores(init_sigma, true_sdf, threshold)
    out.update(init_iou=init_scores["iou"], init_fog=init_scores["fog"], iou_gain=out["iou"] - init_scores["iou"])
    return out


AGREEMENT = ("mesh_silhouette_iou", "mesh_colour_psnr")
"""The views stage's agreement of the exported mesh with the field (views.json), carried into geometry.json so the
report, the findings, MLflow and DVC see them with the other measures."""


def export_agreement(views_path: Path) -> dict[str, float | None]:
    """AGREEMENT from views.json, and `texture_psnr_gain`: the textured GLB's colour PSNR minus the vertex-coloured
    PLY's, both against the same field renders of the same object (a paired difference: its mean's interval is the
    texture-vs-vertex-colour ablation's)."""
    from pipeline.records import read_json

    record = Path(views_path).with_name("views.json")
    found = read_json(record) if record.exists() else {}
    out = {k: found.get(k) for k in AGREEMENT}
    textured, vertex = found.get("mesh_colour_psnr"), found.get("vertex_colour_psnr")
    both = all(isinstance(x, int | float) and math.isfinite(x) for x in (textured, vertex))
    out["texture_psnr_gain"] = float(textured - vertex) if both else None
    return out


def score_object(
    model_path: Path, mesh_path: Path, views_path: Path, first_stage: Path | None = None
) -> dict[str, Any]:
    """Every measure for one trained world object (see the module docstring). For a second-stage object
    (`first_stage`: the first stage's model) the first stage's volume measures go beside them (`first_stage`), and
    the untrained init the gain is measured from is the first stage's."""
    from pipeline.mesh import read_ply
    from pipeline.nerf.cameras import orbit_cameras
    from pipeline.nerf.model import load_model
    from pipeline.world.scenes import parse_caption

    model, cfg, ident = load_model(model_path)
    verts, faces = read_ply(mesh_path)  # refused before the measures are spent on it
    try:
        _, shape = parse_caption(ident["prompt"])
    except ValueError as exc:
        raise GeometryError(f"{model_path}: {exc}; geometry is measured on the bundled world only") from None
    try:
        out: dict[str, Any] = field_scores(model.field, cfg, shape, int(ident["seed"]))
    except GeometryError as exc:
        raise GeometryError(f"{model_path}: {exc}") from None
    if first_stage is not None:
        first, first_cfg, _ = load_model(first_stage)
        try:
            before = field_scores(first.field, first_cfg, shape, int(ident["seed"]))
        except GeometryError as exc:
            raise GeometryError(f"{first_stage}: {exc}") from None
        out["first_stage"] = {k: before[k] for k in ("iou", "fog", "iou_scaled", "scale", "threshold")}
        out.update(init_iou=before["init_iou"], init_fog=before["init_fog"], iou_gain=out["iou"] - before["init_iou"])

    out.update(mesh_scores(verts, faces, shape, cfg.nerf.bound))

    try:
        with np.load(views_path) as z:
            opacity, azimuths = torch.from_numpy(z["opacity"]), [float(a) for a in z["azimuths"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # truncated or foreign
        raise GeometryError(
            f"{views_path}: not a views.npz written by pipeline.views ({type(exc).__name__}); re-run its views job"
        ) from None
    tol = 1e-4  # a composited opacity may exceed 1 by float rounding (1.0000001 from the second stage's renders)
    in_range = opacity.min() >= -tol and opacity.max() <= 1 + tol
    if not torch.isfinite(opacity).all() or not in_range or len(azimuths) != len(opacity):
        raise GeometryError(
            f"{views_path}: opacity must be finite, in [0, 1], one image per azimuth (a corrupt file); re-run its "
            "views job"
        )
    truth = render_opacity(None, cfg, shape, orbit_cameras(cfg.camera, azimuths), opacity.shape[-1], cfg.views.samples)
    out["silhouette_iou"] = silhouette_iou(opacity, truth)
    out.update(export_agreement(views_path))
    for k in METRICS:
        if out[k] is not None and not math.isfinite(out[k]):
            raise GeometryError(f"{model_path}: {k} is not finite")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--mesh", required=True)
    ap.add_argument("--views", required=True)
    ap.add_argument("--first-stage", default=None, help="the first stage's model.safetensors of a refined object")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from pipeline.mesh import MeshFileError
    from pipeline.nerf.model import ModelFileError
    from pipeline.records import RecordError

    try:
        with located_os_errors():
            first = Path(args.first_stage) if args.first_stage else None
            result = score_object(Path(args.model), Path(args.mesh), Path(args.views), first)
            atomic_write_json(args.out, result)
    except (GeometryError, ModelFileError, RecordError, MeshFileError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(json.dumps({k: result[k] for k in METRICS}))


if __name__ == "__main__":
    main()
