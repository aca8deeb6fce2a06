"""The bundled latent prior (models/world-ldm): Stable Diffusion's layout and code path, on a prior that means
something. Its trainer is deterministic and resumes exactly; the committed weights load through
`StableDiffusionGuidance` and `StableDiffusionPipeline.from_pretrained`; SDS through the VAE is finite, deterministic
and moves a render toward its caption; the card's VAE number is reproduced by the card's command."""

import json

import pytest
import torch
import yaml

from pipeline.config import from_dict, load
from pipeline.guidance import build_guidance
from pipeline.sds2d import optimise_image
from tests.conftest import ROOT

BUNDLED = ROOT / "models" / "world-ldm"
PRESET = ROOT / "configs" / "world-latent.yaml"


def preset_config():
    """The world-latent preset on top of params.yaml, as the workflow resolves it."""
    d = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in yaml.safe_load(PRESET.read_text()).items():
        d[key] = {**d.get(key, {}), **value} if isinstance(value, dict) else value
    d["guidance"]["model"] = str(BUNDLED)
    return from_dict(d)


@pytest.fixture(scope="module")
def bundled():
    return build_guidance(preset_config(), torch.device("cpu"))


def test_trainer_is_deterministic_and_resumes_exactly(tmp_path):
    from pipeline.world.ldm import train

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"world": {"images_per_caption": 2, "resolution": 16}}))
    kw = {"vae_steps": 3, "unet_steps": 3, "batch": 4, "checkpoint_every": 100}
    straight = train(str(params), tmp_path / "a" / "world-ldm", **kw)
    for until in (2, 4):  # stopped inside the VAE phase, then inside the U-Net phase
        part = train(str(params), tmp_path / "b" / "world-ldm", **kw, until=until)
        assert part["steps"] == until and not (tmp_path / "b" / "world-ldm").exists()
    resumed = train(str(params), tmp_path / "b" / "world-ldm", **kw)
    assert resumed["sha256"] == straight["sha256"]
    assert resumed["loss_every_100"] == straight["loss_every_100"]
    assert resumed["scaling_factor"] == straight["scaling_factor"]
    assert not (tmp_path / "b" / ".world-ldm.ckpt.pt").exists()
    # what it writes is a Stable Diffusion directory: the SD guidance loads it (verifying its checksums)
    cfg = from_dict({"guidance": {"name": "stable-diffusion", "model": str(tmp_path / "b" / "world-ldm")}})
    g = build_guidance(cfg, torch.device("cpu"))
    assert type(g).__name__ == "StableDiffusionGuidance" and g.kind == "latent"
    assert g.vae.config.scaling_factor == pytest.approx(straight["scaling_factor"], abs=1e-5)


def test_bundled_prior_is_a_stable_diffusion_directory(bundled):
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    index = json.loads((BUNDLED / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert type(bundled).__name__ == "StableDiffusionGuidance" and bundled.kind == "latent"
    assert isinstance(bundled.vae, AutoencoderKL) and isinstance(bundled.unet, UNet2DConditionModel)
    assert bundled.prediction_type == "epsilon" and bundled.num_timesteps == 1000
    # SD 2.1-base's schedule: scaled-linear β 0.00085 … 0.012 (ᾱ at the last step 0.0047)
    assert float(bundled.alphas_cumprod[-1]) == pytest.approx(0.00466, abs=1e-4)
    pipe = StableDiffusionPipeline.from_pretrained(BUNDLED, safety_checker=None)
    assert isinstance(pipe.scheduler, DDPMScheduler) and pipe.vae_scale_factor == 2
    card = json.loads((BUNDLED / "train.json").read_text())
    assert pipe.vae.config.scaling_factor == pytest.approx(card["scaling_factor"], abs=1e-5)
    assert sum(f.stat().st_size for f in BUNDLED.rglob("*") if f.is_file()) < 20e6


def test_vae_latents_are_unit_scale_and_carry_gradients(bundled):
    """The encoder path SD uses in SDS: a 32×32 render resized to latent_resolution, encoded, scaled. The scaled
    latents of world renders have std ≈ 1 (what scaling_factor is for), and the gradient reaches the render."""
    from pipeline.world.prior import generate_bank

    cfg = load(ROOT / "params.yaml")
    cfg.world.images_per_caption = 2
    images = (generate_bank(cfg, seed=321)["images"].float() / 255).requires_grad_(True)
    z = bundled.encode(images)
    assert z.shape == (len(images), 4, 16, 16) and z.dtype == torch.float32
    assert 0.8 < float(z.detach().std()) < 1.25
    z.square().mean().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_sds_through_the_vae_is_finite_deterministic_and_moves_toward_the_caption(bundled):
    """40 steps of 2D SDS from grey through the whole SD path (resize, VAE encode with gradients, scaled latent):
    the same numbers twice, finite, and the world evaluator (at its own logit scale) gives the caption's colour a
    clearly higher probability than it gives the grey start (measured: 0.18 → 0.29 at ω = 100, 0.31 at ω = 7.5)."""
    from pipeline.evaluate import ClipScorer
    from pipeline.world.scenes import CAPTIONS

    cfg = preset_config()
    a, _ = optimise_image(bundled, cfg, "a red sphere, front view", 40, 32, lr=0.05, seed=0)
    b, _ = optimise_image(bundled, cfg, "a red sphere, front view", 40, 32, lr=0.05, seed=0)
    assert torch.isfinite(a).all() and torch.equal(a, b)
    scorer = ClipScorer(str(ROOT / "models" / "world-clip" / "world-clip.pt"), torch.device("cpu"))
    txt = scorer.texts(CAPTIONS)
    red = [i for i, c in enumerate(CAPTIONS) if c.split()[1] == "red"]
    scale = float(scorer.model.logit_scale.detach().exp())

    def p_red(img: torch.Tensor) -> float:
        return float((scale * scorer.images(img[None]) @ txt.T).softmax(-1)[0, red].sum())

    assert p_red(a) > 1.4 * p_red(torch.full((3, 32, 32), 0.5))


def test_card_vae_number_is_reproduced_by_its_command(bundled):
    """The card's VAE reconstruction PSNR comes from `python -m pipeline.world.measure --ldm models/world-ldm`; a
    smaller held-out sample from the same function lands within 1 dB of it."""
    from pipeline.world.measure import vae_reconstruction

    card = json.loads((BUNDLED / "quality.json").read_text())["vae_reconstruction"]
    got = vae_reconstruction(bundled, load(ROOT / "params.yaml"), per_shape=20)
    assert got["psnr_db"] == pytest.approx(card["psnr_db"], abs=1.0)
    assert got["latent_std"] == pytest.approx(card["latent_std"], abs=0.1)


def test_a_latent_resolution_the_model_cannot_divide_is_refused_at_load():
    """36 px → 18×18 latents, which the U-Net's two down blocks cannot halve twice: refused when the guidance is
    built, naming the key and the sizes that work, instead of a shape error inside the first training step."""
    from pipeline.guidance import GuidanceLoadError

    cfg = preset_config()
    cfg.guidance.latent_resolution = 36
    with pytest.raises(GuidanceLoadError, match=r"latent_resolution 36 .* multiple of 8 .*trained at 32"):
        build_guidance(cfg, torch.device("cpu"))
