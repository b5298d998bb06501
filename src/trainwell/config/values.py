"""The value grammar: one syntax for every list and every ``name:args`` value, on the command line and in files.

A config value arrives as YAML (a file, or the text after ``key=`` on the command line, read as a
YAML flow value). Where a key expects a list or a :class:`Spec` and gets a string, the string is read
by this grammar (recursive descent, no ``eval``, no YAML inside)::

    value := ""                          the empty list
           | item ("," item)*            several items: a list ("8,16,32" is [8, 16, 32])
    item  := "[" [item ("," item)*] "]"  a list ("[16,32]")
           | atom (":" arg)*             a spec when it has arguments ("leaky_relu:0.2")
    arg   := NAME "=" atom               a keyword argument ("rotation:degrees=10:p=0.5")
           | atom                        a positional argument ("elu:0.5"; may be empty: "elu:")
    atom  := '"' JSON string '"' | "'" text ("''" is ') "'" | bare
    bare  := characters other than , : = [ ] { }, spaces around them dropped (a quote opens a
             string only at the start): an integer, a number (1e-3, inf, nan), true/false,
             null or ~, else a word
    NAME  := a word such as leaky_relu or cutout ([A-Za-z_][A-Za-z0-9_.-]*, not true/inf/null ...)

A key of type ``str`` takes its text as it is (a path may hold commas and colons). :func:`render`
writes the normal form that :func:`parse` reads back to the same value (config.yaml is written with
it); :func:`split_items` cuts a list into its items' texts (``compare --vary``). Values are bounded:
at most ``MAX_VALUE_ITEMS`` items and ``MAX_DEPTH`` nested brackets. docs/values.md has examples.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Union

from trainwell.errors import ConfigError, short_repr

#: The most scalars one config value may hold. YAML aliases let a few hundred bytes name a list of
#: millions (``&a [1,1], &b [*a,*a], ...``): checked before anything walks or prints the value.
MAX_VALUE_ITEMS = 10_000
#: The deepest nesting of brackets in one value.
MAX_DEPTH = 32

Scalar = Union[str, int, float, bool, None]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
_INT = re.compile(r"[-+]?[0-9]+\Z")
_FLOAT = re.compile(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][-+]?[0-9]+)?\Z|[-+]?(inf|infinity|nan)\Z", re.I)
_STOP = set(",:=[]{}")  # ends a bare atom; a quote opens a string only where an atom starts
_SPECIAL = _STOP | set("\"'")
_BRACKETS = {"[": "]", "{": "}"}


@dataclass(frozen=True, eq=False)
class Spec:
    """A registry name with arguments, e.g. ``leaky_relu:0.2`` or ``rotation:degrees=10:p=0.5``.

    ``args`` are the positional arguments, ``kwargs`` the keyword ones in the order given. The
    config layer checks only the syntax; the registry's own layer (nn, data) checks the name and
    the arguments. A spec equals, and hashes as, its normal text (``str(spec)``), so
    ``cfg.model.activation == "relu"`` reads as it looks.
    """

    name: str
    args: tuple[Scalar, ...] = ()
    kwargs: tuple[tuple[str, Scalar], ...] = ()

    def __str__(self) -> str:
        return render(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Spec, str)):
            return str(self) == str(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(str(self))


# ----------------------------------------------------------------------------- errors


def _error(where: str, text: str, pos: int, problem: str, fix: str) -> ConfigError:
    """One line: what is wrong, in which key, at which (1-based) character of which text, how to fix it."""
    return ConfigError(f"{where}: {problem} at position {pos + 1} of {short_repr(text)}; {fix}.")


# ----------------------------------------------------------------------------- scalars


def is_name(value: object) -> bool:
    """Whether ``value`` can name a spec or an argument: a word such as ``leaky_relu`` or ``cutout``
    that does not read as another scalar (``true``, ``inf``, ``null``)."""
    return isinstance(value, str) and bool(_NAME.match(value)) and scalar(value) == value


def scalar(text: str) -> Scalar:
    """A bare atom's value: an integer, a number, true/false, null, else the text itself."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "~"):
        return None
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def _render_scalar(value: Scalar) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # 0.1, 1e-08, inf, nan: each reads back as the same float
    if isinstance(value, str):
        bare = value == value.strip() and value and not _SPECIAL & set(value) and value.isprintable()
        return value if bare and scalar(value) == value else json.dumps(value, ensure_ascii=False)
    raise TypeError(f"not a config scalar: {value!r}")


def render(value: Any) -> str:
    """The normal text of a value, which :func:`parse` reads back to the same value.

    Lists are always bracketed (``[16,32]``), specs written ``name:positional:key=value``, strings
    bare when they read back as themselves, else double-quoted (JSON escapes).
    """
    if isinstance(value, Spec):
        args = [_render_scalar(a) for a in value.args] + [f"{k}={_render_scalar(v)}" for k, v in value.kwargs]
        return ":".join([value.name, *args])
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(render(v) for v in value) + "]"
    return _render_scalar(value)


# ----------------------------------------------------------------------------- the parser


class _Parser:
    """Recursive descent over one text; ``pos`` is the index of the next character."""

    def __init__(self, text: str, where: str) -> None:
        self.text, self.where, self.pos, self.items = text, where, 0, 0

    def fail(self, problem: str, fix: str, pos: int | None = None) -> ConfigError:
        return _error(self.where, self.text, self.pos if pos is None else pos, problem, fix)

    def peek(self) -> str:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def count(self) -> None:
        self.items += 1
        if self.items > MAX_VALUE_ITEMS:
            raise self.fail(f"more than {MAX_VALUE_ITEMS:,} values", "write a shorter value")

    def value(self) -> Any:
        if not self.peek():
            return []
        items = self.sequence(depth=0)
        if self.peek():
            raise self.fail(f"unexpected {self.peek()!r}", "separate items with ',' and close each '[' with ']'")
        return items[0] if len(items) == 1 else items

    def sequence(self, depth: int) -> list[Any]:
        items = [self.item(depth)]
        while self.peek() == ",":
            self.pos += 1
            items.append(self.item(depth))
        return items

    def item(self, depth: int) -> Any:
        start = self.pos
        if self.peek() == "[":
            if depth >= MAX_DEPTH:
                raise self.fail(f"more than {MAX_DEPTH} nested '['", "flatten the value")
            self.pos += 1
            self.count()
            items = [] if self.peek() == "]" else self.sequence(depth + 1)
            if self.peek() != "]":
                raise self.fail("unclosed '['", "close it with ']', e.g. [16,32]", start)
            self.pos += 1
            return items
        if self.peek() in (",", "]", ""):
            raise self.fail("empty item", "give a value between the commas, e.g. 8,16,32")
        head = self.atom()
        if not isinstance(head, str) or self.peek() != ":":
            return head
        if not is_name(head):
            raise self.fail(f"{head!r} is not a name", "a spec starts with a name, e.g. leaky_relu:0.2", start)
        args: list[Scalar] = []
        kwargs: dict[str, Scalar] = {}
        while self.peek() == ":":
            self.pos += 1
            arg_start = self.pos
            value = self.atom(empty_ok=True)
            if self.peek() != "=":
                if kwargs:
                    raise self.fail("a positional argument after a keyword one", f"write {head}:a:k=v", arg_start)
                args.append(value)
                continue
            if not isinstance(value, str) or not is_name(value):
                raise self.fail(f"{value!r} is not an argument name", f"write {head}:name=value", arg_start)
            if value in kwargs:
                raise self.fail(f"argument '{value}' given twice", "give each argument once", arg_start)
            self.pos += 1
            kwargs[value] = self.atom(empty_ok=True)
        return Spec(head, tuple(args), tuple(kwargs.items()))

    def atom(self, empty_ok: bool = False) -> Scalar:
        self.count()
        quote = self.peek()
        if quote in ('"', "'"):
            return self.quoted(quote)
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _STOP:
            self.pos += 1
        text = self.text[start:self.pos].strip()
        if self.pos < len(self.text) and self.text[self.pos] in "{}":
            raise self.fail(f"unexpected {self.text[self.pos]!r}", "write a mapping as YAML "
                            "(augment='[{noise: {std: 0.1}}]') or as noise:std=0.1")
        if not text and not empty_ok:
            raise self.fail("empty item", "give a value, e.g. 8,16,32", start)
        return scalar(text) if text else ""

    def quoted(self, quote: str) -> str:
        start = self.pos
        self.pos += 1
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "\\" and quote == '"':
                self.pos += 2
                continue
            if ch == quote:
                if quote == "'" and self.text[self.pos + 1:self.pos + 2] == "'":
                    self.pos += 2
                    continue
                self.pos += 1
                body = self.text[start:self.pos]
                if quote == "'":
                    return body[1:-1].replace("''", "'")
                try:
                    return str(json.loads(body, strict=False))
                except ValueError:
                    raise self.fail("a bad escape in a quoted string", r'use \" \\ \n or \uXXXX', start) from None
            self.pos += 1
        raise self.fail(f"unclosed {quote}", f"end the string with {quote}", start)


def parse(text: str, where: str = "value") -> Any:
    """A value's text -> a list, a :class:`Spec` or a scalar (see the module docstring).

    ``where`` names the value in errors (``config key 'model.channels'``); a malformed text raises
    one ConfigError line with the position.
    """
    return _Parser(text, where).value()


def split_items(text: str, where: str = "value") -> list[str]:
    """A list's text -> the text of each top-level item, trimmed (``"[16,32],[32,64]"`` -> two).

    Brackets (``[]`` and YAML's ``{}``) and quotes are respected, so each piece is a whole value
    that can be given to ``key=`` on its own. Empty items and unclosed brackets are errors.
    """
    pieces, start, stack, pos, fresh = [], 0, [], 0, True
    while pos < len(text):
        ch = text[pos]
        if ch in ('"', "'") and fresh:
            parser = _Parser(text, where)
            parser.pos = pos
            parser.quoted(ch)
            pos, fresh = parser.pos, False
            continue
        fresh = ch in ",:=[{" or (fresh and ch.isspace())
        if ch in _BRACKETS:
            stack.append((pos, _BRACKETS[ch]))
            if len(stack) > MAX_DEPTH:
                raise _error(where, text, pos, f"more than {MAX_DEPTH} nested brackets", "flatten the value")
        elif ch in "]}":
            if not stack or stack[-1][1] != ch:
                raise _error(where, text, pos, f"unmatched {ch!r}", "open each bracket before closing it")
            stack.pop()
        elif ch == "," and not stack:
            pieces.append((start, text[start:pos]))
            start = pos + 1
        pos += 1
    if stack:
        raise _error(where, text, stack[-1][0], f"unclosed {text[stack[-1][0]]!r}", f"close it with {stack[-1][1]!r}")
    pieces.append((start, text[start:]))
    if len(pieces) > MAX_VALUE_ITEMS:
        raise _error(where, text, 0, f"more than {MAX_VALUE_ITEMS:,} values", "write a shorter list")
    for at, piece in pieces:
        if not piece.strip():
            raise _error(where, text, at, "empty item", "give a value between the commas, e.g. a,b,c")
    return [piece.strip() for _, piece in pieces]


# ----------------------------------------------------------------------------- specs from any value


def _spec_from_entry(name: Any, args: Any, where: str) -> Spec:
    """A YAML mapping entry ``{name: {key: value}}`` (or ``{name: null}``) as a Spec."""
    if not is_name(name):
        raise ConfigError(f"{where}: {short_repr(name)} is not a name; names are words such as rotation or relu.")
    if args is None:
        return Spec(name)
    if not isinstance(args, dict):
        raise ConfigError(f"{where}: '{name}': arguments must be a mapping like {{{name}: {{p: 0.5}}}}, "
                          f"got {short_repr(args)}.")
    for key, value in args.items():
        if not is_name(key):
            raise ConfigError(f"{where}: '{name}': {short_repr(key)} is not an argument name; "
                              f"write {{{name}: {{p: 0.5}}}}.")
        if not isinstance(value, (str, int, float, type(None))):  # bool is an int
            raise ConfigError(f"{where}: '{name}': argument '{key}' takes one value (a number, word or "
                              f"true/false), got {short_repr(value)}.")
    return Spec(name, (), tuple(args.items()))


def _as_spec(value: Any, where: str, example: str) -> Spec:
    if isinstance(value, Spec):
        return value
    if is_name(value):
        return Spec(value)
    raise ConfigError(f"{where} expects a name with optional arguments such as {example}, got {short_repr(value)}.")


def to_spec(value: Any, key: str = "model.activation") -> Spec:
    """One spec for config key ``key`` from a string (``"leaky_relu:0.2"``), a one-entry mapping
    (``{elu: {alpha: 0.5}}``) or a Spec; the syntax only: the registry's layer checks the name and arguments."""
    where = f"config key '{key}'"
    if isinstance(value, str):
        value = parse(value, where)
    elif isinstance(value, dict) and len(value) == 1:
        ((name, args),) = value.items()
        value = _spec_from_entry(name, args, where)
    return _as_spec(value, where, "relu or leaky_relu:0.2")


def _entries(value: Any, key: str) -> Iterator[tuple[str, Any]]:
    """(where, entry) for each entry of an op list; a mapping entry holds one op per key."""
    if value is None:
        return
    if isinstance(value, str):
        parsed = parse(value, f"config key '{key}'")
        value = parsed if isinstance(parsed, list) else [parsed]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    for i, item in enumerate(value):
        where = f"config key '{key}[{i}]'"
        if isinstance(item, dict) and item:
            yield from ((where, {name: args}) for name, args in item.items())
        else:
            yield where, item


def to_specs(value: Any, key: str = "augment") -> list[Spec]:
    """An op list for config key ``key`` -> its specs, in order: ``"translation,rotation:degrees=10"``,
    or a list of names, ``name:key=value`` strings, ``{name: {key: value}}`` mappings and Specs."""
    specs = []
    for where, item in _entries(value, key):
        if isinstance(item, dict) and len(item) == 1:
            ((name, args),) = item.items()
            specs.append(_spec_from_entry(name, args, where))
        elif isinstance(item, str) and item.strip():
            specs.append(_as_spec(parse(item, where), where, "rotation:degrees=10"))
        elif isinstance(item, Spec):
            specs.append(item)
        else:
            raise ConfigError(f"{key} entries are op names or {{name: {{arg: value}}}} mappings, got "
                              f"{short_repr(item)} ({where}); e.g. {key}=translation,rotation:degrees=10 or "
                              f"{key}='[{{noise: {{std: 0.1}}}}]'.")
    return specs


__all__ = ["MAX_DEPTH", "MAX_VALUE_ITEMS", "Spec", "is_name", "parse", "render", "scalar", "split_items", "to_spec",
           "to_specs"]
