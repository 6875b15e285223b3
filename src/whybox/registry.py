"""Explicit registries of explainers (and, later, metrics). Unknown names list the known ones."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from whybox.errors import UnknownNameError, did_you_mean

T = TypeVar("T")

__all__ = ["EXPLAINERS", "METRICS", "Registry"]


class Registry(Generic[T]):
    """A name -> class mapping filled by the ``@register(name)`` decorator."""

    def __init__(self, kind: str, param: str | None = None) -> None:
        self.kind = kind
        self.param = param or kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice.")
            self._items[name] = obj
            obj.name = name  # type: ignore[attr-defined]
            return obj

        return deco

    def get(self, name: str, *, param: str | None = None) -> T:
        """The entry registered as ``name``; an unknown name is an error naming ``param`` (default: the registry's
        own parameter, ``method`` or ``metric``), the close matches and every known name."""
        param = self.param if param is None else param
        if isinstance(name, (list, tuple)) and name and all(isinstance(n, str) for n in name):
            raise UnknownNameError(
                f"{param}= takes one {self.kind} name, not a {type(name).__name__}; got {list(name)!r}. Make one "
                f"call per name, e.g. {{name: ... for name in {list(name)!r}}}."
            )
        if not isinstance(name, str) or name not in self._items:
            known = sorted(self._items)
            hint = did_you_mean(str(name), known, n=3)
            raise UnknownNameError(
                f"{param}={name!r} is not a known {self.kind}.{hint} Known {self.kind}s: {', '.join(known)}."
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


EXPLAINERS: Registry[type] = Registry("explainer", "method")
METRICS: Registry[type] = Registry("metric", "metric")
