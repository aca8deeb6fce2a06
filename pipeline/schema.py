"""JSON schema of params.yaml, generated from the dataclasses of pipeline/config.py (pydantic's TypeAdapter), with
each key's documentation (the docstring under it), its range, and no unknown keys. For editors (e.g.
`# yaml-language-server: $schema=schemas/params.schema.json`) and for `snakemake.utils.validate`, which the workflow
runs on every resolved variant config. pipeline/config.py validates with pydantic models of the same dataclasses
and turns their errors into located one-line messages.

    python -m pipeline.schema            # rewrite schemas/params.schema.json and docs/configuration.md
    python -m pipeline.schema --check    # exit 1 if either is out of date
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from pipeline import config as cfgmod

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "params.schema.json"


def _docstrings() -> dict[str, dict[str, str]]:
    """{class name: {field: the docstring under it}} from pipeline/config.py's source."""
    tree = ast.parse(Path(cfgmod.__file__).read_text(encoding="utf-8"))
    out: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs: dict[str, str] = {}
        body = node.body
        for a, b in zip(body, body[1:], strict=False):
            if (
                isinstance(a, ast.AnnAssign)
                and isinstance(a.target, ast.Name)
                and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant)
                and isinstance(b.value.value, str)
            ):
                docs[a.target.id] = " ".join(b.value.value.split())
        out[node.name] = docs
    return out


def schema() -> dict[str, Any]:
    from pydantic import TypeAdapter

    out = TypeAdapter(cfgmod.Config).json_schema()
    docs = _docstrings()
    classes = {c.__name__: c for c in _dataclasses(cfgmod.Config)}

    def annotate(name: str, node: dict[str, Any]) -> None:
        node["additionalProperties"] = False  # an unknown key is an error, as in pipeline/config.py
        fields = {f.name: f for f in dataclasses.fields(classes[name])}
        for key, prop in node.get("properties", {}).items():
            prop.pop("title", None)
            if key in docs.get(name, {}):
                prop["description"] = docs[name][key]
            rng = fields[key].metadata if key in fields else {}
            if rng.get("min") is not None:
                prop["exclusiveMinimum" if rng.get("lo_open") else "minimum"] = rng["min"]
            if rng.get("max") is not None:
                prop["maximum"] = rng["max"]

    for name, node in out.get("$defs", {}).items():
        node.pop("title", None)
        annotate(name, node)
    annotate("Config", out)
    out["title"] = "DreamFusion lab params.yaml"
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    out["properties"]["preset"] = {"description": "Free-form name of a preset file (ignored)."}
    return out


def _dataclasses(cls: type) -> list[type]:
    found, todo = [], [cls]
    while todo:
        c = todo.pop()
        if c in found:
            continue
        found.append(c)
        for f in dataclasses.fields(c):
            if isinstance(f.type, str):
                t = getattr(cfgmod, f.type, None)
                if dataclasses.is_dataclass(t):
                    todo.append(t)
    return found


def render() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True) + "\n"


DOCS_PATH = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _range(meta: Any) -> str:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is None and hi is None:
        return ""
    left = "–∞" if lo is None else f"{lo:g}"
    right = "∞" if hi is None else f"{hi:g}"
    return f"{'(' if meta.get('lo_open') else '['}{left}, {right}]"


def render_markdown() -> str:
    """docs/configuration.md: every key of params.yaml with its default, range and documentation, one table a
    section, generated from the same dataclasses and docstrings as the JSON schema."""
    docs = _docstrings()
    defaults = cfgmod.Config().to_dict()
    lines = [
        "# Configuration reference",
        "",
        "Every key of `params.yaml`, generated from `pipeline/config.py` by `python -m pipeline.schema` (a test fails",
        "when this page is stale). Ranges are checked before any job starts; an unknown key is an error. Override any",
        "key with `--config 'section={\"key\": value}'`, a preset with `--configfile configs/<preset>.yaml`.",
        "",
    ]
    top = [f for f in dataclasses.fields(cfgmod.Config)]
    plain = [f for f in top if not dataclasses.is_dataclass(getattr(cfgmod, str(f.type), None))]
    if plain:
        lines += ["## Top level", "", "| key | default | range | what it does |", "|---|---|---|---|"]
        for f in plain:
            lines.append(
                f"| `{f.name}` | `{json.dumps(defaults.get(f.name))}` | {_range(f.metadata)} | "
                f"{_cell(docs.get('Config', {}).get(f.name, ''))} |"
            )
        lines.append("")
    for f in top:
        cls = getattr(cfgmod, str(f.type), None)
        if not dataclasses.is_dataclass(cls):
            continue
        lines += [f"## `{f.name}`", ""]
        if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}("):  # dataclasses invent a signature
            lines += [" ".join(cls.__doc__.split()), ""]
        lines += ["| key | default | range | what it does |", "|---|---|---|---|"]
        for sub in dataclasses.fields(cls):
            default = defaults.get(f.name, {}).get(sub.name)
            lines.append(
                f"| `{f.name}.{sub.name}` | `{_cell(json.dumps(default))}` | {_range(sub.metadata)} | "
                f"{_cell(docs.get(cls.__name__, {}).get(sub.name, ''))} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the committed schema instead of writing it")
    args = ap.parse_args(argv)
    outputs = {SCHEMA_PATH: render(), DOCS_PATH: render_markdown()}
    if args.check:
        for path, text in outputs.items():
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                sys.exit(f"{path} is out of date with pipeline/config.py: run `python -m pipeline.schema`")
        return
    from pipeline.io import atomic_write_text

    for path, text in outputs.items():
        atomic_write_text(path, text)
        print(path)


if __name__ == "__main__":
    main()
