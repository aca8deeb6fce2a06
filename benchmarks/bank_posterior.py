"""How sharply does the closed-form world prior's posterior collapse onto single bank images, at a given bank
resolution and size? A diagnostic for the 64x64 rehearsal, whose shaded surfaces crumple where the 32x32
proxy's do not.

For held-out renders of the true primitives (the bank's own camera sampler and lit shading, another seed, so images
the bank has never seen but of exactly its distribution), noised to z_t = α x0 + σ ε at a grid of t, it prints per t:
- ESS: the effective number of bank images behind the conditional posterior mean, 1 / Σ w_i² (caption and view as
  the training prompts give them); 1 means the prior answers with one memorised image;
- pull: the RMS of x0 − E[x0 | z_t, y] over pixels ([−1, 1] units), what SDS pushes a *correct* render by at that t
  (the conditional residual ε̂_c − ε is α/σ times it);
- nn: at t = 0 the RMS distance of the held-out image to its nearest bank image of the same caption and view.

    python benchmarks/bank_posterior.py --config configs/rehearsal-sd.yaml \
        [--config configs/overlays/rehearsal-cpu.yaml] [--set world.images_per_caption=600] [--per-shape 24]

Builds the bank under results/world/ when missing (as recipe_probe.py does). Same inputs, same numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.recipe_probe import probe_settings, world_bank

PROMPTS = ("a green cube", "a yellow cone", "an orange pyramid")
TS = (0.02, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


def held_out(cfg, text: str, n: int, seed: int):
    """n lit renders of the caption's primitive in its colour from the training cameras ([N, 3, H, W] in [−1, 1])
    and their view indices."""
    import torch

    from pipeline.world.scenes import COLOURS, colourise, parse_caption, render_shape, view_index

    colour, shape = parse_caption(text)
    g = torch.Generator().manual_seed(seed)
    r = render_shape(cfg, shape, n, g)
    img = colourise(r, COLOURS[colour], "lit", cfg.render.background_color)
    return (img * 255).round() / 127.5 - 1, view_index(r.cams)


def posterior_stats(prior, x0, emb, ts, generator) -> dict:
    """Per t: the ESS of each image's conditional posterior weights and the RMS of x0 − E[x0 | z_t, emb], as lists
    over the images x0 [N, 3, H, W] in [−1, 1] (embeddings emb [N, 2]: caption, view)."""
    import torch

    ac = prior.alphas_cumprod
    mask = prior._mask(emb)
    out = {}
    for t in ts:
        step = torch.full((len(x0),), round(t * (len(ac) - 1)), dtype=torch.long)
        a = ac[step].view(-1, 1, 1, 1)
        z = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=generator)
        logits, bg = prior._logits(z, step)  # once, for the weights and the mean
        w = torch.softmax(logits.masked_fill(~mask, float("-inf")), 1)
        mean = prior._mean(logits, emb, bg).view_as(z)
        out[t] = {"ess": (1 / (w**2).sum(1)).tolist(), "pull": ((x0 - mean) ** 2).flatten(1).mean(1).sqrt().tolist()}
    return out


def measure(cfg, bank_path: Path, prompts, per_shape: int, ts, seed: int = 12345) -> dict:
    """{t: {"ess": mean ESS, "pull": mean RMS pull}}, "nn" and the bank's size over the held-out renders of every
    prompt."""
    import torch

    from pipeline.prompts import normalize
    from pipeline.world.prior import ClosedFormWorldPrior, load_bank
    from pipeline.world.scenes import CAPTIONS

    bank = load_bank(bank_path, cfg)
    prior = ClosedFormWorldPrior(bank, torch.device("cpu"), cfg.world.background)
    raw = bank["images"].flatten(1).float() / 127.5 - 1  # as rendered (with `any` background prior.x is the object)
    g = torch.Generator().manual_seed(seed)
    rows = {t: {"ess": [], "pull": []} for t in ts}
    nn = []
    for text in map(normalize, prompts):
        x0, views = held_out(cfg, text, per_shape, seed)
        emb = torch.stack([torch.full_like(views, CAPTIONS.index(text)), views], 1)
        d = torch.cdist(x0.flatten(1), raw).masked_fill(~prior._mask(emb), float("inf"))
        nn += (d.min(1).values / raw.shape[1] ** 0.5).tolist()
        for t, r in posterior_stats(prior, x0, emb, ts, g).items():
            for k in r:
                rows[t][k] += r[k]
    out = {f"{t:g}": {k: round(sum(v) / len(v), 4) for k, v in r.items()} for t, r in rows.items()}
    return {"t": out, "nn": round(sum(nn) / len(nn), 4), "bank_images": int(raw.shape[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", default=[], help="presets merged over params.yaml in order")
    ap.add_argument("--set", action="append", default=[], help="dotted.key=value (YAML value)")
    ap.add_argument("--prompts", nargs="*", default=list(PROMPTS))
    ap.add_argument("--per-shape", type=int, default=24, help="held-out renders per prompt")
    ap.add_argument("--t", type=float, nargs="*", default=list(TS))
    args = ap.parse_args()
    from pipeline import config as cfgmod

    cfg = cfgmod.from_dict(probe_settings(args.config, args.set))
    res = measure(cfg, world_bank(cfg), args.prompts, args.per_shape, args.t)
    print(
        f"bank {cfg.world.resolution}x{cfg.world.resolution}, {cfg.world.images_per_caption} images a caption; "
        f"held-out nearest-neighbour RMS {res['nn']:.3f}"
    )
    print("| t | " + " | ".join(res["t"]) + " |")
    print("|---|" + "---|" * len(res["t"]))
    for k in ("ess", "pull"):
        print(f"| {k} | " + " | ".join(f"{v[k]:.3g}" for v in res["t"].values()) + " |")
    print(json.dumps({"config": args.config, "set": args.set, **res}))


if __name__ == "__main__":
    main()
