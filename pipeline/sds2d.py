"""SDS on a 2D image: the fastest way to see what a guidance setting does.

Optimises image logits (sigmoid → [0, 1] pixels) with the SDS gradient of the configured guidance model and saves
the result and a strip of intermediate images.

    python -m pipeline.sds2d --prompt "a red cube" --out results/sds2d/red-cube.png
    python -m pipeline.sds2d --prompt "a blue torus" --set guidance.scale=30 schedule.name=hifa
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from torch import Tensor
from tqdm import trange

from pipeline.config import Config, from_dict
from pipeline.guidance import Guidance, build_guidance
from pipeline.io import atomic_write
from pipeline.sds import TimestepSchedule, sds


def optimise_image(
    guidance: Guidance,
    cfg: Config,
    prompt: str,
    steps: int,
    resolution: int,
    lr: float = 0.05,
    seed: int = 0,
    snapshots: int = 0,
) -> tuple[Tensor, list[Tensor]]:
    """Run 2D SDS for `steps`; return the final image [3, H, W] in [0, 1] and optional snapshots."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.zeros(1, 3, resolution, resolution, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=lr)
    schedule = TimestepSchedule(cfg.schedule, guidance.alphas_cumprod, steps)
    cond, uncond = guidance.embed([prompt]), guidance.embed([""])
    shots: list[Tensor] = []
    every = max(1, steps // snapshots) if snapshots else 0
    for step in trange(steps, desc=prompt, leave=False):
        t = schedule(step, 1, g)
        out = sds(guidance, torch.sigmoid(logits), cond, uncond, t, cfg.guidance, step, g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if every and step % every == 0:
            shots.append(torch.sigmoid(logits.detach())[0])
    return torch.sigmoid(logits.detach())[0], shots


def _overrides(pairs: list[str]) -> dict:
    data: dict = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return data


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override params, e.g. guidance.scale=30")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/sds2d/out.png")
    args = ap.parse_args(argv)
    from torchvision.utils import save_image

    base = yaml.safe_load(Path(args.params).read_text()) or {}
    for k, v in _overrides(args.set).items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    cfg = from_dict(base, args.params)
    guidance = build_guidance(cfg, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    res = cfg.render.resolution if guidance.kind == "pixel" else 64
    image, shots = optimise_image(guidance, cfg, args.prompt, args.steps, res, args.lr, args.seed, snapshots=8)
    atomic_write(args.out, lambda p: save_image(image, str(p), format="png"))
    strip = Path(args.out).with_name(Path(args.out).stem + "_progress.png")
    atomic_write(strip, lambda p: save_image(torch.stack([*shots, image]), str(p), nrow=9, format="png"))
    print(f"{args.out} (progress: {strip})")


if __name__ == "__main__":
    main()
