"""User-facing errors.

Every mistake a user can make (an unknown name, a bad file, a wrong shape) raises a
:class:`TrainwellError`. The CLI prints its one-line message and exits with code 2, without a
traceback; the Python API lets it propagate like any exception.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable


class TrainwellError(Exception):
    """An error caused by the user's input; the message says what, where and how to fix it."""

    exit_code = 2


class ConfigError(TrainwellError):
    """A config key, value or name is invalid."""


class DataError(TrainwellError):
    """A data file or array is missing, corrupt or inconsistent."""


class RunDirError(TrainwellError):
    """A run directory is missing, incomplete or would be overwritten."""


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 60, 60, 6, 4, 3


def short_repr(value: object, limit: int | None = None) -> str:
    """A value as an error line shows it: its repr with long strings and containers abbreviated
    (:mod:`reprlib`), then cut to ``limit`` characters: a line, not a screenful."""
    text = _SHORT.repr(value)
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def exception_line(exc: BaseException, limit: int | None = None) -> str:
    """The first non-blank line of an exception's message (a parser's may run to many), cut to
    ``limit`` characters; the exception's type name when it has no message."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first if limit is None or len(first) <= limit else first[:limit]


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The valid choice closest to ``name`` (for "did you mean" hints), or None."""
    matches = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name_message(kind: str, name: str, choices: Iterable[str]) -> str:
    """One line naming the unknown value, the closest valid one and all valid ones."""
    choices = sorted(choices)
    guess = closest(name, choices)
    hint = f" Did you mean '{guess}'?" if guess else ""
    return f"unknown {kind} '{name}'.{hint} Valid: {', '.join(choices)}."


class Interrupted(TrainwellError):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint; exit code 128 + the signal number."""

    def __init__(self, signum: int, epoch: int, step: int, hint: str = "") -> None:
        import signal

        self.signum, self.epoch, self.step = signum, epoch, step
        self.exit_code = 128 + int(signum)
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name} in epoch {epoch + 1} at step {step}; a checkpoint was saved"
                         + (f"; {hint}" if hint else ""))
