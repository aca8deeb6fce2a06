"""Side-by-side contact sheet of two variants' objects (README pictures): one row per object, the colour views at
the first azimuths of variant A on the left and of variant B on the right, taken from each object's views/ folder.

    python benchmarks/probes/before_after.py results/primitives world-w10-uniform-recipe1 world-w10-uniform docs/x.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio.v2 as imageio
import numpy as np


def sheet(results: Path, before: str, after: str, azimuths: list[int], seed: int, gap: int = 12) -> np.ndarray:
    rows = []
    for obj in sorted(p.name for p in (results / after).iterdir() if (p / f"seed{seed}").is_dir()):
        halves = []
        for variant in (before, after):
            views = results / variant / obj / f"seed{seed}" / "views"
            frames = [imageio.imread(views / f"color_{az:03d}.png")[..., :3] for az in azimuths]
            halves.append(np.concatenate(frames, 1))
        white = np.full((halves[0].shape[0], gap, 3), 255, np.uint8)
        rows.append(np.concatenate([halves[0], white, halves[1]], 1))
    return np.concatenate(rows, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="results/<benchmark>")
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("out", type=Path)
    ap.add_argument("--azimuths", type=int, nargs="*", default=[0, 45, 90, 135])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscale")
    args = ap.parse_args()
    img = sheet(args.results, args.before, args.after, args.azimuths, args.seed)
    imageio.imwrite(args.out, np.kron(img, np.ones((args.scale, args.scale, 1), np.uint8)))


if __name__ == "__main__":
    main()
