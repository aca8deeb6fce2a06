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


def test_ground_truth_objects_equal_direct_renders_of_each_caption():
    """Ground truth renders each shape once in white and colours it; that equals rendering every caption."""
    from pipeline.evaluate import ground_truth_objects
    from pipeline.nerf.cameras import orbit_cameras
    from pipeline.train import Model
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
