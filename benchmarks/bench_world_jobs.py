"""Object-steps per second of the default bundled-world training for K objects per job (`train.objects_per_job`),
one thread, as a job runs under Snakemake on a CPU; and whether the K objects are the single jobs' bit for bit.

The closed-form prior reads its whole image bank for every batch (one matmul for the likelihoods, one for the
unconditional mean), so K objects in one job share that pass; what a job saves shows here.

    python benchmarks/bench_world_jobs.py [--objects-per-job 1,2,4,8] [--steps 30] [--check]
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

from pipeline import yamlio  # noqa: E402
from pipeline.config import from_dict  # noqa: E402
from pipeline.train import Target, train_many  # noqa: E402
from pipeline.world.prior import ClosedFormWorldPrior, generate_bank  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--objects-per-job", default="1,2,4,8", help="comma list of K")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--check", action="store_true", help="also compare each K's weights with K = 1's")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a CPU training job's threads under Snakemake
    data = yamlio.load(args.params)
    data["tracking"] = {"enabled": False}
    cfg = from_dict(data, args.params)
    prior = ClosedFormWorldPrior(generate_bank(cfg), torch.device("cpu"))
    captions = [f"{p}." for p in cfg.prompts.select] or ["a red cube."]
    ks = [int(k) for k in args.objects_per_job.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        firsts = {}
        for k in ks:
            targets = [
                Target(f"p{i}", captions[i % len(captions)], i // len(captions), Path(tmp) / f"k{k}" / f"p{i}")
                for i in range(k)
            ]
            t = time.perf_counter()
            train_many(cfg, targets, prior, stop_after=args.steps)
            wall = time.perf_counter() - t
            line = f"K={k}: {k * args.steps / wall:.2f} object-steps/s ({wall:.1f} s for {args.steps} steps)"
            if args.check:
                from safetensors.torch import load_file

                ckpt = load_file(str(targets[0].out / "checkpoint" / "checkpoint.safetensors"))
                firsts.setdefault("ref", ckpt)
                same = all(torch.equal(ckpt[n], firsts["ref"][n]) for n in ckpt)
                line += f"; first object bit-identical to K={ks[0]}'s: {same}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
