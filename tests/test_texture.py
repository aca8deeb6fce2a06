"""Textured exports: the baked texture reproduces a known albedo field, the files open in trimesh and open3d with
their texture, and the exported mesh's colours agree with the field's renders (better than vertex colours)."""

import numpy as np
import open3d as o3d
import pytest
import torch

from pipeline import texture
from pipeline.config import from_dict
from pipeline.mesh import clean, export, extract, surface_colour
from tests.test_nerf import Ball


class PositionBall(Ball):
    """A ball whose albedo is its position: colour = (p + 0.5), every texel has a different known colour."""

    def density_albedo(self, pts):
        s, _ = super().density_albedo(pts)
        return s, (pts + 0.5).clamp(0, 1)


class BandedBall(Ball):
    """Colour bands along z, a few vertices wide on the decimated export."""

    def density_albedo(self, pts):
        s, _ = super().density_albedo(pts)
        w = 0.5 + 0.5 * torch.sin(pts[..., 2:3] * 25)
        return s, torch.cat([w, 0.5 * torch.ones_like(w), 1 - w], -1)


def _sphere():
    m = o3d.geometry.TriangleMesh.create_sphere(0.5, resolution=30)
    return np.asarray(m.vertices), np.asarray(m.triangles)


@pytest.mark.parametrize(("depth", "tolerance"), [(0.0, 0.01), (0.1, 0.02)])
def test_the_baked_texture_reproduces_a_position_coloured_field(depth, tolerance):
    """Sampled bilinearly at random points of the surface, the texture equals the field's albedo there to within
    0.01 (mean absolute error, 256² texels; the error is the texel spacing over the colour gradient); composited
    along the normal over ±0.1 of a sharp ball, to within 0.02 (the shell's own colour)."""
    vertices, faces = _sphere()
    vmap, faces_uv, uvs = texture.unwrap(vertices, faces)
    points = vertices[vmap]
    image = texture.bake(surface_colour(PositionBall(), torch.device("cpu"), depth), points, faces_uv, uvs, 256, 4)
    albedo = surface_colour(PositionBall(), torch.device("cpu"))
    rng = np.random.default_rng(0)
    face = rng.integers(0, len(faces_uv), 5000)
    bary = rng.dirichlet(np.ones(3), 5000)[..., None]
    at = (points[faces_uv[face]] * bary).sum(1)
    uv = (uvs[faces_uv[face]] * bary).sum(1)
    err = np.abs(texture.sample(image, uv) - albedo(at, None)).mean()
    assert err < tolerance, err
    assert len(vmap) >= len(vertices) and len(faces_uv) == len(faces)  # seams split vertices, no triangle lost


def test_seam_padding_grows_the_charts_by_the_asked_rings():
    image = np.zeros((9, 9, 3))
    covered = np.zeros((9, 9), dtype=bool)
    image[4, 4], covered[4, 4] = (1.0, 0.5, 0.25), True
    padded = texture.pad_seams(image, covered, 2)
    assert (padded[4, 2] == [1.0, 0.5, 0.25]).all() and (padded[3, 3] == [1.0, 0.5, 0.25]).all()
    assert (padded[4, 1] == 0).all()  # three rings away: untouched


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("textured")
    cfg = from_dict({"mesh": {"texture_size": 256, "texture_triangles": 4000}, "tracking": {"enabled": False}})
    field = BandedBall(softness=0.002)  # sharp, so the field's silhouette is the iso-surface's
    mesh = clean(extract(field, 64, 5000.0, torch.device("cpu")), 0.05)
    info = export(mesh, out, surface_colour(field, torch.device("cpu")), cfg)
    return out, info, field


def test_textured_exports_open_with_their_texture_in_trimesh_and_open3d(exported):
    import trimesh

    out, info, _ = exported
    assert info == {"textured": True, "texture_size": 256, "textured_triangles": 4000}
    glb = trimesh.load(out / "mesh.glb", force="mesh", process=False)
    assert glb.visual.uv.shape == (len(glb.vertices), 2) and glb.visual.material.baseColorTexture.size == (256, 256)
    obj = trimesh.load(out / "mesh.obj", force="mesh", process=False)
    assert obj.visual.uv is not None and obj.visual.material.image.size == (256, 256)
    assert "map_Kd texture.png" in (out / "mesh.mtl").read_text()
    for name in ("mesh.obj", "mesh.glb"):
        back = o3d.io.read_triangle_mesh(str(out / name), enable_post_processing=True)
        assert back.has_triangle_uvs() and back.has_textures(), name
    ply = o3d.io.read_triangle_mesh(str(out / "mesh.ply"))
    assert ply.has_vertex_colors() and len(ply.triangles) > 4000  # the full extraction, vertex-coloured


def test_the_textured_mesh_agrees_with_the_field_as_well_as_the_full_vertex_coloured_one(exported):
    """Unlit renders of the exported meshes against the field's albedo renders from the same cameras, where both
    show the object: the textured export, decimated to 4,000 triangles, keeps the colour of the full-resolution
    vertex-coloured mesh (the texture, not the vertices, carries it), and both agree with the field."""
    from pipeline.config import CameraConfig
    from pipeline.nerf.cameras import orbit_cameras
    from pipeline.nerf.renderer import Background, Shading, render_chunked
    from pipeline.views import mesh_colours, psnr, silhouette_iou

    out, _, field = exported
    cfg = from_dict({"render": {"background": "solid", "background_color": [1.0, 1.0, 1.0]}})
    cams = orbit_cameras(CameraConfig(distance=[3.0, 3.0], focal=[1.5, 1.5]), [0.0, 120.0], elevation=20.0)
    ref = render_chunked(field, cams, 96, 96, Shading.albedo(2), Background(cfg.render), 2)
    field_rgb = ref.rgb.permute(0, 2, 3, 1).numpy()
    field_mask = ref.opacity[:, 0].numpy() > 0.5
    scores = {}
    for name in ("mesh.glb", "mesh.ply"):
        colours, hit = mesh_colours(out / name, cams, 96, np.ones(3))
        assert silhouette_iou(hit[0], field_mask[0]) > 0.95
        scores[name] = psnr(colours, field_rgb, hit & field_mask)
    assert scores["mesh.glb"] > 24 and scores["mesh.glb"] > scores["mesh.ply"] - 1, scores
