"""Code provenance: the commit that runs, and which source files a stage runs (so Snakemake re-runs a rule when its
code changes)."""

from __future__ import annotations

import ast
import subprocess
from functools import cache
from pathlib import Path

PACKAGE = "pipeline"


def git_sha() -> str:
    """The commit of the code that runs ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Every `pipeline.*` module named by an import anywhere in the file (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pipeline import train` names a module
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


@cache
def module_sources(module: str, root: str | Path = ".") -> frozenset[str]:
    """Source files (relative to ``root``) that ``python -m module`` can execute from this package: the module, the
    packages above it and every package module it imports, transitively."""
    root = Path(root)
    seen: set[str] = set()
    files: set[str] = set()
    todo = [module]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        parts = mod.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages' __init__
        path = _module_file(root, mod)
        if path is None:
            continue
        files.add(str(path.relative_to(root)))
        todo.extend(_imports(path, mod) - seen)
    return frozenset(files)
