"""SDS-NeRF steps/s and memory for the paper setups: Stable Diffusion 2.1-base (latent, 64×64 renders) and
DeepFloyd IF stage I (pixel, 64×64), through the same training loop the pipeline runs.

Speed does not depend on the weights' values, so when no checkpoint is given the architecture is built with random
weights (no network needed):
* `--setup sd21`: SD 2.1-base's UNet / VAE / OpenCLIP-H text encoder from their published configs.
* `--setup if`: an IF-I-XL stand-in. IF's gated config is not available offline, so the UNet uses the block types of
  diffusers' IF conversion (ResNet-downsample + SimpleCrossAttn blocks, `text_proj` from T5's 4096 dims, attention
  pooling, scale-shift norm, 6 output channels) at width `--if-channels` 704 (× 1, 2, 3, 4), which gives 4.30 B
  parameters, the published 4.3 B. The text encoder is T5-v1.1-XXL's architecture (24 layers, d_model 4096); on a CPU
  `--small-text-encoder` swaps it for one layer (embeddings are computed once and cached, so speed is unaffected but
  the reported memory is then too low). Pass `--model DIR` with a real IF checkpoint for exact numbers.

Runs `--steps` training steps of configs/sd21-coco153.yaml or configs/if-coco153.yaml and prints steps/s, the
per-step breakdown, the projected time for 10k steps and peak GPU memory during training; then it times the later
stages for that object (`--stages`): mesh extraction, the evaluation views and CLIP R-precision with the paper's three
CLIP architectures (random weights, loaded through `clip.load`). `--compile` runs torch.compile on the UNet;
`--cuda-graphs` compiles it with mode="reduce-overhead", which captures CUDA graphs: the UNet's shapes are static
within a run, so one graph is recorded and replayed every step (in a pipeline config both are `guidance.compile`).
On a CPU it runs too (slowly), to check the script:

    python benchmarks/bench_sds_gpu.py --setup sd21 --steps 200 [--dtype float16] [--compile | --cuda-graphs]
    python benchmarks/bench_sds_gpu.py --setup if --steps 200 --dtype float16 [--model <local IF-I-XL dir>]
    python benchmarks/bench_sds_gpu.py --setup if --steps 2 --if-channels 64 --small-text-encoder   # CPU check
    python benchmarks/bench_sds_gpu.py --setup sd21 --steps 100 --dtype float16 --objects-per-job 1,4,8,16
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
from pipeline.guidance import compile_unet  # noqa: E402
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


def if_stage1_random(device: torch.device, dtype: torch.dtype, channels: int = 704, small_text_encoder: bool = False):
    """The IF-I-XL stand-in described in the module docstring, random weights, built directly on `device`."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    from pipeline.guidance.deepfloyd_if import DeepFloydIFGuidance
    from pipeline.guidance.tokenizer import clip_tokenizer

    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=3,
            out_channels=6,
            layers_per_block=3,
            block_out_channels=tuple(channels * m for m in (1, 2, 3, 4)),
            attention_head_dim=64,
            down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
            up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            cross_attention_dim=channels * 4,
            encoder_hid_dim=4096,
            encoder_hid_dim_type="text_proj",
            addition_embed_type="text",
            addition_embed_type_num_heads=64,
            act_fn="gelu",
            cross_attention_norm="group_norm",
            resnet_time_scale_shift="scale_shift",
        ).to(dtype)
        text = T5EncoderModel(
            T5Config(
                vocab_size=49408,  # the offline CLIP BPE tokenizer stands in for T5's SentencePiece one
                d_model=4096,
                d_kv=64,
                d_ff=10240,
                num_layers=1 if small_text_encoder else 24,
                num_heads=64,
                feed_forward_proj="gated-gelu",
                is_encoder_decoder=False,
            )
        ).to(dtype)
    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range")
    tok = clip_tokenizer(Path(tempfile.mkdtemp()) / "tok")
    return DeepFloydIFGuidance.from_modules(tok, text, unet, sched, device, dtype)


CLIP_ARCHS = {  # clip-anytorch CLIP(...) arguments of the paper's three evaluators (published hyperparameters)
    "ViT-B/32": (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
    "ViT-B/16": (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
    "ViT-L/14": (768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12),
}


def clip_random(name: str, directory: Path) -> str:
    """A checkpoint of CLIP `name`'s architecture with random weights, loaded later through `clip.load` (the
    evaluation's real loading path)."""
    from pipeline.clip_loader import import_clip

    path = directory / (name.replace("/", "-") + ".pt")
    torch.save(import_clip().model.CLIP(*CLIP_ARCHS[name]).state_dict(), path)
    return str(path)


def later_stages(cfg, out: Path, text: str, retrieval: list[str], stages: list[str], device) -> dict[str, float]:
    """Wall time of mesh extraction, evaluation views and CLIP R-precision (3 random CLIPs) for the trained object."""
    from pipeline import evaluate, mesh, views

    timings: dict[str, float] = {}
    if "mesh" in stages:
        t = time.perf_counter()
        mesh.run(out / "model.safetensors", out, device)
        timings["mesh"] = time.perf_counter() - t
    if "views" in stages:
        t = time.perf_counter()
        views.run(out / "model.safetensors", out / "mesh.ply" if "mesh" in stages else None, out, device)
        timings["views"] = time.perf_counter() - t
    if "evaluate" in stages and "views" in stages:
        paths = [clip_random(n, out) for n in cfg.evaluate.clip_models if n in CLIP_ARCHS]
        t = time.perf_counter()
        scorers = [evaluate.ClipScorer(p, device) for p in paths]
        obj = {"prompt_id": "bench", "seed": 0, "text": text, "views": evaluate.load_views(out / "views.npz")}
        evaluate.evaluate([obj], retrieval, scorers, cfg.evaluate.combine, world=False)
        timings[f"evaluate ({len(scorers)} CLIPs, load + 1 object)"] = time.perf_counter() - t
    return timings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setup", default="sd21", choices=["sd21", "if"], help="paper setup to run")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    ap.add_argument("--model", default="", help="local SD / IF directory (default: random weights, see above)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    ap.add_argument("--cuda-graphs", action="store_true", help='torch.compile(mode="reduce-overhead") the UNet')
    ap.add_argument("--latent-resolution", type=int, default=512, help="sd21: VAE input size")
    ap.add_argument("--if-channels", type=int, default=704, help="if: stand-in UNet base width (704 → 4.30 B)")
    ap.add_argument("--small-text-encoder", action="store_true", help="if: one T5 layer (CPU checks)")
    ap.add_argument(
        "--objects-per-job",
        default="1",
        help="comma list of K: for each, K objects (the first K COCO prompts) trained by one job sharing one batched "
        "guidance call per step (train.objects_per_job); reports object-steps/s and peak memory per object",
    )
    ap.add_argument(
        "--stages", default="train,mesh,views,evaluate", help="comma list: train always runs; mesh, views, evaluate"
    )
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset_path = "configs/sd21-coco153.yaml" if args.setup == "sd21" else "configs/if-coco153.yaml"
    preset = yaml.safe_load((ROOT / preset_path).read_text())
    preset["train"].update(steps=args.steps, checkpoint_every=10**6, preview_every=10**6)
    mode = "reduce-overhead" if args.cuda_graphs else "default" if args.compile else "off"
    preset["guidance"].update(dtype=args.dtype, compile=mode)
    if args.setup == "sd21":
        preset["guidance"]["latent_resolution"] = args.latent_resolution
    preset["tracking"] = {"enabled": False}
    if args.model:
        preset["guidance"]["model"] = args.model
    cfg = from_dict(preset, f"{preset_path} (bench)")
    dtype = pick_dtype(args.dtype, device)
    if args.model:
        from pipeline.guidance import build_guidance

        guidance = build_guidance(cfg, device)
    elif args.setup == "sd21":
        guidance = sd21_base_random(device, dtype, args.latent_resolution)
    else:
        guidance = if_stage1_random(device, dtype, args.if_channels, args.small_text_encoder)
    unet_params = sum(p.numel() for p in guidance.unet.parameters())
    if not args.model:  # build_guidance applied guidance.compile already
        guidance = compile_unet(guidance, cfg.guidance.compile, device)
    from pipeline.prompts import normalize
    from pipeline.train import Target, train_many

    retrieval = [normalize(line) for line in (ROOT / "prompts/coco153.txt").read_text().splitlines() if line.strip()]
    from pipeline.guidance.prompting import ViewPrompter

    ks = [int(x) for x in args.objects_per_job.split(",")]
    for text in retrieval[: max(ks)]:  # before a job releases the text encoder
        guidance.embed(ViewPrompter(guidance, text, cfg.guidance).texts())
    runs, stages = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in ks:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() / 1e9 if device.type == "cuda" else None
            targets = [Target(f"bench{i}", retrieval[i], 0, Path(tmp) / f"k{k}" / f"p{i}" / "seed0") for i in range(k)]
            t = time.perf_counter()
            metrics = train_many(cfg, targets, guidance, device=device)
            wall = time.perf_counter() - t
            peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None
            m = metrics[0]
            runs.append(
                {
                    "objects_per_job": k,
                    "wall_s": round(wall, 1),
                    "object_steps_per_s": round(k * m["steps_per_second"], 3),
                    "ms_per_step_per_object": {n: round(1000 * v, 1) for n, v in m["seconds_per_step"].items()},
                    "projected_10k_steps_min_per_object": round(10_000 / (k * m["steps_per_second"]) / 60, 1),
                    "peak_gpu_mem_gb": round(peak, 2) if peak is not None else None,
                    "gpu_mem_gb_per_object": round((peak - base) / k, 2) if peak is not None else None,
                }
            )
            print(json.dumps(runs[-1]), flush=True)
        first = runs[0]["objects_per_job"]
        del guidance
        if device.type == "cuda":
            torch.cuda.empty_cache()
        out_dir = Path(tmp) / f"k{first}" / "p0" / "seed0"
        stages = later_stages(cfg, out_dir, retrieval[0], retrieval, args.stages.split(","), device)
    out = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "setup": args.setup if not args.model else f"{args.setup} ({args.model})",
        "unet_params_b": round(unet_params / 1e9, 3),
        "dtype": str(dtype),
        "compile": cfg.guidance.compile,
        "steps": args.steps,
        "runs": runs,
        "later_stages_s": {k: round(v, 1) for k, v in stages.items()},
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
