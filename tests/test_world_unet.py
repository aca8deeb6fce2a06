"""The learned world prior: its trainer (deterministic, resumable) and the committed weights (load, denoise,
checksum)."""

import json
import shutil

import pytest
import torch
import yaml

from pipeline.config import from_dict, load
from pipeline.guidance import GuidanceLoadError, build_guidance
from pipeline.world.prior import generate_bank
from tests.conftest import ROOT

BUNDLED = ROOT / "models" / "world-unet"


@pytest.fixture(scope="module")
def bundled():
    cfg = from_dict({"guidance": {"name": "world-unet", "model": str(BUNDLED)}})
    return build_guidance(cfg, torch.device("cpu"))


def test_trainer_is_deterministic_and_resumes_exactly(tmp_path):
    from pipeline.world.unet import train

    params = tmp_path / "params.yaml"
    tiny = {"world": {"images_per_caption": 2, "resolution": 16}, "render": {"resolution": 16}}
    params.write_text(yaml.safe_dump(tiny))
    straight = train(str(params), tmp_path / "a" / "world-unet", steps=4, batch=4, checkpoint_every=100)
    part = train(str(params), tmp_path / "b" / "world-unet", steps=4, batch=4, checkpoint_every=100, until=2)
    assert part["steps"] == 2 and not (tmp_path / "b" / "world-unet").exists()
    resumed = train(str(params), tmp_path / "b" / "world-unet", steps=4, batch=4, checkpoint_every=100)
    assert resumed["sha256"] == straight["sha256"]
    assert resumed["loss_every_100"] == straight["loss_every_100"]
    assert not (tmp_path / "b" / ".world-unet.ckpt.pt").exists()
    # the written directory is a pipeline the guidance loader accepts (and whose checksums it verifies)
    cfg = from_dict({"guidance": {"name": "world-unet", "model": str(tmp_path / "b" / "world-unet")}})
    g = build_guidance(cfg, torch.device("cpu"))
    assert g.prediction_type == "v_prediction" and g.num_timesteps == 1000


def test_bundled_weights_denoise_the_world(bundled):
    """At t = 500 (ᾱ ≈ 0.08, mostly noise) the committed model's ε̂ for a world image is far better than chance
    (predicting 0 has MSE 1; measured 0.0034) and its caption helps: the conditional ε̂ beats the unconditional one
    (measured 0.0047)."""
    cfg = load(ROOT / "params.yaml")
    cfg.world.images_per_caption = 2
    bank = generate_bank(cfg, seed=123)
    x0 = bank["images"][:36].float() / 127.5 - 1
    from pipeline.world.scenes import CAPTIONS

    texts = [CAPTIONS[c].rstrip(".") for c in bank["caption"][:36].tolist()]
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(x0.shape, generator=g)
    t = torch.full((36,), 500)
    ab = bundled.alphas_cumprod[t].view(-1, 1, 1, 1)
    z = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    eps_c, eps_u = bundled.predict_noise(z, t, bundled.embed(texts), bundled.embed([""] * 36))
    mse_c, mse_u = ((eps_c - eps) ** 2).mean().item(), ((eps_u - eps) ** 2).mean().item()
    print(f"eps MSE at t=500: conditional {mse_c:.4f}, unconditional {mse_u:.4f}")
    assert mse_c < 0.02, mse_c
    assert mse_c < mse_u, (mse_c, mse_u)


def test_bundled_weights_are_checksummed(tmp_path):
    record = json.loads((BUNDLED / "train.json").read_text())
    assert set(record["sha256"]) == {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"}
    copy = shutil.copytree(BUNDLED, tmp_path / "world-unet")
    cfg = from_dict({"guidance": {"name": "world-unet", "model": str(copy)}})
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(GuidanceLoadError, match=r"diffusion_pytorch_model.safetensors: sha256 .*git checkout"):
        build_guidance(cfg, torch.device("cpu"))
    weights.unlink()
    with pytest.raises(GuidanceLoadError, match=r"diffusion_pytorch_model.safetensors: missing"):
        build_guidance(cfg, torch.device("cpu"))
