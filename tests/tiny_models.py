"""Tiny random diffusers pipelines saved to a directory, for exercising the real loaders offline."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from pipeline.guidance.tokenizer import clip_tokenizer


def _unet(in_ch: int, out_ch: int, size: int, cross: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=size,
        in_channels=in_ch,
        out_channels=out_ch,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross,
        attention_head_dim=8,
    )


def _write_index(root: Path, cls: str, parts: dict[str, tuple[str, str]]) -> None:
    import json

    index = {"_class_name": cls, "_diffusers_version": "0.42.1", **{k: list(v) for k, v in parts.items()}}
    (root / "model_index.json").write_text(json.dumps(index))


def save_tiny_sd(root: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    _unet(4, 4, 8, 32).save_pretrained(root / "unet")
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        sample_size=16,
    ).save_pretrained(root / "vae")
    CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=49408,
            max_position_embeddings=77,
        )
    ).save_pretrained(root / "text_encoder")
    clip_tokenizer(root / "tokenizer_src").save_pretrained(root / "tokenizer")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(root / "scheduler")
    _write_index(
        root,
        "StableDiffusionPipeline",
        {
            "unet": ("diffusers", "UNet2DConditionModel"),
            "vae": ("diffusers", "AutoencoderKL"),
            "text_encoder": ("transformers", "CLIPTextModel"),
            "tokenizer": ("transformers", "CLIPTokenizer"),
            "scheduler": ("diffusers", "DDPMScheduler"),
        },
    )
    return root


T5_TEXTS = [
    "a red cube",
    "a blue sphere, front view",
    "a squirrel eating a burger, side view",
    "an orange pyramid, back view",
    "a yellow cone, overhead view",
    "a purple torus",
    "a plate with a couple of hot dogs on it",
]


def save_t5_tokenizer(directory: Path) -> Path:
    """A real T5Tokenizer folder as DeepFloyd IF ships it (`spiece.model` + tokenizer_config.json, no tokenizer.json,
    no model_max_length): a tiny sentencepiece unigram model trained offline on a few lines, T5's special ids."""
    import json

    import sentencepiece as spm

    directory.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(T5_TEXTS * 3),
        model_prefix=str(directory / "spiece"),
        vocab_size=40,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (directory / "spiece.vocab").unlink()
    config = {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "pad_token": "<pad>", "eos_token": "</s>"}
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "unk_token": "<unk>"}))
    return directory


def save_tiny_if(root: Path, seed: int = 0) -> Path:
    """IF-style: pixel UNet at 16×16 with 6 output channels (ε + variance), a T5 encoder and IF's T5Tokenizer."""
    torch.manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    _unet(3, 6, 16, 32).save_pretrained(root / "unet")
    T5EncoderModel(T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4)).save_pretrained(
        root / "text_encoder"
    )
    save_t5_tokenizer(root / "tokenizer")
    DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range").save_pretrained(root / "scheduler")
    _write_index(
        root,
        "IFPipeline",
        {
            "unet": ("diffusers", "UNet2DConditionModel"),
            "text_encoder": ("transformers", "T5EncoderModel"),
            "tokenizer": ("transformers", "T5Tokenizer"),
            "scheduler": ("diffusers", "DDPMScheduler"),
        },
    )
    return root


def save_tiny_clip(path: Path, seed: int = 0) -> Path:
    """A tiny random CLIP in clip-anytorch's state-dict format (what `clip.load(path, jit=False)` reads)."""
    from pipeline.clip_loader import import_clip
    from pipeline.world.evaluator import ARCH

    torch.manual_seed(seed)
    model = import_clip().model.CLIP(**{**ARCH, "vision_layers": 1, "transformer_layers": 1})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, path)
    return path
