"""Benchmark the default bundled-world setup, stage by stage, and append the numbers to benchmarks/RESULTS.md.

Reports: wall time per stage for one prompt (train, mesh, views, evaluate), the per-step breakdown (render forward,
guidance, backward, optimiser), steps/s, peak memory, FLOPs of one training step (torch's FlopCounterMode: the
matmul/conv FLOPs it counts) and the fraction of this machine's measured fp32 matmul throughput that gives.

    python benchmarks/bench_world.py [--params params.yaml] [--prompt "a red cube"] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import load as load_config  # noqa: E402
from pipeline.prompts import normalize, prompt_id  # noqa: E402


def matmul_gflops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def step_flops(cfg, guidance) -> float:
    """FLOPs counted by FlopCounterMode for one training step (forward + backward), excluding the optimiser."""
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.nerf.cameras import sample_cameras, with_suffix
    from pipeline.nerf.model import Model
    from pipeline.nerf.renderer import render, sample_shading
    from pipeline.sds import TimestepSchedule, sds

    model = Model(cfg)
    g = torch.Generator().manual_seed(0)
    b = cfg.train.batch_views
    with FlopCounterMode(display=False) as fc:
        cams = sample_cameras(cfg.camera, b, g)
        res = render(
            model.field,
            cams,
            cfg.render.resolution,
            cfg.render.samples,
            sample_shading(cfg.shading, cfg.shading.albedo_steps, b, g),
            model.background,
            generator=g,
            need_normals=True,
        )
        texts = [
            with_suffix("a red cube.", e, a)
            for e, a in zip(cams.elevation.tolist(), cams.azimuth.tolist(), strict=True)
        ]
        t = TimestepSchedule(cfg.schedule, guidance.alphas_cumprod, cfg.train.steps)(0, b, g)
        out = sds(guidance, res.rgb, guidance.embed(texts), guidance.embed([""] * b), t, cfg.guidance, 0, g)
        out.loss.backward()
    return float(fc.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--prompt", default="a red cube")
    ap.add_argument("--steps", type=int, default=0, help="override train.steps (0 = params)")
    ap.add_argument("--label", default="", help="what changed, for RESULTS.md")
    args = ap.parse_args()
    cfg = load_config(args.params)
    if args.steps:
        cfg.train.steps = args.steps
    cfg.tracking.enabled = False
    from pipeline import evaluate, mesh, train, views
    from pipeline.world.prior import ClosedFormWorldPrior, generate_bank

    text = normalize(args.prompt)
    stages: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "world" / prompt_id(text) / "seed0"
        t = time.perf_counter()
        prior = ClosedFormWorldPrior(generate_bank(cfg), torch.device("cpu"))
        stages["world bank (once per benchmark)"] = time.perf_counter() - t
        t = time.perf_counter()
        m = train.train(cfg, prompt_id(text), text, 0, out, prior)
        stages["train"] = time.perf_counter() - t
        t = time.perf_counter()
        mesh.run(out / "model.safetensors", out, torch.device("cpu"))
        stages["mesh"] = time.perf_counter() - t
        t = time.perf_counter()
        views.run(out / "model.safetensors", out / "mesh.ply", out, torch.device("cpu"))
        stages["views"] = time.perf_counter() - t
        t = time.perf_counter()
        scorers = [
            evaluate.ClipScorer(str(ROOT / c) if not Path(c).is_absolute() else c, torch.device("cpu"))
            for c in cfg.evaluate.clip_models
        ]
        evaluate.evaluate(
            [{"prompt_id": "x", "seed": 0, "text": text, "views": evaluate.load_views(out / "views.npz")}],
            [normalize(line) for line in (ROOT / "prompts/primitives.txt").read_text().splitlines()],
            scorers,
            cfg.evaluate.combine,
            world=True,
        )
        stages["evaluate (1 object)"] = time.perf_counter() - t
        flops = step_flops(cfg, prior)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    gflops = matmul_gflops()
    sps = m["steps_per_second"]
    per_step = m["seconds_per_step"]
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    lines = [
        f"\n## {time.strftime('%Y-%m-%d %H:%M')} · {sha} · bundled world · {args.label or 'baseline'}",
        f"- machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"python {platform.python_version()}, torch {torch.__version__}",
        f"- setting: {cfg.train.steps} steps, {cfg.train.batch_views} views/step at {cfg.render.resolution}², "
        f"{cfg.render.samples} samples/ray, grid {cfg.nerf.resolution}³, bank {cfg.world.images_per_caption}/caption",
        "- stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()),
        "- per step (ms): " + ", ".join(f"{k} {1000 * v:.1f}" for k, v in per_step.items()) + f"; {sps:.2f} steps/s",
        f"- FLOPs/step (counted): {flops / 1e9:.2f} GFLOP → {flops * sps / 1e9:.2f} GFLOP/s achieved vs "
        f"{gflops:.1f} GFLOP/s measured fp32 matmul ({100 * flops * sps / 1e9 / gflops:.1f} %)",
        f"- peak RSS: {peak_gb:.2f} GB",
    ]
    with open(ROOT / "benchmarks/RESULTS.md", "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({"stages": stages, "per_step": per_step}))


if __name__ == "__main__":
    main()
