import math

import pytest
import torch

from pipeline.config import CameraConfig, RenderConfig, ShadingConfig
from pipeline.nerf.cameras import orbit_cameras, rays, sample_cameras, view_suffix, with_suffix
from pipeline.nerf.field import Field
from pipeline.nerf.renderer import Background, Shading, render, sample_shading


class Ball(Field):
    """Uniform ball of radius r and density s, albedo `colour`."""

    def __init__(self, r=0.5, s=1e4, colour=(0.2, 0.4, 0.6), softness=0.001):
        super().__init__()
        self.r, self.s, self.bound, self.softness = r, s, 1.0, softness
        self.colour = torch.tensor(colour)

    def density_albedo(self, pts):
        return self.s * torch.sigmoid((self.r - pts.norm(dim=-1)) / self.softness), self.colour.expand(
            *pts.shape[:-1], 3
        )


def test_view_suffix_rules():
    assert view_suffix(61, 0) == "overhead view"
    assert view_suffix(60, 0) == "front view"
    assert view_suffix(0, 44.9) == "front view" and view_suffix(0, 315) == "front view"
    assert view_suffix(0, 45) == "side view" and view_suffix(0, 134.9) == "side view"
    assert view_suffix(0, 135) == "back view" and view_suffix(0, 224.9) == "back view"
    assert view_suffix(0, 225) == "side view"
    assert with_suffix("a red cube.", 10, 180) == "a red cube, back view"


def test_camera_sampler_statistics():
    cfg = CameraConfig()
    c = sample_cameras(cfg, 20000, torch.Generator().manual_seed(0))
    assert c.elevation.min() >= -10 and c.elevation.max() <= 90
    assert c.azimuth.min() >= 0 and c.azimuth.max() < 360
    assert abs(c.azimuth.mean().item() - 180) < 3
    assert c.focal.min() >= 0.7 and c.focal.max() <= 1.35
    dist = c.position.norm(dim=-1)
    assert dist.min() >= 2.0 - 0.1 * math.sqrt(3) and dist.max() <= 2.5 + 0.1 * math.sqrt(3)
    # half uniform in angle, half uniform in area (sin elevation): mean elevation between the two means
    angle_mean = 40.0
    s0, s1 = math.sin(math.radians(-10)), math.sin(math.radians(90))
    area_mean = math.degrees(sum(math.asin(s0 + (s1 - s0) * (i + 0.5) / 1000) for i in range(1000)) / 1000)
    assert abs(c.elevation.mean().item() - (angle_mean + area_mean) / 2) < 1.0
    torch.testing.assert_close(torch.linalg.det(c.rotation), torch.ones(20000), atol=1e-4, rtol=0)


def test_orbit_cameras_are_where_the_config_says():
    cfg = CameraConfig(distance=[2.0, 2.0])
    c = orbit_cameras(cfg, [0.0, 90.0])
    torch.testing.assert_close(c.position[0], torch.tensor([2 * math.cos(math.radians(30)), 0.0, 1.0]))
    torch.testing.assert_close(
        c.position[1], torch.tensor([0.0, 2 * math.cos(math.radians(30)), 1.0]), atol=1e-6, rtol=0
    )
    o, d = rays(c, 9)
    centre = d[:, 4, 4]
    torch.testing.assert_close(centre, -torch.nn.functional.normalize(c.position, dim=-1), atol=1e-6, rtol=0)


def _ball_render(shading, res=33, field=None, dist=3.0):
    cfg = CameraConfig(distance=[dist, dist], focal=[1.0, 1.0])
    cams = orbit_cameras(cfg, [0.0], elevation=0.0)
    return render(field or Ball(), cams, res, 256, shading, Background(RenderConfig(background_color=[1, 1, 1])))


def test_ball_opacity_depth_and_silhouette():
    out = _ball_render(Shading.albedo(1))
    # centre pixel: opaque, depth = distance − radius
    assert out.opacity[0, 0, 16, 16] > 0.999
    assert abs(out.depth[0, 0, 16, 16].item() - 2.5) < 0.01
    # silhouette area: a ball of radius r at distance d subtends a disc of angular radius asin(r/d)
    tan = math.tan(math.asin(0.5 / 3.0))
    expected_pixels = math.pi * (tan * 33) ** 2  # focal = 1 × width
    assert abs((out.opacity > 0.5).sum().item() - expected_pixels) / expected_pixels < 0.05
    # albedo mode: the colour is the albedo where opaque, white background elsewhere
    torch.testing.assert_close(out.rgb[0, :, 16, 16], torch.tensor([0.2, 0.4, 0.6]), atol=2e-3, rtol=0)
    torch.testing.assert_close(out.rgb[0, :, 0, 0], torch.ones(3))


def test_normals_point_outward_and_textureless_ignores_albedo():
    lit = _ball_render(Shading.lit(1, ShadingConfig()))
    n = lit.normal[0, :, 16, 16]
    torch.testing.assert_close(n, torch.tensor([1.0, 0.0, 0.0]), atol=0.02, rtol=0)
    plain = _ball_render(Shading.lit(1, ShadingConfig(), textureless=True))
    other = _ball_render(Shading.lit(1, ShadingConfig(), textureless=True), field=Ball(colour=(0.9, 0.1, 0.1)))
    torch.testing.assert_close(plain.rgb, other.rgb)
    # light at the camera: the centre is fully lit (ambient + diffuse = 1) for a white albedo
    assert abs(plain.rgb[0, 0, 16, 16].item() - 1.0) < 0.02
    assert lit.orientation.item() < 1e-3


def test_shading_schedule_probabilities():
    cfg = ShadingConfig(albedo_steps=10, p_lit=0.75, p_textureless=0.5)
    assert sample_shading(cfg, 9, 100).modes() == ["albedo"] * 100
    modes = sample_shading(cfg, 10, 40000, torch.Generator().manual_seed(0)).modes()
    frac = {m: modes.count(m) / len(modes) for m in ("albedo", "lit", "textureless")}
    assert abs(frac["albedo"] - 0.25) < 0.01 and abs(frac["lit"] - 0.375) < 0.01
    assert abs(frac["textureless"] - 0.375) < 0.01


@pytest.mark.parametrize("mode", ["mlp", "solid", "random"])
def test_backgrounds(mode):
    bg = Background(RenderConfig(background=mode, background_color=[0.0, 1.0, 0.0]))
    d = torch.nn.functional.normalize(torch.randn(2, 4, 4, 3), dim=-1)
    out = bg(d, training=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 4, 4, 3) and out.min() >= 0 and out.max() <= 1
    # evaluation views, previews and turntables: always the fixed colour, whatever was learned
    torch.testing.assert_close(bg(d, training=False), torch.tensor([0.0, 1.0, 0.0]).expand(2, 4, 4, 3))


def test_random_background_probability_and_low_frequency_mlp():
    d = torch.nn.functional.normalize(torch.randn(4000, 2, 2, 3), dim=-1)
    green = torch.tensor([0.0, 1.0, 0.0])
    bg = Background(RenderConfig(background="solid", background_color=[0.0, 1.0, 0.0], random_background_p=0.3))
    out = bg(d, training=True, generator=torch.Generator().manual_seed(0))
    replaced = ~(out[:, 0, 0] == green).all(-1)
    assert abs(replaced.float().mean().item() - 0.3) < 0.03
    assert (out == out[:, :1, :1]).all()  # a solid colour per view
    mlp = Background(RenderConfig(background="mlp", background_freqs=2))
    assert mlp.mlp[0].in_features == 3 + 6 * 2


def test_unit_matches_normalize_and_keeps_zero_vectors_finite():
    from pipeline.nerf.renderer import unit

    v = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0))
    v[0] = 0.0
    torch.testing.assert_close(unit(v), torch.nn.functional.normalize(v, dim=-1, eps=1e-8), atol=1e-6, rtol=0)
    assert torch.equal(unit(v)[0], torch.zeros(3))
    x = v[1:].clone().requires_grad_(True)
    y = v[1:].clone().requires_grad_(True)
    w = torch.randn(999, 3, generator=torch.Generator().manual_seed(1))
    (unit(x) * w).sum().backward()
    (torch.nn.functional.normalize(y, dim=-1) * w).sum().backward()
    torch.testing.assert_close(x.grad, y.grad, atol=1e-5, rtol=1e-5)


def test_render_chunked_equals_one_render():
    from pipeline.nerf.renderer import render_chunked

    cams = orbit_cameras(CameraConfig(), [0.0, 70.0, 140.0, 210.0, 280.0])
    shading = Shading.lit(5, ShadingConfig(), textureless=False)
    shading.textureless[1] = True
    bg = Background(RenderConfig(background="solid"))
    with torch.no_grad():
        whole = render(Ball(), cams, 12, 16, shading, bg)
    parts = render_chunked(Ball(), cams, 12, 16, shading, bg, chunk=2)
    for name in ("rgb", "foreground", "opacity", "depth", "normal"):
        torch.testing.assert_close(getattr(parts, name), getattr(whole, name), atol=1e-6, rtol=0)
    torch.testing.assert_close(parts.orientation, whole.orientation, atol=1e-7, rtol=1e-5)


def test_pyramid_unlocks_levels_coarse_to_fine():
    from pipeline.config import FieldConfig
    from pipeline.nerf.field import PyramidField, build_field

    f = build_field(FieldConfig(kind="pyramid", levels=[4, 8, 16], unlock_steps=[100, 300]))
    assert isinstance(f, PyramidField) and f.resolution == 16
    expected = {0: [1, 0, 0], 100: [1, 0, 0], 150: [1, 0.5, 0], 200: [1, 1, 0], 250: [1, 1, 0.5], 400: [1, 1, 1]}
    for step, weights in expected.items():
        f.set_step(step)
        assert f.level_weights() == pytest.approx(weights)
    f.set_step(None)
    assert f.level_weights() == [1, 1, 1]  # evaluation: the whole field


def test_pyramid_sums_upsampled_levels_and_fine_levels_only_add_detail():
    from pipeline.config import FieldConfig
    from pipeline.nerf.field import build_field

    f = build_field(FieldConfig(kind="pyramid", levels=[2, 16], unlock_steps=[0, 10]))
    with torch.no_grad():
        f.levels[0][0, 0] = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[4.0, 5.0], [6.0, 7.0]]])
        f.levels[1].normal_()
    f.set_step(0)  # fine level locked: the coarse level's trilinear interpolation, corners exact
    raw = f._raw()[0, 0]
    assert raw[0, 0, 0] == 0.0 and raw[-1, -1, -1] == 7.0 and raw[0, 0, -1] == 1.0
    f.set_step(None)
    torch.testing.assert_close(f._raw()[0, 0] - raw, f.levels[1][0, 0])
    assert f.total_variation() > 0


def test_pyramid_with_mlp_looks_up_each_level_at_the_points():
    from pipeline.config import FieldConfig
    from pipeline.nerf.field import build_field

    f = build_field(FieldConfig(kind="pyramid", levels=[4, 8], features=8, mlp_hidden=16, unlock_steps=[0, 10]))
    with torch.no_grad():
        for g in f.levels:
            g.normal_()
    pts = torch.rand(5, 3) * 2 - 1
    expected = f._sample(f.levels[0], pts) + f._sample(f.levels[1], pts)
    torch.testing.assert_close(f._features(pts), expected)
    f.set_step(0)
    torch.testing.assert_close(f._features(pts), f._sample(f.levels[0], pts))
    sigma, albedo = f.density_albedo(pts)
    assert sigma.shape == (5,) and albedo.shape == (5, 3) and (sigma >= 0).all()


def test_blob_cap_keeps_the_edge_and_tail_and_flattens_the_centre():
    """nerf.blob_cap: min(40 (1 − r/0.5), 8) — the centre a torus must empty is +8, not +40; the edge and the
    negative tail outside are the uncapped blob's."""
    from pipeline.config import FieldConfig
    from pipeline.nerf.field import blob, build_field

    pts = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.45, 0.0], [0.0, 0.0, 0.5], [0.6, 0.0, 0.8]])
    torch.testing.assert_close(blob(pts, "linear", 40.0, 0.5), torch.tensor([40.0, 16.0, 4.0, 0.0, -40.0]))
    torch.testing.assert_close(blob(pts, "linear", 40.0, 0.5, cap=8.0), torch.tensor([8.0, 8.0, 4.0, 0.0, -40.0]))
    gaussian = 5.0 * torch.exp(-(pts.norm(dim=-1) ** 2) / 0.08)
    torch.testing.assert_close(blob(pts, "gaussian", 5.0, 0.2, cap=0.0), gaussian)
    f = build_field(FieldConfig(kind="grid", resolution=5, blob_density=40.0, blob_cap=8.0))
    assert f.blob_grid.max() == 8.0 and f.blob_grid.min() == pytest.approx(40 * (1 - 3**0.5 / 0.5))
    with torch.no_grad():
        sigma, _ = f.density_albedo(torch.zeros(1, 3))
    torch.testing.assert_close(sigma, torch.nn.functional.softplus(torch.tensor([8.0])))


def test_sigmoid_density_is_bounded_and_half_full_on_the_blob_sphere():
    """nerf.density_activation: sigmoid — σ = density_max · sigmoid(blob + grid): density_max/2 on the blob's sphere,
    the capped centre at density_max · sigmoid(8), outside ≈ 0, never above density_max; with the MLP decoder too."""
    from pipeline.config import FieldConfig
    from pipeline.nerf.field import build_field

    pts = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, -0.5, 0.0], [1.0, 0.0, 0.0]])  # nodes of the 5³ grid
    want = 60.0 * torch.sigmoid(torch.tensor([8.0, 0.0, 0.0, -40.0]))
    for extra in ({}, {"features": 8, "mlp_hidden": 8}):
        cfg = FieldConfig(kind="grid", resolution=5, blob_density=40.0, blob_cap=8.0, density_activation="sigmoid")
        f = build_field(FieldConfig(**{**cfg.__dict__, **extra}))
        if f.mlp is not None:
            torch.nn.init.zeros_(f.mlp[2].weight), torch.nn.init.zeros_(f.mlp[2].bias)
        with torch.no_grad():
            sigma, _ = f.density_albedo(pts)
        torch.testing.assert_close(sigma, want, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            for p in f.parameters():
                p.fill_(1e3)
            assert f.density_albedo(pts)[0].max() <= 60.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_chunked_render_on_cuda_matches_the_cpu():
    """Found on an H200: render_chunked built its chunk sizes on the CPU, so every views job on a GPU crashed
    (`Expected all tensors to be on the same device`) after training had finished."""
    from pipeline.nerf.renderer import render_chunked

    cams = orbit_cameras(CameraConfig(), [0.0, 90.0, 180.0])
    shading = Shading.lit(3, ShadingConfig())  # as pipeline.views passes it
    bg = Background(RenderConfig(background="solid"))
    cpu = render_chunked(Ball(), cams, 12, 16, shading, bg, chunk=2)
    dev = torch.device("cuda")
    gpu = render_chunked(Ball().to(dev), cams.to(dev), 12, 16, shading, bg.to(dev), chunk=2)
    assert gpu.rgb.device.type == "cuda" and gpu.orientation.device.type == "cuda"
    torch.testing.assert_close(gpu.rgb.cpu(), cpu.rgb, atol=1e-4, rtol=0)


def test_z_variance_is_the_depth_variance_of_each_rays_weights():
    """A faint medium filling the box spreads every ray's weight evenly over its S midpoints, so the depth variance is
    that of a discrete uniform, Δ²(S² − 1)/12 with Δ = (far − near)/S; a hard ball puts it in one sample (≈ 0)."""
    from pipeline.nerf.renderer import _ray_box

    cams = orbit_cameras(CameraConfig(), [0.0, 90.0])
    bg = Background(RenderConfig(background="solid"))
    s = 32
    faint = render(Ball(r=3.0, s=1e-3), cams, 8, s, Shading.albedo(2), bg)
    origins, dirs = rays(cams, 8)
    near, far = _ray_box(origins, dirs, 1.0)
    delta = (far - near) / s
    expected = delta**2 * (s * s - 1) / 12
    hit = far > near
    torch.testing.assert_close(faint.z_variance[:, 0][hit], expected[hit], rtol=2e-3, atol=0)  # σL ≈ 2e-3
    assert (faint.z_variance[:, 0][~hit] == 0).all()
    hard = render(Ball(r=0.5, s=1e4), cams, 8, s, Shading.albedo(2), bg)
    opaque = hard.opacity[:, 0] > 0.99
    assert opaque.any() and hard.z_variance[:, 0][opaque].max() < 1e-3 * expected[opaque].min() + 1e-6


def _mlp_field(normals: str):
    from pipeline.config import FieldConfig
    from pipeline.nerf.field import build_field

    cfg = FieldConfig(kind="pyramid", levels=[4, 8], features=8, mlp_hidden=16, unlock_steps=[0, 10], normals=normals)
    torch.manual_seed(0)
    return build_field(cfg)


def test_analytic_normals_are_the_exact_gradient_of_the_blob():
    """With the decoder's output layer zeroed, σ = softplus(10 (1 − r/0.5)) at the points themselves (the MLP path
    adds the blob at the sample, not from the grid): ∇σ = sigmoid(z) · (−20) · p/r exactly."""
    f = _mlp_field("analytic")
    with torch.no_grad():
        f.mlp[-1].weight.zero_()
        f.mlp[-1].bias.zero_()
    pts = torch.tensor([[0.1, 0.2, -0.3], [0.4, 0.0, 0.0], [-0.6, 0.5, 0.2]])
    sigma, _, grad = f.query(pts, normal_eps=0.02, with_grad=True)
    r = pts.norm(dim=-1, keepdim=True)
    z = 10 * (1 - r / 0.5)
    torch.testing.assert_close(sigma, torch.nn.functional.softplus(z)[:, 0])
    torch.testing.assert_close(grad, torch.sigmoid(z) * -20 * pts / r)


def test_analytic_normals_agree_with_fine_finite_differences_and_train_the_field():
    fd, an = _mlp_field("finite_difference"), _mlp_field("analytic")
    with torch.no_grad():
        for g_fd, g_an in zip(fd.levels, an.levels, strict=True):
            g_fd.normal_(0, 0.3)
            g_an.copy_(g_fd)
        an.mlp.load_state_dict(fd.mlp.state_dict())
    # away from the grid's cell faces the trilinear field is smooth, so tiny central differences are its derivative
    pts = (torch.rand(200, 3) * 2 - 1) * 0.9
    _, _, g_fd = fd.query(pts, normal_eps=1e-3, with_grad=True)
    sigma, albedo, g_an = an.query(pts, normal_eps=1e-3, with_grad=True)
    cos = torch.nn.functional.cosine_similarity(g_fd, g_an, dim=-1)
    assert (cos > 0.99).float().mean() > 0.95
    # a loss on the normals reaches the grids and the decoder (double backward through the lookup)
    (g_an**2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in [*an.levels, *an.mlp.parameters()])
    # evaluation (no_grad): same values, nothing attached to a graph
    with torch.no_grad():
        s2, a2, g2 = an.query(pts, normal_eps=1e-3, with_grad=True)
    assert not (s2.requires_grad or a2.requires_grad or g2.requires_grad)
    torch.testing.assert_close(g2, g_an.detach())
    torch.testing.assert_close(s2, sigma.detach())


def test_the_gather_lookup_is_grid_samples_interpolation_to_the_second_derivative():
    """nerf.lookup: gather against F.grid_sample (zero padding, align_corners): values, first derivatives and the
    double backward that analytic normals take, at points inside, on the nodes and faces, and outside the cube."""
    import torch.nn.functional as F

    from pipeline.nerf.field import trilinear_gather

    torch.manual_seed(0)
    volume = torch.randn(1, 3, 4, 5, 6, dtype=torch.float64)  # D, H, W all different: the axes cannot be mixed up
    inside = torch.rand(300, 3, dtype=torch.float64) * 2.2 - 1.1  # some outside [-1, 1] on one axis or more
    nodes = torch.tensor([[-1.0, -1, -1], [1, 1, 1], [0.2, -0.5, 1 / 3], [1, 0, -1]], dtype=torch.float64)
    pts = torch.cat([inside, nodes, torch.tensor([[3.0, 0.0, 0.0], [-2.0, -2.0, 5.0]], dtype=torch.float64)])

    def both(v, p):
        ref = F.grid_sample(v, p.view(1, -1, 1, 1, 3), mode="bilinear", padding_mode="zeros", align_corners=True)
        return ref.reshape(3, -1).T, trilinear_gather(v, p)

    ref, got = both(volume, pts)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    assert (got[-2:] == 0).all()  # far outside: zero
    # away from cell faces (where the one-sided derivatives differ), ∇ and the double backward agree
    v = volume.clone().requires_grad_()
    p = (torch.rand(200, 3, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    grads = []
    for k in range(2):
        out = both(v, p)[k]
        (dp,) = torch.autograd.grad(out.sum(), p, create_graph=True)
        (dv,) = torch.autograd.grad((dp**2).sum(), v)  # a loss on ∇: what the orientation term and shading do
        grads.append((dp.detach(), dv))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=0, atol=1e-10)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=0, atol=1e-10)


def test_a_gather_field_renders_and_trains_like_a_grid_sample_field_with_analytic_normals():
    from dataclasses import replace

    from pipeline.nerf.field import build_field

    ref = _mlp_field("analytic")
    torch.manual_seed(1)
    with torch.no_grad():
        for g in ref.levels:
            g.normal_(0, 0.3)
    gat = build_field(replace(ref.cfg, lookup="gather"))
    gat.load_state_dict(ref.state_dict())
    pts = (torch.rand(100, 3) * 2 - 1) * 0.9
    out = [f.query(pts, normal_eps=0.02, with_grad=True) for f in (ref, gat)]
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    for sigma, albedo, grad in out:
        (sigma.sum() + albedo.sum() + (grad**2).sum()).backward()
    for a, b in zip(ref.parameters(), gat.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5)


def test_analytic_normals_render_like_finite_differences():
    """Same scene, both normal kinds: the lit render and normal map agree, the orientation penalty too."""
    from pipeline.config import CameraConfig, RenderConfig

    fd, an = _mlp_field("finite_difference"), _mlp_field("analytic")
    an.load_state_dict(fd.state_dict())
    cams = orbit_cameras(CameraConfig(), [30.0, 200.0])
    shading = Shading.lit(2, ShadingConfig(), textureless=False)
    bg = Background(RenderConfig(background="solid"))
    with torch.no_grad():
        a = render(fd, cams, 12, 32, shading, bg, normal_eps=1e-3)
        b = render(an, cams, 12, 32, shading, bg)
    torch.testing.assert_close(b.opacity, a.opacity)
    torch.testing.assert_close(b.rgb, a.rgb, atol=2e-3, rtol=0)
    torch.testing.assert_close(b.normal, a.normal, atol=2e-2, rtol=0)


def test_sdf_density_is_the_logistic_of_a_distance_with_an_annealed_width():
    """nerf.density_activation: sdf — z = 0.5 − ‖x‖ from the linear blob (λ = radius), σ = 60 · sigmoid(z / width):
    half full on the sphere at every step; at the centre sigmoid(0.5 / width) with the width of the step, the
    schedule's last width when evaluating; with the MLP decoder at the points as on the grid's nodes."""
    from pipeline.config import FieldConfig
    from pipeline.nerf.field import build_field

    pts = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, -1.0, 0.0]])  # nodes of the 5³ grid
    z = torch.tensor([0.5, 0.0, -0.5])
    for extra in ({}, {"features": 8, "mlp_hidden": 8}):
        cfg = FieldConfig(
            kind="grid", resolution=5, blob_density=0.5, blob_radius=0.5, density_activation="sdf",
            sdf_width=[0, 0.1, 0.01, 300], **extra,
        )  # fmt: skip
        f = build_field(cfg)
        if f.mlp is not None:
            torch.nn.init.zeros_(f.mlp[2].weight), torch.nn.init.zeros_(f.mlp[2].bias)
        for step, width in ((0, 0.1), (150, 0.055), (300, 0.01), (10_000, 0.01), (None, 0.01)):
            f.set_step(step)
            assert f.sdf_width() == pytest.approx(width)
            with torch.no_grad():
                sigma, _ = f.density_albedo(pts)
            torch.testing.assert_close(sigma, 60.0 * torch.sigmoid(z / width), rtol=1e-5, atol=1e-5)


def test_eikonal_is_zero_on_a_distance_and_grows_as_the_slope_leaves_one():
    """mean((‖∇z‖ − 1)²) on the grid's nodes: z = x → 0; z = 2x → 1; z = 0.5x + 0.5y (slope √0.5) → (√0.5 − 1)²;
    central (and one-sided at the faces) differences are exact on linear functions."""
    from pipeline.config import FieldConfig
    from pipeline.nerf.field import build_field

    f = build_field(FieldConfig(kind="grid", resolution=6, blob="none"))
    axis = torch.linspace(-1, 1, 6)
    zz, yy, xx = torch.meshgrid(axis, axis, axis, indexing="ij")
    for volume, want in ((xx, 0.0), (2 * xx, 1.0), (0.5 * xx + 0.5 * yy, (0.5**0.5 - 1) ** 2)):
        with torch.no_grad():
            f.grid[0, 0] = volume
        assert f.eikonal().item() == pytest.approx(want, abs=1e-6)
    # pyramid levels sum before the term, and the blob is part of z: the linear blob of λ = radius is a distance
    g = build_field(FieldConfig(kind="pyramid", levels=[4, 8], blob_density=0.5, blob_radius=0.5))
    assert g.eikonal().item() < 0.02  # kinks only at the centre node and the one-sided faces
    f.grid.grad = None
    with torch.no_grad():
        f.grid[0, 0] = 2 * xx
    f.eikonal().backward()
    assert f.grid.grad[0, 0].abs().sum() > 0 and f.grid.grad[0, 1:].abs().sum() == 0


def test_sdf_settings_that_contradict_themselves_are_refused():
    from pipeline.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="blob_density equal to nerf.blob_radius"):
        from_dict({"nerf": {"density_activation": "sdf", "blob_density": 10.0, "blob_radius": 0.5}})
    from_dict({"nerf": {"density_activation": "sdf", "blob_density": 0.5, "blob_radius": 0.5, "blob_cap": 0.0}})


def test_curvature_is_the_squared_laplacian_near_the_surface_only():
    """mean((Δz)²) over inner nodes with |z| < band: a plane scores 0, z = x² − 0.3 (Δz = 2, exact for the 7-point
    stencil on a quadratic) scores 4, and nodes beyond the band do not count."""
    from pipeline.config import FieldConfig
    from pipeline.nerf.field import build_field

    f = build_field(FieldConfig(kind="grid", resolution=9, blob="none"))
    axis = torch.linspace(-1, 1, 9)
    zz, yy, xx = torch.meshgrid(axis, axis, axis, indexing="ij")
    with torch.no_grad():
        f.grid[0, 0] = xx - 0.1
    assert f.curvature(band=0.5).item() == pytest.approx(0.0, abs=1e-4)
    with torch.no_grad():
        f.grid[0, 0] = xx**2 - 0.3
    assert f.curvature(band=0.5).item() == pytest.approx(4.0, rel=1e-4)
    # a step of 7 on the x = 0 plane (z −0.3, outside a band of 0.06) changes only nodes outside the band: with the
    # band only the x = ±0.5 planes (z −0.05) count, and their neighbours are x = ±0.25, ±0.75
    with torch.no_grad():
        f.grid[0, 0] = xx**2 - 0.3 + 7 * (xx.abs() < 1e-6)
    assert f.curvature(band=0.06).item() == pytest.approx(4.0, rel=1e-4)
    assert f.curvature(band=10.0).item() > 100


def test_density_scale_multiplies_the_density_channel_only():
    """nerf.density_scale: pre-activation = scale × grid density + blob, on the grid and through the MLP; the albedo
    is untouched, and the eikonal term sees the scaled distance."""
    from pipeline.config import FieldConfig
    from pipeline.nerf.field import build_field

    pts = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]])  # nodes of the 5³ grid
    for extra in ({}, {"features": 8, "mlp_hidden": 8}):
        base = dict(kind="grid", resolution=5, blob="none", density_activation="exp", **extra)
        f1, f2 = build_field(FieldConfig(**base)), build_field(FieldConfig(**base, density_scale=0.25))
        with torch.no_grad():
            if f1.mlp is None:
                f1.grid.fill_(2.0), f2.grid.fill_(2.0)
            else:
                torch.nn.init.zeros_(f1.mlp[2].weight), torch.nn.init.constant_(f1.mlp[2].bias, 2.0)
                f2.load_state_dict(f1.state_dict())
            (s1, a1), (s2, a2) = f1.density_albedo(pts), f2.density_albedo(pts)
        torch.testing.assert_close(s1, torch.full((2,), math.exp(2.0)))
        torch.testing.assert_close(s2, torch.full((2,), math.exp(0.5)))
        torch.testing.assert_close(a1, a2)
    g = build_field(FieldConfig(kind="grid", resolution=6, blob="none", density_scale=0.5))
    axis = torch.linspace(-1, 1, 6)
    with torch.no_grad():
        g.grid[0, 0] = axis.view(1, 1, 6).expand(6, 6, 6)  # x: slope 1, scaled to 0.5
    assert g.eikonal().item() == pytest.approx(0.25, abs=1e-6)


def test_analytic_normals_check_passes_here_and_names_the_fix_where_torch_lacks_the_double_backward(monkeypatch):
    import torch.nn.functional as F
    from torch.autograd.function import once_differentiable

    from pipeline.nerf.field import require_analytic_normals

    require_analytic_normals(torch.device("cpu"))  # the pinned torch has it

    real = F.grid_sample

    class OnceDifferentiable(torch.autograd.Function):  # a grid_sample whose backward cannot be differentiated
        @staticmethod
        def forward(ctx, volume, grid):
            ctx.save_for_backward(volume, grid)
            return real(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

        @staticmethod
        @once_differentiable
        def backward(ctx, g):
            volume, grid = ctx.saved_tensors
            with torch.enable_grad():
                v, p = volume.detach().requires_grad_(), grid.detach().requires_grad_()
                out = real(v, p, mode="bilinear", padding_mode="zeros", align_corners=True)
                return torch.autograd.grad(out, (v, p), g)

    monkeypatch.setattr(F, "grid_sample", lambda volume, grid, **_: OnceDifferentiable.apply(volume, grid))
    with pytest.raises(ValueError, match=r"nerf.normals: analytic needs the double backward of grid_sample") as e:
        require_analytic_normals(torch.device("cpu"))
    assert "Set nerf.lookup: gather" in str(e.value) and "nerf.normals: finite_difference" in str(e.value)
    assert torch.__version__ in str(e.value)


def test_node_terms_of_an_mlp_field_read_its_decoded_density_at_the_nodes():
    """TV, eikonal and curvature act on the pre-activation density on the finest nodes; with an MLP decoder that is
    the decoder's density output at each node (not a raw feature channel): the same number `density_albedo` takes
    through its activation at those points, and the terms' gradients reach the decoder and every level."""
    from pipeline.config import FieldConfig
    from pipeline.nerf.field import blob, build_field

    cfg = FieldConfig(kind="pyramid", levels=[4, 8], features=8, mlp_hidden=16, density_scale=0.5, density_shift=-1.0)
    f = build_field(cfg)
    with torch.no_grad():
        for g in f.levels:
            g.normal_()
    axis = torch.linspace(-cfg.bound, cfg.bound, 8)
    zz, yy, xx = torch.meshgrid(axis, axis, axis, indexing="ij")
    nodes = torch.stack([xx, yy, zz], -1)
    want = (
        0.5 * f.mlp(f._features(nodes))[..., 0]
        + blob(nodes, cfg.blob, cfg.blob_density, cfg.blob_radius, cfg.blob_cap)
        - 1.0
    )
    torch.testing.assert_close(f._node_distance(), want, rtol=1e-5, atol=1e-5)
    sigma, _ = f.density_albedo(nodes)
    torch.testing.assert_close(sigma, torch.nn.functional.softplus(want), rtol=1e-5, atol=1e-5)
    d = f.mlp(f._features(nodes))[..., 0]
    tv = sum(((d.narrow(a, 1, 7) - d.narrow(a, 0, 7)) ** 2).mean() for a in range(3))
    torch.testing.assert_close(f.total_variation(), tv, rtol=1e-5, atol=1e-6)
    (f.total_variation() + f.eikonal() + f.curvature(band=10.0)).backward()
    for p in (*f.levels, *f.mlp.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_light_perturb_zero_puts_the_light_behind_the_camera_and_one_is_dreamfusions_noise():
    from dataclasses import replace

    cfg = CameraConfig()
    head = sample_cameras(replace(cfg, light_perturb=0.0), 16, torch.Generator().manual_seed(0))
    cos = torch.nn.functional.cosine_similarity(head.light, head.position, dim=-1)
    torch.testing.assert_close(cos, torch.ones(16))
    default = sample_cameras(cfg, 16, torch.Generator().manual_seed(0))
    torch.testing.assert_close(default.position, head.position)  # the light's draw leaves the cameras alone
    assert (torch.nn.functional.cosine_similarity(default.light, default.position, dim=-1) < 0.999).all()
