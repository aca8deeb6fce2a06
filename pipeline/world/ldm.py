"""The bundled latent prior: Stable Diffusion's layout, trained on the world's bank.

A diffusers `AutoencoderKL` (the VAE) and a `UNet2DConditionModel` denoising its latents, conditioned by a CLIP text
encoder: the components, classes and `model_index.json` of a Stable Diffusion checkpoint, so it loads through
`StableDiffusionGuidance` (`guidance.name: stable-diffusion`, `guidance.model: models/world-ldm`) and
`StableDiffusionPipeline.from_pretrained` exactly as SD 2.1 does. It exists to run the latent SDS path (render →
resize → VAE encode with gradients through the encoder → scaled latent → SDS) on a prior that means something.

Scaled to the world: 32×32 renders, a VAE that downsamples 2× (SD: 8× from 512) to 16×16×4 latents, and SD 2.1-base's
noise schedule and objective (scaled-linear β 0.00085 … 0.012, T = 1000, ε-prediction). Two phases, one command:

1. **VAE**: reconstruction MSE + a small KL (`--kl-weight`), on the bank's images. SD's VAE also has perceptual and
   adversarial losses; at 32×32 over flat-shaded primitives MSE is enough (the card reports the reconstruction PSNR).
   The latent scale (`scaling_factor`, SD's 0.18215) is then measured as SD's was: 1 / std of the bank's latents.
2. **U-Net** on scaled latents sampled from the VAE's posterior (as SD is trained), captions with their view suffix
   ("a red cube, side view") or, 20 % of the time, without; 10 % empty (for classifier-free guidance). The saved
   weights are an exponential moving average (decay 0.999), fp16.

Deterministic for its settings; checkpoints every `--checkpoint-every` steps (atomically) and resumes exactly:

    python -m pipeline.world.ldm --params params.yaml --out models/world-ldm
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from tqdm import tqdm

from pipeline.config import load as load_config
from pipeline.guidance.tokenizer import clip_tokenizer
from pipeline.io import atomic_write
from pipeline.world.prior import generate_bank
from pipeline.world.unet import MAX_TOKENS, _caption_ids, _ema_update, learning_rate, publish_directory
from pipeline.world.unet import build as build_pixel

VAE_FACTOR = 2
"""Spatial downsampling of the VAE (SD: 8). The world's 32×32 images become 16×16×4 latents."""


def build_vae(resolution: int) -> AutoencoderKL:
    """A 2-level AutoencoderKL (widths 32, 64; SD's mid-block attention kept), 4 latent channels as in SD."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=resolution,
    )


def build_unet(resolution: int) -> UNet2DConditionModel:
    """The latent denoiser: 16×16×4 in and out, widths (64, 96, 96) at 16, 8 and 4, cross-attention at 4×4 (the
    pixel prior's 8×8 of 32: the same factor 4 below the input; 0.6 s a step at batch 64 on 2 cores, against 0.72 s
    with attention at 8×8 too)."""
    return UNet2DConditionModel(
        sample_size=resolution // VAE_FACTOR,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(64, 96, 96),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def scheduler() -> DDPMScheduler:
    """Stable Diffusion 2.1-base's noise schedule and objective: scaled-linear β 0.00085 … 0.012, T = 1000, ε."""
    return DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )


def _ckpt_path(out: Path) -> Path:
    return out.parent / f".{out.name}.ckpt.pt"


@torch.no_grad()
def bank_latents(vae: AutoencoderKL, images: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image's latent (unscaled)."""
    means, stds = [], []
    for i in range(0, len(images), batch):
        d = vae.encode(images[i : i + batch]).latent_dist
        means.append(d.mean)
        stds.append(d.std)
    return torch.cat(means), torch.cat(stds)


def _vae_step(vae: AutoencoderKL, opt, images: torch.Tensor, batch: int, kl_weight: float, g) -> float:
    """One VAE step: reconstruction MSE of a posterior sample + kl_weight · KL per latent element; returns the MSE."""
    x = images[torch.randint(0, len(images), (batch,), generator=g)]
    d = vae.encode(x).latent_dist
    z = d.mean + d.std * torch.randn(d.mean.shape, generator=g)
    recon = F.mse_loss(vae.decode(z).sample, x)
    kl = d.kl().mean() / d.mean[0].numel()
    loss = recon + kl_weight * kl
    opt.zero_grad()
    loss.backward()
    opt.step()
    return recon.item()


def _unet_step(unet, text, opt, sched, latents: tuple, ids: tuple, batch: int, g) -> float:
    """One U-Net step on scaled posterior samples of bank latents (`latents` = mean, std, scale) with the caption
    drop-outs (`ids` = with view suffix, without, empty); returns the ε-MSE."""
    (mean, std, scale), (ids_suffixed, ids_base, empty) = latents, ids
    idx = torch.randint(0, len(mean), (batch,), generator=g)
    u = torch.rand(batch, generator=g)
    cond = torch.where((u < 0.2)[:, None], ids_base[idx], ids_suffixed[idx])
    cond[u >= 0.9] = empty
    z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scale
    z0 = z0.contiguous(memory_format=torch.channels_last)
    noise = torch.randn(z0.shape, generator=g)
    t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=g)
    pred = unet(sched.add_noise(z0, noise, t), t, encoder_hidden_states=text(cond)[0]).sample
    loss = F.mse_loss(pred, noise)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


@torch.no_grad()
def _bank_psnr(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """PSNR (dB, images in [0, 1]) of the VAE's reconstruction (posterior mean → decode) of ~2,000 bank images."""
    sample = images[:: max(1, len(images) // 2000)]
    recon = torch.cat(
        [vae.decode(vae.encode(sample[i : i + 500]).latent_dist.mean).sample for i in range(0, len(sample), 500)]
    )
    mse = float(F.mse_loss(((recon + 1) / 2).clamp(0, 1), (sample + 1) / 2))
    return round(-10 * torch.log10(torch.tensor(mse)).item(), 2)


def train(
    params: str,
    out: Path,
    vae_steps: int = 1500,
    unet_steps: int = 4000,
    batch: int = 32,
    seed: int = 0,
    lr: float = 1e-3,
    kl_weight: float = 1e-4,
    ema_decay: float = 0.999,
    checkpoint_every: int = 250,
    until: int | None = None,
) -> dict:
    """Train (or resume) both phases and write the pipeline directory `out`. With `until` (a step count over both
    phases), stop there after writing a checkpoint and return without finishing (time-sliced runs)."""
    cfg = load_config(params)
    settings = [vae_steps, unet_steps, batch, seed, lr, kl_weight, ema_decay]
    torch.manual_seed(seed)
    bank = generate_bank(cfg)
    images = bank["images"].float() / 127.5 - 1
    tok_src = out.parent / f".{out.name}.tokenizer"
    tok = clip_tokenizer(tok_src, max_length=MAX_TOKENS)
    ids = _caption_ids(tok, bank)  # with view suffix, without, empty
    vae = build_vae(cfg.world.resolution)
    unet = build_unet(cfg.world.resolution).to(memory_format=torch.channels_last)
    text = build_pixel(cfg.world.resolution)[1]
    ema = {"unet": copy.deepcopy(unet).requires_grad_(False), "text": copy.deepcopy(text).requires_grad_(False)}
    sched = scheduler()
    vae_opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    opt = torch.optim.AdamW([*unet.parameters(), *text.parameters()], lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    rec: dict = {"step": 0, "vae_losses": [], "losses": [], "seconds": 0.0, "scaling_factor": 0.0}
    parts = {"vae": vae, "vae_opt": vae_opt, "unet": unet, "text": text, "opt": opt}
    parts |= {"ema_unet": ema["unet"], "ema_text": ema["text"]}  # what a checkpoint holds, by key
    ckpt = _ckpt_path(out)
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)  # tensors and plain data only: never runs code
        if state["settings"] != settings:
            raise SystemExit(f"{ckpt}: checkpoint from other settings {state['settings']}; delete it to start over")
        for key, part in parts.items():
            part.load_state_dict(state[key])
        g.set_state(state["generator"])
        rec = state["record"]
        print(f"resumed from {ckpt} at step {rec['step']}", flush=True)
    t0 = time.time()

    def save_checkpoint() -> None:
        state = {key: part.state_dict() for key, part in parts.items()}
        state |= {"settings": settings, "generator": g.get_state()}
        state["record"] = rec | {"seconds": rec["seconds"] + time.time() - t0}
        atomic_write(ckpt, lambda p: torch.save(state, p))

    total = vae_steps + unet_steps
    bar = tqdm(total=total, initial=rec["step"], desc="world-ldm", mininterval=5)
    while rec["step"] < vae_steps:  # phase 1: the autoencoder
        for group in vae_opt.param_groups:
            group["lr"] = learning_rate(rec["step"], vae_steps, lr)
        rec["vae_losses"].append(_vae_step(vae, vae_opt, images, batch, kl_weight, g))
        rec["step"] += 1
        bar.update(1)
        if rec["step"] % 100 == 0:
            bar.set_postfix(vae_mse=f"{sum(rec['vae_losses'][-100:]) / 100:.5f}")
        if rec["step"] % checkpoint_every == 0 or rec["step"] in (vae_steps, until):
            save_checkpoint()
        if rec["step"] == until:
            bar.close()
            return {"steps": until, "checkpoint": str(ckpt)}

    vae.eval().requires_grad_(False)
    mean, std = bank_latents(vae, images)
    rec["scaling_factor"] = scale = float(1 / mean.std())
    vae.register_to_config(scaling_factor=scale)

    while rec["step"] < total:  # phase 2: the latent denoiser
        step = rec["step"] - vae_steps
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, unet_steps, lr)
        loss = _unet_step(unet, text, opt, sched, (mean, std, scale), ids, batch, g)
        rec["step"] += 1
        _ema_update(ema, {"unet": unet, "text": text}, min(ema_decay, (1 + step + 1) / (10 + step + 1)))
        rec["losses"].append(loss)
        bar.update(1)
        if rec["step"] % 100 == 0:
            bar.set_postfix(loss=f"{sum(rec['losses'][-100:]) / 100:.4f}")
        if rec["step"] % checkpoint_every == 0 or rec["step"] in (total, until):
            save_checkpoint()
        if rec["step"] == until and until < total:
            bar.close()
            return {"steps": until, "checkpoint": str(ckpt)}
    bar.close()
    rec["seconds"] += time.time() - t0

    info = dict(zip(("vae_steps", "unet_steps", "batch", "seed", "lr", "kl_weight"), settings, strict=False))
    info["ema_decay"] = ema_decay
    info |= {"scaling_factor": round(scale, 5), "vae_psnr_db": _bank_psnr(vae, images)}
    info["latent_shape"] = list(mean.shape[1:])
    _export(out, vae, ema, tok, sched, info, rec)
    shutil.rmtree(tok_src, ignore_errors=True)
    ckpt.unlink(missing_ok=True)
    return info


def _curve(losses: list[float]) -> list[float]:
    return [round(sum(losses[i : i + 100]) / len(losses[i : i + 100]), 5) for i in range(0, len(losses), 100)]


def _export(out: Path, vae: AutoencoderKL, ema: dict, tok, sched, info: dict, rec: dict) -> None:
    """Write the prior as a Stable Diffusion pipeline directory at `out`, atomically, with its record `train.json`
    (settings, wall time, loss curves, parameter counts, weight checksums); `info` gains the record."""
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    vae.to(torch.float16).save_pretrained(tmp / "vae")
    ema["unet"].to(torch.float16, memory_format=torch.contiguous_format).save_pretrained(tmp / "unet")
    ema["text"].to(torch.float16).save_pretrained(tmp / "text_encoder")
    tok.save_pretrained(tmp / "tokenizer")
    sched.save_pretrained(tmp / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "vae": ["diffusers", "AutoencoderKL"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
    }
    (tmp / "model_index.json").write_text(json.dumps(index, indent=1))
    info |= {
        "train_seconds": round(rec["seconds"], 1),
        "vae_final_mse": sum(rec["vae_losses"][-200:]) / max(len(rec["vae_losses"][-200:]), 1),
        "final_loss": sum(rec["losses"][-200:]) / max(len(rec["losses"][-200:]), 1),
        "vae_loss_every_100": _curve(rec["vae_losses"]),
        "loss_every_100": _curve(rec["losses"]),
        "vae_params": sum(p.numel() for p in vae.parameters()),
        "unet_params": sum(p.numel() for p in ema["unet"].parameters()),
        "text_params": sum(p.numel() for p in ema["text"].parameters()),
    }
    publish_directory(tmp, out, info, ("vae", "unet", "text_encoder"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="models/world-ldm")
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--unet-steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-every", type=int, default=250)
    ap.add_argument("--until", type=int, default=None, help="stop (checkpointed) at this step; rerun to resume")
    args = ap.parse_args(argv)
    info = train(
        args.params,
        Path(args.out),
        args.vae_steps,
        args.unet_steps,
        args.batch,
        args.seed,
        checkpoint_every=args.checkpoint_every,
        until=args.until,
    )
    print(json.dumps({k: v for k, v in info.items() if not k.endswith("every_100")}, indent=1))


if __name__ == "__main__":
    main()
