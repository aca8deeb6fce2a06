"""CLIP R-precision (Dream Fields / DreamFusion protocol).

For each object (prompt × seed) the evaluation views (evaluation elevation, `views.azimuths` azimuths) are encoded
with CLIP and every caption of the retrieval set (all captions of the benchmark, normalised, e.g. all 153 COCO
captions or all 36 world captions, even when a run trains a subset) is ranked by cosine similarity. A hit is the
object's own caption ranking first. Ties are broken deterministically against the true caption: its rank is the
number of captions scoring higher, plus those scoring equal that come earlier in the retrieval set.

How views combine (`evaluate.combine`):
* per-view (default): each view ranks the captions; the object's score is its fraction of views that hit.
* mean-embedding: the views' unit image embeddings are averaged (and renormalised) into one query.
R-precision is the mean of object scores; the standard error is std(ddof=1)/√n over objects (0 when n = 1).
"colour" uses the lit colour renders, "geo" the textureless ones. For the bundled world, "geo_shape" counts a hit
when the top caption names the right shape (colour is invisible on textureless renders).

    python -m pipeline.evaluate --params config.yaml --prompts prompts.json --views a/seed0/views.npz ... --out r.json
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.clip_loader import import_clip, preprocess
from pipeline.config import Config
from pipeline.config import load as load_config
from pipeline.io import atomic_write_json, atomic_write_text, located_os_errors
from pipeline.prompts import PromptFileError, normalize, read_prompts_json
from pipeline.records import RecordError

MODES = {"color": "color", "geo": "textureless"}


class EvaluationError(ValueError):
    """Bad evaluation input (e.g. a caption missing from the retrieval set)."""


# --------------------------------------------------------------------------- the metric


def true_ranks(sim: Tensor, true_index: int) -> Tensor:
    """0-based rank of the true caption for each query row of sim [Q, K] (ties counted against the truth)."""
    s_true = sim[:, true_index : true_index + 1]
    higher = (sim > s_true).sum(1)
    earlier = torch.arange(sim.shape[1], device=sim.device)[None] < true_index
    tied_earlier = ((sim == s_true) & earlier).sum(1)
    return higher + tied_earlier


def order(sim_row: Tensor) -> list[int]:
    """Caption indices by descending similarity, ties by retrieval-set order."""
    idx = torch.arange(sim_row.shape[0])
    return sorted(idx.tolist(), key=lambda k: (-float(sim_row[k]), k))


def object_score(img_emb: Tensor, txt_emb: Tensor, true_index: int, combine: str) -> tuple[float, Tensor, Tensor]:
    """(score in [0, 1], ranks per query, similarity rows) for one object's view embeddings [V, D] (unit)."""
    if combine == "mean-embedding":
        img_emb = F.normalize(img_emb.mean(0, keepdim=True), dim=-1)
    elif combine != "per-view":
        raise ValueError(f"unknown evaluate.combine {combine!r}; use 'per-view' or 'mean-embedding'")
    sim = img_emb @ txt_emb.T
    ranks = true_ranks(sim, true_index)
    return float((ranks == 0).float().mean()), ranks, sim


def mean_and_stderr(scores: list[float]) -> tuple[float, float]:
    a = np.asarray(scores, dtype=np.float64)
    if len(a) == 0:
        return float("nan"), float("nan")
    se = float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else 0.0
    return float(a.mean()), se


# --------------------------------------------------------------------------- CLIP


def verify_checksum(path: Path) -> None:
    """Bundled weights record their sha256 in <name>.train.json; a mismatch means a corrupted or replaced file."""
    import hashlib

    record = path.with_suffix(".train.json")
    if not path.is_file() or not record.is_file():
        return
    expected = json.loads(record.read_text()).get("sha256")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if expected and actual != expected:
        raise EvaluationError(
            f"{path}: sha256 {actual[:12]}… does not match {expected[:12]}… recorded in {record.name}; the file is "
            "corrupted or was replaced: restore it (`git checkout -- models/`) or retrain (`snakemake bundled_models`)"
        )


class ClipScorer:
    """A CLIP model loaded through clip-anytorch (`clip.load`): a name (downloaded to `cache`) or a checkpoint path."""

    def __init__(self, name: str, device: torch.device, cache: str = "") -> None:
        clip = import_clip()
        if name not in clip.available_models() and not Path(name).is_file():
            raise EvaluationError(
                f"evaluate.clip_models: {name!r} is neither a clip-anytorch model name "
                f"({', '.join(clip.available_models())}) nor an existing checkpoint file"
            )
        verify_checksum(Path(name))
        try:
            if Path(name).is_file():  # a file anyone can place: tensors only, never pickled code
                state = torch.load(name, map_location="cpu", weights_only=True)
                if not isinstance(state, dict):
                    raise TypeError("not a CLIP state dict")
                from clip.model import build_model

                self.model = build_model(state).to(device)
            else:  # an official model, checksum-verified by clip-anytorch
                self.model, _ = clip.load(name, device=device, jit=False, download_root=cache or None)
        except Exception as exc:
            raise EvaluationError(
                f"could not load CLIP {name!r} ({type(exc).__name__}: {exc}); "
                "a named model needs network access once, a path must be a CLIP state dict"
            ) from None
        self.model = self.model.float().eval()
        self.name, self.device, self.clip = name, device, clip
        self.resolution = int(self.model.visual.input_resolution)
        self.context_length = int(self.model.context_length)

    @torch.no_grad()
    def texts(self, captions: list[str]) -> Tensor:
        tokens = self.clip.tokenize(captions, context_length=self.context_length, truncate=True).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    @torch.no_grad()
    def images(self, images: Tensor) -> Tensor:
        """[N, 3, H, W] in [0, 1] → unit embeddings [N, D] (bicubic antialiased resize, CLIP normalisation)."""
        x = preprocess(images.to(self.device).float(), self.resolution)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)


# --------------------------------------------------------------------------- evaluation of a variant


def _shape_of(caption: str) -> str:
    return caption.rstrip(".").split()[-1]


def evaluate(
    objects: list[dict[str, Any]], retrieval_set: list[str], scorers: list[ClipScorer], combine: str, world: bool
) -> dict[str, Any]:
    """objects: {prompt_id, seed, text, views: {color: [V,3,H,W], geo: [...]}} → results for every CLIP model."""
    index = {c: i for i, c in enumerate(retrieval_set)}
    for obj in objects:
        if normalize(obj["text"]) not in index:
            raise EvaluationError(
                f"caption {obj['text']!r} of {obj['prompt_id']} is not in the retrieval set "
                f"({len(retrieval_set)} captions); evaluate against the benchmark it came from"
            )
        for mode in MODES:
            views = obj["views"][mode]
            if not torch.isfinite(views).all():
                raise EvaluationError(
                    f"{obj['prompt_id']} seed {obj.get('seed')}: {MODES[mode]} views contain NaN/Inf (a corrupt "
                    "model); retrain the object"
                )
    per_object: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for scorer in scorers:
        txt = scorer.texts(retrieval_set)
        model_summary: dict[str, Any] = {}
        scores: dict[str, list[float]] = {m: [] for m in MODES}
        shape_scores: list[float] = []
        for obj in objects:
            true_index = index[normalize(obj["text"])]
            for mode in MODES:
                emb = scorer.images(obj["views"][mode])
                score, ranks, sim = object_score(emb, txt, true_index, combine)
                scores[mode].append(score)
                top = order(sim.mean(0))[:5]
                row = {
                    "prompt_id": obj["prompt_id"],
                    "seed": obj["seed"],
                    "text": obj["text"],
                    "clip": scorer.name,
                    "mode": mode,
                    "score": score,
                    "mean_rank": float(ranks.float().mean()),
                    "top5": [retrieval_set[k] for k in top],
                }
                if world and mode == "geo":
                    tops = sim.argmax(1) if combine == "per-view" else sim[:1].argmax(1)
                    hit = [_shape_of(retrieval_set[k]) == _shape_of(obj["text"]) for k in tops.tolist()]
                    row["shape_score"] = float(np.mean(hit))
                    shape_scores.append(row["shape_score"])
                per_object.append(row)
        for mode, vals in scores.items():
            mean, se = mean_and_stderr(vals)
            model_summary[mode] = {"r_precision": mean, "stderr": se, "n": len(vals)}
        if world:
            mean, se = mean_and_stderr(shape_scores)
            model_summary["geo_shape"] = {"r_precision": mean, "stderr": se, "n": len(shape_scores)}
        summary[scorer.name] = model_summary
    return {
        "retrieval_set_size": len(retrieval_set),
        "chance": 1 / len(retrieval_set),
        "combine": combine,
        "models": summary,
        "objects": per_object,
    }


def load_views(npz: Path) -> dict[str, Tensor]:
    """The colour and textureless views of views.npz: float [N, 3, H, W] in [0, 1], all finite (else an
    EvaluationError naming the file: a NaN view would tie every caption and score as a hit)."""
    try:
        with np.load(npz) as z:
            views = {mode: z[key] for mode, key in MODES.items()}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # truncated or foreign
        raise EvaluationError(
            f"{npz}: not a views.npz written by pipeline.views ({type(exc).__name__}: {exc}); re-run its views job"
        ) from None
    for mode, a in views.items():
        if a.dtype.kind != "f" or a.ndim != 4 or a.shape[1] != 3:
            raise EvaluationError(f"{npz}: {MODES[mode]} must be float [N, 3, H, W] in [0, 1], got {a.dtype} {a.shape}")
        if not np.isfinite(a).all():
            raise EvaluationError(f"{npz}: {MODES[mode]} views contain NaN/Inf (a corrupt model); retrain the object")
        if a.min() < 0 or a.max() > 1:
            raise EvaluationError(f"{npz}: {MODES[mode]} values must lie in [0, 1], got [{a.min():.3g}, {a.max():.3g}]")
    return {mode: torch.from_numpy(a) for mode, a in views.items()}


def collect_geometry(files: list[Path]) -> dict[str, Any]:
    """Per-object geometry.json files (pipeline.geometry) → {"objects": [...], "summary": {metric: mean}}. Objects
    refined by a second stage carry their first stage's volume measures; their means are `summary["first_stage"]`."""
    from pipeline.metrics import GEOMETRY as METRICS
    from pipeline.records import read_geometry

    objects = []
    for f in files:
        g = read_geometry(f)
        objects.append({"prompt_id": f.parent.parent.name, "seed": int(f.parent.name.removeprefix("seed")), **g})
    summary = {}
    for k in METRICS:
        vals = [o[k] for o in objects if o.get(k) is not None]
        summary[k] = float(np.mean(vals)) if vals else None
    firsts = [o["first_stage"] for o in objects if isinstance(o.get("first_stage"), dict)]
    if firsts:
        summary["first_stage"] = {
            k: float(np.mean([f[k] for f in firsts if f.get(k) is not None])) for k in ("iou", "fog", "iou_scaled")
        }
    return {"objects": objects, "summary": summary}


def per_object_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    fields = ["prompt_id", "seed", "text", "clip", "mode", "score", "mean_rank", "shape_score", "top1", "top5"]
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "top1": r["top5"][0], "top5": " | ".join(r["top5"]), "shape_score": r.get("shape_score", "")})
    return buf.getvalue()


def ground_truth_objects(cfg: Config, captions: list[str]) -> list[dict[str, Any]]:
    """The bundled world's ground-truth objects rendered with the evaluation views (the Table 1 ceiling).

    The albedo of a primitive is constant, so each shape is rendered once in white (lit and textureless) and
    coloured exactly by `colourise` (6 renders instead of one per caption)."""
    from pipeline.nerf.cameras import orbit_cameras
    from pipeline.nerf.renderer import Background, Shading, render_chunked
    from pipeline.views import eval_azimuths
    from pipeline.world.scenes import COLOURS, PrimitiveField, ShapeRenders, colourise, parse_caption

    cams = orbit_cameras(cfg.camera, eval_azimuths(cfg.views.azimuths))
    n, bg = len(cams), Background(cfg.render)
    shapes: dict[str, tuple[ShapeRenders, Tensor]] = {}
    out = []
    for text in captions:
        colour, shape = parse_caption(text)
        if shape not in shapes:
            field = PrimitiveField(shape, bound=cfg.nerf.bound)
            kw = {"chunk": 2, "normal_eps": cfg.render.normal_eps}
            lit = render_chunked(
                field, cams, cfg.views.resolution, cfg.views.samples, Shading.lit(n, cfg.shading), bg, **kw
            )
            plain = render_chunked(
                field, cams, cfg.views.resolution, cfg.views.samples, Shading.lit(n, cfg.shading, True), bg, **kw
            )
            shapes[shape] = (ShapeRenders(lit.foreground, lit.opacity, cams), plain.rgb)
        renders, textureless = shapes[shape]
        views = {"color": colourise(renders, COLOURS[colour], "lit", cfg.render.background_color), "geo": textureless}
        out.append({"prompt_id": text, "seed": 0, "text": text, "views": views})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", required=True, help="resolved variant config (YAML)")
    ap.add_argument("--prompts", required=True, help="prompts.json (its retrieval_set is used)")
    ap.add_argument("--views", nargs="*", default=[], help=".../<prompt_id>/seed<k>/views.npz files")
    ap.add_argument("--ground-truth", action="store_true", help="evaluate the bundled world's ground-truth renders")
    ap.add_argument("--geometry", nargs="*", default=[], help=".../<prompt_id>/seed<k>/geometry.json (bundled world)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        with located_os_errors():
            run_evaluation(args)
    except EvaluationError as exc:
        raise SystemExit(f"error: {exc}") from None


def run_evaluation(args: argparse.Namespace) -> None:
    cfg = load_config(args.params)
    try:
        doc = read_prompts_json(args.prompts, lists=("retrieval_set", "selected"))
    except PromptFileError as exc:
        raise EvaluationError(str(exc)) from None
    texts = {p["id"]: p["text"] for p in doc["prompts"]}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    world = cfg.prompts.benchmark == "primitives"
    if args.ground_truth:
        objects = ground_truth_objects(cfg, doc["retrieval_set"])
    else:
        objects = []
        for f in map(Path, args.views):
            pid, seed = f.parent.parent.name, int(f.parent.name.removeprefix("seed"))
            if pid not in texts:
                raise EvaluationError(f"{f}: prompt id {pid!r} is not in {args.prompts}")
            objects.append({"prompt_id": pid, "seed": seed, "text": texts[pid], "views": load_views(f)})
    scorers = [ClipScorer(m, device, cfg.evaluate.clip_cache) for m in cfg.evaluate.clip_models]
    result = evaluate(objects, doc["retrieval_set"], scorers, cfg.evaluate.combine, world)
    result.update(
        benchmark=doc["benchmark"],
        config_digest=cfg.digest(),
        guidance_scale=cfg.guidance.scale,
        schedule=cfg.schedule.name,
        cfg_convention=cfg.guidance.convention,
        clip_models=cfg.evaluate.clip_models,
    )
    if args.geometry:
        try:
            result["geometry"] = collect_geometry([Path(g) for g in args.geometry])
        except RecordError as exc:
            raise EvaluationError(str(exc)) from None
    atomic_write_json(args.out, result)
    atomic_write_text(Path(args.out).with_suffix(".csv"), per_object_csv(result["objects"]))
    print(json.dumps(result["models"]))


if __name__ == "__main__":
    main()
