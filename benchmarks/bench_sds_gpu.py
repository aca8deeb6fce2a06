"""SDS-NeRF steps/s and memory for the paper setup (Stable Diffusion 2.1-base guidance, 64×64 renders).

Speed does not depend on the weights' values, so when the checkpoint is not on disk the real SD 2.1-base
architecture is built from its config with random weights (no network needed). Runs `--steps` training steps of the
configs/sd21-coco153.yaml preset and prints steps/s, the per-step breakdown and peak GPU memory; `--compile`
tries torch.compile on the UNet. On a CPU it runs too (slowly), to check the script.

    python benchmarks/bench_sds_gpu.py --steps 200 [--dtype float16] [--compile] [--model <local SD dir>]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import from_dict  # noqa: E402
from pipeline.guidance.base import pick_dtype  # noqa: E402


def sd21_base_random(device: torch.device, dtype: torch.dtype, latent_resolution: int):
    """SD 2.1-base's UNet / VAE / OpenCLIP-H text encoder from their configs, random weights."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipeline.guidance.stable_diffusion import StableDiffusionGuidance
    from pipeline.guidance.tokenizer import clip_tokenizer

    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        use_linear_projection=True,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=512,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_attention_heads=16,
            num_hidden_layers=23,
            projection_dim=512,
            hidden_act="gelu",
        )
    )
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    tok = clip_tokenizer(Path(tempfile.mkdtemp()) / "tok")
    return StableDiffusionGuidance.from_modules(
        tok, text, unet, sched, device, dtype, vae=vae, latent_resolution=latent_resolution
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    ap.add_argument("--model", default="", help="local SD directory (default: random SD 2.1-base architecture)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    ap.add_argument("--latent-resolution", type=int, default=512)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = yaml.safe_load((ROOT / "configs/sd21-coco153.yaml").read_text())
    preset["train"].update(steps=args.steps, checkpoint_every=10**6, preview_every=10**6)
    preset["guidance"].update(dtype=args.dtype, latent_resolution=args.latent_resolution)
    preset["tracking"] = {"enabled": False}
    if args.model:
        preset["guidance"]["model"] = args.model
    cfg = from_dict(preset, "configs/sd21-coco153.yaml (bench)")
    dtype = pick_dtype(args.dtype, device)
    if args.model:
        from pipeline.guidance import build_guidance

        guidance = build_guidance(cfg, device)
    else:
        guidance = sd21_base_random(device, dtype, args.latent_resolution)
    if args.compile:
        guidance.unet = torch.compile(guidance.unet)
    from pipeline.train import train

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        m = train(cfg, "bench", "a DSLR photo of a squirrel.", 0, Path(tmp) / "v" / "p" / "seed0", guidance)
    wall = time.perf_counter() - t
    out = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dtype": str(dtype),
        "compile": args.compile,
        "steps": args.steps,
        "wall_s": round(wall, 1),
        "steps_per_s": round(m["steps_per_second"], 3),
        "ms_per_step": {k: round(1000 * v, 1) for k, v in m["seconds_per_step"].items()},
        "projected_10k_steps_min": round(10_000 / m["steps_per_second"] / 60, 1),
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if device.type == "cuda" else None,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
