"""Measure the bundled world's quality bars (the numbers in the model cards).

1. Evaluator on held-out ground-truth renders (a seed neither the bank nor the evaluator saw), retrieval over all
   36 captions: colour R-precision, and the shape hit rate on textureless renders. Random training cameras and
   evaluation-orbit cameras are reported separately.
2. Prior samples (DDIM, 50 steps, conditional ε̂): the evaluator retrieves the prompt for what fraction of samples.
3. 2D SDS (the sds2d demo) per caption: the evaluator's top caption has the right colour / the right shape.

    python -m pipeline.world.measure --params params.yaml --out models/world-clip/quality.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pipeline.config import Config
from pipeline.config import load as load_config
from pipeline.evaluate import ClipScorer
from pipeline.guidance import Guidance
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
def ddim_samples(prior: Guidance, texts: list[str], resolution: int, steps: int = 50, seed: int = 0) -> torch.Tensor:
    """Deterministic DDIM (η = 0) with the conditional ε̂; returns images in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    T = prior.num_timesteps
    ts = torch.linspace(T - 1, 0, steps).round().long()
    cond = prior.embed(texts)
    z = torch.randn(len(texts), 3, resolution, resolution, generator=g)
    for i, t in enumerate(ts):
        tt = torch.full((len(texts),), int(t))
        eps, _ = prior.predict_noise(z, tt, cond, cond)
        ab = prior.alphas_cumprod[t]
        x0 = ((z - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
        ab_next = prior.alphas_cumprod[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        z = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
    return (z.clamp(-1, 1) + 1) / 2


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--clip", default="models/world-clip/world-clip.pt")
    ap.add_argument("--out", default="models/world-clip/quality.json")
    ap.add_argument("--quick", action="store_true", help="small samples (the slow test uses this)")
    args = ap.parse_args(argv)
    cfg = load_config(args.params)
    scorer = ClipScorer(args.clip, torch.device("cpu"))
    t0 = time.time()
    report: dict = {"evaluator": evaluator_bars(cfg, scorer, 40 if args.quick else 200)}
    prior = ClosedFormWorldPrior(generate_bank(cfg), torch.device("cpu"))
    g = torch.Generator().manual_seed(HELD_OUT_SEED)
    per_caption = 1 if args.quick else 3
    texts = [
        f"{c.rstrip('.')}, {VIEWS[int(torch.randint(0, 4, (1,), generator=g))]}"
        for c in CAPTIONS
        for _ in range(per_caption)
    ]
    samples = ddim_samples(prior, texts, cfg.world.resolution)
    truth = [c for c in CAPTIONS for _ in range(per_caption)]
    report["closed_form_prior_ddim50"] = retrieval(scorer, samples, truth)
    sds_imgs = []
    captions = CAPTIONS[::6] if args.quick else CAPTIONS
    for c in captions:
        view = VIEWS[int(torch.randint(0, 4, (1,), generator=g))]
        img, _ = optimise_image(prior, cfg, f"{c.rstrip('.')}, {view}", 200, cfg.world.resolution)
        sds_imgs.append(img)
    report["sds2d_closed_form"] = retrieval(scorer, torch.stack(sds_imgs), list(captions))
    report["sds2d_closed_form"]["settings"] = {"scale": cfg.guidance.scale, "steps": 200, "lr": 0.05}
    report["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(args.out, report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
