"""Progress display: a rich progress bar with loss, accuracy and examples/s, plus one line per epoch.

Reading the running loss forces a device sync, so the loop reads it a few times a second (never
once per step) and hands it to the bar with the step event.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def print_warning(console: Console, message: str) -> None:
    """One ``warning:`` line; the message is plain text (a path like ``runs/[a]`` is not markup)."""
    console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


def format_epoch(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}"]
    parts.append(f"train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:5.1f}%")
    if "val_loss" in row:
        parts.append(f"val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:5.1f}%")
    parts.append(f"lr {row['lr']:.3g}")
    eps = row.get("examples_per_second", math.nan)
    if math.isfinite(eps):
        parts.append(f"{eps:,.0f} ex/s")
    return "  ".join(parts)


class TrainProgress:
    """A live bar on a terminal; plain epoch lines elsewhere (logs, CI, pipes)."""

    def __init__(self, console: Console | None = None, live: bool | None = None) -> None:
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.live = self.console.is_terminal if live is None else live
        self._progress: Progress | None = None
        self._task: Any = None
        self._steps = 0
        self._t0 = 0.0
        self._batch_size = 0

    def start(self, total_steps: int, batch_size: int = 0, done: int = 0) -> None:
        self._t0 = time.perf_counter()
        self._batch_size = batch_size
        if not self.live:
            return
        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._task = self._progress.add_task("train", total=total_steps, completed=done, stats="")
        self._progress.start()

    def advance(self, steps: int, stats: tuple[float, float] | None = None) -> None:
        """Move the bar; ``stats`` (loss, accuracy so far), when the loop has read them, refresh its text."""
        self._steps += steps
        if self._progress is None:
            return
        if stats is not None:
            loss, acc = stats
            now = time.perf_counter()
            rate = self._steps * self._batch_size / max(now - self._t0, 1e-9)
            text = f"loss {loss:.4f} acc {100 * acc:5.1f}%" + (f" {rate:,.0f} ex/s" if self._batch_size else "")
            self._progress.update(self._task, advance=steps, stats=text)
        else:
            self._progress.update(self._task, advance=steps)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def is_interactive() -> bool:
    return sys.stderr.isatty()
