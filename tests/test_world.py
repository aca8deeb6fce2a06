import pytest
import torch

from pipeline.config import from_dict
from pipeline.nerf.cameras import sample_cameras, view_suffix
from pipeline.nerf.renderer import Background, Shading, render
from pipeline.world.prior import ClosedFormWorldPrior, generate_bank
from pipeline.world.scenes import CAPTIONS, COLOURS, PrimitiveField, colourise, parse_caption, render_shape
from tests.conftest import ROOT

SMALL = {"world": {"images_per_caption": 8, "resolution": 16}, "render": {"resolution": 16, "samples": 24}}


def test_captions_are_the_primitives_prompt_file():
    from pipeline.prompts import read_prompt_file

    assert [p.text for p in read_prompt_file(ROOT / "prompts/primitives.txt")] == CAPTIONS
    assert parse_caption("an orange torus.") == ("orange", "torus")
    with pytest.raises(ValueError, match="not a caption of the bundled world"):
        parse_caption("a pink cube.")


def test_bank_is_deterministic_and_labelled():
    cfg = from_dict(SMALL)
    a, b = generate_bank(cfg), generate_bank(cfg)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["images"].shape == (36 * 8, 3, 16, 16) and a["images"].dtype == torch.uint8
    assert torch.bincount(a["caption"]).tolist() == [8] * 36
    other = generate_bank(from_dict({**SMALL, "world": {**SMALL["world"], "seed": 1}}))
    assert not torch.equal(a["images"], other["images"])


def test_bank_modes_add_white_shaded_images_and_leave_the_default_banks_name_alone():
    from pipeline.world.prior import bank_settings

    modes = ["albedo", "lit", "textureless"]
    cfg = from_dict({**SMALL, "world": {**SMALL["world"], "images_per_caption": 9, "bank_modes": modes}})
    bank = generate_bank(cfg)
    assert torch.bincount(bank["mode"]).tolist() == [36 * 3] * 3  # 9 a caption, 3 a mode
    white = bank["images"][bank["mode"] == 2].int()
    assert (white[:, 0] == white[:, 1]).all() and (white[:, 1] == white[:, 2]).all()  # grey, whatever the caption
    assert bank_settings(cfg)["world"]["bank_modes"] == modes
    assert "bank_modes" not in bank_settings(from_dict(SMALL))["world"]  # the default: names as before the key


def test_colourise_equals_a_direct_render():
    cfg = from_dict(SMALL)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    r = render_shape(cfg, "cube", 2, g1)
    cams = sample_cameras(cfg.camera, 2, g2)
    red = COLOURS["red"]
    for mode, shading in [("lit", Shading.lit(2, cfg.shading)), ("albedo", Shading.albedo(2))]:
        direct = render(
            PrimitiveField("cube", red), cams, 16, 24, shading, Background(cfg.render), normal_eps=cfg.render.normal_eps
        ).rgb
        torch.testing.assert_close(colourise(r, red, mode, cfg.render.background_color), direct, atol=1e-5, rtol=0)
    views = [view_suffix(e, a) for e, a in zip(cams.elevation.tolist(), cams.azimuth.tolist(), strict=True)]
    assert len(views) == 2


def test_closed_form_prior_is_the_exact_posterior():
    cfg = from_dict(SMALL)
    prior = ClosedFormWorldPrior(generate_bank(cfg), torch.device("cpu"))
    cond = prior.embed(["a red cube, front view"])
    assert cond.tolist() == [[CAPTIONS.index("a red cube."), 0]]
    assert prior.embed([""]).tolist() == [[-1, -1]]
    with pytest.raises(ValueError, match="knows only the 36 captions"):
        prior.embed(["a dog"])
    # at tiny noise, z_t = α x_i recovers x_i exactly (nearest neighbour), so ε̂ ≈ 0
    x = prior.x[5].view(1, 3, 16, 16)
    cap = int(prior.caption[5])
    t = torch.tensor([0])
    ab = prior.alphas_cumprod[0]
    z = ab.sqrt() * x
    emb = torch.tensor([[cap, -1]])
    torch.testing.assert_close(prior.posterior_mean(z, t, emb), x, atol=1e-5, rtol=0)
    # brute-force posterior mean at a moderate t
    t = torch.tensor([400])
    ab = prior.alphas_cumprod[400]
    z = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    sel = prior.caption == cap
    xs = prior.x[sel]
    logw = -((z.flatten() - ab.sqrt() * xs) ** 2).sum(1) / (2 * (1 - ab))
    expected = (torch.softmax(logw.double(), 0).float()[:, None] * xs).sum(0)
    torch.testing.assert_close(prior.posterior_mean(z, t, emb).flatten(), expected, atol=1e-4, rtol=0)
    ec, eu = prior.predict_noise(z, t, emb, prior.embed([""]))
    torch.testing.assert_close(ec.flatten(), (z.flatten() - ab.sqrt() * expected) / (1 - ab).sqrt(), atol=1e-3, rtol=0)
    assert not torch.allclose(ec, eu)


def test_closed_form_prior_reads_a_larger_render_at_its_bank_size_as_the_2x2_mean():
    """A 4x4 render against the 2x2 bank is the mean of each 2x2 block (SD's encoder resizes renders the same way);
    SDS reaches every render pixel with a quarter of its block's gradient; a 1x1 render is enlarged (bilinear)."""
    prior = ClosedFormWorldPrior(_tiny_bank(), torch.device("cpu"))
    render = torch.arange(48.0).view(1, 3, 4, 4).div(47).requires_grad_()
    x = prior.encode(render)
    blocks = render.detach().view(1, 3, 2, 2, 2, 2).mean((3, 5))  # [b, c, row block, col block]
    torch.testing.assert_close(x, blocks * 2 - 1, atol=1e-6, rtol=0)
    x.sum().backward()
    torch.testing.assert_close(render.grad, torch.full_like(render, 0.5))
    assert prior.encode(torch.full((1, 3, 2, 2), 0.25)).tolist() == [[[[-0.5] * 2] * 2] * 3]
    torch.testing.assert_close(prior.encode(torch.full((1, 3, 1, 1), 0.75)), torch.full((1, 3, 2, 2), 0.5))


def _tiny_bank(seed: int = 0) -> dict[str, torch.Tensor]:
    """4 random 2x2 images of 2 captions with random opacity, over white."""
    g = torch.Generator().manual_seed(seed)
    opacity = torch.rand(4, 2, 2, generator=g)
    fg = torch.rand(4, 3, 2, 2, generator=g) * opacity[:, None]
    images = fg + (1 - opacity[:, None])
    return {
        "images": (images * 255).round().to(torch.uint8),
        "opacity": (opacity * 255).round().to(torch.uint8),
        "background": torch.ones(3),
        "caption": torch.tensor([0, 0, 1, 1]),
        "view": torch.zeros(4, dtype=torch.long),
        "mode": torch.zeros(4, dtype=torch.long),
    }


@pytest.mark.parametrize("t", [0, 150, 600, 999])
def test_any_background_prior_is_the_exact_posterior_with_the_colour_integrated_out(t):
    """Brute force over the joint Gaussian (z, b) per image: the marginal likelihood with the full covariance
    σ²I + α²s² (I_3 ⊗ u uᵀ), b's posterior mean by Gaussian conditioning; the prior's closed form must agree."""
    from pipeline.world.prior import BACKGROUND_VAR

    bank = _tiny_bank()
    prior = ClosedFormWorldPrior(bank, torch.device("cpu"), background="any")
    ab = prior.alphas_cumprod[t].double()
    a, var, s2 = ab.sqrt(), 1 - ab, BACKGROUND_VAR
    x = bank["images"].double() / 127.5 - 1
    u = 1 - bank["opacity"].double().flatten(1) / 255  # [4, 4]
    g = x.flatten(2) - u[:, None]  # over white: x = g + u·(+1)
    z = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for emb, rows in [(torch.tensor([[1, -1]]), [2, 3]), (torch.tensor([[-1, -1]]), [0, 1, 2, 3])]:
        for zi in z:
            logp, means = [], []
            for i in rows:
                cov_c = var * torch.eye(4, dtype=torch.float64) + a**2 * s2 * torch.outer(u[i], u[i])
                cov = torch.block_diag(cov_c, cov_c, cov_c)
                r = zi.flatten() - a * g[i].flatten()
                mvn = torch.distributions.MultivariateNormal(torch.zeros(12, dtype=torch.float64), cov)
                logp.append(mvn.log_prob(r))
                b = s2 * a * torch.block_diag(u[i][None], u[i][None], u[i][None]) @ torch.linalg.solve(cov, r)  # [3]
                means.append(g[i] + b[:, None] * u[i][None])
            w = torch.softmax(torch.stack(logp), 0)
            expected = (w[:, None, None] * torch.stack(means)).sum(0).view(1, 3, 2, 2)
            got = prior.posterior_mean(zi[None].float(), torch.tensor([t]), emb)
            torch.testing.assert_close(got.double(), expected, atol=2e-4, rtol=0)


def test_any_background_prior_explains_a_coloured_background_the_fixed_one_paints_over():
    """At tiny noise a bank object over a colour it was never rendered over is its own denoised image under `any`;
    the fixed prior returns it over white (the target that makes SDS paint density into the background)."""
    cfg = from_dict(SMALL)
    bank = generate_bank(cfg)
    assert bank["opacity"].shape == (36 * 8, 16, 16) and bank["opacity"].dtype == torch.uint8
    i = 37
    x_white = bank["images"][i].float() / 127.5 - 1
    u = 1 - bank["opacity"][i].float() / 255
    teal = torch.tensor([0.1, 0.6, 0.5]) * 2 - 1
    x_teal = (x_white - u * (1 - teal[:, None, None]))[None]  # the same object over teal
    t = torch.tensor([0])
    z = ClosedFormWorldPrior(bank, torch.device("cpu")).alphas_cumprod[0].sqrt() * x_teal
    emb = torch.tensor([[int(bank["caption"][i]), -1]])
    any_bg = ClosedFormWorldPrior(bank, torch.device("cpu"), background="any").posterior_mean(z, t, emb)
    torch.testing.assert_close(any_bg, x_teal, atol=2e-2, rtol=0)
    fixed = ClosedFormWorldPrior(bank, torch.device("cpu")).posterior_mean(z, t, emb)
    corner = (0, slice(None), 0, 0)  # a background pixel
    assert float(u[0, 0]) == 1.0
    torch.testing.assert_close(fixed[corner], torch.ones(3), atol=2e-2, rtol=0)  # white, not teal


def test_world_background_is_the_closed_form_priors_setting():
    from pipeline.config import ConfigError
    from pipeline.world.prior import bank_digest

    assert bank_digest(from_dict({"world": {"background": "any"}})) == bank_digest(from_dict({}))  # the same bank
    from pipeline.guidance import build_guidance

    cfg = from_dict({**SMALL, "world": {**SMALL["world"], "background": "any"}})
    assert build_guidance(cfg, torch.device("cpu")).any_background
    assert not build_guidance(from_dict(SMALL), torch.device("cpu")).any_background
    with pytest.raises(ConfigError, match="world.background=any is a setting of the closed-form world prior"):
        from_dict({"world": {"background": "any"}, "guidance": {"name": "world-unet"}})


def test_ground_truth_objects_equal_direct_renders_of_each_caption():
    """Ground truth renders each shape once in white and colours it; that equals rendering every caption."""
    from pipeline.evaluate import ground_truth_objects
    from pipeline.nerf.cameras import orbit_cameras
    from pipeline.nerf.model import Model
    from pipeline.views import eval_azimuths, render_views

    cfg = from_dict({"views": {"resolution": 16, "samples": 24, "azimuths": 3}})
    captions = ["a red cube.", "an orange torus.", "a blue cube."]
    objects = ground_truth_objects(cfg, captions)
    cams = orbit_cameras(cfg.camera, eval_azimuths(3))
    for text, obj in zip(captions, objects, strict=True):
        colour, shape = parse_caption(text)
        model = Model(cfg)
        model.field = PrimitiveField(shape, COLOURS[colour], bound=cfg.nerf.bound)
        direct = render_views(model, cfg, cams, 16, 24)
        assert obj["text"] == text
        torch.testing.assert_close(obj["views"]["color"], direct["color"], atol=1e-5, rtol=0)
        torch.testing.assert_close(obj["views"]["geo"], direct["textureless"], atol=1e-6, rtol=0)
