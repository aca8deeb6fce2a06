"""Time the field's part of one training step on this machine: render the config's training views (lit, with
normals, random background) and backpropagate a loss through the image and the orientation penalty, once per
`nerf.normals` kind. The guidance's part of a step is bench_sds_step.py's (CPU) or bench_sds_gpu.py's (CUDA).

    python benchmarks/bench_field_step.py [--config configs/rehearsal-sd.yaml] [--set key=value ...] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.recipe_probe import probe_settings  # noqa: E402
from pipeline import config as cfgmod  # noqa: E402
from pipeline.nerf.cameras import sample_cameras  # noqa: E402
from pipeline.nerf.field import build_field  # noqa: E402
from pipeline.nerf.renderer import Background, Shading, render  # noqa: E402


def time_step(cfg: cfgmod.Config, device: torch.device, repeats: int) -> float:
    """Seconds for render + backward of one step's `train.batch_views` lit views, all levels unlocked."""
    torch.manual_seed(0)
    field = build_field(cfg.nerf).to(device)
    with torch.no_grad():
        for p in field.parameters():
            p.normal_(0.0, 0.1)  # a trained-looking field, not the all-zero init
    field.set_step(None)
    background = Background(cfg.render).to(device)
    b = cfg.train.batch_views
    cams = sample_cameras(cfg.camera, b, torch.Generator().manual_seed(0)).to(device)
    shading = Shading.lit(b, cfg.shading)

    def step() -> None:
        out = render(
            field,
            cams,
            cfg.render.resolution,
            cfg.render.samples,
            shading,
            background,
            normal_eps=cfg.render.normal_eps,
            generator=torch.Generator().manual_seed(1),
            training=True,
        )
        (out.rgb.mean() + out.orientation).backward()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "rehearsal-sd.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"{args.config} {' '.join(args.set)} on {device} ({torch.get_num_threads()} threads)")
    for kind in ("finite_difference", "analytic"):
        cfg = cfgmod.from_dict(probe_settings(args.config, [*args.set, f"nerf.normals={kind}"]))
        r = cfg.render
        seconds = time_step(cfg, device, args.repeats)
        print(
            f"nerf.normals={kind:<17} {r.resolution}x{r.resolution}, {r.samples} samples, {cfg.train.batch_views} "
            f"view(s): {seconds:.3f} s a step (render + backward, mean of {args.repeats})"
        )


if __name__ == "__main__":
    main()
