"""One small registry type shared by every axis of a study.

Datasets, models, scorers, selectors and label regimes each keep a
:class:`Registry`, so tests can be parametrised over ``registry.names()``
the way timm's tests run over ``list_models()``, and an unknown name fails
with a sentence that lists the valid ones.
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from study.core.errors import StudyError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, axis: str):
        self.axis = axis
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.axis} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def resolve(self, name: str) -> tuple[T, dict]:
        """The entry a name refers to, and the keyword arguments the name carries: ``kind:ARG`` (an ImageFolder
        path, a timm model, an external set's file) passes ARG as ``arg``."""
        kind, _, arg = name.partition(":")
        return self.get(kind), ({"arg": arg} if arg else {})

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise StudyError(f"Unknown {self.axis} {name!r}; valid {self.axis}s are: {', '.join(self.names())}.")
        return self._entries[name]
