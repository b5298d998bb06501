"""Numbers written for people: a fraction as a percentage, and the one marker of a missing value.

Every table and summary line that shows an accuracy or an error rate (the CLI, ensembles, the labs'
pages) writes it with :func:`percent`, so a missing value reads the same everywhere.
"""

from __future__ import annotations

import math

MISSING = "–"
"""A missing number (None, NaN, infinite): an en dash reads as "no value", unlike "nan", "None" or "n/a"."""


def percent(fraction: float | None, digits: int = 2) -> str:
    """A fraction as a percentage with ``digits`` decimals: ``percent(0.97412) == "97.41%"``; :data:`MISSING`
    when there is no finite value."""
    if fraction is None or not math.isfinite(fraction):
        return MISSING
    return f"{100 * fraction:.{digits}f}%"


__all__ = ["MISSING", "percent"]
