"""One registry per concept: name -> factory + typed metadata + one-line doc.

The CLI's ``trainwell list`` and the docs tables are generated from registries, so they cannot
drift from the code.

Each registry declares what its entries promise as a frozen dataclass (its *meta type*); the keyword
arguments of every registration are checked against it when the entry is registered, that is at
import time: a missing or unknown field, or a value of the wrong type, raises a TypeError naming the
entry, the field and the expected type. Readers then see ``entry.meta.gain``, typed, not a string key.

Example::

    @dataclass(frozen=True)
    class ActivationMeta:
        saturates: bool

    ACTIVATIONS = Registry("activation", ActivationMeta)

    @ACTIVATIONS.register("relu", saturates=False)
    def relu() -> nn.Module:
        "max(0, x) (Nair & Hinton 2010)."
        return nn.ReLU()

    ACTIVATIONS.build("relu"), ACTIVATIONS.entry("relu").meta.saturates
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from trainwell.errors import ConfigError, unknown_name_message

M = TypeVar("M")


@dataclass(frozen=True)
class NoMeta:
    """The meta type of a registry whose entries promise nothing beyond their factory and doc."""


@dataclass(frozen=True)
class Entry(Generic[M]):
    """A registered factory with its one-line doc and its registry's metadata."""

    name: str
    factory: Callable[..., Any]
    doc: str
    meta: M


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0].strip() if (text or "").strip() else ""


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "").replace("collections.abc.", "")


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the annotated type ``hint`` (the subset of typing that metadata uses).

    Plain classes (bool is not taken for int or float; an int is a float, as in PEP 484), ``Any``,
    ``Literal``, unions and ``X | None``, ``Callable[...]`` (any callable), and tuples, frozensets,
    lists, sequences and mappings with their element types checked.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is Callable or hint is Callable:
        return callable(value)
    if origin is None:
        if hint in (int, float):
            return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
        return isinstance(value, hint)
    if not isinstance(value, origin):
        return False
    if issubclass(origin, Mapping):
        key, item = args or (Any, Any)
        return all(_matches(k, key) and _matches(v, item) for k, v in value.items())
    if origin is tuple and args and args[-1] is not Ellipsis:
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    return all(_matches(v, args[0]) for v in value) if args else True


def check_meta(meta_type: type[M], where: str, fields: dict[str, Any]) -> M:
    """``meta_type(**fields)``, or a TypeError naming ``where`` when a field is missing, unknown or mistyped."""
    declared = {f.name: f for f in dataclasses.fields(meta_type)}  # type: ignore[arg-type]  # M is bound to dataclasses, not typed so
    hints = typing.get_type_hints(meta_type)
    valid = f"{meta_type.__name__} fields: {', '.join(declared) or 'none'}"
    unknown = [k for k in fields if k not in declared]
    if unknown:
        raise TypeError(f"{where}: unknown metadata field(s) {', '.join(unknown)} ({valid}).")
    missing = [k for k, f in declared.items() if k not in fields and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise TypeError(f"{where}: missing metadata field(s) {', '.join(missing)} ({valid}).")
    for key, value in fields.items():
        if not _matches(value, hints[key]):
            raise TypeError(f"{where}: metadata field {key} must be {_type_name(hints[key])}, got {value!r}.")
    return meta_type(**fields)


class Registry(Generic[M]):
    """Maps names to factories with metadata of type ``meta_type``. Lookups of unknown names raise a
    ConfigError listing the choices."""

    def __init__(self, kind: str, meta_type: type[M], doc: str = "") -> None:
        self.kind = kind
        self.meta_type = meta_type
        self.doc = doc
        self._entries: dict[str, Entry[M]] = {}

    def add(self, name: str, factory: Callable[..., Any], doc: str | None = None, **meta: Any) -> Entry[M]:
        """Register ``factory`` under ``name``; ``meta`` are the fields of the registry's meta type."""
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        checked = check_meta(self.meta_type, f"{self.kind} '{name}'", meta)
        entry = Entry(name, factory, _first_line(doc if doc is not None else factory.__doc__), checked)
        self._entries[name] = entry
        return entry

    def register(self, name: str, doc: str | None = None, **meta: Any) -> Callable[[Callable], Callable]:
        """Decorator form of :meth:`add`; the doc defaults to the factory's docstring's first line."""

        def decorate(factory: Callable) -> Callable:
            self.add(name, factory, doc, **meta)
            return factory

        return decorate

    def entry(self, name: str) -> Entry[M]:
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

    def __iter__(self) -> Iterator[Entry[M]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


#: Every registry by kind, filled as modules register theirs (for ``trainwell list``).
ALL: dict[str, Registry[Any]] = {}


def new_registry(kind: str, meta_type: type[M], doc: str = "") -> Registry[M]:
    """Create a registry whose entries carry ``meta_type`` metadata and make it visible to ``trainwell list``."""
    registry = Registry(kind, meta_type, doc)
    ALL[kind] = registry
    return registry
