"""Reading the records stages hand each other (JSON files), refusing corrupt ones with one located line.

A truncated file, a NaN, an IoU of 7.5 or an R-precision of 1.7 is a corrupt intermediate: it is never averaged into a
table. Valid ranges come from the metrics table (pipeline/metrics.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pipeline.metrics import METRICS

FIX = "delete it and run the workflow again (the stage that writes it runs anew)"


class RecordError(ValueError):
    """A record file that is unreadable or holds values outside their range."""


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"{path}: missing; run the workflow (the stage that writes it has not run)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path}: not a readable record ({type(exc).__name__}: {exc}); {FIX}") from None


def _check(path: Path, key: str, value: Any, lo: float, hi: float, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RecordError(f"{path}: {key} is {value!r}, not a finite number; {FIX}")
    if not lo <= value <= hi:
        raise RecordError(f"{path}: {key} = {value!r} lies outside its range [{lo:g}, {hi:g}]; {FIX}")


def check_geometry(g: Any, path: Path, where: str = "") -> None:
    """A geometry.json (or one object of a variant's geometry): each measure None or finite within its range."""
    if not isinstance(g, dict):
        raise RecordError(f"{path}: {where or 'the record'} must be a JSON object; {FIX}")
    for m in METRICS:
        if m.source == "geometry" and m.key in g:
            _check(path, f"{where}{m.key}", g[m.key], *m.valid, optional=True)
    if "first_stage" in g:  # a refined object's first-stage measures: the same ranges
        check_geometry(g["first_stage"], path, f"{where}first_stage.")


def read_geometry(path: str | Path) -> dict[str, Any]:
    g = read_json(path)
    check_geometry(g, Path(path))
    return g


def read_rprecision(path: str | Path) -> dict[str, Any]:
    """A variant's rprecision.json: R-precision, standard errors and per-object scores in [0, 1], geometry in range."""
    path = Path(path)
    ev = read_json(path)
    try:
        for clip, modes in ev["models"].items():
            for mode, v in modes.items():
                _check(path, f"models.{clip}.{mode}.r_precision", v["r_precision"], 0.0, 1.0)
                _check(path, f"models.{clip}.{mode}.stderr", v["stderr"], 0.0, 1.0)
        for i, o in enumerate(ev["objects"]):
            for key in ("score", "shape_score"):
                if key in o:
                    _check(path, f"objects[{i}].{key}", o[key], 0.0, 1.0)
        for i, g in enumerate(ev.get("geometry", {}).get("objects", [])):
            check_geometry(g, path, f"geometry.objects[{i}].")
    except (KeyError, TypeError, AttributeError) as exc:
        raise RecordError(f"{path}: not an rprecision.json of this pipeline (missing {exc}); {FIX}") from None
    return ev
