"""What a study (a sweep or an ablation) shows: every variant paired against the baseline on every metric, with the
statistics of pipeline/stats.py, one paragraph per metric, a per-prompt table and a plot, all generated from the
evaluation files, so a re-run of the workflow regenerates the page to the digit.

Outputs (reports/<study>/): findings.md, findings.csv (one row per variant × metric), findings.png, summary.md (the
verdicts in a few lines). The workflow's `publish` target copies the page and the plot to
docs/findings/<study>.{md,png} and puts the summary into the README's `<!-- findings:<study> -->` block.

    python -m pipeline.findings --study sweep-guidance --evals results/b/*/rprecision.json \
        --configs results/b/*/config.yaml --out-dir reports/sweep-guidance
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline import stats
from pipeline.io import atomic_path, atomic_write_text
from pipeline.metrics import METRICS, Metric, clip_short_name
from pipeline.records import RecordError, read_rprecision


def per_object(ev: dict[str, Any], metric: str) -> dict[tuple[str, int], float]:
    """{(prompt_id, seed): value} of one metric from a variant's rprecision.json (first CLIP model)."""
    if metric in ("color", "shape"):
        clip = next(iter(ev["models"]))
        mode, key = ("color", "score") if metric == "color" else ("geo", "shape_score")
        return {
            (o["prompt_id"], o["seed"]): float(o[key])
            for o in ev["objects"]
            if o["clip"] == clip and o["mode"] == mode and key in o
        }
    geo = ev.get("geometry", {}).get("objects", [])
    return {(o["prompt_id"], o["seed"]): float(o[metric]) for o in geo if o.get(metric) is not None}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _resolved(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config with today's defaults filled in, so a key added since an object was trained (absent from its
    config.yaml) does not count as a setting that differs."""
    from pipeline.config import ConfigError, from_dict

    try:
        return from_dict(config, "config.yaml").to_dict()
    except ConfigError:
        return config


def md_escape(text: str) -> str:
    """Text that came from a config, safe in Markdown and in the HTML it is rendered to: no tags or comments (so no
    stray markers), no table-cell breaks, no code spans, no links."""
    out = html.escape(str(text), quote=False).replace("|", "\\|").replace("`", "'")
    return out.replace("](", "]\\(")


def labels(configs: dict[str, dict[str, Any]]) -> tuple[dict[str, str], list[str]]:
    """A short label per variant from the settings that differ between them (e.g. {"world-w3-uniform": "w = 3"}),
    and those keys."""
    flat = {v: _flatten(_resolved(c)) for v, c in configs.items()}
    keys = sorted({k for f in flat.values() for k in f})
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat.values()}) > 1]
    short = {"guidance.scale": "w", "schedule.name": "schedule", "guidance.name": "prior"}

    def label(v: str) -> str:
        if not varying or len(varying) > 3:
            return v
        return ", ".join(f"{short.get(k, k)} = {flat[v].get(k)}" for k in varying)

    return {v: md_escape(label(v)) for v in configs}, varying


def analyse(
    evals: dict[str, dict[str, Any]], n_resamples: int = 10_000, seed: int = 0
) -> dict[str, tuple[dict[str, stats.Comparison], float]]:
    """{metric key: ({variant: Comparison}, MDD)} against the first variant, for every metric the study has."""
    baseline = next(iter(evals))
    out = {}
    for m in METRICS:
        data = {v: per_object(ev, m.key) for v, ev in evals.items()}
        if all(data.values()):
            out[m.key] = stats.compare(data, baseline, m.key, n_resamples, seed)
    return out


def _identical(c: stats.Comparison) -> bool:
    """Every paired difference is exactly 0 (a measure both variants max out, or a setting that changes nothing)."""
    return c.n > 1 and c.delta == 0 and math.isnan(c.d_z) and tuple(c.delta_ci) == (0.0, 0.0)


def _dz(c: stats.Comparison) -> str:
    """d_z, or '–' where it is undefined (no spread in the paired differences)."""
    return f"{c.d_z:+.2f}" if math.isfinite(c.d_z) else "–"


def _verdict(c: stats.Comparison, m: Metric) -> str:
    if _identical(c):
        return "identical on every object"
    if not c.separates:
        return "no detectable difference"
    better = (c.delta > 0) == m.higher_is_better
    return "better" if better else "worse"


def _paragraph(m: Metric, comps: dict[str, stats.Comparison], mdd: float, names: dict[str, str], baseline: str) -> str:
    others = [c for v, c in comps.items() if v != baseline]
    n, k = (others[0].n, len(others)) if others else (0, 0)
    sep = [c for c in others if c.separates]
    direction = "higher" if m.higher_is_better else "lower"
    text = [f"**{m.label}** ({direction} is better; baseline {names[baseline]}: {m.fmt(comps[baseline].mean)})."]
    for c in sep:
        text.append(
            f"{names[c.variant]} is {_verdict(c, m)}: Δ = {m.fmt(c.delta, True)}{m.unit} "
            f"[{m.fmt(c.delta_ci[0], True)}, {m.fmt(c.delta_ci[1], True)}], d_z = {_dz(c)}, "
            f"Holm p = {c.p_holm:.3g}."
        )
    rest = [c for c in others if not c.separates]
    if rest and all(_identical(c) for c in others):
        text.append(f"Every variant scores exactly as {names[baseline]} on every one of the {n} paired objects.")
    elif rest:
        largest = max(rest, key=lambda c: abs(c.delta))
        text.append(
            ("No other variant" if sep else "No variant")
            + f" differs detectably from {names[baseline]} (largest |Δ| {m.fmt(abs(largest.delta))}{m.unit}, "
            f"{names[largest.variant]}); with n = {n} paired objects and {k} comparisons this design detects "
            f"|Δ| ≥ {m.fmt(mdd)}{m.unit} with {stats.POWER:.0%} power, so smaller true differences may be hidden."
        )
    best = max(comps.values(), key=lambda c: c.mean if m.higher_is_better else -c.mean)
    text.append(
        f"Highest mean: {names[best.variant]}." if m.higher_is_better else f"Lowest mean: {names[best.variant]}."
    )
    return " ".join(text)


Results = dict[str, tuple[dict[str, stats.Comparison], float]]


def _intro(
    study: str,
    evals: dict[str, Any],
    configs: dict[str, Any],
    names: dict[str, str],
    varying: list[str],
    n_resamples: int,
    seed: int,
) -> list[str]:
    baseline = next(iter(evals))
    any_ev = next(iter(evals.values()))
    prompts = sorted({o["prompt_id"] for o in any_ev["objects"]})
    seeds = sorted({o["seed"] for o in any_ev["objects"]})
    first_cfg = configs[baseline]
    return [
        f"# {md_escape(study)}: what it shows",
        "",
        f"Generated by `python -m pipeline.findings` (the workflow's `findings` rule) from the evaluation of "
        f"{len(evals)} variants × {len(prompts)} prompts × {len(seeds)} seeds (seeds {seeds}) on the "
        f"`{md_escape(first_cfg['prompts']['benchmark'])}` benchmark; varied: "
        f"{', '.join(f'`{md_escape(k)}`' for k in varying) or '–'}. "
        f"Prior: `{md_escape(first_cfg['guidance']['name'])}`; {first_cfg['train']['steps']} steps × "
        f"{first_cfg['train']['batch_views']} views for every variant (equal compute). R-precision with "
        f"{clip_short_name(next(iter(any_ev['models'])))}. Every variant is paired with the baseline "
        f"**{names[baseline]}** on the same prompts and seeds.",
        "",
        f"Statistics (pipeline/stats.py): 95 % BCa bootstrap intervals ({n_resamples} resamples, seed {seed}); "
        "Δ = mean paired difference; d_z = Δ / sd of the paired differences; p from the exact sign-flip permutation "
        "test, Holm-adjusted across the variants per metric; a difference *separates* when the Holm p < 0.05. "
        f"MDD = the smallest true Δ this design detects with {stats.POWER:.0%} power at that level.",
        "",
    ]


def _means(results: Results, metrics: list[Metric], names: dict[str, str], evals: dict[str, Any]) -> list[str]:
    md = [
        "## Means (95 % BCa interval)",
        "",
        "| metric | " + " | ".join(names[v] for v in evals) + " |",
        "|---|" + "---|" * len(evals),
    ]
    for m in metrics:
        comps, _ = results[m.key]
        md.append(
            f"| {m.label} {'↑' if m.higher_is_better else '↓'} | "
            + " | ".join(f"{m.fmt(c.mean)} [{m.fmt(c.mean_ci[0])}, {m.fmt(c.mean_ci[1])}]" for c in comps.values())
            + " |"
        )
    return md


def _row(m: Metric, v: str, c: stats.Comparison, mdd: float, names: dict[str, str], baseline: str) -> dict[str, Any]:
    """One findings.csv row."""
    return {
        "metric": m.key,
        "variant": v,
        "label": names[v],
        "n": c.n,
        "mean": c.mean,
        "mean_low": c.mean_ci[0],
        "mean_high": c.mean_ci[1],
        "delta": c.delta,
        "delta_low": c.delta_ci[0],
        "delta_high": c.delta_ci[1],
        "d_z": c.d_z,
        "p": c.p,
        "p_holm": c.p_holm,
        "mdd": mdd,
        "verdict": "baseline" if v == baseline else _verdict(c, m),
    }


def _differences(
    results: Results, metrics: list[Metric], names: dict[str, str], baseline: str
) -> tuple[list[str], list[dict[str, Any]]]:
    md = [
        "",
        f"## Paired differences against {names[baseline]}",
        "",
        "| metric | variant | Δ [95 % BCa] | d_z | p | Holm p | MDD | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for m in metrics:
        comps, mdd = results[m.key]
        for v, c in comps.items():
            rows.append(_row(m, v, c, mdd, names, baseline))
            if v == baseline:
                continue
            md.append(
                f"| {m.label} | {names[v]} | {m.fmt(c.delta, True)} [{m.fmt(c.delta_ci[0], True)}, "
                f"{m.fmt(c.delta_ci[1], True)}] | {_dz(c)} | {c.p:.3g} | {c.p_holm:.3g} | {m.fmt(mdd)} | "
                f"{_verdict(c, m)} |"
            )
    return md, rows


def _power(results: Results, metrics: list[Metric], baseline: str, n_variants: int) -> list[str]:
    md = [
        "",
        "## What this design can detect",
        "",
        f"sd of the paired differences pooled over the {n_variants - 1} comparisons; MDD at this n with Holm over "
        f"{n_variants - 1} comparisons and {stats.POWER:.0%} power; the pairs (prompts × seeds) needed for the "
        "smallest difference that matters.",
        "",
        "| metric | sd of paired Δ | n | MDD | difference that matters | pairs needed for it |",
        "|---|---|---|---|---|---|",
    ]
    for m in metrics:
        comps, mdd = results[m.key]
        c = next(c for v, c in comps.items() if v != baseline) if len(comps) > 1 else None
        if c is None:
            continue
        need = stats.pairs_needed(c.sd_pooled, len(comps) - 1, m.matters)
        md.append(
            f"| {m.label} | {m.fmt(c.sd_pooled)} | {c.n} | {m.fmt(mdd)}{m.unit} | {m.fmt(m.matters)}{m.unit} | "
            f"{need if need is not None else '> 10,000'} |"
        )
    return md


def _per_prompt_iou(evals: dict[str, Any], names: dict[str, str]) -> list[str]:
    prompts = sorted({o["prompt_id"] for o in next(iter(evals.values()))["objects"]})
    md = [
        "## 3D IoU per prompt (mean over seeds)",
        "",
        "| prompt | " + " | ".join(names[v] for v in evals) + " |",
        "|---|" + "---|" * len(evals),
    ]
    table = {v: per_object(ev, "iou") for v, ev in evals.items()}
    for pid in prompts:
        cells = []
        for v in evals:
            vals = [x for (p, _), x in table[v].items() if p == pid]
            cells.append(f"{np.mean(vals):.3f}" if vals else "–")
        md.append(f"| {pid.rsplit('-', 1)[0].replace('-', ' ')} | " + " | ".join(cells) + " |")
    failing = [
        pid
        for pid in prompts
        if all(np.mean([x for (p, _), x in table[v].items() if p == pid] or [1.0]) < 0.2 for v in evals)
    ]
    if failing:
        md += [
            "",
            "Failing under every variant (mean 3D IoU < 0.2): "
            + ", ".join(p.rsplit("-", 1)[0].replace("-", " ") for p in failing)
            + ".",
        ]
    return [*md, ""]


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["metric"])
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{x:.6g}" if isinstance(x, float) else x) for k, x in r.items()})
    return buf.getvalue()


def write(
    study: str,
    evals: dict[str, dict[str, Any]],
    configs: dict[str, dict[str, Any]],
    out_dir: Path,
    n_resamples: int = 10_000,
    seed: int = 0,
    trained_at: list[str] | None = None,
) -> str:
    """Write findings.md/.csv/.png and summary.md into out_dir; return the Markdown. `trained_at`: the git commits
    the objects were trained at (from their metrics.json), recorded on the page."""
    out_dir.mkdir(parents=True, exist_ok=True)
    baseline = next(iter(evals))
    names, varying = labels(configs)
    results = analyse(evals, n_resamples, seed)
    metrics = [m for m in METRICS if m.key in results]
    md = _intro(study, evals, configs, names, varying, n_resamples, seed) + _means(results, metrics, names, evals)
    diffs, rows = _differences(results, metrics, names, baseline)
    md += diffs + _power(results, metrics, baseline, len(evals)) + ["", "## Findings", ""]
    for m in metrics:
        comps, mdd = results[m.key]
        md += [_paragraph(m, comps, mdd, names, baseline), ""]
    if "iou" in results:
        md += _per_prompt_iou(evals, names)
    md += [
        "![findings](findings.png)",
        "",
        "Config digests (pipeline.config.Config.digest): "
        + ", ".join(f"{names[v]} `{md_escape(str(evals[v].get('config_digest', '?')))}`" for v in evals)
        + (
            f"; objects trained at commit {', '.join(f'`{md_escape(c[:12])}`' for c in trained_at)}."
            if trained_at
            else "."
        ),
        "",
    ]
    text = "\n".join(md)
    atomic_write_text(out_dir / "findings.md", text)
    atomic_write_text(out_dir / "summary.md", summary(study, results, metrics, names, baseline))
    atomic_write_text(out_dir / "findings.csv", _csv(rows))
    _plot(results, metrics, names, baseline, out_dir / "findings.png", study)
    return text


def _plot(
    results: dict[str, tuple[dict[str, stats.Comparison], float]],
    metrics: list[Metric],
    names: dict[str, str],
    baseline: str,
    path: Path,
    study: str,
) -> None:
    """One panel per metric: each variant's mean with its BCa interval; filled markers separate from the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(metrics)) or 1
    rows = (len(metrics) + cols - 1) // cols or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax, m in zip(axes.flat, metrics, strict=False):
        comps, mdd = results[m.key]
        scale = 100 if m.percent else 1
        xs = np.arange(len(comps))
        for x, c in zip(xs, comps.values(), strict=True):
            lo, hi = c.mean_ci
            filled = c.variant == baseline or c.separates
            ax.errorbar(
                x,
                c.mean * scale,
                yerr=[[max(0.0, (c.mean - lo) * scale)], [max(0.0, (hi - c.mean) * scale)]],
                fmt="o",
                mfc="C0" if filled else "white",
                color="C3" if c.variant == baseline else "C0",
                capsize=3,
            )
        base = comps[baseline].mean * scale
        ax.axhline(base, color="C3", lw=0.8, ls="--")
        ax.axhspan(base - mdd * scale, base + mdd * scale, color="C3", alpha=0.08, lw=0)
        ax.set_xticks(xs, [names[v] for v in comps], rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{m.label} {'↑' if m.higher_is_better else '↓'}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(
        f"{study}: means with 95 % BCa intervals; red = baseline (band: ± MDD); filled = Holm p < 0.05", fontsize=8
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def summary(
    study: str,
    results: dict[str, tuple[dict[str, stats.Comparison], float]],
    metrics: list[Metric],
    names: dict[str, str],
    baseline: str,
) -> str:
    """The study's verdicts in a few lines (its block in docs/findings/README.md): per metric, which variants
    separate from the baseline (Δ and its interval) and the MDD below which the rest may hide a difference."""
    first = next(iter(results.values()))[0]
    n = next((c.n for v, c in first.items() if v != baseline), 0)
    lines = [
        f"**[{md_escape(study)}]({study}.md)** — {len(first)} variants, n = {n} paired objects, baseline "
        f"{names[baseline]}:"
    ]
    for m in metrics:
        comps, mdd = results[m.key]
        sep = [c for v, c in comps.items() if v != baseline and c.separates]
        parts = [
            f"{names[c.variant]} {_verdict(c, m)} ({m.fmt(c.delta, True)} [{m.fmt(c.delta_ci[0], True)}, "
            f"{m.fmt(c.delta_ci[1], True)}])"
            for c in sep
        ]
        rest = len(comps) - 1 - len(sep)
        if rest and all(_identical(c) for v, c in comps.items() if v != baseline):
            parts.append("identical on every object")
        elif rest:
            parts.append(f"{'the others' if sep else 'all'} within the MDD of {m.fmt(mdd)}{m.unit}")
        lines.append(f"- {m.label}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


INDEX_HEADER = """# Findings

Generated by `snakemake --cores all publish --configfile configs/<study>.yaml`: one block per published study, its
verdicts in a few lines (Holm-adjusted, 95 % BCa intervals of the paired difference), linking to the full page.
Nothing here is written by hand.
"""


def publish(out_dir: Path, study: str, dest: Path) -> None:
    """Copy a study's findings page, plot and summary to dest/<study>.{md,png,summary.md} and rebuild dest/README.md,
    the index of every published study, from the summaries there. Nothing outside `dest` is written."""
    text = (out_dir / "findings.md").read_text(encoding="utf-8")
    atomic_write_text(dest / f"{study}.md", text.replace("](findings.png)", f"]({study}.png)"))
    with atomic_path(dest / f"{study}.png") as tmp:
        tmp.write_bytes((out_dir / "findings.png").read_bytes())
    atomic_write_text(dest / f"{study}.summary.md", (out_dir / "summary.md").read_text(encoding="utf-8"))
    blocks = [p.read_text(encoding="utf-8") for p in sorted(dest.glob("*.summary.md"))]
    atomic_write_text(dest / "README.md", INDEX_HEADER + "".join(f"\n{b}" for b in blocks))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", required=True)
    ap.add_argument("--evals", nargs="+", default=[], help="rprecision.json per variant, baseline first")
    ap.add_argument("--configs", nargs="+", default=[], help="config.yaml per variant, same order")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--bootstrap", type=int, default=10_000)
    ap.add_argument("--publish-to", default=None, help="copy OUT_DIR's findings.md/.png to DIR/<study>.md/.png")
    args = ap.parse_args(argv)
    if args.publish_to:
        publish(Path(args.out_dir), args.study, Path(args.publish_to))
        return
    if not args.evals or len(args.evals) != len(args.configs):
        ap.error("--evals and --configs must list the same variants in the same order")
    evals, configs = {}, {}
    for e, c in zip(args.evals, args.configs, strict=True):
        v = Path(e).parent.name
        try:
            evals[v] = read_rprecision(e)
        except RecordError as exc:
            raise SystemExit(f"error: {exc}") from None
        configs[v] = yaml.safe_load(Path(c).read_text())
    shas = sorted(
        {
            json.loads(m.read_text()).get("git_sha", "unknown")
            for e in args.evals
            for m in Path(e).parent.glob("*/seed*/metrics.json")
        }
    )
    out = Path(args.out_dir)
    write(args.study, evals, configs, out, args.bootstrap, trained_at=shas)
    print(out / "findings.md")


if __name__ == "__main__":
    main()
