import subprocess
import sys

import pytest
import torch

from pipeline.config import from_dict
from pipeline.guidance import GuidanceLoadError, build_guidance
from pipeline.guidance.base import pick_dtype
from tests.tiny_models import save_tiny_if, save_tiny_sd


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return save_tiny_sd(root / "sd"), save_tiny_if(root / "if")


def test_tiny_sd_and_if_load_through_the_factory(tiny_dirs):
    sd_dir, if_dir = tiny_dirs
    cpu = torch.device("cpu")
    sd = build_guidance(
        from_dict({"guidance": {"name": "stable-diffusion", "model": str(sd_dir), "latent_resolution": 16}}), cpu
    )
    assert sd.kind == "latent" and sd.num_timesteps == 1000 and sd.unet.dtype == torch.float32
    x = sd.encode(torch.rand(2, 3, 32, 32))
    assert x.shape == (2, 4, 8, 8)
    ec, eu = sd.predict_noise(x, torch.tensor([1, 999]), sd.embed(["a", "b"]), sd.embed(["", ""]))
    assert ec.shape == eu.shape == x.shape and not torch.equal(ec, eu)

    fi = build_guidance(from_dict({"guidance": {"name": "deepfloyd-if", "model": str(if_dir)}}), cpu)
    assert fi.kind == "pixel"
    x = fi.encode(torch.rand(1, 3, 64, 64))
    assert x.shape == (1, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    ec, _ = fi.predict_noise(x, torch.tensor([500]), fi.embed(["a"]), fi.embed([""]))
    assert ec.shape == (1, 3, 16, 16)  # variance channels dropped


def test_text_embeddings_are_cached(tiny_dirs):
    sd = build_guidance(
        from_dict({"guidance": {"name": "stable-diffusion", "model": str(tiny_dirs[0]), "latent_resolution": 16}}),
        torch.device("cpu"),
    )
    a = sd.embed(["a red cube, front view"])
    assert list(sd._text_cache) == ["a red cube, front view"]
    assert torch.equal(sd.embed(["a red cube, front view"]), a)


def test_loads_offline_in_a_fresh_process(tiny_dirs):
    code = (
        "import torch; from pipeline.guidance.stable_diffusion import StableDiffusionGuidance as G; "
        f"g = G({str(tiny_dirs[0])!r}, torch.device('cpu'), torch.float32, 16); print(g.num_timesteps)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert out.stdout.strip() == "1000"


def test_missing_hub_model_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = from_dict({"guidance": {"name": "deepfloyd-if"}})
    with pytest.raises(GuidanceLoadError) as err:
        build_guidance(cfg, torch.device("cpu"))
    msg = str(err.value)
    assert (
        "DeepFloyd/IF-I-XL-v1.0" in msg
        and "`hf download DeepFloyd/IF-I-XL-v1.0 --include 'model_index.json'" in msg  # only what this run loads
        and "--include 'unet/*.safetensors'" in msg
        and "huggingface-cli" not in msg
        and "accept the licence" in msg
    )


def test_wrong_path_and_non_diffusers_folder(tmp_path):
    cfg = from_dict({"guidance": {"name": "stable-diffusion", "model": str(tmp_path / "nope")}})
    with pytest.raises(GuidanceLoadError, match="no such directory"):
        build_guidance(cfg, torch.device("cpu"))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "weights.bin").write_bytes(b"x")
    cfg = from_dict({"guidance": {"name": "stable-diffusion", "model": str(tmp_path / "plain")}})
    with pytest.raises(GuidanceLoadError, match="not a diffusers pipeline directory"):
        build_guidance(cfg, torch.device("cpu"))


def test_corrupted_component_is_a_clear_error(tmp_path):
    root = save_tiny_sd(tmp_path / "sd")
    (root / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    cfg = from_dict({"guidance": {"name": "stable-diffusion", "model": str(root), "latent_resolution": 16}})
    with pytest.raises(GuidanceLoadError, match="could not load diffusers.UNet2DConditionModel"):
        build_guidance(cfg, torch.device("cpu"))


def test_dtype_policy():
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("auto", torch.device("cuda")) == torch.float16
    assert pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_compile_setting_wraps_the_unet_and_refuses_cuda_graphs_on_cpu(tiny_dirs, monkeypatch):
    from pipeline.config import ConfigError

    _, if_dir = tiny_dirs
    cpu = torch.device("cpu")
    calls = []

    def fake_compile(module, mode=None):
        calls.append(mode)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    plain = build_guidance(from_dict({"guidance": {"name": "deepfloyd-if", "model": str(if_dir)}}), cpu)
    assert calls == []
    cfg = from_dict({"guidance": {"name": "deepfloyd-if", "model": str(if_dir), "compile": "default"}})
    compiled = build_guidance(cfg, cpu)
    assert calls == [None] and type(compiled.unet) is type(plain.unet)
    cfg = from_dict({"guidance": {"name": "deepfloyd-if", "model": str(if_dir), "compile": "reduce-overhead"}})
    with pytest.raises(GuidanceLoadError, match="guidance.compile=reduce-overhead.*CUDA device"):
        build_guidance(cfg, cpu)
    with pytest.raises(ConfigError, match="guidance.compile=default applies to U-Net priors"):
        from_dict({"guidance": {"name": "world", "compile": "default"}})


@pytest.mark.slow
def test_compiled_unet_predicts_the_same_noise(tiny_dirs):
    """torch.compile (inductor on CPU) gives the eager U-Net's ε to float tolerance."""
    _, if_dir = tiny_dirs
    cpu = torch.device("cpu")
    eager = build_guidance(from_dict({"guidance": {"name": "deepfloyd-if", "model": str(if_dir)}}), cpu)
    cfg = from_dict({"guidance": {"name": "deepfloyd-if", "model": str(if_dir), "compile": "default"}})
    compiled = build_guidance(cfg, cpu)
    x = eager.encode(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    t = torch.tensor([100, 800])
    args = (x, t, eager.embed(["a", "b"]), eager.embed(["", ""]))
    for a, b in zip(eager.predict_noise(*args), compiled.predict_noise(*args), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_if_loads_its_real_t5_tokenizer_and_pads_to_77(tiny_dirs):
    """IF ships a T5Tokenizer with only spiece.model (needs sentencepiece) and no model_max_length (padding to it
    overflowed); IF's pipeline and threestudio pad T5 prompts to 77 tokens."""
    from transformers import T5Tokenizer

    fi = build_guidance(
        from_dict({"guidance": {"name": "deepfloyd-if", "model": str(tiny_dirs[1])}}), torch.device("cpu")
    )
    assert isinstance(fi.tokenizer, T5Tokenizer) and fi.tokenizer.model_max_length > 10**20
    emb = fi.embed(["a red cube, front view", "a squirrel eating a burger"])
    assert emb.shape == (2, 77, 32) and torch.isfinite(emb).all()
    ids = fi.tokenizer(["a red cube"], padding="max_length", max_length=77).input_ids[0]
    assert ids[:4] != [0, 0, 0, 0] and ids[-1] == 0  # real pieces, then T5's pad id


def test_text_encoder_is_freed_once_a_run_has_its_embeddings(tiny_dirs, tmp_path):
    from pipeline.train import train
    from tests.test_train import TINY

    cfg = from_dict(
        {
            **TINY,
            "guidance": {"name": "deepfloyd-if", "model": str(tiny_dirs[1])},
            "train": {**TINY["train"], "steps": 2, "device": "cpu"},
        }
    )
    fi = build_guidance(cfg, torch.device("cpu"))
    assert fi.text_encoder is not None
    train(cfg, "p", "a red cube.", 0, tmp_path / "out", fi)
    assert fi.text_encoder is None  # dropped: its memory is free for the U-Net
    assert fi.embed(["a red cube, side view"]).shape == (1, 77, 32)  # cached before the release
    with pytest.raises(RuntimeError, match="text encoder was released; 'a blue cube' was not embedded"):
        fi.embed(["a blue cube"])


SD21_FILES = [  # stabilityai/stable-diffusion-2-1-base as the hub lists it (weights and what sits beside them)
    "model_index.json",
    "v2-1_512-ema-pruned.safetensors",
    "v2-1_512-nonema-pruned.safetensors",
    "feature_extractor/preprocessor_config.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder/model.fp16.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/vocab.json",
    "tokenizer/tokenizer_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.non_ema.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.fp16.safetensors",
]
IF_FILES = [  # DeepFloyd/IF-I-XL-v1.0 (T5-XXL sharded; safety checker and watermarker beside the pipeline)
    "model_index.json",
    "safety_checker/model.fp16.safetensors",
    "watermarker/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model-00001-of-00002.safetensors",
    "text_encoder/model-00002-of-00002.safetensors",
    "text_encoder/model.safetensors.index.json",
    "text_encoder/model.fp16-00001-of-00002.safetensors",
    "text_encoder/model.fp16-00002-of-00002.safetensors",
    "text_encoder/model.safetensors.index.fp16.json",
    "tokenizer/spiece.model",
    "tokenizer/tokenizer_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
]


def test_downloads_only_the_components_used_in_one_precision():
    """fp16 runs fetch the fp16 files of the components the guidance loads, nothing else: not the 10 GB of root
    checkpoints beside SD 2.1's pipeline, not IF's fp32 T5 (~19 GB), safety checker or watermarker."""
    from huggingface_hub.utils import filter_repo_objects

    from pipeline.guidance.deepfloyd_if import DeepFloydIFGuidance
    from pipeline.guidance.loading import download_patterns
    from pipeline.guidance.stable_diffusion import StableDiffusionGuidance

    def fetched(files, components, variant):
        allow, ignore = download_patterns(components, variant)
        return {
            f for f in filter_repo_objects(files, allow_patterns=allow, ignore_patterns=ignore) if "safetensors" in f
        }

    assert fetched(SD21_FILES, StableDiffusionGuidance.components, "fp16") == {
        "text_encoder/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    }
    assert fetched(SD21_FILES, StableDiffusionGuidance.components, None) == {
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    }
    assert fetched(IF_FILES, DeepFloydIFGuidance.components, "fp16") == {
        "text_encoder/model.safetensors.index.json",  # a 20 kB index (*.json), not weights
        "text_encoder/model.fp16-00001-of-00002.safetensors",
        "text_encoder/model.fp16-00002-of-00002.safetensors",
        "text_encoder/model.safetensors.index.fp16.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
    }
    allow, ignore = download_patterns(DeepFloydIFGuidance.components, "fp16")
    assert "tokenizer/spiece.model" in set(filter_repo_objects(IF_FILES, allow_patterns=allow, ignore_patterns=ignore))


def test_fp16_runs_load_the_fp16_variant_files(tmp_path):
    """A pipeline saved as hub repos ship it, weights only as `*.fp16.safetensors`: an fp16 run loads those (the
    full-precision names do not exist); an fp32 run of a directory without variants still loads."""
    import shutil

    from pipeline.guidance.loading import load_component, weights_variant
    from pipeline.guidance.stable_diffusion import StableDiffusionGuidance

    root = save_tiny_sd(tmp_path / "sd")
    fp32 = StableDiffusionGuidance(str(root), torch.device("cpu"), torch.float32)
    for name in ("unet", "vae", "text_encoder"):
        comp = load_component(root, name)
        shutil.rmtree(root / name)
        comp.to(torch.float16).save_pretrained(root / name, variant="fp16")
        assert weights_variant(root, name, "fp16") == "fp16"
        assert not list((root / name).glob("*model.safetensors"))
    g = StableDiffusionGuidance(str(root), torch.device("cpu"), torch.float16)
    assert g.unet.dtype == g.vae.dtype == g.text_encoder.dtype == torch.float16
    w16 = g.unet.conv_in.weight.float()
    assert torch.equal(w16, fp32.unet.conv_in.weight.half().float())  # the same weights, from the fp16 files


def test_guidance_debug_strip_decodes_latents(tmp_path):
    """For a latent prior the strip shows z_t and x̂₀ decoded by the VAE, next to the render, in [0, 1]."""
    from pipeline.config import GuidanceConfig
    from pipeline.guidance.stable_diffusion import StableDiffusionGuidance
    from pipeline.guidance_debug import TIMESTEPS, strip

    g = StableDiffusionGuidance(str(save_tiny_sd(tmp_path / "sd")), torch.device("cpu"), torch.float32, 32)
    img = strip(g, torch.rand(1, 3, 24, 24), g.embed(["a red cube"]), g.embed([""]), GuidanceConfig(scale=7.5))
    assert img.shape == (3, len(TIMESTEPS) * 32, 3 * 32) and 0 <= img.min() and img.max() <= 1
