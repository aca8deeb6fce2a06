"""DVC plots rendered offline: `dvc plots show/diff` writes a page that loads Vega from a CDN (blank without
internet); this renders the same Vega-Lite specs to SVG with vl-convert (Vega bundled, no network) and writes one
HTML page with the SVGs inline.

    python -m pipeline.dvc_plots --out dvc_plots                 # the workspace (= dvc plots show)
    python -m pipeline.dvc_plots --out dvc_plots HEAD exp-w30    # revisions side by side (= dvc plots diff)
"""

from __future__ import annotations

import argparse
import html
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.io import atomic_write_text


class PlotsError(RuntimeError):
    pass


def dvc_plot_specs(revisions: list[str], cwd: str | Path = ".") -> dict[str, list[dict[str, Any]]]:
    """{plot name: [rendered Vega-Lite items]} from DVC's own JSON output (its templates, its data)."""
    cmd = ["dvc", "plots", "diff", *revisions, "--json"] if revisions else ["dvc", "plots", "show", "--json"]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PlotsError(f"`{' '.join(cmd)}` failed in {cwd}: {proc.stderr.strip()[-500:]}")
    try:
        data = json.loads(proc.stdout)["data"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise PlotsError(f"`{' '.join(cmd)}` gave no plots JSON ({exc}); is dvc.yaml's plots section empty?") from None
    return {name: [i for i in items if i.get("type") == "vega"] for name, items in data.items()}


def fit_axes(spec: Any) -> Any:
    """The Vega-Lite spec with its quantitative x and y scales fitted to the data (not from zero) and padded, so a
    few points spread over the plot instead of sitting on its edges."""
    if isinstance(spec, dict):
        enc = spec.get("encoding")
        if isinstance(enc, dict):
            for axis in ("x", "y"):
                if isinstance(enc.get(axis), dict) and enc[axis].get("type") == "quantitative":
                    enc[axis]["scale"] = {**enc[axis].get("scale", {}), "zero": False, "nice": True, "padding": 24}
        for value in spec.values():
            fit_axes(value)
    elif isinstance(spec, list):
        for value in spec:
            fit_axes(value)
    return spec


def render(specs: dict[str, list[dict[str, Any]]], out_dir: Path) -> Path:
    """Write out_dir/<n>.svg per plot and out_dir/index.html showing them inline; return the page."""
    import vl_convert as vlc

    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [
        "<!doctype html><meta charset='utf-8'><title>DVC plots</title>",
        "<style>body{font-family:sans-serif;margin:2em}figure{display:inline-block;margin:1em}</style>",
        "<h1>DVC plots</h1>",
    ]
    n = 0
    for name, items in specs.items():
        for item in items:
            svg = vlc.vegalite_to_svg(fit_axes(item["content"]))
            atomic_write_text(out_dir / f"plot{n}.svg", svg)
            revs = ", ".join(item.get("revisions", []))
            parts.append(f"<figure>{svg}<figcaption>{html.escape(name)} ({html.escape(revs)})</figcaption></figure>")
            n += 1
    if n == 0:
        raise PlotsError("DVC returned no Vega plots to render")
    page = out_dir / "index.html"
    atomic_write_text(page, "\n".join(parts) + "\n")
    return page


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("revisions", nargs="*", help="git revisions or experiment names (none = the workspace)")
    ap.add_argument("--out", default="dvc_plots", help="output folder (index.html + one SVG per plot)")
    args = ap.parse_args(argv)
    try:
        page = render(dvc_plot_specs(args.revisions), Path(args.out))
    except PlotsError as exc:
        sys.exit(f"error: {exc}")
    print(page)


if __name__ == "__main__":
    main()
