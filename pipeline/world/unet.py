"""The bundled learned prior: a tiny diffusers UNet2DConditionModel + CLIP text encoder trained on the world's bank.

Trained with the standard ε-prediction loss, 10 % caption dropout (for classifier-free guidance) and captions with
their view suffix ("a red cube, front view"). Saved as a diffusers pipeline directory (unet, text_encoder, tokenizer,
scheduler, model_index.json) so it loads through exactly the code path of DeepFloyd IF / any pixel checkpoint
(`guidance.name: world-unet`). The tokenizer is CLIP's BPE from clip-anytorch, so no download is needed.

    python -m pipeline.world.unet --params params.yaml --out models/world-unet --minutes 20
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from pipeline.config import load as load_config
from pipeline.guidance.tokenizer import clip_tokenizer
from pipeline.world.prior import generate_bank
from pipeline.world.scenes import CAPTIONS, VIEWS


def build(resolution: int) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    unet = UNet2DConditionModel(
        sample_size=resolution,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=49408,
            max_position_embeddings=16,
        )
    )
    return unet, text


def train(params: str, out: Path, minutes: float, batch: int = 32, seed: int = 0) -> dict:
    cfg = load_config(params)
    torch.manual_seed(seed)
    bank = generate_bank(cfg)
    images = bank["images"].float() / 127.5 - 1
    texts = [
        f"{CAPTIONS[c].rstrip('.')}, {VIEWS[v]}"
        for c, v in zip(bank["caption"].tolist(), bank["view"].tolist(), strict=True)
    ]
    tok = clip_tokenizer(out / "tokenizer_src", max_length=16)
    ids = tok(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
    empty = tok([""], padding="max_length", max_length=16, return_tensors="pt").input_ids
    unet, text = build(cfg.world.resolution)
    sched = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=2e-2)
    params_ = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params_, lr=1e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    t0, step, losses = time.time(), 0, []
    while time.time() - t0 < minutes * 60:
        idx = torch.randint(0, len(images), (batch,), generator=g)
        x0, cond = images[idx], ids[idx].clone()
        drop = torch.rand(batch, generator=g) < 0.1
        cond[drop] = empty
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        zt = sched.add_noise(x0, noise, t)
        pred = unet(zt, t, encoder_hidden_states=text(cond)[0]).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 100 == 0:
            print(f"step {step} loss {sum(losses[-100:]) / 100:.4f} ({time.time() - t0:.0f}s)", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet")
    text.save_pretrained(out / "text_encoder")
    tok.save_pretrained(out / "tokenizer")
    sched.save_pretrained(out / "scheduler")
    import shutil

    shutil.rmtree(out / "tokenizer_src", ignore_errors=True)
    index = {
        "_class_name": "IFPipeline",
        "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=1))
    info = {
        "steps": step,
        "batch": batch,
        "minutes": round((time.time() - t0) / 60, 1),
        "final_loss": sum(losses[-100:]) / max(len(losses[-100:]), 1),
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "text_params": sum(p.numel() for p in text.parameters()),
    }
    (out / "train.json").write_text(json.dumps(info, indent=1))
    return info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="models/world-unet")
    ap.add_argument("--minutes", type=float, default=20.0)
    args = ap.parse_args(argv)
    print(json.dumps(train(args.params, Path(args.out), args.minutes)))


if __name__ == "__main__":
    main()
