"""A run's report.html: one self-contained page of what a run folder holds.

Every ``train`` writes it beside summary.json (rank 0 of a data-parallel run); ``trainwell report RUN_DIR``
writes it again from the folder's files alone. The page comes from the one HTML builder
(:mod:`trainwell.htmlreport`, which compare's and the labs' reports use): images embedded as data URIs,
no script, no external file. What it shows, each where the folder has it: the headline figures, the
curves (curves.png), the per-class table, the confusion matrix (confusion.png), the reliability diagram
(reliability.png), the doctor's findings (summary.json's ``doctor``, doctor.json, doctor_*.png), the
parameter groups, timings and FLOPs, and the config (config.yaml) with the command that reruns it.

Python API::

    from trainwell.runs.report import write_run_report
    write_run_report("runs/cnn")          # runs/cnn/report.html
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainwell.errors import RunDirError, TrainwellError
from trainwell.formatting import MISSING, percent
from trainwell.htmlreport import Block, Code, Image, KeyValues, Section, Table, Text, write_report

REPORT = "report.html"
#: The figures of a run folder, in the order the report shows them.
CURVES, CONFUSION, RELIABILITY = "curves.png", "confusion.png", "reliability.png"


def _number(value: Any, fmt: str = ".4f") -> str:
    return MISSING if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value \
        else format(value, fmt)


def _pct(value: Any) -> str:
    return percent(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else MISSING


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _headline(summary: dict[str, Any]) -> Section:
    figures = {
        "test accuracy": _pct(summary.get("test_acc")),
        "test top-3 accuracy": _pct(summary.get("test_top3_acc")) if "test_top3_acc" in summary else None,
        "test top-5 accuracy": _pct(summary.get("test_top5_acc")) if "test_top5_acc" in summary else None,
        "test NLL (nats)": _number(summary.get("test_nll", summary.get("test_loss"))),
        "test ECE (15 bins)": _pct(summary.get("test_ece")),
        "test macro precision": _pct(summary.get("test_macro_precision")),
        "test macro recall": _pct(summary.get("test_macro_recall")),
        "test macro F1": _pct(summary.get("test_macro_f1")),
        "best val accuracy": f"{_pct(summary.get('best_val_acc'))} (epoch {summary.get('best_epoch', MISSING)})",
        "weights kept": f"{summary.get('kept', 'last')} (epoch {summary.get('kept_epoch', MISSING)})",
        "epochs / optimiser steps": f"{summary.get('epochs', MISSING)} / {summary.get('steps', MISSING)}",
        "examples train / val / test": f"{summary.get('n_train', MISSING)} / {summary.get('n_val', MISSING)} / "
                                       f"{summary.get('n_test', MISSING)}",
        "seed": summary.get("seed"),
    }
    blocks: list[Any] = []
    if summary.get("diverged"):
        d = summary.get("divergence") or {}
        blocks.append(Text(f"The loss became non-finite at step {d.get('step', MISSING)} (epoch "
                           f"{d.get('epoch', MISSING)}); training stopped with the last good weights, which every "
                           f"figure here is of. {d.get('diagnosis', '')}"))
    elif summary.get("stopped") == "early_stopping":
        blocks.append(Text(f"Early stopping ended the run after epoch {summary.get('epochs', MISSING)}."))
    if "test_macro_f1" not in summary:
        blocks.append(Text("This run's summary.json has no per-class metrics (it was trained by an older trainwell); "
                           "'trainwell evaluate RUN_DIR' computes them."))
    blocks.append(KeyValues({k: v for k, v in figures.items() if v is not None}, caption="on the test split"))
    return Section("Result", blocks)


def _per_class(summary: dict[str, Any]) -> list[Section]:
    rows = summary.get("per_class")
    if not isinstance(rows, dict) or not rows:
        return []
    body = [[name, r.get("precision"), r.get("recall"), r.get("f1"), r.get("support")] for name, r in rows.items()]
    body.append(["macro mean", summary.get("test_macro_precision"), summary.get("test_macro_recall"),
                 summary.get("test_macro_f1"), sum(int(r.get("support") or 0) for r in rows.values())])
    table = Table(["class", "precision", "recall", "F1", "support"], body, highlight={len(body) - 1},
                  caption="test split; a class never predicted has precision 0 (scikit-learn's zero_division=0)")
    return [Section("Per class", [table])]


def _figure(run_dir: Path, name: str, heading: str, caption: str, text: str = "") -> list[Section]:
    path = run_dir / name
    if not path.is_file():
        return []
    blocks: list[Block] = [Text(text)] if text else []
    return [Section(heading, blocks + [Image(path, caption=caption)])]


def _layers(layers: Any) -> str:
    names = [str(name) for name in layers] if isinstance(layers, list) else []
    return ", ".join(names[:6]) + (f" … ({len(names) - 6} more)" if len(names) > 6 else "")


def _doctor(run_dir: Path, summary: dict[str, Any]) -> list[Section]:
    doctor = summary.get("doctor")
    if not isinstance(doctor, dict):
        saved = _read_json(run_dir / "doctor.json")
        doctor = saved.get("summary") if isinstance(saved, dict) else None
    if not isinstance(doctor, dict):
        return []
    findings = [f for f in doctor.get("findings", []) if isinstance(f, dict)]
    blocks: list[Any] = [Text(
        f"The doctor diagnosed the model while it trained (one step in {doctor.get('sampled_every', MISSING)}): "
        + (f"worst severity {doctor.get('worst')}, {len(findings)} finding(s)." if findings else "nothing to report."))]
    if findings:
        blocks.append(Table(
            ["code", "severity", "epochs", "layers", "finding", "fix"],
            [[f.get("code"), f.get("severity"), f"{f.get('first_epoch', MISSING)}–{f.get('last_epoch', MISSING)}",
              _layers(f.get("layers")),
              f.get("message"), f.get("fix")] for f in findings],
            highlight={i for i, f in enumerate(findings) if f.get("severity") in ("warning", "error")}))
    blocks += [Image(p, caption=p.stem.replace("doctor_", "doctor: ").replace("_", " "))
               for p in sorted(run_dir.glob("doctor_*.png"))]
    return [Section("Doctor", blocks)]


def _param_groups(summary: dict[str, Any], config: dict[str, Any], names: dict[str, list[str]] | None) -> Section:
    groups = summary.get("param_groups") or {}
    optim, reg = config.get("optim", {}), config.get("reg", {})
    rows = []
    for group, count in groups.items():
        on = group == "decay"
        listed = (names or {}).get(group)
        shown = MISSING if not listed else ", ".join(listed[:12]) + (f" … ({len(listed) - 12} more)"
                                                                    if len(listed) > 12 else "")
        rows.append([group, count, optim.get("weight_decay") if on else 0.0, reg.get("l1") if on else 0.0,
                     reg.get("l2") if on else 0.0, shown])
    text = (f"{summary.get('params', MISSING):,} parameters" if isinstance(summary.get("params"), int)
            else "") + f"; optimiser {optim.get('name', MISSING)}, peak lr {summary.get('lr', optim.get('lr'))}" \
        + (" (from the LR range test)" if summary.get("lr_auto") else "") + "."
    return Section("Parameter groups", [Text(text.lstrip("; ")),
                                        Table(["group", "count", "weight decay", "L1", "L2", "tensors"],
                                              rows, caption="weight decay and the L1/L2 penalties apply to "
                                                            "the decay group only")])


def _timings(summary: dict[str, Any]) -> Section:
    def flops(value: Any) -> str:
        return MISSING if not isinstance(value, (int, float)) else f"{value:,.0f}"

    items = {
        "training time (s)": _number(summary.get("train_seconds"), ".1f"),
        "examples per second": _number(summary.get("examples_per_second"), ",.0f"),
        "forward FLOPs per example": flops(summary.get("forward_flops_per_example")),
        "training FLOPs per example": flops(summary.get("train_flops_per_example")),
        "device": summary.get("device"),
        "processes": summary.get("processes"),
        "precision": summary.get("precision"),
        "training data on the device": summary.get("data_on_device"),
        "torch / python": f"{summary.get('torch', MISSING)} / {summary.get('python', MISSING)}",
    }
    blocks: list[Any] = [KeyValues(items)]
    if summary.get("flops_not_counted"):
        blocks.append(Text("FLOPs are not given: layers whose products are not counted: "
                           + ", ".join(map(str, summary["flops_not_counted"])) + "."))
    return Section("Timings", blocks)


def build_sections(run_dir: str | Path, summary: dict[str, Any] | None = None,
                   param_names: dict[str, list[str]] | None = None) -> tuple[str, str, list[Section]]:
    """(title, subtitle, sections) of a run folder's report; ``summary`` defaults to its summary.json."""
    from trainwell.train.rundir import read_summary

    run_dir = Path(run_dir)
    summary = summary if summary is not None else read_summary(run_dir)
    config_path = run_dir / "config.yaml"
    config_text = config_path.read_text(encoding="utf-8") if config_path.is_file() else ""
    import yaml

    try:
        config = yaml.safe_load(config_text) or {}
    except yaml.YAMLError:
        config = {}
    config = config if isinstance(config, dict) else {}
    card = _read_json(run_dir / "model.json")
    model = card.get("model") if isinstance(card, dict) else (config.get("model") or {}).get("name")
    sections = [_headline(summary)]
    sections += _figure(run_dir, CURVES, "Curves", "loss and accuracy per epoch, train and validation")
    sections += _per_class(summary)
    sections += _figure(run_dir, CONFUSION, "Confusion matrix",
                        "rows: the true class, columns: the predicted one; colour = fraction of the row")
    ece = summary.get("test_ece")
    sections += _figure(run_dir, RELIABILITY, "Calibration", "accuracy against confidence, 15 bins; the diagonal "
                        "is perfect calibration",
                        f"Expected calibration error {_pct(ece)}, NLL {_number(summary.get('test_nll'))} nats: "
                        "steps below the diagonal are over-confident bins." if ece is not None else "")
    sections += _doctor(run_dir, summary)
    sections.append(_param_groups(summary, config, param_names))
    sections.append(_timings(summary))
    sections.append(Section("Config", [Text("The resolved config (config.yaml); train it again with:"),
                                       Code("trainwell train -c RUN_DIR/config.yaml --out NEW_DIR"),
                                       Code(config_text or "(config.yaml is missing)")]))
    # Nothing of the folder's own path: the page reads the same wherever the folder is moved or copied.
    title = f"Run report: {model or MISSING}, seed {summary.get('seed', MISSING)}"
    subtitle = f"{model or MISSING} on {summary.get('data', MISSING)}"
    return title, subtitle, sections


def write_run_report(run_dir: str | Path, summary: dict[str, Any] | None = None,
                     param_names: dict[str, list[str]] | None = None) -> Path:
    """Write RUN_DIR/report.html (atomically) and return its path.

    ``summary`` is the run's summary (default: its summary.json, which a finished folder has);
    ``param_names`` the tensor names of each parameter group ({"decay": [...], "no_decay": [...]}), shown
    when given (from the folder alone: the model's, when it loads).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory '{run_dir}' does not exist; pass a folder written by 'trainwell train'.")
    if summary is None and not (run_dir / "summary.json").is_file():
        raise RunDirError(f"'{run_dir}' has no summary.json: the run is unfinished (trainwell train --resume "
                          f"{run_dir}) or not a run folder.")
    if param_names is None and summary is None:
        param_names = _saved_param_names(run_dir)
    title, subtitle, sections = build_sections(run_dir, summary, param_names)
    return write_report(run_dir / REPORT, title, sections, subtitle)


def _saved_param_names(run_dir: Path) -> dict[str, list[str]] | None:
    """The parameter groups' tensor names of the saved model (None when it does not load: a custom model)."""
    from trainwell.train.load import load_run
    from trainwell.train.optim import split_param_groups

    try:
        run = load_run(run_dir)
        return split_param_groups(run.model, run.config.reg.exempt_bias_and_norm).describe()
    except (TrainwellError, AttributeError):  # the names are extra: a folder whose model does not load (a custom
        return None  # nn.Module, an ensemble) still gets its report, with the counts


__all__ = ["REPORT", "build_sections", "write_run_report"]
