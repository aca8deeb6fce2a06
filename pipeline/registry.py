"""One registry per extension point: guidance models, timestep schedules, weightings.

In the spirit of threestudio's `register`/`find`: an implementation is a function in its own module, registered by
one decorator line under the name that `params.yaml` uses, and looked up by that name. The config's `Literal` of
allowed names is checked against each registry by a test, so the two cannot drift. docs/architecture.md shows each
recipe.

    SCHEDULES = Registry("timestep schedule")

    @SCHEDULES.register("hifa")
    def hifa(schedule, step, batch, generator): ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Names → implementations (with optional properties, e.g. whether a guidance model needs a GPU)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._props: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **props: Any) -> Callable[[T], T]:
        def add(fn: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = fn
            self._props[name] = props
            return fn

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}") from None

    def prop(self, name: str, key: str, default: Any = None) -> Any:
        self.get(name)
        return self._props[name].get(key, default)

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
