"""The codebase's shape, checked: no import circle, no hub, short functions, no lab history in code, every
third-party import declared, and each registry in step with the config names it serves."""

import ast
import importlib.metadata as md
import re
import sys
import tomllib
import typing
from pathlib import Path

import pytest

from pipeline.provenance import _imports, module_sources

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    out = {}
    for f in (ROOT / "pipeline").rglob("*.py"):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_among_pipeline_modules():
    """Imports inside functions count too: a circle means neither module can be understood, tested or re-run alone."""
    mods = _modules()
    graph = {m: {i for i in _imports(f, m) if i in mods and i != m} for m, f in mods.items()}
    assert _cycles(graph) == []


def test_training_does_not_run_the_tracking_or_report_code():
    """Each rule re-runs when a source file it runs changes; training must not depend on how results are logged or
    reported (an edit there would retrain every object)."""
    train = module_sources("pipeline.train", ROOT)
    for f in ("pipeline/tracking.py", "pipeline/report.py", "pipeline/findings.py", "pipeline/evaluate.py"):
        assert f not in train
    for stage in ("pipeline.mesh", "pipeline.views", "pipeline.geometry"):
        assert "pipeline/train.py" not in module_sources(stage, ROOT), stage


def test_no_function_longer_than_100_lines():
    long = []
    for f in sorted((ROOT / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 100:
                long.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert long == []


def test_no_lab_history_in_code_rules_or_configs():
    """Comments say what and why; the dated notebook (benchmarks/RESULTS.md) and CHANGELOG.md hold the history."""
    pattern = re.compile(r"\bsessions? [0-9]+|\bissue #?[0-9]+", re.I)
    files = [ROOT / "Snakefile", ROOT / "params.yaml"]
    for d in ("pipeline", "rules", "configs"):
        files += [p for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".smk", ".yaml")]
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in files
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for group in project["optional-dependencies"].values() for r in group]
    return {re.split(r"[=<>!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_every_third_party_import_is_declared():
    """An import that arrives only through another package's dependencies breaks when that package changes."""
    declared = _declared()
    dists = md.packages_distributions()
    local = {"pipeline", "tests", "benchmarks"}
    missing = set()
    for d in ("pipeline", "tests", "benchmarks"):
        for f in (ROOT / d).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name.split(".")[0] for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module.split(".")[0]]
                for name in names:
                    if name in sys.stdlib_module_names or name in local:
                        continue
                    provided = {p.lower().replace("_", "-") for p in dists.get(name, [name])}
                    if not provided & declared:
                        missing.add(f"{name} ({f.relative_to(ROOT)})")
    assert sorted(missing) == []


@pytest.mark.parametrize(
    ("registry", "config_class", "key"),
    [
        ("pipeline.guidance:GUIDANCE", "GuidanceConfig", "name"),
        ("pipeline.sds:SCHEDULES", "ScheduleConfig", "name"),
        ("pipeline.sds:WEIGHTINGS", "GuidanceConfig", "weighting"),
    ],
)
def test_each_registry_serves_exactly_the_names_the_config_accepts(registry, config_class, key):
    import importlib

    from pipeline import config as cfgmod

    module, attr = registry.split(":")
    reg = getattr(importlib.import_module(module), attr)
    hints = typing.get_type_hints(getattr(cfgmod, config_class))
    assert sorted(reg.names()) == sorted(typing.get_args(hints[key]))
