"""Mesh extraction: density grid → marching cubes (PyMCubes) → open3d clean-up → mesh.ply, mesh.glb, mesh.json.

PyMCubes over scikit-image: a single small C extension with no SciPy stack, ~9 ms for 64³ here, and it returns
vertices in grid-index coordinates that map straight to world space. The default iso-level is the density at which
a slab one eighth of the box wide is half-opaque (σ = ln 2 / (bound / 4)): SDS fields are soft, and a stricter level
(alpha 0.5 within one render sample) cut most trained objects down to their cores in our measurements.
Axes: the field is Z-up; the GLB is written Y-up (glTF convention), the PLY keeps the field's Z-up frame.

    python -m pipeline.mesh --model .../model.safetensors --out-dir .../
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import Config
from pipeline.io import atomic_path, atomic_write_json, atomic_write_text, located_os_errors
from pipeline.nerf.field import Field

EMPTY_PLY = (
    "ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\nproperty float z\n"
    "element face 0\nproperty list uchar int vertex_indices\nend_header\n"
)


class EmptyField(ValueError):
    """Nothing in the field is above the iso-level."""


class MeshFileError(ValueError):
    """A mesh.ply that is not what the mesh stage wrote: cut short, foreign or corrupt."""


def _ply_counts(path: Path) -> tuple[int, int]:
    """(vertices, faces) that a PLY file's header declares; MeshFileError if it has no PLY header."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if not head.startswith(b"ply\n") or b"end_header\n" not in head:
        raise MeshFileError("no PLY header")
    counts = {"vertex": 0, "face": 0}
    for line in head.split(b"end_header\n", 1)[0].decode("ascii", "replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "element" and parts[1] in counts and parts[2].isdigit():
            counts[parts[1]] = int(parts[2])
    return counts["vertex"], counts["face"]


def read_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [V, 3] and triangles [F, 3] of a mesh.ply, checked against its own header (open3d returns an empty
    or partial mesh for a file cut short, which would be scored as 'no surface'), finite, with every face index in
    range. MeshFileError names the file and the fix."""
    import open3d as o3d

    path = Path(path)
    fix = "delete it and run the workflow again (its mesh job writes it anew)"
    try:
        n_vertices, n_faces = _ply_counts(path)
    except MeshFileError:
        raise MeshFileError(f"{path}: not a mesh.ply written by pipeline.mesh (no PLY header); {fix}") from None
    mesh = o3d.io.read_triangle_mesh(str(path))
    verts, faces = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    if (len(verts), len(faces)) != (n_vertices, n_faces):
        raise MeshFileError(
            f"{path}: not a mesh.ply written by pipeline.mesh (its header declares {n_vertices} vertices and "
            f"{n_faces} faces, {len(verts)} and {len(faces)} could be read: cut short or corrupt); {fix}"
        )
    if not np.isfinite(verts).all():
        raise MeshFileError(f"{path}: vertices are NaN/Inf (a corrupt file); {fix}")
    if len(faces) and (faces.min() < 0 or faces.max() >= len(verts)):
        raise MeshFileError(f"{path}: a face index lies outside its {len(verts)} vertices (a corrupt file); {fix}")
    return verts, faces


class NonFiniteField(ValueError):
    """The field has NaN/Inf densities: a failure, never an 'empty' success."""


def default_threshold(cfg: Config) -> float:
    """σ such that a slab of thickness bound/4 (1/8 of the box) has alpha 0.5; for a signed-distance field
    (`density_activation: sdf`) its zero level, σ = density_max / 2, where its surface is."""
    if cfg.nerf.density_activation == "sdf":
        return cfg.nerf.density_max / 2
    return math.log(2.0) / (cfg.nerf.bound / 4)


def density_grid(field: Field, resolution: int, device: torch.device, chunk: int = 262_144) -> np.ndarray:
    """σ on a resolution³ grid over [−bound, bound]³, axes (x, y, z), evaluated in chunks."""
    b = field.bound
    axis = torch.linspace(-b, b, resolution, device=device)
    out = np.empty(resolution**3, dtype=np.float32)
    with torch.no_grad():
        xx, yy, zz = torch.meshgrid(axis, axis, axis, indexing="ij")
        pts = torch.stack([xx, yy, zz], -1).reshape(-1, 3)
        for i in range(0, len(pts), chunk):
            out[i : i + chunk] = field.density_albedo(pts[i : i + chunk])[0].float().cpu().numpy()
    return out.reshape(resolution, resolution, resolution)


def extract(field: Field, resolution: int, threshold: float, device: torch.device):
    """Marching cubes at `threshold` → open3d TriangleMesh in world coordinates with albedo vertex colours."""
    import mcubes
    import open3d as o3d

    grid = density_grid(field, resolution, device)
    if not np.isfinite(grid).all():
        raise NonFiniteField(
            f"{np.count_nonzero(~np.isfinite(grid))} of {grid.size} densities are NaN/Inf: the model is corrupt "
            "(training diverged?); delete the object's folder and retrain it"
        )
    if not (grid > threshold).any():
        raise EmptyField(f"no density above the iso-level {threshold:.3g} (max {grid.max():.3g})")
    # pad so surfaces touching the box are closed
    verts, faces = mcubes.marching_cubes(np.pad(grid, 1, constant_values=0.0), threshold)
    verts = (verts - 1) * (2 * field.bound / (resolution - 1)) - field.bound
    with torch.no_grad():
        colours = field.density_albedo(torch.as_tensor(verts, dtype=torch.float32, device=device))[1].cpu().numpy()
    mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(verts.astype(np.float64)), o3d.utility.Vector3iVector(faces.astype(np.int32))
    )
    mesh.vertex_colors = o3d.utility.Vector3dVector(np.clip(colours, 0, 1).astype(np.float64))
    return mesh


def clean(mesh, min_component_fraction: float, target_triangles: int = 0, smooth_iterations: int = 0):
    """Remove degenerate/duplicate parts, drop small components (floaters), optionally decimate and smooth."""
    mesh.remove_degenerate_triangles()
    mesh.remove_duplicated_triangles()
    mesh.remove_duplicated_vertices()
    mesh.remove_unreferenced_vertices()
    clusters, counts, _ = mesh.cluster_connected_triangles()
    clusters, counts = np.asarray(clusters), np.asarray(counts)
    if len(counts):
        small = counts < min_component_fraction * counts.max()
        mesh.remove_triangles_by_mask(small[clusters])
        mesh.remove_unreferenced_vertices()
    if target_triangles and len(mesh.triangles) > target_triangles:
        mesh = mesh.simplify_quadric_decimation(target_triangles)
    if smooth_iterations:
        mesh = mesh.filter_smooth_taubin(number_of_iterations=smooth_iterations)
    mesh.compute_vertex_normals()
    return mesh


def watertight(mesh) -> bool:
    """A closed 2-manifold: every edge shared by exactly two faces, every vertex manifold. (open3d's is_watertight
    also demands no self-intersection, which its test reports for nearly every marching-cubes mesh: touching
    triangles.)"""
    return bool(mesh.is_edge_manifold(allow_boundary_edges=False) and mesh.is_vertex_manifold())


def stats(mesh) -> dict[str, Any]:
    _, counts, _ = mesh.cluster_connected_triangles()
    bbox = mesh.get_axis_aligned_bounding_box()
    return {
        "vertices": len(mesh.vertices),
        "triangles": len(mesh.triangles),
        "components": len(counts),
        "watertight": watertight(mesh),
        "self_intersecting": bool(mesh.is_self_intersecting()),
        "bbox_min": np.asarray(bbox.min_bound).round(4).tolist(),
        "bbox_max": np.asarray(bbox.max_bound).round(4).tolist(),
        "surface_area": round(float(mesh.get_surface_area()), 5),
    }


def y_up(v: np.ndarray) -> np.ndarray:
    """The field's Z-up frame → glTF's and OBJ viewers' Y-up frame."""
    return np.stack([v[:, 0], v[:, 2], -v[:, 1]], axis=1)


def z_up(v: np.ndarray) -> np.ndarray:
    """Inverse of :func:`y_up`."""
    return np.stack([v[:, 0], -v[:, 2], v[:, 1]], axis=1)


TEXTURED = ("mesh.obj", "mesh.mtl", "texture.png")
"""The OBJ export with its material and texture image (written when mesh.texture_size > 0)."""


def export(mesh, out_dir: Path, colour=None, cfg=None) -> dict[str, Any]:
    """mesh.ply (Z-up, vertex colours, the full extraction); mesh.glb (Y-up) and, with a texture, mesh.obj +
    mesh.mtl + texture.png, atomically. `colour` (points, normals → colours, see :func:`surface_colour`) is baked
    into a UV texture of `cfg.mesh.texture_size` texels; without it (or with size 0) mesh.glb carries vertex
    colours. Returns what
    mesh.json records of the textured export."""
    import open3d as o3d
    import trimesh

    with atomic_path(out_dir / "mesh.ply") as tmp:
        if not o3d.io.write_triangle_mesh(str(tmp), mesh, write_vertex_colors=True, write_ascii=False):
            raise OSError(f"open3d could not write {tmp}")
    if colour is None or cfg is None or not cfg.mesh.texture_size:
        colours = (np.asarray(mesh.vertex_colors) * 255).round().astype(np.uint8)
        tm = trimesh.Trimesh(
            y_up(np.asarray(mesh.vertices)), np.asarray(mesh.triangles), vertex_colors=colours, process=False
        )
        with atomic_path(out_dir / "mesh.glb") as tmp:
            tmp.write_bytes(trimesh.exchange.gltf.export_glb(trimesh.Scene(tm)))
        return {"textured": False}
    tm, info = textured_mesh(mesh, colour, cfg)
    with atomic_path(out_dir / "mesh.glb") as tmp:
        tmp.write_bytes(trimesh.exchange.gltf.export_glb(trimesh.Scene(tm)))
    obj, files = trimesh.exchange.obj.export_obj(tm, return_texture=True, mtl_name="mesh.mtl")
    image = files.pop(next(n for n in files if n.endswith(".png")))
    mtl = files.pop("mesh.mtl").decode()
    mtl = "\n".join("map_Kd texture.png" if ln.startswith("map_Kd") else ln for ln in mtl.splitlines()) + "\n"
    for name, data in (("texture.png", image), ("mesh.mtl", mtl.encode()), ("mesh.obj", obj.encode())):
        with atomic_path(out_dir / name) as tmp:
            tmp.write_bytes(data)
    return info


def textured_mesh(mesh, colour, cfg: Config):
    """The export's trimesh (Y-up) with xatlas UVs and the baked albedo texture, and its record."""
    import trimesh
    from PIL import Image

    from pipeline import texture

    m = cfg.mesh
    if m.texture_triangles and len(mesh.triangles) > m.texture_triangles:
        mesh = mesh.simplify_quadric_decimation(m.texture_triangles)
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    vmap, faces_uv, uvs = texture.unwrap(vertices, faces)
    points = vertices[vmap]
    image = texture.bake(colour, points, faces_uv, uvs, m.texture_size, m.texture_padding)
    png = Image.fromarray((image * 255).round().astype(np.uint8))
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=png, metallicFactor=0.0, roughnessFactor=1.0)
    visual = trimesh.visual.TextureVisuals(uv=uvs, material=material)
    tm = trimesh.Trimesh(y_up(points), faces_uv, visual=visual, process=False)
    return tm, {"textured": True, "texture_size": m.texture_size, "textured_triangles": len(faces_uv)}


def surface_colour(field: Field, device: torch.device, depth: float = 0.0, samples: int = 24, chunk: int = 65_536):
    """(points [N, 3], normals [N, 3]) → colours [N, 3]: the field's albedo at the point (depth 0), or the colour
    the field shows looking at the point along its normal, its albedo alpha-composited over ±`depth` (what the
    renders show of a soft shell; the normal's sign is taken from the density, outward where it is lower)."""

    def query(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sig, alb = [], []
        with torch.no_grad():
            for i in range(0, len(x), chunk):
                s_, a_ = field.density_albedo(torch.as_tensor(x[i : i + chunk], dtype=torch.float32, device=device))
                sig.append(s_.float().cpu().numpy())
                alb.append(a_.float().cpu().numpy())
        return np.concatenate(sig), np.concatenate(alb)

    def read(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        if len(points) == 0:
            return np.zeros((0, 3), np.float32)
        if depth <= 0:
            return query(points)[1]
        s = np.linspace(depth, -depth, samples)
        x = points[:, None, :] + normals[:, None, :] * s[None, :, None]
        sig, alb = query(x.reshape(-1, 3))
        sig, alb = sig.reshape(len(points), samples), alb.reshape(len(points), samples, 3)
        inward = sig[:, : samples // 2].mean(1) > sig[:, samples // 2 :].mean(1)  # the normal points inwards
        sig[inward], alb[inward] = sig[inward, ::-1], alb[inward, ::-1]
        alpha = 1 - np.exp(-sig * (2 * depth / (samples - 1)))
        trans = np.cumprod(np.concatenate([np.ones((len(points), 1)), 1 - alpha[:, :-1]], 1), 1)
        w = trans * alpha
        return (w[..., None] * alb).sum(1) / np.maximum(w.sum(1, keepdims=True), 1e-8)

    return read


def run(model_path: str | Path, out_dir: str | Path, device: torch.device | None = None) -> dict[str, Any]:
    """Extract, clean and export; an empty field is recorded in mesh.json (status 'empty'), not raised."""
    from pipeline.nerf.model import load_model

    out_dir = Path(out_dir)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, ident = load_model(model_path, device)
    m = cfg.mesh
    resolution = m.resolution or (256 if device.type == "cuda" else 128)
    threshold = m.threshold or default_threshold(cfg)
    info: dict[str, Any] = {"prompt": ident["prompt"], "resolution": resolution, "threshold": threshold}
    try:
        mesh = extract(model.field, resolution, threshold, device)
        raw_components = len(mesh.cluster_connected_triangles()[1])
        mesh = clean(mesh, m.min_component_fraction, m.target_triangles, m.smooth_iterations)
        if len(mesh.triangles) == 0:
            raise EmptyField("every component was removed by clean-up")
        textured = export(mesh, out_dir, surface_colour(model.field, device, m.texture_bake_depth), cfg)
        info.update(status="ok", components_before_cleanup=raw_components, **stats(mesh), **textured)
    except EmptyField as exc:
        for name in TEXTURED:
            (out_dir / name).unlink(missing_ok=True)
        atomic_write_text(out_dir / "mesh.ply", EMPTY_PLY)
        import trimesh

        with atomic_path(out_dir / "mesh.glb") as tmp:
            tmp.write_bytes(trimesh.exchange.gltf.export_glb(trimesh.Scene()))
        info.update(status="empty", reason=str(exc))
    atomic_write_json(out_dir / "mesh.json", info)
    return info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args(argv)
    from pipeline.nerf.model import ModelFileError

    try:
        with located_os_errors():
            info = run(args.model, args.out_dir)
    except NonFiniteField as exc:
        raise SystemExit(f"error: {args.model}: {exc}") from None
    except ModelFileError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(json.dumps(info))


if __name__ == "__main__":
    main()
