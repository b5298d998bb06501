"""A report for the terminal (rich): each finding as a short block (verdict, evidence, fix), then the layer table.

Findings are blocks rather than table cells so they stay readable in an 80-column terminal.
"""

from __future__ import annotations

import math
from typing import Any

from trainwell.diagnose.report import Report

_COLORS = {"error": "red", "warning": "yellow", "info": "cyan"}


def _num(x: float | None, pct: bool = False) -> str:
    if x is None:
        return ""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{100 * x:.0f}%" if pct else f"{x:.2g}"


def _evidence(evidence: dict[str, Any], limit: int = 5) -> str:
    """The scalar evidence entries (per-layer maps are in the layer table)."""
    parts = [f"{k}={_num(v) if isinstance(v, float) else v}" for k, v in evidence.items()
             if not isinstance(v, (dict, list)) and k != "when"]
    return ", ".join(parts[:limit])


def _layers(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def render_report(report: Report, console: Any = None) -> None:
    """Print ``report`` to ``console`` (a rich Console; default: stdout)."""
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    title = f"doctor ({report.context})" if report.context else "doctor"
    if not report.findings:
        console.print(f"[bold green]{escape(title)}: no findings[/] - nothing looks wrong.", highlight=False)
    else:
        n = {s: sum(f.severity == s for f in report.findings) for s in _COLORS}
        counts = ", ".join(f"{k} {s}{'s' if k > 1 else ''}" for s, k in n.items() if k)
        console.print(f"[bold]{escape(title)}[/]: {counts}", highlight=False)
        for f in report.findings:
            color = _COLORS[f.severity]
            where = f"  [dim]{escape(_layers(f.layers))}[/]" if f.layers else ""
            console.print(f"[{color}]{f.severity:<7}[/] [bold]{f.code}[/]{where}", highlight=False)
            console.print(f"  {escape(f.message)}", highlight=False)
            if ev := _evidence(f.evidence):
                console.print(f"  [dim]evidence: {escape(ev)}[/]", highlight=False)
            console.print(f"  [green]fix:[/] {escape(f.fix)}", highlight=False)
    if report.input is not None:
        x = report.input
        console.print(f"input: mean {_num(x.mean)}, std {_num(x.std)}, max |feature mean| "
                      f"{_num(x.feature_mean_abs_max)}, feature std {_num(x.feature_std_min)}.."
                      f"{_num(x.feature_std_max)} ({x.features} features, {x.examples} examples)", highlight=False)
    if report.unseen:
        console.print(f"[dim]not inspected: {escape(_layers(report.unseen))} - a recurrent layer's gates run inside "
                      "torch's fused kernel; its output is seen as the next layer's input.[/]", highlight=False)
    if not report.layers:
        return
    table = Table(title="layers (forward order)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=(0, 1), collapse_padding=True,
                  caption="mean/std: of the output; dead/sat: dead or saturated units; grad: std of dL/d(output); "
                          "|gW|: ||dL/dW||; upd: ||dW||/||W|| per step", caption_justify="left")
    table.add_column("layer", no_wrap=True)
    table.add_column("op", no_wrap=True)
    for col in ("mean", "std", "dead", "sat", "grad", "|gW|", "upd"):
        table.add_column(col, justify="right", no_wrap=True)
    for layer in report.layers:
        op = layer.op if layer.kind == "activation" else f"{layer.op}{' +norm' if layer.normalized else ''}"
        table.add_row(layer.name, op, _num(layer.mean), _num(layer.std), _num(layer.dead_fraction, pct=True),
                      _num(layer.saturated_fraction, pct=True), _num(layer.grad_std), _num(layer.grad_norm),
                      _num(layer.update_ratio))
    console.print(table)
