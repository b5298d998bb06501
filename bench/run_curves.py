"""Draw finished runs' curves side by side: validation accuracy and training loss per epoch, one line per run.

Reads each run folder's ``metrics.jsonl``; draws nothing new about the runs, so a figure in the docs can be
re-drawn from the runs that measured its table without training again:

    python bench/run_curves.py --out docs/presets-mnist1d-recurrent.png "gru, seed 0=runs/gru-0" ...

The training loss goes on a log axis when it spans more than a decade; every line has its own colour, dash
pattern and hollow marker, and the legend sits under the panels (trainwell.train.plots' conventions).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trainwell.train.plots import figure_legend, line_style, plt, save_figure, spans_decades
from trainwell.train.rundir import read_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR", help="a legend label and a finished run folder")
    parser.add_argument("--out", required=True, type=Path, help="the PNG to write")
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    cmap = plt.get_cmap("tab10")
    losses: list[float] = []
    for i, spec in enumerate(args.runs):
        label, sep, folder = spec.rpartition("=")
        if not sep:
            parser.error(f"'{spec}' is not LABEL=RUN_DIR")
        rows = read_metrics(Path(folder) / "metrics.jsonl")
        epochs = [r["epoch"] for r in rows]
        style = {"color": cmap(i % cmap.N), "label": label, "ms": 4, "markevery": 4, **line_style(i)}
        ax_acc.plot(epochs, [100 * r["val_acc"] for r in rows], **style)
        loss = [float(r["train_loss"]) for r in rows]
        losses += loss
        ax_loss.plot(epochs, loss, **style)
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy", ylim=(0, 100))
    log = spans_decades(losses)
    ax_loss.set(xlabel="epoch", ylabel="training loss" + (" (log scale)" if log else ""), title="training loss")
    if log:
        ax_loss.set_yscale("log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    figure_legend(fig, ncols=4)
    if args.title:
        fig.suptitle(args.title)
    print(save_figure(fig, args.out))


if __name__ == "__main__":
    main()
