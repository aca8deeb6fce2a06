"""Time one SDS step (guidance forward with CFG + surrogate backward) for each guidance kind on this machine.

Tiny random Stable Diffusion and IF-style pipelines (the test models) and the bundled closed-form world prior, on a
4-view batch of renders. For SD 2.1-base itself see bench_sds_gpu.py.

    python benchmarks/bench_sds_step.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import GuidanceConfig, load  # noqa: E402
from pipeline.sds import sds  # noqa: E402


def time_step(guidance, res: int, repeats: int) -> float:
    images = torch.rand(4, 3, res, res, requires_grad=True)
    cond = guidance.embed(["a red cube, front view"] * 4)
    uncond = guidance.embed([""] * 4)
    t = torch.tensor([100, 300, 600, 900])
    cfg = GuidanceConfig(scale=10.0)
    sds(guidance, images, cond, uncond, t, cfg).loss.backward()
    start = time.perf_counter()
    for _ in range(repeats):
        sds(guidance, images, cond, uncond, t, cfg).loss.backward()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    from pipeline.guidance.deepfloyd_if import DeepFloydIFGuidance
    from pipeline.guidance.stable_diffusion import StableDiffusionGuidance
    from pipeline.world.prior import ClosedFormWorldPrior, generate_bank
    from tests.tiny_models import save_tiny_if, save_tiny_sd

    cpu = torch.device("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sd = StableDiffusionGuidance(str(save_tiny_sd(Path(tmp) / "sd")), cpu, torch.float32, 64)
        rows.append(("tiny SD (latent 8×8 from 64² VAE input)", time_step(sd, 32, args.repeats)))
        fi = DeepFloydIFGuidance(str(save_tiny_if(Path(tmp) / "if")), cpu, torch.float32)
        rows.append(("tiny IF-style (pixel 16²)", time_step(fi, 32, args.repeats)))
    cfg = load(ROOT / "params.yaml")
    world = ClosedFormWorldPrior(generate_bank(cfg), cpu)
    rows.append(
        (
            f"closed-form world prior ({cfg.world.images_per_caption}/caption, 32²)",
            time_step(world, cfg.world.resolution, args.repeats),
        )
    )
    print(f"\nOne SDS step, 4 views, CFG, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for name, s in rows:
        print(f"- {name}: {1000 * s:.1f} ms")


if __name__ == "__main__":
    main()
