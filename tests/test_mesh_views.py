import json
import math

import numpy as np
import open3d as o3d
import torch

from pipeline.checkpoint import identity
from pipeline.config import from_dict
from pipeline.mesh import clean, export, extract, stats
from pipeline.mesh import run as mesh_run
from pipeline.nerf.model import Model, save_model
from pipeline.views import mesh_colours, silhouette_iou
from pipeline.views import run as views_run
from tests.test_nerf import Ball


class BallWithFloater(Ball):
    def density_albedo(self, pts):
        s, a = super().density_albedo(pts)
        floater = 1e4 * torch.sigmoid((0.08 - (pts - torch.tensor([0.8, 0.8, 0.8])).norm(dim=-1)) / 0.001)
        return s + floater, a


def test_sphere_mesh_radius_watertight_colour_and_floaters(tmp_path):
    mesh = extract(BallWithFloater(softness=0.02), 96, 5000.0, torch.device("cpu"))
    assert len(mesh.cluster_connected_triangles()[1]) == 2
    mesh = clean(mesh, min_component_fraction=0.05)
    st = stats(mesh)
    assert st["components"] == 1 and st["watertight"]
    radii = np.linalg.norm(np.asarray(mesh.vertices), axis=1)
    assert abs(radii.mean() - 0.5) < 0.01 and radii.std() < 0.01
    assert abs(st["surface_area"] - 4 * math.pi * 0.25) / (math.pi) < 0.03
    np.testing.assert_allclose(np.asarray(mesh.vertex_colors).mean(0), [0.2, 0.4, 0.6], atol=1e-3)
    export(mesh, tmp_path)
    for name in ("mesh.ply", "mesh.glb"):
        back = o3d.io.read_triangle_mesh(str(tmp_path / name))
        assert len(back.triangles) == len(mesh.triangles) and back.has_vertex_colors()
        np.testing.assert_allclose(np.asarray(back.vertex_colors).mean(0), [0.2, 0.4, 0.6], atol=5e-3)
    glb = np.asarray(o3d.io.read_triangle_mesh(str(tmp_path / "mesh.glb")).vertices)
    assert abs(np.linalg.norm(glb, axis=1).mean() - 0.5) < 0.01  # scale preserved


def test_mesh_silhouette_matches_analytic_disc(tmp_path):
    from pipeline.config import CameraConfig
    from pipeline.nerf.cameras import orbit_cameras

    mesh = clean(extract(Ball(softness=0.02), 96, 5000.0, torch.device("cpu")), 0.05)
    export(mesh, tmp_path)
    cams = orbit_cameras(CameraConfig(distance=[3.0, 3.0], focal=[1.0, 1.0]), [0.0, 90.0], elevation=0.0)
    _, masks = mesh_colours(tmp_path / "mesh.ply", cams, 65, np.ones(3))
    expected = math.pi * (math.tan(math.asin(0.5 / 3.0)) * 65) ** 2
    for m in masks:
        assert abs(m.sum() - expected) / expected < 0.05
    assert silhouette_iou(masks[0], masks[1]) > 0.95


TINY = {
    "render": {"resolution": 16, "samples": 16},
    "world": {"resolution": 16},
    "nerf": {
        "kind": "grid",
        "resolution": 16,
        "blob": "gaussian",
        "blob_density": 12.0,
        "blob_radius": 0.3,
        "density_shift": -4.0,
    },
    "mesh": {"resolution": 32},
    "views": {"azimuths": 4, "resolution": 16, "turntable_frames": 3, "samples": 32},
    "tracking": {"enabled": False},
}


def _saved_model(tmp_path, grid_value=None):
    cfg = from_dict(TINY)
    model = Model(cfg)
    if grid_value is not None:
        with torch.no_grad():
            model.field.grid[:, 0] = grid_value
            model.field.blob_grid.zero_()
    save_model(tmp_path / "model.safetensors", model, cfg, identity(cfg, "p", "a red cube.", 0))
    return tmp_path / "model.safetensors"


def test_stages_on_a_blob_and_an_empty_field(tmp_path):
    path = _saved_model(tmp_path)
    info = mesh_run(path, tmp_path, torch.device("cpu"))
    assert info["status"] == "ok" and info["triangles"] > 0
    v = views_run(path, tmp_path / "mesh.ply", tmp_path, torch.device("cpu"))
    assert v["azimuths"] == [0.0, 90.0, 180.0, 270.0] and v["elevation"] == 30.0
    assert v["mesh_silhouette_iou"] > 0.4
    z = np.load(tmp_path / "views.npz")
    assert z["color"].shape == (4, 3, 16, 16) and z["textureless"].shape == (4, 3, 16, 16)
    for f in ("sheet.png", "turntable.mp4", "turntable.gif", "views/color_000.png", "views/depth_270.png"):
        assert (tmp_path / f).stat().st_size > 0

    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    path = _saved_model(empty_dir, grid_value=-30.0)
    info = mesh_run(path, empty_dir, torch.device("cpu"))
    assert info["status"] == "empty" and "no density above" in info["reason"]
    assert json.loads((empty_dir / "mesh.json").read_text())["status"] == "empty"
    v = views_run(path, empty_dir / "mesh.ply", empty_dir, torch.device("cpu"))
    assert v["mesh_silhouette_iou"] is None


def test_contact_sheet_layout_matches_torchvision_make_grid():
    from torchvision.utils import make_grid

    from pipeline.views import _grid

    g = torch.Generator().manual_seed(0)
    images = [torch.rand(5, 3, 6, 7, generator=g), torch.rand(5, 3, 6, 7, generator=g)]
    for nrow in (5, 3, 20):
        expected = make_grid(torch.cat(images), nrow=nrow, padding=2, pad_value=1.0)
        expected = (expected.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(_grid(images, nrow), expected)
