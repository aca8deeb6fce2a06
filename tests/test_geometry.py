"""Geometry against the truth: exact answers on analytic shapes (pipeline/geometry.py)."""

import math

import numpy as np
import pytest
import torch

from pipeline import geometry as g
from pipeline.world.scenes import SHAPES, sdf


def _sphere_sdf(points, radius=0.5, centre=(0.0, 0.0, 0.0)):
    return (points - torch.tensor(centre)).norm(dim=-1) - radius


@pytest.mark.parametrize("shape", SHAPES)
def test_the_true_solid_scores_iou_1_and_no_fog_against_itself(shape):
    pts = g.grid_points(1.0)
    d = sdf(shape, pts)
    sigma = torch.where(d < 0, torch.tensor(50.0), torch.tensor(0.0))
    assert g.volume_scores(sigma, d, threshold=2.77) == {"iou": 1.0, "fog": 0.0}


def test_shifted_sphere_iou_is_the_lens_volume_ratio():
    """Two r = 0.5 spheres 0.2 apart: IoU = V_lens / (2 V − V_lens), V_lens = π (4r + d)(2r − d)² / 12."""
    r, d = 0.5, 0.2
    lens = math.pi * (4 * r + d) * (2 * r - d) ** 2 / 12
    expected = lens / (2 * 4 / 3 * math.pi * r**3 - lens)
    pts = g.grid_points(1.0, 128)
    sigma = 50.0 * (_sphere_sdf(pts, centre=(d, 0, 0)) < 0)
    got = g.volume_scores(sigma.float(), _sphere_sdf(pts), threshold=2.77)
    assert got["iou"] == pytest.approx(expected, abs=0.01)  # 0.543
    # fog: the share of the shifted ball lying beyond radius r + 0.1 around the truth's centre (Monte Carlo)
    rng = np.random.default_rng(0)
    p = rng.uniform(-0.5, 0.5, (400_000, 3))
    p = p[np.linalg.norm(p, axis=1) < 0.5] + [d, 0, 0]
    assert got["fog"] == pytest.approx(np.mean(np.linalg.norm(p, axis=1) > 0.6), abs=0.01)  # 0.088


def test_inflated_sphere_iou_and_fog():
    """A uniform-density ball of radius 0.7 around the r = 0.5 truth: IoU = (0.5/0.7)³, fog = 1 − (0.6/0.7)³."""
    pts = g.grid_points(1.0, 128)
    sigma = 10.0 * (_sphere_sdf(pts, 0.7) < 0)
    got = g.volume_scores(sigma.float(), _sphere_sdf(pts), threshold=2.77)
    assert got["iou"] == pytest.approx((0.5 / 0.7) ** 3, abs=0.01)  # 0.364
    assert got["fog"] == pytest.approx(1 - (0.6 / 0.7) ** 3, abs=0.01)  # 0.370
    # below the mesh iso-level, the same ball occupies nothing but is still all there as fog
    faint = g.volume_scores(0.1 * sigma.float(), _sphere_sdf(pts), threshold=2.77)
    assert faint["iou"] == 0.0 and faint["fog"] == pytest.approx(got["fog"])


def test_empty_field_scores_zero_and_non_finite_field_is_an_error():
    pts = g.grid_points(1.0, 16)
    assert g.volume_scores(torch.zeros(len(pts)), _sphere_sdf(pts), 2.77) == {"iou": 0.0, "fog": 0.0}
    bad = torch.zeros(len(pts))
    bad[3] = float("nan")
    with pytest.raises(g.GeometryError, match="non-finite densities"):
        g.volume_scores(bad, _sphere_sdf(pts), 2.77)


def test_true_surface_lies_on_the_sphere_with_radial_normals():
    points, normals = g.true_surface("sphere", n=5000)
    r = np.linalg.norm(points, axis=1)
    assert np.abs(r - 0.5).max() < 0.003
    assert np.abs((normals * points / r[:, None]).sum(1) - 1).max() < 1e-3


def test_chamfer_and_normal_consistency():
    points, normals = g.true_surface("sphere", n=5000)
    same = g.surface_scores(points, normals, points, normals)
    assert same == {"chamfer": 0.0, "normal_consistency": 1.0}
    # a concentric sphere of radius 0.6: every nearest point is 0.1 away (plus the sampling gap), normals agree
    big = g.surface_scores(points * 1.2, normals, *g.true_surface("sphere", n=5000, seed=1))
    assert big["chamfer"] == pytest.approx(0.1, abs=0.003)
    assert big["normal_consistency"] == pytest.approx(1.0, abs=0.01)
    # flipped normals still agree (|n·n'|: orientation-free), tangent normals do not
    assert g.surface_scores(points, -normals, points, normals)["normal_consistency"] == pytest.approx(1.0)
    tangent = np.cross(normals, [0.0, 0.0, 1.0])
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    assert g.surface_scores(points, tangent, points, normals)["normal_consistency"] < 0.05


def test_silhouette_iou_per_view_mean():
    a = torch.zeros(2, 1, 4, 4)
    b = torch.zeros(2, 1, 4, 4)
    a[0, 0, :2] = 1  # 8 pixels
    b[0, 0, :1] = 1  # 4 pixels, inside a: IoU 0.5
    # view 1 empty in both: counts 1
    assert g.silhouette_iou(a, b) == pytest.approx(0.75)
    assert g.silhouette_iou(a, a) == 1.0


def test_sample_mesh_is_uniform_by_area_and_deterministic():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0], [3, 0, 0], [0, 3, 0]], dtype=float)
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    p1, n1 = g.sample_mesh(verts, faces, 20_000, seed=0)
    p2, _ = g.sample_mesh(verts, faces, 20_000, seed=0)
    assert np.array_equal(p1, p2)
    in_small = (p1[:, 0] + p1[:, 1] <= 1).mean()  # small triangle has 1/9 of the area, but lies inside the big one
    assert in_small == pytest.approx(0.1 + 0.9 / 9, abs=0.01)
    assert np.allclose(np.abs(n1[:, 2]), 1.0)


@pytest.mark.parametrize("shape", SHAPES)
def test_true_normals_are_unit_and_agree_with_themselves(shape):
    """Cube points sit exactly on its faces, where autograd through the sdf's clamps gave zero normals."""
    p1, n1 = g.true_surface(shape, 4000, seed=0)
    p2, n2 = g.true_surface(shape, 4000, seed=1)
    assert np.allclose(np.linalg.norm(n1, axis=1), 1.0, atol=1e-4)
    assert g.surface_scores(p1, n1, p2, n2)["normal_consistency"] > 0.97


@pytest.mark.parametrize("shape", SHAPES)
def test_scale_aligned_iou_of_the_truth_is_1_at_scale_1(shape):
    pts = g.grid_points(1.0)
    sigma = 50.0 * (sdf(shape, pts) < 0)
    assert g.scale_aligned_iou(sigma.float(), lambda p: sdf(shape, p), pts, 2.77) == (1.0, 1.0)


def test_scale_aligned_iou_forgives_size_not_shape():
    """A ball of radius 0.6 around the r = 0.5 truth: iou (0.5/0.6)³ ≈ 0.579, iou_scaled 1 at scale 1.2; a shifted
    ball is not a scaled one, so its scaled IoU stays well short of 1."""
    pts = g.grid_points(1.0, 128)
    big = (50.0 * (_sphere_sdf(pts, 0.6) < 0)).float()
    assert g.volume_scores(big, _sphere_sdf(pts), 2.77)["iou"] == pytest.approx((0.5 / 0.6) ** 3, abs=0.01)
    iou, scale = g.scale_aligned_iou(big, _sphere_sdf, pts, 2.77)
    assert iou >= 0.995 and scale == pytest.approx(1.2, abs=0.011)
    shifted = (50.0 * (_sphere_sdf(pts, centre=(0.2, 0, 0)) < 0)).float()
    plain = g.volume_scores(shifted, _sphere_sdf(pts), 2.77)["iou"]
    iou, scale = g.scale_aligned_iou(shifted, _sphere_sdf, pts, 2.77)
    assert plain <= iou < 0.7 and scale >= 1.0


def _mesh_of(shape: str, scale: float = 1.0, resolution: int = 96):
    """The primitive's surface as the mesh stage leaves a mesh: marching cubes of its sdf, then `clean`."""
    import mcubes
    import open3d as o3d

    from pipeline.mesh import clean
    from pipeline.world.scenes import sdf

    ext = 0.75
    pts = g.grid_points(ext, resolution)
    d = sdf(shape, pts / scale).reshape(resolution, resolution, resolution).numpy()
    v, f = mcubes.marching_cubes(-d, 0.0)
    mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(v * (2 * ext / (resolution - 1)) - ext), o3d.utility.Vector3iVector(f)
    )
    mesh = clean(mesh, 0.05)
    return np.asarray(mesh.vertices), np.asarray(mesh.triangles)


@pytest.mark.parametrize("shape", ["cube", "sphere", "cylinder", "cone", "torus", "pyramid"])
def test_the_true_surface_as_a_mesh_scores_as_the_truth(shape):
    out = g.mesh_scores(*_mesh_of(shape), shape, 1.0)
    assert out["surface_error"] < 0.002 and out["mesh_iou"] > 0.97 and out["watertight"] == 1.0
    assert out["normal_consistency"] > 0.97 and out["chamfer"] < 0.01


def test_mesh_measures_of_a_sphere_too_large_a_hole_and_no_mesh():
    """A sphere of radius 0.6 against the world's 0.5: every surface point 0.1 off, solid IoU (0.5/0.6)³ = 0.579."""
    verts, faces = _mesh_of("sphere", scale=1.2)
    out = g.mesh_scores(verts, faces, "sphere", 1.0)
    assert out["surface_error"] == pytest.approx(0.1, abs=0.002)
    assert out["mesh_iou"] == pytest.approx((0.5 / 0.6) ** 3, abs=0.02) and out["watertight"] == 1.0
    assert g.mesh_scores(verts, faces[1:], "sphere", 1.0)["watertight"] == 0.0  # one face gone: a hole
    empty = g.mesh_scores(np.zeros((0, 3)), np.zeros((0, 3), np.int64), "sphere", 1.0)
    assert empty == {
        "chamfer": None,
        "normal_consistency": None,
        "surface_error": None,
        "mesh_iou": 0.0,
        "watertight": 0.0,
    }


def test_the_texture_gain_is_the_paired_difference_of_the_two_exports(tmp_path):
    import json

    views = tmp_path / "views.npz"
    (tmp_path / "views.json").write_text(
        json.dumps({"mesh_colour_psnr": 21.5, "vertex_colour_psnr": 19.25, "mesh_silhouette_iou": 0.9})
    )
    assert g.export_agreement(views) == {
        "mesh_silhouette_iou": 0.9,
        "mesh_colour_psnr": 21.5,
        "texture_psnr_gain": 2.25,
    }
    (tmp_path / "views.json").write_text(json.dumps({"mesh_colour_psnr": 21.5}))  # no vertex-coloured measure
    assert g.export_agreement(views)["texture_psnr_gain"] is None
    (tmp_path / "views.json").unlink()
    assert g.export_agreement(views) == {
        "mesh_silhouette_iou": None,
        "mesh_colour_psnr": None,
        "texture_psnr_gain": None,
    }


def test_an_opacity_a_rounding_step_above_one_is_scored(tmp_path):
    """The second stage's composited opacity reaches 1.0000001 in float32: scored, not refused as corrupt (the
    refine ablation's geometry jobs all failed on it)."""
    import open3d as o3d

    from pipeline.checkpoint import identity
    from pipeline.config import from_dict
    from pipeline.mesh import export
    from pipeline.nerf.model import Model, save_model

    cfg = from_dict(
        {"nerf": {"kind": "grid", "resolution": 12}, "views": {"samples": 8}, "tracking": {"enabled": False}}
    )
    save_model(tmp_path / "model.safetensors", Model(cfg), cfg, identity(cfg, "p", "a red cube.", 0))
    export(o3d.geometry.TriangleMesh.create_box(0.5, 0.5, 0.5).translate((-0.25, -0.25, -0.25)), tmp_path)
    opacity = np.zeros((2, 1, 8, 8), np.float32)
    opacity[:, :, 2:6, 2:6] = np.float32(1.0000001)
    np.savez(tmp_path / "views.npz", opacity=opacity, azimuths=np.array([0.0, 180.0]))
    out = g.score_object(tmp_path / "model.safetensors", tmp_path / "mesh.ply", tmp_path / "views.npz")
    assert 0 <= out["silhouette_iou"] <= 1
