"""Quick recipe probe on the bundled world: train prompts with config overrides, print per object the 3D IoU and fog
(pipeline.geometry) and the colour R-precision and shape hit of the evaluation views (pipeline.evaluate, the
config's CLIP, the 36 captions of the world).

A development tool for choosing recipe defaults before running a preset through the workflow (which adds meshes,
Chamfer, normals, silhouettes, paired CIs). Same training, views and evaluation code, same bank, same seeds.

    python benchmarks/recipe_probe.py --set train.opacity_weight=0.01 --set nerf.field=pyramid [--jobs 2] \
        [--sheet probe.png]

Each object's sheet (colour views above textureless ones) is kept beside its model; `--sheet` stacks them.
`--score-at 500 1000` also scores each object part-way (training stops there with a checkpoint, is scored, and resumes
exactly), printing a line as each stage ends: a run cut short by a time limit still says where it had got to and how
fast (the GPU session, benchmarks/gpu_session.sh, relies on it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("TQDM_DISABLE", "1")

import yaml

from pipeline import config as cfgmod

ROOT = Path(__file__).resolve().parents[1]


def _set(d: dict, key: str, value: str) -> None:
    node = d
    *parents, last = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = yaml.safe_load(value)


def _merge(base: dict, over: dict) -> None:
    """Nested update of `base` by `over`, as Snakemake's --configfile does (no Snakemake needed)."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def probe_settings(config: str | list[str] | None, sets: list[str]) -> dict:
    """params.yaml with one preset or several merged over it in order (as `--configfile a.yaml b.yaml` does) and
    `dotted.key=value` overrides, tracking off: a probe's settings, as a dict for `pipeline.config.from_dict`."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    for path in [config] if isinstance(config, str) else config or []:
        _merge(data, yaml.safe_load(Path(path).read_text()))
    for item in sets:
        key, value = item.split("=", 1)
        _set(data, key, value)
    data["tracking"] = {"enabled": False}
    return data


def world_bank(cfg: cfgmod.Config) -> Path:
    """The world bank of cfg under results/world/, named as the workflow names it; built on first use."""
    from pipeline.world.prior import bank_digest, generate_bank, save_bank

    bank = ROOT / f"results/world/bank-{bank_digest(cfg)}.safetensors"
    if not bank.exists():
        save_bank(generate_bank(cfg), bank, cfg)
    return bank


def shape_scores(cfg: cfgmod.Config, model, text: str, seed: int = 0) -> dict[str, float]:
    """iou, fog, iou_scaled, scale, init_iou and iou_gain of a trained model against its caption's primitive
    (`pipeline.geometry.field_scores`: the workflow's grid, iso-level and init)."""
    from pipeline.geometry import field_scores
    from pipeline.world.scenes import parse_caption

    out = field_scores(model.field, cfg, parse_caption(text)[1], seed)
    return {k: out[k] for k in ("iou", "fog", "iou_scaled", "scale", "init_iou", "iou_gain")}


def stack_sheets(sheets: list[Path], path: Path) -> None:
    """Per-object sheets (same view size) one above the other, in the order given, as one PNG."""
    import imageio.v3 as iio
    import numpy as np

    from pipeline.views import _png

    images = [iio.imread(s)[..., :3] for s in sheets]
    width = max(i.shape[1] for i in images)
    rows = [np.pad(i, ((0, 0), (0, width - i.shape[1]), (0, 0)), constant_values=255) for i in images]
    path.parent.mkdir(parents=True, exist_ok=True)
    _png(path, np.concatenate(rows))


def probe_dir(cfg: cfgmod.Config) -> Path:
    """Where a probe of these settings keeps its objects (one folder each; a rerun reuses the finished ones)."""
    return Path(f"/tmp/recipe-probe/{Path(__file__).resolve().parents[1].name}-{cfg.digest()}")


def stage_sheets(objects: Path) -> list[Path]:
    """The sheets a probe left under `objects` (its `probe_dir`): object by object, each stage's sheet-<step>.png by
    step, then the finished object's sheet.png."""

    def key(p: Path) -> tuple[str, int]:
        step = p.stem.removeprefix("sheet").removeprefix("-")
        return p.parent.name, int(step) if step else sys.maxsize

    return sorted(objects.glob("*/sheet*.png"), key=key)


def _line(r: dict) -> str:
    """One object's scores as the probe prints them (a part-way stage names its step; a finished one adds the CLIP
    scores)."""
    head = f"{r['prompt']:<22} seed {r['seed']}" + (f"  step {r['step']}" if "step" in r else "")
    line = (
        f"{head}  iou {r['iou']:.3f} (init {r['init_iou']:.3f})  fog {r['fog']:.3f}  "
        f"iou@scale {r['iou_scaled']:.3f} ({r['scale']:.2f})"
    )
    if "colour" in r:
        line += f"  colour {r['colour']:.3f}  shape {r['shape_hit']:.3f}"
    return f"{line}  ({r['seconds']} s)"


def _views(cfg, model, device, sheet: Path) -> dict:
    """Render the evaluation views of `model` and write the views stage's sheet (a row of colour views above a row of
    textureless ones) to `sheet`; returns the views."""
    import torch

    from pipeline.evaluate import MODES
    from pipeline.nerf.cameras import orbit_cameras
    from pipeline.views import _grid, _png, eval_azimuths, render_views

    cams = orbit_cameras(cfg.camera, eval_azimuths(cfg.views.azimuths)).to(device)
    with torch.no_grad():
        views = render_views(model, cfg, cams, cfg.views.resolution, cfg.views.samples)
    _png(sheet, _grid([views[m] for m in MODES.values()], nrow=len(cams)))
    return views


def _one(args: tuple[dict, str, int, str, list[int], int]) -> dict:
    data, text, seed, bank, score_at, threads = args
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    from pipeline.guidance import build_guidance
    from pipeline.world.scenes import CAPTIONS

    cfg = cfgmod.from_dict(data)
    out = probe_dir(cfg) / f"{text[:-1].replace(' ', '-')}-{seed}"
    t0 = time.time()
    from pipeline.checkpoint import checkpoint_step
    from pipeline.devices import pick_device
    from pipeline.nerf.model import Model, load_model
    from pipeline.train import checkpoint_model, train

    device = pick_device(cfg)
    guidance = build_guidance(cfg, device, bank)

    if not (out / "model.safetensors").exists():
        for stage in sorted(k for k in set(score_at) if 0 < k < cfg.train.steps):
            if (checkpoint_step(out / "checkpoint") or 0) < stage:
                train(cfg, text, text, seed, out, guidance, stop_after=stage)
            part, step = checkpoint_model(cfg, out, text, text, seed)
            part = part.to(device)
            scores = shape_scores(cfg, part, text, seed)
            _views(cfg, part, device, out / f"sheet-{step}.png")
            print(
                _line({"prompt": text, "seed": seed, "step": step, **scores, "seconds": round(time.time() - t0, 1)}),
                flush=True,
            )
        train(cfg, text, text, seed, out, guidance)
    model, _, _ = load_model(out / "model.safetensors", device)
    assert isinstance(model, Model)
    scores = shape_scores(cfg, model, text, seed)
    from pipeline.evaluate import MODES, ClipScorer, evaluate

    sheet = out / "sheet.png"
    views = _views(cfg, model, device, sheet)
    obj = {"prompt_id": "probe", "seed": seed, "text": text, "views": {m: views[k] for m, k in MODES.items()}}
    scorers = [ClipScorer(cfg.evaluate.clip_models[0], torch.device("cpu"))]
    result = evaluate([obj], CAPTIONS, scorers, cfg.evaluate.combine, world=True)
    colour, geo = result["objects"]
    scores.update(colour=colour["score"], shape_hit=geo["shape_score"])
    return {"prompt": text, "seed": seed, **scores, "sheet": str(sheet), "seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--config",
        action="append",
        help="a preset merged over params.yaml as `--configfile` does (e.g. configs/x.yaml); repeat to stack overlays",
    )
    ap.add_argument("--set", action="append", default=[], help="dotted.key=value (YAML value)")
    ap.add_argument("--prompts", nargs="*", default=None, help="captions (default: the merged config's prompts.select)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of each process (default 1)")
    ap.add_argument("--sheet", type=Path, help="write the objects' sheets, one above the other, to this PNG")
    ap.add_argument("--score-at", type=int, nargs="*", default=[], help="also score each object at these steps")
    args = ap.parse_args()
    data = probe_settings(args.config, args.set)
    cfg = cfgmod.from_dict(data)
    from pipeline.prompts import normalize

    bank = world_bank(cfg)
    print(f"objects: {probe_dir(cfg)}", flush=True)
    prompts = [normalize(p) for p in (args.prompts or cfg.prompts.select)]
    jobs = [(data, p, s, str(bank), args.score_at, args.threads) for p in prompts for s in args.seeds]
    import multiprocessing

    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = list(pool.map(_one, jobs))
    for r in rows:
        print(_line(r))
    if args.sheet:
        stack_sheets([Path(r["sheet"]) for r in rows], args.sheet)
        print(f"sheet: {args.sheet}")
    mean = {
        k: sum(r[k] for r in rows) / len(rows) for k in ("iou", "fog", "iou_scaled", "iou_gain", "colour", "shape_hit")
    }
    print(json.dumps({"set": args.set, "digest": cfg.digest(), **{k: round(v, 4) for k, v in mean.items()}}))


if __name__ == "__main__":
    main()
