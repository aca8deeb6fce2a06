"""The report: our R-precision next to the paper's Table 1, variant comparisons with bootstrap intervals, plots,
a gallery and an offline index.html.

Outputs (reports/<study>/): table.md, table.csv, comparison.md (95 % bootstrap CIs over objects, paired
differences against the first variant on the same prompts and seeds), rprecision_vs_scale.png, gallery.png,
index.html, metrics.json (DVC metrics, keys independent of the variant name), variants.csv (DVC plots: one row per
variant) and rprecision.csv (every variant × CLIP × mode with its interval).

    python -m pipeline.report --evals results/b/v1/rprecision.json ... [--ground-truth gt.json] --out-dir report/
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import stats
from pipeline.io import atomic_path, atomic_write_json, atomic_write_text
from pipeline.metrics import GEOMETRY, metric
from pipeline.metrics import clip_short_name as _short
from pipeline.records import RecordError, read_json, read_rprecision

PAPER_TABLE1 = [
    # method, {model: (color, geo)} in %, quoted from DreamFusion Table 1 (parenthesised: same CLIP trained & evaluated)
    ("GT images", {"ViT-B/32": (77.1, None), "ViT-B/16": (79.1, None), "ViT-L/14": (None, None)}),
    ("Dream Fields", {"ViT-B/32": (68.3, None), "ViT-B/16": (74.2, None), "ViT-L/14": (None, None)}),
    ("Dream Fields (reimpl.)", {"ViT-B/32": (78.6, 1.3), "ViT-B/16": ("(99.9)", "(0.8)"), "ViT-L/14": (82.9, 1.4)}),
    ("CLIP-Mesh", {"ViT-B/32": (67.8, None), "ViT-B/16": (75.8, None), "ViT-L/14": (74.5, None)}),
    ("DreamFusion", {"ViT-B/32": (75.1, 42.5), "ViT-B/16": (77.5, 46.6), "ViT-L/14": (79.7, 58.5)}),
]
MODES = ("color", "geo")


def _pct(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    return f"{100 * x:.1f}"


def object_scores(ev: dict[str, Any], clip: str, mode: str, key: str = "score") -> dict[tuple[str, int], float]:
    return {
        (o["prompt_id"], o["seed"]): o[key]
        for o in ev["objects"]
        if o["clip"] == clip and o["mode"] == mode and key in o
    }


PAPER_MODELS = ["ViT-B/32", "ViT-B/16", "ViT-L/14"]
"""The CLIP models of the paper's Table 1."""


def _modes(world: bool) -> list[str]:
    return [*MODES, *(["geo_shape"] if world else [])]


def table_md(
    evals: dict[str, dict[str, Any]], clips: list[str], world: bool, ground_truth: dict[str, Any] | None
) -> str:
    """table.md: Table 1's layout with our rows, the ground-truth ceiling, geometry, and the paper's rows quoted."""
    header = ["Method"] + [f"{_short(c)} {m}" for c in clips for m in MODES]
    if world:
        header += [f"{_short(c)} geo (shape)" for c in clips]
    rows: list[list[str]] = []
    if ground_truth:
        rows.append(
            ["GT renders (ceiling)"]
            + [_pct(ground_truth["models"][c][m]["r_precision"]) for c in clips for m in MODES]
            + ([_pct(ground_truth["models"][c]["geo_shape"]["r_precision"]) for c in clips] if world else [])
        )
    for v, ev in evals.items():
        cells = [
            f"{_pct(ev['models'][c][m]['r_precision'])} ± {_pct(ev['models'][c][m]['stderr'])}"
            for c in clips
            for m in MODES
        ]
        if world:
            cells += [
                f"{_pct(ev['models'][c]['geo_shape']['r_precision'])} ± {_pct(ev['models'][c]['geo_shape']['stderr'])}"
                for c in clips
            ]
        rows.append([f"ours: {v}"] + cells)
    n_ret = next(iter(evals.values()))["retrieval_set_size"] if evals else 0
    md = [
        f"# CLIP R-precision (%), retrieval set of {n_ret} captions (chance {100 / max(n_ret, 1):.2f} %)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    if any("geometry" in ev for ev in evals.values()):
        md += [
            "",
            "## Geometry against the analytic primitives (bundled world; definitions in pipeline/geometry.py)",
            "",
            "| Method | " + " | ".join(metric(k).header for k in GEOMETRY) + " |",
            "|---|" + "---|" * len(GEOMETRY),
        ]
        for v, ev in evals.items():
            if "geometry" in ev:
                g = ev["geometry"]["summary"]
                md.append(f"| ours: {v} | " + " | ".join(_num(g.get(k)) for k in GEOMETRY) + " |")
                if isinstance(g.get("first_stage"), dict):  # refined objects: the NeRF stage's values beside them
                    first = g["first_stage"]
                    md.append(f"| ours: {v}, first stage | " + " | ".join(_num(first.get(k)) for k in GEOMETRY) + " |")
    md += [
        "",
        "## DreamFusion Table 1 (quoted from the paper, 153 COCO captions, not measured here)",
        "",
        "| Method | " + " | ".join(f"{m} {k}" for m in PAPER_MODELS for k in MODES) + " |",
        "|" + "---|" * (1 + 2 * len(PAPER_MODELS)),
    ]
    for method, vals in PAPER_TABLE1:
        md.append(
            f"| {method} (paper) | " + " | ".join(_pct_paper(vals[m][i]) for m in PAPER_MODELS for i in range(2)) + " |"
        )
    return "\n".join(md) + "\n"


def table_csv(
    evals: dict[str, dict[str, Any]], clips: list[str], world: bool, ground_truth: dict[str, Any] | None
) -> str:
    """table.csv: the same numbers as table.md, one row per (method, CLIP, mode)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["source", "method", "clip", "mode", "r_precision_pct", "stderr_pct"])
    if ground_truth:
        for c in clips:
            for m in _modes(world):
                w.writerow(["ours", "GT renders", c, m, 100 * ground_truth["models"][c][m]["r_precision"], ""])
    for v, ev in evals.items():
        for c in clips:
            for m in _modes(world):
                r = ev["models"][c][m]
                w.writerow(["ours", v, c, m, 100 * r["r_precision"], 100 * r["stderr"]])
    for method, vals in PAPER_TABLE1:
        for m in PAPER_MODELS:
            for i, mode in enumerate(MODES):
                if vals[m][i] is not None:
                    w.writerow(["paper (quoted)", method, m, mode, str(vals[m][i]).strip("()"), ""])
    return buf.getvalue()


def comparison(
    evals: dict[str, dict[str, Any]], clips: list[str], world: bool, bootstrap: int, seed: int
) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """comparison.md (bootstrap CIs and paired differences against the first variant), the per-variant metrics and
    the plot's rows."""
    variants = list(evals)
    plot_rows: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    single = len(variants) < 2  # nothing to pair with: no Δ columns (a variant against itself is all zeros)
    comp = [
        "# Variants: R-precision with 95 % bootstrap CIs (objects resampled)",
        "",
        "| variant | CLIP | mode | R-precision | 95 % CI |"
        + ("" if single else f" Δ vs {variants[0]} (paired) | 95 % CI of Δ |"),
        "|---|---|---|---|---|" + ("" if single else "---|---|"),
    ]
    for v, ev in evals.items():
        metrics[v] = {}
        for c in clips:
            metrics[v][_short(c)] = {}
            for m in _modes(world):
                key = "shape_score" if m == "geo_shape" else "score"
                scores = object_scores(ev, c, "geo" if m == "geo_shape" else m, key)
                base = object_scores(evals[variants[0]], c, "geo" if m == "geo_shape" else m, key)
                mean, lo, hi, dmean, dlo, dhi = paired(scores, base, bootstrap, seed)
                comp.append(
                    f"| {v} | {_short(c)} | {m} | {_pct(mean)} | [{_pct(lo)}, {_pct(hi)}] |"
                    + (
                        ""
                        if single
                        else f" {_pct(dmean if np.isfinite(dmean) else None)} | [{_pct(dlo)}, {_pct(dhi)}] |"
                    )
                )
                metrics[v][_short(c)][m] = round(mean, 4)
                plot_rows.append(
                    {
                        "variant": v,
                        "guidance_scale": ev.get("guidance_scale"),
                        "schedule": ev.get("schedule"),
                        "clip": _short(c),
                        "mode": m,
                        "r_precision": mean,
                        "ci_low": lo,
                        "ci_high": hi,
                    }
                )
    geo = {v: ev["geometry"] for v, ev in evals.items() if "geometry" in ev}
    if geo:
        comp += ["", *_geometry_comparison(geo, variants[0], bootstrap, seed, metrics)]
    return "\n".join(comp) + "\n", metrics, plot_rows


def _rows_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["variant"])
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def build(
    evals: dict[str, dict[str, Any]],
    out_dir: Path,
    ground_truth: dict[str, Any] | None = None,
    bootstrap: int = 2000,
    seed: int = 0,
    media: dict[str, list[Path]] | None = None,
    runs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write every report file from {variant: rprecision.json contents}; return the DVC metrics. `runs` is the
    `track` rule's mlflow.json (run ids), for the object cards' links to their MLflow runs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = list(evals)
    clips = list(next(iter(evals.values()))["models"]) if evals else []
    world = any("geo_shape" in ev["models"][c] for ev in evals.values() for c in ev["models"])
    atomic_write_text(out_dir / "table.md", table_md(evals, clips, world, ground_truth))
    atomic_write_text(out_dir / "table.csv", table_csv(evals, clips, world, ground_truth))
    comp, metrics, plot_rows = comparison(evals, clips, world, bootstrap, seed)
    atomic_write_text(out_dir / "comparison.md", comp)
    atomic_write_text(out_dir / "rprecision.csv", _rows_csv(plot_rows))
    if ground_truth:
        metrics["ground_truth"] = {
            _short(c): {m: round(ground_truth["models"][c][m]["r_precision"], 4) for m in ground_truth["models"][c]}
            for c in clips
        }
    dvc = dvc_metrics(metrics, variants)
    atomic_write_json(out_dir / "metrics.json", dvc)
    atomic_write_text(out_dir / "variants.csv", variants_csv(metrics, variants, evals))
    _plot(plot_rows, out_dir / "rprecision_vs_scale.png")
    gallery = _gallery(media or {}, out_dir / "gallery.png")
    _html(out_dir, evals, gallery, media or {}, runs or {})
    return dvc


def dvc_metrics(per_variant: dict[str, Any], variants: list[str]) -> dict[str, Any]:
    """metrics.json for DVC with keys that do not depend on the variant's name, so `dvc exp show` and `dvc metrics
    diff` line experiments up in the same columns: the first variant's (the only one in a `dvc exp run -S …`
    experiment, the baseline of a sweep) R-precision per CLIP model and geometry at the top level, the ground-truth
    ceiling under `ground_truth`, and for a sweep every variant under `variants.<name>` (the plots file variants.csv
    has them with the variant as a column)."""
    out: dict[str, Any] = dict(per_variant[variants[0]]) if variants else {}
    if "ground_truth" in per_variant:
        out["ground_truth"] = per_variant["ground_truth"]
    if len(variants) > 1:
        out["variants"] = {v: per_variant[v] for v in variants}
    return out


def variants_csv(per_variant: dict[str, Any], variants: list[str], evals: dict[str, Any]) -> str:
    """One row per variant (the DVC plots' data): the swept settings, then R-precision per CLIP model and mode (%)
    and the geometry means as columns with stable names."""
    buf = io.StringIO()
    rows = []
    for v in variants:
        row: dict[str, Any] = {
            "variant": v,
            "guidance_scale": evals[v].get("guidance_scale"),
            "schedule": evals[v].get("schedule"),
        }
        for key, values in per_variant[v].items():  # {clip: {mode: fraction}}, then {"geometry": {measure: value}}
            if key == "geometry":
                row.update(values)
            else:
                row.update({f"{key}.{m}": round(100 * x, 2) for m, x in values.items()})
        rows.append(row)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, fieldnames=fields or ["variant"])
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _num(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.3f}"


def paired(
    scores: dict[Any, float], base: dict[Any, float], n: int, seed: int
) -> tuple[float, float, float, float, float, float]:
    """(mean, CI low, CI high) of `scores` and (mean, CI low, CI high) of the paired difference against `base` on
    the objects both have: 95 % BCa intervals over objects, the same function (and so the same numbers) as the
    findings' (pipeline/stats.py)."""
    vals = np.array(list(scores.values()), dtype=np.float64)
    lo, hi = stats.bca_interval(vals, n, seed)
    common = sorted(set(base) & set(scores))
    diff = np.array([scores[k] - base[k] for k in common], dtype=np.float64)
    dlo, dhi = stats.bca_interval(diff, n, seed)
    mean = float(vals.mean()) if len(vals) else float("nan")
    dmean = float(diff.mean()) if len(diff) else float("nan")
    return mean, lo, hi, dmean, dlo, dhi


def _geometry_comparison(
    geo: dict[str, dict[str, Any]], baseline: str, bootstrap: int, seed: int, metrics: dict[str, Any]
) -> list[str]:
    """comparison.md's geometry section (same bootstrap and pairing as R-precision); fills metrics[v]["geometry"]."""
    single = len(geo) < 2
    lines = [
        "# Variants: geometry against the analytic primitives, 95 % bootstrap CIs (objects resampled)",
        "",
        "| variant | measure | mean | 95 % CI |" + ("" if single else f" Δ vs {baseline} (paired) | 95 % CI of Δ |"),
        "|---|---|---|---|" + ("" if single else "---|---|"),
    ]

    def per_object(v: str, k: str) -> dict[tuple[str, int], float]:
        return {(o["prompt_id"], o["seed"]): o[k] for o in geo[v]["objects"] if o.get(k) is not None}

    for v in geo:
        metrics.setdefault(v, {})["geometry"] = {}
        for k in GEOMETRY:
            mean, lo, hi, dmean, dlo, dhi = paired(per_object(v, k), per_object(baseline, k), bootstrap, seed)
            lines.append(
                f"| {v} | {k} | {_num(mean)} | [{_num(lo)}, {_num(hi)}] |"
                + ("" if single else f" {_num(dmean)} | [{_num(dlo)}, {_num(dhi)}] |")
            )
            metrics[v]["geometry"][k] = None if not np.isfinite(mean) else round(mean, 4)
    return lines


def _pct_paper(x: Any) -> str:
    if x is None:
        return "–"
    return str(x)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for sched, clip, mode in sorted({(r["schedule"], r["clip"], r["mode"]) for r in rows}):
        pts = sorted(
            (r["guidance_scale"], r["r_precision"], r["ci_low"], r["ci_high"])
            for r in rows
            if (r["schedule"], r["clip"], r["mode"]) == (sched, clip, mode)
        )
        x = [p[0] for p in pts]
        y = np.array([p[1] for p in pts]) * 100
        lo, hi = np.array([p[2] for p in pts]) * 100, np.array([p[3] for p in pts]) * 100
        ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=f"{sched} · {clip} · {mode}")
    ax.set_xlabel("guidance weight")
    ax.set_ylabel("R-precision (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("R-precision vs guidance weight (95 % bootstrap CI)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _label(prompt_dir: str) -> str:
    """ "a-red-sphere-33915b62" → "a red sphere"."""
    return prompt_dir.rsplit("-", 1)[0].replace("-", " ")


def _gallery(media: dict[str, list[Path]], path: Path) -> bool:
    """Contact sheets' first rows (colour views) stacked: one row per object, grouped by variant, each row labelled
    with its variant, prompt and seed."""
    import imageio.v3 as iio
    from PIL import Image, ImageDraw

    sheets = [(v, p) for v, ps in media.items() for p in ps if p.name == "sheet.png" and p.exists()]
    if not sheets:
        return False
    rows, label_w = [], 220
    for variant, p in sheets:
        img = iio.imread(p)[..., :3]
        h = (img.shape[0] - 2) // 4 + 2  # first of four rows (colour) incl. padding
        row = img[:h]
        tag = Image.new("RGB", (label_w, h), (255, 255, 255))
        draw = ImageDraw.Draw(tag)
        draw.text((4, max(0, h // 2 - 12)), variant, fill=(90, 90, 90))
        draw.text((4, max(0, h // 2)), f"{_label(p.parents[1].name)} · {p.parent.name}", fill=(0, 0, 0))
        rows.append(np.concatenate([np.asarray(tag), row], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, np.concatenate(rows), extension=".png")
    return True


def _data_uri(path: Path, mime: str) -> str:
    import base64

    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


MLFLOW_UI = "http://127.0.0.1:5000"
"""Where `mlflow ui` serves a local store (the README's command); a tracking server's own address is used instead."""


def mlflow_run_url(runs: dict[str, Any], variant: str, obj: str) -> str | None:
    """The MLflow UI address of one object's run (`obj` = "<prompt id>/seed<n>") from the track rule's record."""
    run = runs.get("variants", {}).get(variant, {}).get("objects", {}).get(obj)
    exp, uri = runs.get("experiment_id"), str(runs.get("uri", ""))
    if not run or exp is None:
        return None
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else MLFLOW_UI
    return f"{base}/#/experiments/{exp}/runs/{run}"


def _cards(variant: str, ev: dict[str, Any], files: list[Path], runs: dict[str, Any]) -> str:
    """One card per object: its turntable (MP4) and contact sheet embedded, its measured values, top captions and a
    link to its MLflow run."""
    geo = {(o["prompt_id"], o["seed"]): o for o in ev.get("geometry", {}).get("objects", [])}
    clip = next(iter(ev["models"]), None)
    rows = {(o["prompt_id"], o["seed"], o["mode"]): o for o in ev["objects"] if o["clip"] == clip}
    by_object: dict[tuple[str, int], dict[str, Path]] = {}
    for p in files:
        by_object.setdefault((p.parents[1].name, int(p.parent.name.removeprefix("seed"))), {})[p.name] = p
    cards = []
    for (pid, seed), media in sorted(by_object.items()):
        url = mlflow_run_url(runs, variant, f"{pid}/seed{seed}")
        color, geo_row, g = (
            rows.get((pid, seed, "color"), {}),
            rows.get((pid, seed, "geo"), {}),
            geo.get((pid, seed), {}),
        )
        values = [
            ("colour R-prec.", _pct(color.get("score"))),
            ("shape hit", _pct(geo_row.get("shape_score"))),
            *((k.replace("_", " "), _num(g.get(k))) for k in GEOMETRY if k in g),
        ]
        video = media.get("turntable.mp4")
        sheet = media.get("sheet.png")
        top = color.get("top5", [])[:3]
        cards.append(
            "<div class='card'>"
            f"<h4>{html.escape(_label(pid))} · seed {seed}</h4>"
            + (
                f"<video src='{_data_uri(video, 'video/mp4')}' autoplay loop muted playsinline width=128></video>"
                if video and video.exists()
                else ""
            )
            + (f"<img src='{_data_uri(sheet, 'image/png')}' width=256 alt='contact sheet'>" if sheet else "")
            + "<table>"
            + "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in values)
            + "</table>"
            + (f"<p class='small'>top captions: {html.escape(' · '.join(top))}</p>" if top else "")
            + f"<p class='small'>results/…/{html.escape(variant)}/{html.escape(pid)}/seed{seed}/ · {_run_link(url)}</p>"
            "</div>"
        )
    return "<div class='cards'>" + "".join(cards) + "</div>"


def _objects_table(evals: dict[str, Any]) -> str:
    """One line per object: its caption, seed, colour hit, shape hit, 3D IoU and fog (first CLIP model)."""
    rows = []
    for variant, ev in evals.items():
        clip = next(iter(ev["models"]), None)
        score = {(o["prompt_id"], o["seed"], o["mode"]): o for o in ev["objects"] if o["clip"] == clip}
        geo = {(o["prompt_id"], o["seed"]): o for o in ev.get("geometry", {}).get("objects", [])}
        for pid, seed in sorted({(o["prompt_id"], o["seed"]) for o in ev["objects"]}):
            g = geo.get((pid, seed), {})
            cells = [
                variant,
                _label(pid),
                str(seed),
                _pct(score.get((pid, seed, "color"), {}).get("score")),
                _pct(score.get((pid, seed, "geo"), {}).get("shape_score")),
                _num(g.get("iou")),
                _num(g.get("fog")),
            ]
            rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = "".join(
        f"<th>{h}</th>"
        for h in ("variant", "object", "seed", "colour hit (%)", "shape hit (%)", "3D IoU", "fog (share)")
    )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _run_link(url: str | None) -> str:
    if url is None:
        return "not tracked in MLflow (tracking.enabled: false)"
    return f"<a class='mlflow' href='{html.escape(url)}'>MLflow run</a> (with `mlflow ui` running)"


def _html(
    out_dir: Path, evals: dict[str, Any], gallery: bool, media: dict[str, list[Path]], runs: dict[str, Any]
) -> None:
    """index.html, self-contained (every image and video embedded, so it can be mailed or archived alone): the
    gallery first, one line per object, our tables, the variant comparison and its plot (several variants only), one
    card per object, and last, apart, the paper's table as quoted."""

    def md_html(text: str) -> str:
        """Headings, tables and paragraphs of one of our Markdown files, each table kept under its heading."""
        out, table = [], []

        def flush() -> None:
            if table:
                head = "".join(f"<th>{c}</th>" for c in table[0])
                body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in table[1:])
                out.append(f"<table><tr>{head}</tr>{body}</table>")
                table.clear()

        for ln in text.splitlines():
            if ln.startswith("|"):
                if not ln.startswith("|---"):
                    table.append([html.escape(c.strip()) for c in ln.strip("|").split("|")])
                continue
            flush()
            if ln.startswith("#"):
                level = min(len(ln) - len(ln.lstrip("#")) + 1, 4)
                out.append(f"<h{level}>{html.escape(ln.lstrip('#').strip())}</h{level}>")
            elif ln.strip():
                out.append(f"<p>{html.escape(ln)}</p>")
        flush()
        return "\n".join(out)

    table = (out_dir / "table.md").read_text()
    cut = table.find("## DreamFusion Table 1")
    ours, paper = (table[:cut], table[cut:]) if cut >= 0 else (table, "")
    parts = [
        "<!doctype html><meta charset='utf-8'><title>DreamFusion lab report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}img,video{image-rendering:pixelated}"
        ".cards{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #ccc;padding:8px;width:410px}"
        ".card table{font-size:12px;margin-top:4px}.small{font-size:11px;color:#555}"
        ".paper{background:#f6f6f6;padding:1em;border-left:4px solid #999}</style>",
        "<h1>DreamFusion lab report</h1>",
    ]
    if gallery:
        parts.append(
            "<p>colour views at the evaluation azimuths, one row per object</p>"
            f"<p><img src='{_data_uri(out_dir / 'gallery.png', 'image/png')}' alt='gallery'></p>"
        )
    parts += [
        "<h2>Objects at a glance</h2>",
        _objects_table(evals),
        "<h2>Our results (measured here)</h2>",
        md_html(ours),
    ]
    if "GT renders" in ours:
        parts.append(
            "<p class='small'>GT renders: the true primitives rendered with the evaluation views, the ceiling. Their "
            "<i>geo</i> column retrieves textureless (white) renders among coloured captions, so only the colour-blind "
            "share is right by chance (1 in 6 colours); <i>geo (shape)</i> scores the shape alone.</p>"
        )
    if len(evals) > 1:  # one variant has nothing to be compared with
        parts += [
            md_html((out_dir / "comparison.md").read_text()),
            f"<p><img src='{_data_uri(out_dir / 'rprecision_vs_scale.png', 'image/png')}' width=480 "
            "alt='R-precision vs guidance weight'></p>",
        ]
    parts.append("<h2>Objects</h2>")
    for variant, files in media.items():
        if variant in evals:
            parts.append(f"<h3>{html.escape(variant)}</h3>" + _cards(variant, evals[variant], files, runs))
    if paper:
        parts.append("<div class='paper'>" + md_html(paper) + "</div>")
    atomic_write_text(out_dir / "index.html", "\n".join(parts) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--evals", nargs="+", required=True, help="rprecision.json per variant (.../<variant>/...)")
    ap.add_argument("--ground-truth", default=None)
    ap.add_argument("--media", nargs="*", default=[], help="sheet.png / turntable.mp4 files (gallery, object cards)")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--mlflow", default=None, help="the track rule's mlflow.json (run ids for the cards' links)")
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args(argv)
    try:
        evals = {Path(p).parent.name: read_rprecision(p) for p in args.evals}
        gt = read_rprecision(args.ground_truth) if args.ground_truth else None
        runs = read_json(args.mlflow) if args.mlflow else None
    except RecordError as exc:
        raise SystemExit(f"error: {exc}") from None
    media: dict[str, list[Path]] = {}
    for p in map(Path, args.media):
        media.setdefault(p.parents[2].name, []).append(p)
    metrics = build(evals, Path(args.out_dir), gt, args.bootstrap, media=media, runs=runs)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
