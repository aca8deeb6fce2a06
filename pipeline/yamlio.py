"""Strict YAML for configs and presets: duplicate keys and alias bombs are errors, not surprises.

PyYAML's safe loader keeps the last of two equal keys silently, and expands aliases as shared references that blow
up as soon as anything walks the data (a 500-byte "billion laughs" in `sweep` exhausts memory while the DAG is
built). This loader refuses both with the file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_NODES = 100_000
"""Values a document may hold once its aliases (*name) are expanded: far above any config or preset, far below an
expansion bomb (whose few aliases stand for billions of values)."""


class YAMLInputError(ValueError):
    """A YAML file that is not acceptable as a config (syntax, duplicate key, too many aliases)."""


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values `node` holds with every alias expanded (shared nodes counted once per use, computed once)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive alias counts once while its own size is being computed
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[id(node)] = min(size, MAX_NODES + 1)
    return memo[id(node)]


class _StrictLoader(yaml.SafeLoader):
    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_NODES:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"more than {MAX_NODES:,} values once its aliases are expanded (an expansion bomb?)",
                node.start_mark,
            )
        return self.construct_document(node)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key].line + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def loads(text: str, source: str = "<string>") -> Any:
    """Parse one YAML document strictly; errors name `source`, the line and the column."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise YAMLInputError(f"{source}: not valid YAML at {where}: {problem}") from None


def load(path: str | Path) -> Any:
    """Read and parse a YAML file strictly (see :func:`loads`)."""
    path = Path(path)
    return loads(path.read_text(encoding="utf-8"), str(path))
