"""Janus counter-measures: negative prompts, view-dependent negatives and Perp-Neg (pipeline/guidance/prompting.py)."""

import math

import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import ConfigError, from_dict
from pipeline.guidance import build_guidance
from pipeline.guidance.base import Guidance
from pipeline.guidance.prompting import ViewPrompter, perp_neg_combine, perpendicular
from pipeline.sds import cfg_combine, sds_from_x
from pipeline.train import train
from tests.conftest import ROOT
from tests.tiny_models import save_tiny_sd

TEXTS = [
    "",
    "a red cube, front view",
    "a red cube, side view",
    "a red cube, back view",
    "a red cube, overhead view",
    "ugly",
    "ugly, back view",
    "ugly, front view",
    "ugly, front view, back view",
    "ugly, bottom view",
]


class OneHot(Guidance):
    """Embeds each known text as a one-hot vector, so interpolations can be read off exactly."""

    kind = "pixel"

    def __init__(self):
        super().__init__()
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.alphas_cumprod = torch.linspace(0.999, 0.001, 1000)

    def _encode_text(self, texts):
        return torch.nn.functional.one_hot(torch.tensor([TEXTS.index(t) for t in texts]), len(TEXTS)).float()

    def encode(self, images):
        return images * 2 - 1

    def predict_noise(self, z_t, t, cond, uncond):
        return z_t * cond.sum(1).view(-1, 1, 1, 1), z_t * 0.5


def onehot(text):
    return torch.nn.functional.one_hot(torch.tensor(TEXTS.index(text)), len(TEXTS)).float()


def f(a, b, c, r):
    return a * math.exp(-b * r) + c


def test_perpendicular_component_is_orthogonal_and_exact():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    p = perpendicular(x, y)
    assert torch.allclose((p * y).sum((1, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(perpendicular(y, y), torch.zeros_like(y), atol=1e-5)
    assert torch.equal(perpendicular(x, torch.zeros_like(y)), x)  # nothing to project on: x unchanged
    assert torch.allclose(perpendicular(2 * y + p, y), p, atol=1e-5)  # the parallel part is removed exactly


def test_perp_neg_without_negatives_is_classifier_free_guidance():
    g = torch.Generator().manual_seed(1)
    eps_c, eps_u = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    neg = torch.randn(2, 2, 4, 8, 8, generator=g)
    zero = torch.zeros(2, 2)
    # weights 0: plain CFG in either convention (dreamfusion ω ↔ diffusers s = ω + 1)
    assert torch.allclose(perp_neg_combine(eps_u, eps_c, neg, zero, 7.5), cfg_combine(eps_c, eps_u, 7.5, "diffusers"))
    assert torch.allclose(
        perp_neg_combine(eps_u, eps_c, neg, zero, 100 + 1), cfg_combine(eps_c, eps_u, 100, "dreamfusion"), atol=1e-4
    )
    # a negative along the positive direction has no perpendicular part: no effect whatever its weight
    along = eps_u[:, None] + 3 * (eps_c - eps_u)[:, None].expand(2, 2, 4, 8, 8)
    out = perp_neg_combine(eps_u, eps_c, along, torch.full((2, 2), -2.0), 7.5)
    assert torch.allclose(out, cfg_combine(eps_c, eps_u, 7.5, "diffusers"), atol=1e-4)
    # a perpendicular negative is subtracted at its weight times the scale
    e_pos = eps_c - eps_u
    perp = perpendicular(torch.randn(2, 4, 8, 8, generator=g), e_pos)
    neg1 = torch.stack([eps_u + perp, eps_u], 1)
    out = perp_neg_combine(eps_u, eps_c, neg1, torch.tensor([[-1.5, 0.0], [-1.5, 0.0]]), 7.5)
    assert torch.allclose(out, eps_u + 7.5 * (e_pos - 1.5 * perp), atol=1e-4)


def test_perp_neg_interpolates_views_with_threestudios_weights():
    cfg = from_dict({"guidance": {"name": "world-unet", "perp_neg": True}}).guidance
    p = ViewPrompter(OneHot(), "a red cube.", cfg)
    front, side, back = (onehot(f"a red cube, {v} view") for v in ("front", "side", "back"))
    c = p([30.0, 30.0, 30.0, 30.0, 75.0], [0.0, 45.0, 180.0, 270.0, 0.0])
    assert c.negatives.shape == (5, 2, len(TEXTS)) and c.neg_weights.shape == (5, 2)
    fs = lambda r: f(4, 0.5, -2.426, r)  # noqa: E731  threestudio perp_neg_f_fs = perp_neg_f_sf
    expected_cond = [front, 0.5 * front + 0.5 * side, back, side, onehot("a red cube, overhead view")]
    for got, want in zip(c.cond, expected_cond, strict=True):
        assert torch.allclose(got, want)
    expected_w = [
        [-fs(1.0), -fs(0.0)],  # fully front: the front prompt is not a negative (f_fs(1) ≈ 0), side is at 1.574
        [-fs(0.5), -fs(0.5)],
        [-f(1, 0.5, -0.606, 0.0), -f(1, 0.5, 0.967, 0.0)],  # fully back: side 0.394, front 1.967
        [-f(1, 0.5, -0.606, 1.0), -f(1, 0.5, 0.967, 1.0)],  # azimuth 270 = −90: fully side, on the back branch
        [0.0, 0.0],  # overhead: plain CFG
    ]
    assert torch.allclose(c.neg_weights, torch.tensor(expected_w), atol=1e-6)
    assert c.neg_weights[0, 1].item() == pytest.approx(-1.574, abs=1e-3)
    assert torch.equal(c.negatives[0, 0], front) and torch.equal(c.negatives[0, 1], side)
    assert torch.equal(c.negatives[2, 0], side) and torch.equal(c.negatives[2, 1], front)
    assert torch.equal(c.uncond, onehot("").expand(5, -1))


def test_negative_prompt_and_view_negatives():
    cfg = from_dict({"guidance": {"name": "world-unet", "negative_prompt": "ugly", "negative_view_prompts": True}})
    p = ViewPrompter(OneHot(), "a red cube.", cfg.guidance)
    assert set(p.texts()) == {
        "a red cube, front view",
        "a red cube, side view",
        "a red cube, back view",
        "a red cube, overhead view",
        "ugly, back view",
        "ugly, front view, back view",
        "ugly, front view",
        "ugly, bottom view",
    }
    c = p([0.0, 0.0, 0.0, 80.0], [10.0, 90.0, 200.0, 0.0])
    assert c.negatives is None
    for got, text in zip(
        c.uncond,
        ["ugly, back view", "ugly, front view, back view", "ugly, front view", "ugly, bottom view"],
        strict=True,
    ):
        assert torch.equal(got, onehot(text))
    # only the negative prompt: the same text for every view
    plain = ViewPrompter(OneHot(), "a red cube.", from_dict({"guidance": {"negative_prompt": "ugly"}}).guidance)
    assert torch.equal(plain([0.0, 0.0], [0.0, 180.0]).uncond, onehot("ugly").expand(2, -1))


def test_defaults_condition_exactly_as_before():
    """No negatives, no Perp-Neg: the prompt with its view suffix against "" (the published runs' conditioning)."""
    p = ViewPrompter(OneHot(), "a red cube.", from_dict({}).guidance)
    c = p([30.0, 70.0], [100.0, 0.0])
    assert torch.equal(c.cond, torch.stack([onehot("a red cube, side view"), onehot("a red cube, overhead view")]))
    assert torch.equal(c.uncond, onehot("").expand(2, -1)) and c.negatives is None
    assert p.texts() == ["a red cube, front view", "a red cube, side view", "a red cube, back view",
                         "a red cube, overhead view", ""]  # fmt: skip


def test_config_refuses_what_cannot_work():
    with pytest.raises(ConfigError, match="guidance.perp_neg needs a prior with a text encoder"):
        from_dict({"guidance": {"name": "world", "perp_neg": True}})
    with pytest.raises(ConfigError, match="guidance.negative_view_prompts needs a prior with a text encoder"):
        from_dict({"guidance": {"name": "world", "negative_view_prompts": True}})
    with pytest.raises(ConfigError, match="needs guidance.view_suffix: true"):
        from_dict({"guidance": {"name": "world-unet", "perp_neg": True, "view_suffix": False}})


def test_sd_batches_the_negatives_in_one_unet_call(tmp_path):
    """Tiny random SD: the (2 + K)·B batch gives the same ε as separate calls, and SDS with Perp-Neg equals the
    combination computed by hand."""
    cfg = from_dict(
        {
            "guidance": {
                "name": "stable-diffusion",
                "model": str(save_tiny_sd(tmp_path / "sd")),
                "latent_resolution": 16,
                "perp_neg": True,
                "scale": 20.0,
                "convention": "diffusers",
            }
        }
    )
    sd = build_guidance(cfg, torch.device("cpu"))
    calls = []
    sd.unet.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    prompter = ViewPrompter(sd, "a red cube", cfg.guidance)
    c = prompter([20.0, 20.0], [30.0, 150.0])
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(2, 4, 2, 2, generator=g), torch.randn(2, 4, 2, 2, generator=g)
    t = torch.tensor([300, 700])
    z_t = (
        sd.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1) * x + (1 - sd.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1) * noise
    )
    eps_c, eps_u, eps_neg = sd.predict_noise_negatives(z_t, t, c.cond, c.uncond, c.negatives)
    assert calls == [8]  # one U-Net call: 2 views × (cond, uncond, 2 negatives)
    ref_c, ref_u = sd.predict_noise(z_t, t, c.cond, c.uncond)
    ref_n = [sd.predict_noise(z_t, t, c.negatives[:, k], c.uncond)[0] for k in range(2)]
    # float32 kernels may sum a batch of 8 in another order than a batch of 2 (up to ~1e-4 apart on some CPUs);
    # a row given the wrong text would be ~0.1 off
    assert torch.allclose(eps_c, ref_c, atol=1e-3) and torch.allclose(eps_u, ref_u, atol=1e-3)
    assert torch.allclose(eps_neg, torch.stack(ref_n, 1), atol=1e-3)
    out = sds_from_x(sd, x.requires_grad_(), c.cond, c.uncond, t, noise, cfg.guidance, 0, c.negatives, c.neg_weights)
    e_pos = eps_c - eps_u
    direction = e_pos + sum(c.neg_weights[:, k].view(-1, 1, 1, 1) * perpendicular(eps_neg[:, k] - eps_u, e_pos)
                            for k in range(2))  # fmt: skip
    w = (1 - sd.alphas_cumprod[t]).view(-1, 1, 1, 1)
    assert torch.allclose(out.grad, w * (eps_u + 20.0 * direction - noise), atol=1e-4)
    assert not torch.allclose(out.grad, w * (cfg_combine(eps_c, eps_u, 20.0, "diffusers") - noise), atol=1e-3)


def test_training_with_perp_neg_and_negatives_on_the_learned_prior(tmp_path):
    """A short run on the bundled learned prior with every counter-measure on: finite, logged, deterministic."""
    params = {
        "guidance": {"name": "world-unet", "model": str(ROOT / "models" / "world-unet"), "perp_neg": True,
                     "negative_prompt": "a blue cube", "negative_view_prompts": True},
        "render": {"resolution": 32, "samples": 16},
        "nerf": {"levels": [4, 8, 12], "unlock_steps": [0, 2]},
        "shading": {"albedo_steps": 2},
        "train": {"steps": 4, "batch_views": 2, "checkpoint_every": 100, "warmup_steps": 1},
        "tracking": {"enabled": False},
    }  # fmt: skip
    cfg = from_dict(params)
    a = train(cfg, "a-red-cube", "a red cube.", 0, tmp_path / "a")
    b = train(cfg, "a-red-cube", "a red cube.", 0, tmp_path / "b")
    assert a["steps"] == 4 and math.isfinite(a["final_loss"])
    wa, wb = (load_file(tmp_path / d / "model.safetensors") for d in "ab")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    unet = {"name": "world-unet", "model": params["guidance"]["model"]}
    plain = train(from_dict({**params, "guidance": unet}), "a-red-cube", "a red cube.", 0, tmp_path / "c")
    assert plain["final_loss"] != a["final_loss"]  # the counter-measures change what the prior asks for
    assert b["final_loss"] == a["final_loss"]


def test_if_negatives_drop_the_variance_channels(tmp_path):
    """Tiny random IF (T5 embeddings, 6 output channels): the batched negatives match separate calls."""
    from tests.tiny_models import save_tiny_if

    cfg = from_dict(
        {"guidance": {"name": "deepfloyd-if", "model": str(save_tiny_if(tmp_path / "if")), "perp_neg": True}}
    )
    g = build_guidance(cfg, torch.device("cpu"))
    c = ViewPrompter(g, "a red cube", cfg.guidance)([10.0], [120.0])
    z_t, t = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    z_t = torch.nn.functional.interpolate(z_t, g.unet.config.sample_size)
    eps_c, eps_u, eps_neg = g.predict_noise_negatives(z_t, t, c.cond, c.uncond, c.negatives)
    assert eps_neg.shape == (1, 2, *z_t.shape[1:])
    ref = [g.predict_noise(z_t, t, c.negatives[:, k], c.uncond)[0] for k in range(2)]
    assert torch.allclose(eps_neg, torch.stack(ref, 1), atol=1e-5)
    assert torch.allclose(eps_c, g.predict_noise(z_t, t, c.cond, c.uncond)[0], atol=1e-5)
