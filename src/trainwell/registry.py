"""One registry per concept: name -> factory + metadata + one-line doc.

The CLI's ``trainwell list`` and the docs tables are generated from registries, so they cannot
drift from the code.

Example::

    ACTIVATIONS = Registry("activation")

    @ACTIVATIONS.register("relu", saturates=False)
    def relu() -> nn.Module:
        "max(0, x) (Nair & Hinton 2010)."
        return nn.ReLU()

    ACTIVATIONS.build("relu")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from trainwell.errors import ConfigError, unknown_name_message


@dataclass(frozen=True)
class Entry:
    """A registered factory with its one-line doc and free-form metadata."""

    name: str
    factory: Callable[..., Any]
    doc: str
    meta: dict[str, Any] = field(default_factory=dict)


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0].strip() if (text or "").strip() else ""


class Registry:
    """Maps names to factories. Lookups of unknown names raise a ConfigError listing the choices."""

    def __init__(self, kind: str, doc: str = "") -> None:
        self.kind = kind
        self.doc = doc
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, factory: Callable[..., Any], doc: str | None = None, **meta: Any) -> Entry:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        entry = Entry(name, factory, _first_line(doc if doc is not None else factory.__doc__), dict(meta))
        self._entries[name] = entry
        return entry

    def register(self, name: str, doc: str | None = None, **meta: Any) -> Callable[[Callable], Callable]:
        """Decorator form of :meth:`add`; the doc defaults to the factory's docstring's first line."""

        def decorate(factory: Callable) -> Callable:
            self.add(name, factory, doc, **meta)
            return factory

        return decorate

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(unknown_name_message(self.kind, str(name), self._entries)) from None

    def get(self, name_or_callable: str | Callable[..., Any]) -> Callable[..., Any]:
        """The factory for a name; a callable passes through unchanged (the Python API's escape hatch)."""
        if callable(name_or_callable):
            return name_or_callable
        return self.entry(name_or_callable).factory

    def build(self, name_or_callable: str | Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.get(name_or_callable)(*args, **kwargs)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


#: Every registry by kind, filled as modules register theirs (for ``trainwell list``).
ALL: dict[str, Registry] = {}


def new_registry(kind: str, doc: str = "") -> Registry:
    """Create a registry and make it visible to ``trainwell list``."""
    registry = Registry(kind, doc)
    ALL[kind] = registry
    return registry
