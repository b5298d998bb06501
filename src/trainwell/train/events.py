"""Typed events of the training loop and the base class of every callback.

A callback subclasses :class:`Callback` and overrides the hooks it needs; the loop calls each hook
as a method, every time, in the order the callbacks were given. A method whose name starts with
``on_`` but is not a hook (``on_epoch_ends``) is refused when the class is defined — a misspelt hook
must fail loudly, not silently never run (the fault of hooks looked up by name).

Hooks, in the order the loop calls them::

    on_fit_start(FitStart)      once, before the first step (also after a resume)
    on_step_end(StepEnd)        after every optimiser step; ``stats`` is set a few times a second
    on_epoch_end(EpochEnd)      after validation; may set ``event.state.stop_reason`` to stop
    on_restore(Restore)         after the state was replaced by a checkpoint (a divergence rollback)
    on_fit_end(FitEnd)          once, after the last epoch (or the stop)

``state_dict()`` / ``load_state_dict()`` hold what a callback must carry across a resume; it is
saved with every checkpoint (tensors allowed, see :mod:`trainwell.train.checkpoint`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from trainwell.train.trainer import FitResult, TrainState

HOOKS = ("on_fit_start", "on_step_end", "on_epoch_end", "on_restore", "on_fit_end")


@dataclass
class FitStart:
    state: TrainState
    total_steps: int
    """Optimiser steps of the whole run (``state.step`` of them are done already after a resume)."""
    batch_size: int
    """Examples per optimiser step (micro-batch size x train.accumulate)."""


@dataclass
class StepEnd:
    state: TrainState
    stats: tuple[float, float] | None = None
    """(mean train loss, train accuracy) of the epoch so far; only on steps where the loop read the
    device (a few times a second), None otherwise — reading it every step would stall the GPU."""


@dataclass
class EpochEnd:
    """What a callback sees after each epoch: its metrics row and the model that was validated."""

    epoch: int
    metrics: dict[str, Any]
    model: nn.Module
    state: TrainState | None = None


@dataclass
class Restore:
    state: TrainState
    reason: str


@dataclass
class FitEnd:
    state: TrainState
    result: FitResult


class Callback:
    """Base class of the loop's extensions; every hook is a no-op unless overridden."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in vars(cls):
            if name.startswith("on_") and name not in HOOKS:
                guess = difflib.get_close_matches(name, HOOKS, n=1)
                hint = f"; did you mean '{guess[0]}'?" if guess else ""
                raise TypeError(f"{cls.__name__}.{name} is not a hook of the training loop{hint} "
                                f"Hooks: {', '.join(HOOKS)}.")

    def on_fit_start(self, event: FitStart) -> None:
        pass

    def on_step_end(self, event: StepEnd) -> None:
        pass

    def on_epoch_end(self, event: EpochEnd) -> None:
        pass

    def on_restore(self, event: Restore) -> None:
        pass

    def on_fit_end(self, event: FitEnd) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def overrides(callback: Callback, hook: str) -> bool:
    """Whether ``callback`` overrides ``hook`` (the loop skips per-step calls of callbacks that do not)."""
    return getattr(type(callback), hook) is not getattr(Callback, hook)


def check_callbacks(callbacks: Any) -> list[Callback]:
    """The callbacks as a list, each a :class:`Callback` (anything else is a TypeError naming it)."""
    out = list(callbacks or ())
    for cb in out:
        if not isinstance(cb, Callback):
            raise TypeError(f"callback {cb!r} ({type(cb).__name__}) is not a trainwell.train.Callback; "
                            "subclass it and override the hooks you need.")
    return out
