"""Measure the bundled world's quality bars (the numbers in the model cards).

1. Evaluator on held-out ground-truth renders (a seed neither the bank nor the evaluator saw), retrieval over all
   36 captions: colour R-precision, and the shape hit rate on textureless renders. Random training cameras and
   evaluation-orbit cameras are reported separately.
2. Prior samples (DDIM, 50 steps, conditional ε̂; the learned prior also with CFG 3): the evaluator retrieves the
   prompt for what fraction of samples.
3. 2D SDS (the sds2d demo) per caption: the evaluator's top caption has the right colour / the right shape.

For the closed-form prior (always) and, with `--unet DIR`, the learned prior (into DIR/quality.json):

    python -m pipeline.world.measure --params params.yaml --out models/world-clip/quality.json \
        [--unet models/world-unet] [--quick]

For the latent prior alone (`--ldm DIR` → DIR/quality.json; also 4. its VAE's reconstruction of held-out renders):

    python -m pipeline.world.measure --params params.yaml --ldm models/world-ldm
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.config import Config
from pipeline.config import load as load_config
from pipeline.evaluate import ClipScorer
from pipeline.guidance import Guidance
from pipeline.guidance.diffusers_prior import PixelDiffusersGuidance
from pipeline.guidance.stable_diffusion import StableDiffusionGuidance
from pipeline.io import atomic_write_json
from pipeline.sds2d import optimise_image
from pipeline.world.evaluator import render_dataset
from pipeline.world.prior import ClosedFormWorldPrior, generate_bank
from pipeline.world.scenes import CAPTIONS, VIEWS

HELD_OUT_SEED = 2_000


def _parts(caption: str) -> tuple[str, str]:
    w = caption.rstrip(".").split()
    return w[1], w[2]


def retrieval(scorer: ClipScorer, images: torch.Tensor, truth: list[str]) -> dict[str, float]:
    """Top-1 over CAPTIONS: exact caption, right colour, right shape (fractions)."""
    txt = scorer.texts(CAPTIONS)
    top = []
    for i in range(0, len(images), 256):
        top += (scorer.images(images[i : i + 256]) @ txt.T).argmax(1).tolist()
    got = [CAPTIONS[k] for k in top]
    n = len(truth)
    return {
        "caption": sum(g == t for g, t in zip(got, truth, strict=True)) / n,
        "colour": sum(_parts(g)[0] == _parts(t)[0] for g, t in zip(got, truth, strict=True)) / n,
        "shape": sum(_parts(g)[1] == _parts(t)[1] for g, t in zip(got, truth, strict=True)) / n,
        "n": n,
    }


def evaluator_bars(cfg: Config, scorer: ClipScorer, per_shape: int) -> dict[str, dict[str, float]]:
    data = render_dataset(cfg, per_shape, HELD_OUT_SEED)
    colour_rows = data["caption"] >= 0
    shapes = [CAPTIONS[int(s) * 6].rstrip(".").split()[-1] for s in data["shape"]]
    truth = [CAPTIONS[int(c)] if c >= 0 else f"a x {s}." for c, s in zip(data["caption"], shapes, strict=True)]
    colour = retrieval(scorer, data["images"][colour_rows], [t for t, m in zip(truth, colour_rows, strict=True) if m])
    geo = retrieval(scorer, data["images"][~colour_rows], [t for t, m in zip(truth, colour_rows, strict=True) if not m])
    return {"colour_renders": colour, "textureless_renders": {"shape": geo["shape"], "n": geo["n"]}}


@torch.no_grad()
def ddim_samples(
    prior: Guidance, texts: list[str], resolution: int, steps: int = 50, seed: int = 0, scale: float = 0.0
) -> torch.Tensor:
    """Deterministic DDIM (η = 0); ε̂ = ε̂_c + scale (ε̂_c − ε̂_u) (scale 0: the conditional model alone). Returns
    images in [0, 1]; a latent prior's samples are decoded by its VAE."""
    g = torch.Generator().manual_seed(seed)
    T = prior.num_timesteps
    ts = torch.linspace(T - 1, 0, steps).round().long()
    cond, uncond = prior.embed(texts), prior.embed([""] * len(texts))
    latent = prior.kind == "latent"
    shape = (4, prior.unet.config.sample_size, prior.unet.config.sample_size) if latent else (3, resolution, resolution)
    z = torch.randn(len(texts), *shape, generator=g)
    for i, t in enumerate(ts):
        tt = torch.full((len(texts),), int(t))
        eps_c, eps_u = prior.predict_noise(z.to(prior.device), tt, cond, uncond)
        eps = (eps_c + scale * (eps_c - eps_u)).float().cpu()
        ab = prior.alphas_cumprod[t].cpu()
        x0 = (z - (1 - ab).sqrt() * eps) / ab.sqrt()
        x0 = x0 if latent else x0.clamp(-1, 1)
        ab_next = prior.alphas_cumprod[ts[i + 1]].cpu() if i + 1 < len(ts) else torch.tensor(1.0)
        z = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
    if latent:
        z = prior.vae.decode(z.to(prior.device, prior.dtype) / prior.vae.config.scaling_factor).sample.float().cpu()
    return (z.clamp(-1, 1) + 1) / 2


@torch.no_grad()
def vae_reconstruction(prior: StableDiffusionGuidance, cfg: Config, per_shape: int) -> dict[str, float]:
    """PSNR (dB) of the VAE's reconstruction (posterior mean → decode) of held-out colour renders at the world's
    resolution, and the std of their scaled latents (≈ 1 when scaling_factor is right, as SD's 0.18215 makes it)."""
    data = render_dataset(cfg, per_shape, HELD_OUT_SEED)
    images = data["images"][data["caption"] >= 0].float()
    latents = torch.cat([prior.encode(images[i : i + 500]) for i in range(0, len(images), 500)])
    vae = prior.vae
    recon = torch.cat(
        [
            vae.decode(latents[i : i + 500].to(prior.dtype) / vae.config.scaling_factor).sample.float()
            for i in range(0, len(latents), 500)
        ]
    )
    mse = torch.mean((((recon + 1) / 2).clamp(0, 1) - images) ** 2)
    return {
        "psnr_db": round(float(-10 * torch.log10(mse)), 2),
        "latent_std": round(float(latents.std()), 4),
        "n": len(images),
    }


def prior_bars(
    prior: Guidance, cfg: Config, scorer: ClipScorer, quick: bool, ddim_scales: tuple[float, ...] = (0.0,)
) -> dict[str, dict]:
    """DDIM-50 samples (3 per caption with a random view suffix; 1 when quick) retrieved by the evaluator, per CFG
    scale; and 2D SDS (200 steps, cfg.guidance.scale) on every caption (every 6th when quick)."""
    g = torch.Generator().manual_seed(HELD_OUT_SEED)
    per_caption = 1 if quick else 3
    texts = [
        f"{c.rstrip('.')}, {VIEWS[int(torch.randint(0, 4, (1,), generator=g))]}"
        for c in CAPTIONS
        for _ in range(per_caption)
    ]
    truth = [c for c in CAPTIONS for _ in range(per_caption)]
    out: dict[str, dict] = {}
    for scale in ddim_scales:
        samples = ddim_samples(prior, texts, cfg.world.resolution, scale=scale)
        key = "ddim50" if scale == 0 else f"ddim50_cfg{scale:g}"
        out[key] = retrieval(scorer, samples, truth)
        out[key]["cfg_scale"] = scale
    sds_imgs = []
    captions = CAPTIONS[::6] if quick else CAPTIONS
    for c in tqdm(captions, desc="sds2d", leave=False):
        view = VIEWS[int(torch.randint(0, 4, (1,), generator=g))]
        img, _ = optimise_image(prior, cfg, f"{c.rstrip('.')}, {view}", 200, cfg.world.resolution)
        sds_imgs.append(img)
    out["sds2d"] = retrieval(scorer, torch.stack(sds_imgs), list(captions))
    out["sds2d"]["settings"] = {"scale": cfg.guidance.scale, "steps": 200, "lr": 0.05}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--clip", default="models/world-clip/world-clip.pt")
    ap.add_argument("--out", default="models/world-clip/quality.json")
    ap.add_argument("--unet", default="", help="also measure this learned prior; writes <unet>/quality.json")
    ap.add_argument("--unet-scales", default="10,30", help="guidance.scale values for the learned prior's 2D SDS")
    ap.add_argument("--ldm", default="", help="measure only this latent prior; writes <ldm>/quality.json")
    ap.add_argument("--ldm-scales", default="7.5,25,100", help="guidance.scale values for the latent prior's 2D SDS")
    ap.add_argument("--quick", action="store_true", help="small samples (the slow test uses this)")
    args = ap.parse_args(argv)
    cfg = load_config(args.params)
    scorer = ClipScorer(args.clip, torch.device("cpu"))
    t0 = time.time()
    if args.ldm:
        prior = StableDiffusionGuidance(args.ldm, torch.device("cpu"), torch.float32, cfg.world.resolution)
        latent: dict = {"vae_reconstruction": vae_reconstruction(prior, cfg, 40 if args.quick else 200)}
        for scale in [float(s) for s in args.ldm_scales.split(",")]:
            cfg.guidance.scale = scale
            bars = prior_bars(prior, cfg, scorer, args.quick, ddim_scales=(0.0, 3.0) if len(latent) == 1 else ())
            latent.update({k: v for k, v in bars.items() if k != "sds2d"})
            latent[f"sds2d_w{scale:g}"] = bars["sds2d"]
        latent["seconds"] = round(time.time() - t0, 1)
        atomic_write_json(Path(args.ldm) / "quality.json", latent)
        print(json.dumps(latent, indent=1))
        return
    report: dict = {"evaluator": evaluator_bars(cfg, scorer, 40 if args.quick else 200)}
    closed = prior_bars(ClosedFormWorldPrior(generate_bank(cfg), torch.device("cpu")), cfg, scorer, args.quick)
    report["closed_form_prior_ddim50"] = closed["ddim50"]
    report["sds2d_closed_form"] = closed["sds2d"]
    report["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(args.out, report)
    print(json.dumps(report, indent=1))
    if args.unet:
        t0 = time.time()
        prior = PixelDiffusersGuidance(args.unet, torch.device("cpu"), torch.float32)
        learned: dict = {}
        for scale in [float(s) for s in args.unet_scales.split(",")]:
            cfg.guidance.scale = scale
            bars = prior_bars(prior, cfg, scorer, args.quick, ddim_scales=(0.0, 3.0) if not learned else ())
            learned.update({k: v for k, v in bars.items() if k != "sds2d"})
            learned[f"sds2d_w{scale:g}"] = bars["sds2d"]
        learned["seconds"] = round(time.time() - t0, 1)
        atomic_write_json(Path(args.unet) / "quality.json", learned)
        print(json.dumps(learned, indent=1))


if __name__ == "__main__":
    main()
