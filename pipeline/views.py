"""Views of a trained object: evaluation views, mesh agreement, turntable video, contact sheet.

* Evaluation views: `views.azimuths` azimuths at the evaluation elevation (paper: 30°), mid-range distance and focal,
  light at the camera, in colour (lit), textureless, normal and depth, from the trained field with the training
  camera code. Float arrays go to views.npz (what the evaluation reads), PNGs to views/ (what people look at).
* Mesh check: the exported mesh is ray-cast from the same cameras with open3d's RaycastingScene (CPU, headless) and
  its silhouette compared with the field's (opacity > 0.5): mean IoU in views.json.
* turntable.mp4 / turntable.gif (lit colour, full circle) and sheet.png (rows: colour, textureless, normal, depth,
  each labelled).

    python -m pipeline.views --model .../model.safetensors --mesh .../mesh.ply --out-dir .../
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pipeline.config import Config
from pipeline.io import atomic_path, atomic_write, atomic_write_json, located_os_errors
from pipeline.mesh import MeshFileError, read_ply
from pipeline.nerf.cameras import Cameras, orbit_cameras, rays
from pipeline.nerf.model import Model, ModelFileError, load_model
from pipeline.nerf.renderer import Shading, render_chunked

MODES = ("color", "textureless", "normal", "depth")


def eval_azimuths(n: int) -> list[float]:
    """n evenly spaced azimuths starting at the front (0°)."""
    return [360.0 * i / n for i in range(n)]


def render_views(
    model: Model, cfg: Config, cams: Cameras, resolution: int, samples: int, chunk: int = 2
) -> dict[str, Tensor]:
    """colour / textureless / normal / depth [N, 3, H, W] in [0, 1] and opacity [N, 1, H, W], rendered `chunk`
    views at a time."""
    n = len(cams)
    kw = {"normal_eps": cfg.render.normal_eps}
    colour = render_chunked(
        model.field, cams, resolution, samples, Shading.lit(n, cfg.shading), model.background, chunk, **kw
    )
    plain = render_chunked(
        model.field,
        cams,
        resolution,
        samples,
        Shading.lit(n, cfg.shading, textureless=True),
        model.background,
        chunk,
        **kw,
    )
    white = torch.ones_like(colour.rgb)
    normal = colour.normal * 0.5 + 0.5 * colour.opacity + (1 - colour.opacity) * white
    d = colour.depth
    dist = cams.position.norm(dim=-1).view(n, 1, 1, 1)
    near, far = dist - 2 * cfg.nerf.bound, dist + 2 * cfg.nerf.bound
    depth_img = torch.where(colour.opacity > 0.5, 1 - (d - near) / (far - near), torch.zeros_like(d))
    return {
        "color": colour.rgb.cpu(),
        "textureless": plain.rgb.cpu(),
        "normal": normal.clamp(0, 1).cpu(),
        "depth": depth_img.clamp(0, 1).expand(-1, 3, -1, -1).cpu(),
        "opacity": colour.opacity.cpu(),
        "depth_raw": d.cpu(),
    }


def mesh_colours(path: Path, cams: Cameras, resolution: int, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exported mesh (mesh.glb: Y-up, a UV texture or vertex colours; mesh.ply: Z-up, vertex colours) ray-cast
    from `cams`, unlit, over `background`: colours [N, H, W, 3] in [0, 1] and hit masks [N, H, W]. What a viewer
    shows of the mesh's colour, to compare with the field's albedo renders."""
    import open3d as o3d
    import trimesh

    from pipeline import texture
    from pipeline.mesh import z_up

    try:
        tm = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types for a cut-short or foreign file
        raise MeshFileError(
            f"{path}: not a mesh written by pipeline.mesh ({type(exc).__name__}: {exc}); delete it and run the "
            "workflow again (its mesh job writes it anew)"
        ) from None
    vertices = z_up(np.asarray(tm.vertices)) if path.suffix == ".glb" else np.asarray(tm.vertices)
    faces = np.asarray(tm.faces)
    n = len(cams)
    origins, dirs = rays(cams, resolution)
    colours = np.broadcast_to(background, (n, resolution, resolution, 3)).copy()
    if len(faces) == 0:
        return colours, np.zeros((n, resolution, resolution), dtype=bool)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    hits = scene.cast_rays(o3d.core.Tensor(torch.cat([origins, dirs], -1).numpy().astype(np.float32)))
    hit = np.isfinite(hits["t_hit"].numpy())
    tri = faces[hits["primitive_ids"].numpy()[hit].astype(np.int64)]
    u, v = hits["primitive_uvs"].numpy()[hit].T
    bary = np.stack([1 - u - v, u, v], 1)[..., None]
    uv = getattr(tm.visual, "uv", None)
    if uv is not None and getattr(tm.visual.material, "baseColorTexture", None) is not None:
        image = np.asarray(tm.visual.material.baseColorTexture.convert("RGB"), dtype=np.float64) / 255
        colours[hit] = texture.sample(image, (np.asarray(uv)[tri] * bary).sum(1))
    else:
        vc = np.asarray(tm.visual.vertex_colors, dtype=np.float64)[:, :3] / 255
        colours[hit] = (vc[tri] * bary).sum(1)
    return colours, hit


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float | None:
    """PSNR (dB, peak 1) of two colour images over the pixels in `mask` (None if the mask is empty)."""
    if not mask.any():
        return None
    mse = float(((a[mask] - b[mask]) ** 2).mean())
    return 99.0 if mse <= 1e-10 else float(10 * np.log10(1.0 / mse))


def silhouette_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _grid(images: list[Tensor], nrow: int, pad: int = 2) -> np.ndarray:
    """Images [N, 3, H, W] in [0, 1] tiled `nrow` per row with white `pad`-pixel gaps (torchvision's make_grid
    layout, without importing torchvision: 3.7 s per job) → uint8 [H', W', 3]."""
    x = torch.cat(images).permute(0, 2, 3, 1).numpy()
    n, h, w, c = x.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    g = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=x.dtype)
    for i in range(n):
        r, k = divmod(i, cols)
        g[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = x[i]
    return (g * 255).round().astype(np.uint8)


SHEET_LABELS = {"color": "colour", "textureless": "textureless", "normal": "normals", "depth": "depth"}


def _labelled(grid: np.ndarray, labels: list[str], width: int = 76) -> np.ndarray:
    """The grid with a white column on its left naming each of its rows (rows of equal height)."""
    from PIL import Image, ImageDraw

    tag = Image.new("RGB", (width, grid.shape[0]), (255, 255, 255))
    draw = ImageDraw.Draw(tag)
    row_h = grid.shape[0] / len(labels)
    for i, text in enumerate(labels):
        draw.text((4, int((i + 0.5) * row_h) - 5), text, fill=(0, 0, 0))
    return np.concatenate([np.asarray(tag, dtype=np.uint8), grid], axis=1)


def _png(path: Path, array: np.ndarray) -> None:
    import imageio.v3 as iio

    atomic_write(path, lambda p: iio.imwrite(p, array, extension=".png"))


def agreement(model: Model, cfg: Config, cams: Cameras, mesh_path: Path, glb_path: Path | None) -> dict[str, Any]:
    """How far the exported mesh is from the field's renders, from the evaluation cameras: the silhouette IoU
    (opacity > 0.5 against the mesh's hits), and the colour PSNR of the unlit exported mesh (mesh.glb, the baked
    texture) and of the vertex-coloured mesh.ply against the field's albedo renders, where both show the object (the
    silhouette IoU measures the rest)."""
    v = cfg.views
    n = len(cams)
    albedo = render_chunked(
        model.field,
        cams,
        v.resolution,
        v.samples,
        Shading.albedo(n),
        model.background,
        2,
        normal_eps=cfg.render.normal_eps,
    )
    field_rgb = albedo.rgb.permute(0, 2, 3, 1).cpu().numpy()
    field_mask = albedo.opacity[:, 0].cpu().numpy() > 0.5
    background = np.asarray(cfg.render.background_color, dtype=np.float64)
    out: dict[str, Any] = {}
    cams_cpu = cams.to(torch.device("cpu"))
    for key, path in (("vertex_colour_psnr", mesh_path), ("mesh_colour_psnr", glb_path)):
        if path is None:
            continue
        colours, hit = mesh_colours(Path(path), cams_cpu, v.resolution, background)
        out[key] = psnr(colours, field_rgb, hit & field_mask)
        if key == "vertex_colour_psnr":
            out["mesh_silhouette_iou"] = (
                None
                if not hit.any()
                else float(np.mean([silhouette_iou(a, b) for a, b in zip(hit, field_mask, strict=True)]))
            )
    return out


def run(
    model_path: str | Path,
    mesh_path: str | Path | None,
    out_dir: str | Path,
    device: torch.device | None = None,
    glb_path: str | Path | None = None,
) -> dict[str, Any]:
    import imageio.v2 as imageio

    out_dir = Path(out_dir)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, ident = load_model(model_path, device)
    if mesh_path is not None:
        read_ply(mesh_path)  # refused before the views are spent on it
    v = cfg.views
    azimuths = eval_azimuths(v.azimuths)
    cams = orbit_cameras(cfg.camera, azimuths).to(device)
    views = render_views(model, cfg, cams, v.resolution, v.samples)
    arrays = {k: t.numpy() for k, t in views.items()}
    atomic_write(
        out_dir / "views.npz", lambda p: np.savez_compressed(p.open("wb"), **arrays, azimuths=np.array(azimuths))
    )
    for mode in MODES:
        for i, az in enumerate(azimuths):
            img = (views[mode][i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            _png(out_dir / "views" / f"{mode}_{int(round(az)):03d}.png", img)
    sheet = _grid([views[m] for m in MODES], nrow=len(azimuths))
    _png(out_dir / "sheet.png", _labelled(sheet, [SHEET_LABELS[m] for m in MODES]))

    info: dict[str, Any] = {
        "prompt": ident["prompt"],
        "elevation": cfg.camera.eval_elevation,
        "azimuths": azimuths,
        "resolution": v.resolution,
        "modes": list(MODES),
    }
    if mesh_path is not None:
        info |= agreement(model, cfg, cams, Path(mesh_path), Path(glb_path) if glb_path else None)

    turn = orbit_cameras(cfg.camera, eval_azimuths(v.turntable_frames)).to(device)
    frames = render_chunked(
        model.field,
        turn,
        v.resolution,
        v.samples,
        Shading.lit(len(turn), cfg.shading),
        model.background,
        chunk=4,
        normal_eps=cfg.render.normal_eps,
    ).rgb.cpu()
    frames_u8 = [(f.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for f in frames]
    frames_u8 = [np.kron(f, np.ones((4, 4, 1), dtype=np.uint8)) for f in frames_u8]  # 4× upscale for viewing
    with atomic_path(out_dir / "turntable.mp4") as tmp:
        imageio.mimwrite(tmp, frames_u8, fps=12, macro_block_size=1, format="FFMPEG")
    with atomic_path(out_dir / "turntable.gif") as tmp:
        imageio.mimwrite(tmp, frames_u8, duration=1 / 12, loop=0, format="GIF")
    atomic_write_json(out_dir / "views.json", info)
    return info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--mesh", default=None, help="mesh.ply: silhouette and vertex-colour agreement with the field")
    ap.add_argument("--glb", default=None, help="mesh.glb: colour agreement of the exported (textured) mesh")
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args(argv)
    try:
        with located_os_errors():
            info = run(args.model, args.mesh, args.out_dir, glb_path=args.glb)
    except (ModelFileError, MeshFileError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(json.dumps(info))


if __name__ == "__main__":
    main()
