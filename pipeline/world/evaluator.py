"""The bundled world's CLIP evaluator: a tiny CLIP (ViT image tower + text transformer) trained contrastively on
held-out renders of the world, saved as a clip-anytorch state dict so `clip.load(path, jit=False)` loads it exactly
like OpenAI's checkpoints, and tokenised with clip-anytorch's own BPE.

Training data use their own seed (disjoint from the prior's bank) and every shading mode. Colour renders are
labelled with their caption; textureless renders (colour invisible) with a uniform target over the six captions of
their shape, so the evaluator is honest about colour it cannot see. Augmentation (background tints, noise, blur,
shifts and zoom) keeps it from being fooled by what imperfect SDS renders look like.

    python -m pipeline.world.evaluator --params params.yaml --out models/world-clip/world-clip.pt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.clip_loader import import_clip, preprocess
from pipeline.config import Config
from pipeline.config import load as load_config
from pipeline.io import atomic_write
from pipeline.nerf.cameras import orbit_cameras
from pipeline.world.scenes import CAPTIONS, COLOURS, SHAPES, ShapeRenders, caption, colourise, render_shape

ARCH = {
    "embed_dim": 64,
    "image_resolution": 32,
    "vision_layers": 3,
    "vision_width": 64,
    "vision_patch_size": 4,
    "context_length": 16,
    "vocab_size": 49408,
    "transformer_width": 64,
    "transformer_heads": 1,
    "transformer_layers": 2,
}
"""Tiny CLIP architecture (widths of 64 → 1 head each, as clip-anytorch's build_model infers)."""

EVALUATOR_SEED = 1_000


def render_dataset(cfg: Config, per_shape: int, seed: int) -> dict[str, Tensor]:
    """Images [N, 3, H, W] (albedo, lit and textureless), caption index (−1 for textureless) and shape index."""
    g = torch.Generator().manual_seed(seed)
    images, caps, shapes = [], [], []
    for s, shape in enumerate(SHAPES):
        rand = render_shape(cfg, shape, per_shape // 2, g)
        orbit = _orbit_renders(cfg, shape, per_shape - per_shape // 2, g)
        for r in (rand, orbit):
            for colour, rgb in COLOURS.items():
                for mode in ("albedo", "lit"):
                    images.append(colourise(r, rgb, mode, cfg.render.background_color))
                    caps.append(torch.full((len(r.opacity),), CAPTIONS.index(caption(colour, shape))))
                    shapes.append(torch.full((len(r.opacity),), s))
            images.append(colourise(r, (1.0, 1.0, 1.0), "textureless", cfg.render.background_color))
            caps.append(torch.full((len(r.opacity),), -1))
            shapes.append(torch.full((len(r.opacity),), s))
    return {"images": torch.cat(images), "caption": torch.cat(caps), "shape": torch.cat(shapes)}


def _orbit_renders(cfg: Config, shape: str, n: int, g: torch.Generator) -> ShapeRenders:
    """Renders from evaluation-style cameras (evaluation elevation ± 10°, random azimuth)."""
    az = (360 * torch.rand(n, generator=g)).tolist()
    el = cfg.camera.eval_elevation + 20 * (torch.rand(1, generator=g).item() - 0.5)
    return render_shape(cfg, shape, n, g, cams=orbit_cameras(cfg.camera, az, el))


def augment(images: Tensor, g: torch.Generator) -> Tensor:
    """Background tint, brightness, blur, noise, shift and zoom — what imperfect renders look like."""
    b = images.shape[0]
    white = (images > 0.97).all(1, keepdim=True).float()
    tint = 1 - 0.3 * torch.rand(b, 3, 1, 1, generator=g)
    x = images * (1 - white) + white * tint
    x = x * (0.8 + 0.4 * torch.rand(b, 1, 1, 1, generator=g))
    scale = 0.8 + 0.4 * torch.rand(b, generator=g)
    shift = 0.15 * (2 * torch.rand(b, 2, generator=g) - 1)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x - 1, grid, padding_mode="zeros", align_corners=False) + 1  # pad with white
    blur = torch.rand(b, generator=g) < 0.3
    if blur.any():
        x[blur] = F.avg_pool2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = x + 0.06 * torch.rand(b, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def targets(caption: Tensor, shape: Tensor) -> Tensor:
    """[B, 36]: one-hot caption, or uniform over the shape's six captions for textureless images."""
    t = torch.zeros(len(caption), len(CAPTIONS))
    colour_rows = caption >= 0
    t[colour_rows, caption[colour_rows]] = 1.0
    for s, name in enumerate(SHAPES):
        rows = (~colour_rows) & (shape == s)
        cols = [i for i, c in enumerate(CAPTIONS) if c.rstrip(".").endswith(name)]
        t[rows.nonzero().squeeze(1)[:, None], torch.tensor(cols)[None]] = 1.0 / len(cols)
    return t


def train_evaluator(
    cfg: Config,
    steps: int = 3000,
    per_shape: int = 800,
    batch: int = 192,
    seed: int = EVALUATOR_SEED,
    log_every: int = 100,
) -> tuple[torch.nn.Module, dict]:
    clip = import_clip()
    torch.manual_seed(seed)
    t0 = time.time()
    data = render_dataset(cfg, per_shape, seed)
    render_s = time.time() - t0
    model = clip.model.CLIP(**ARCH).float()
    tokens = clip.tokenize(CAPTIONS, context_length=ARCH["context_length"])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed + 1)
    tgt_all = targets(data["caption"], data["shape"])
    n = len(data["images"])
    for step in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        x = preprocess(augment(data["images"][idx], g), ARCH["image_resolution"])
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        loss = -(tgt_all[idx] * F.log_softmax(logits, -1)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log_every and step % log_every == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
    info = {
        "render_seconds": round(render_s, 1),
        "train_seconds": round(time.time() - t0 - render_s, 1),
        "steps": steps,
        "batch": batch,
        "images": n,
        "seed": seed,
    }
    return model.eval(), info


def save_evaluator(model: torch.nn.Module, path: str | Path) -> str:
    """Save as a clip-anytorch fp16 state dict (what `clip.load(path, jit=False)` expects); return its sha256."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    atomic_write(path, lambda p: torch.save(state, p))
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="models/world-clip/world-clip.pt")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--per-shape", type=int, default=800)
    args = ap.parse_args(argv)
    cfg = load_config(args.params)
    model, info = train_evaluator(cfg, args.steps, args.per_shape)
    info["sha256"] = save_evaluator(model, args.out)
    atomic_write(Path(args.out).with_suffix(".train.json"), lambda p: p.write_text(json.dumps(info, indent=2) + "\n"))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
