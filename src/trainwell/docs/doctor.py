"""docs/doctor.md: what the doctor checks, its finding and exit codes, its score on the planted-fault suite,
and what ``--fix`` makes of the fix suite's faults once trained.

The cases and the scoring are :mod:`trainwell.diagnose.suite`'s and :mod:`trainwell.diagnose.fixsuite`'s;
this module runs them and renders the page. The exit codes are :data:`trainwell.cli.doctor.EXIT_CODES`, which
tests/test_doctor_exit_codes.py checks against the real command. ``python -m trainwell.docs doctor`` writes the page.
"""

from __future__ import annotations

import sys

from trainwell.cli.doctor import EXIT_CODES
from trainwell.diagnose.fixsuite import FixCaseResult, run_fix_suite
from trainwell.diagnose.suite import CaseResult, run_suite, score
from trainwell.docs.markdown import cell, markdown_table


def exit_code_lines() -> list[str]:
    """One Markdown list item per situation of :data:`EXIT_CODES`."""
    return [f"- `{code}`: {situation}" for situation, code in EXIT_CODES.items()]


def _percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def fix_section(results: list[FixCaseResult]) -> list[str]:
    """The page's ``--fix`` section: what it does, and each fix-suite case's accuracy faulty / fixed / healthy."""
    from trainwell.diagnose import fixsuite as S
    from trainwell.diagnose import thresholds as T

    seeds = ", ".join(map(str, results[0].seeds)) if results else "-"
    rows: list[list[object]] = [[f"`{r.case.name}`", r.case.description, f"`{S.shown(r.case.faulty)}`",
             f"`{' '.join(f'{k}={v}' for k, v in r.outcome.changes().items()) or '-'}`", len(r.outcome.rounds),
             _percent(r.faulty_mean), _percent(r.fixed_mean), _percent(r.healthy_mean),
             f"`{S.shown(r.case.healthy) or '-'}`", "ok" if r.ok else "FAIL"] for r in results]
    held = sum(r.ok for r in results)
    return [
        "## `--fix`: a corrected config, checked and proven by training",
        "",
        "```",
        "trainwell doctor --fix [key=value ...] [--apply fixed.yaml] [--rounds N]",
        "trainwell train -c fixed.yaml",
        "```",
        "",
        "`--fix` diagnoses the config, changes it for the findings (warnings and errors), diagnoses the changed",
        f"config, and repeats, at most {T.FIX_MAX_ROUNDS} rounds (`--rounds N`), until its own check has no "
        "warning or error.",
        "It prints each round: every change with the finding it answers and the evidence behind it, then what",
        "the check found. Then one line: clean after N rounds, or that it could not (still flagged after the",
        "last round, no change addresses what is left, or the next change would return to a config already",
        "tried) and what is left. `--apply FILE` writes the last config (`trainwell train -c FILE`); fix.json in",
        "`--out` holds every round. The exit code is the last check's, as above: 0 without `--strict`; with",
        "`--strict`, 1 when a warning or an error is left.",
        "",
        "Each change aims at the cause its finding's evidence points to (`src/trainwell/diagnose/fix.py`):",
        "",
        "- `unnormalized-input` with `data.preprocess=none`: `data.preprocess=standardize`.",
        "- `dead-units` whose pre-activations (the feeding layer's mean, in the finding's evidence) are all",
        "  negative while `init.bias` < 0: `init.bias=0`. With a too-high lr among the findings the lr fix is the",
        "  cause's; otherwise `model.activation=leaky_relu:0.1`, which cannot die.",
        "- `saturation` of sigmoids: `model.activation=relu` (and its init); of tanh: the scale fix below.",
        "- A scale that vanishes, explodes or saturates: the init matched to the activation when the current one",
        "  ignores its gain (`kaiming_normal` for the ReLU family, `xavier_normal` for tanh, `lecun_normal` for selu),",
        "  else `model.norm=batch`.",
        "- `update-ratio-high`, `lr-too-high`, a divergence during training; `update-ratio-low`, `lr-too-low`: the",
        "  update ratio scales linearly with the lr (SGD's step is lr g, Adam's ~lr per weight), so the new lr is",
        f"  lr x {T.FIX_UPDATE_RATIO:g} / (the measured median ratio): the ratio lands at {T.FIX_UPDATE_RATIO:g}, "
        f"{T.FIX_LR_MARGIN:g}x inside the",
        f"  {T.UPDATE_RATIO_HIGH:g} warning (the safety margin: runs at the edge of the band already train worse). "
        f"Without a",
        f"  measured ratio to scale from, {T.FIX_LR_STEP:g}x. Tiny updates with a vanishing signal are the init's "
        "fault, and",
        "  no update at all means no gradient: no lr change.",
        "- `overfitting`: `model.dropout=0.3`.",
        "",
        "The lr is judged through the update ratio, which the other changes move (dead units pass no gradient,",
        "raw inputs inflate it), so a round that changes the input, the init or the activation leaves the lr to",
        "the next round, which measures it again.",
        "",
        "### Proven by training",
        "",
        f"{len(results)} planted faults (`src/trainwell/diagnose/fixsuite.py`) on digits, each with the healthy "
        "config it is",
        f"measured against. Every config is `{S.shown(list(S.BASE))}` plus the overrides",
        "below. For each case the suite runs what a user would: `trainwell doctor --fix --apply fixed.yaml",
        "FAULTY` (the rounds at initialisation, `--batch-size` 256), then `trainwell train -c fixed.yaml",
        f"train.seed=S`, and trains the faulty and the healthy config too, for S in {seeds}: "
        "the figures are",
        "mean test accuracies. A case holds when the fault is real (faulty < healthy - "
        f"{100 * S.FAULT_MARGIN:.0f} points), the fix's",
        f"own check is clean and the fixed config trains to within {100 * S.FIX_TOLERANCE:.0f} points of the "
        "healthy one: "
        f"**{held}/{len(results)} hold.**",
        "",
        markdown_table(["case", "fault", "faulty overrides", "doctor --fix changed", "rounds", "faulty", "fixed",
                        "healthy", "healthy overrides", "verdict"], rows),
        "",
    ]


def render_doctor(results: list[CaseResult], fix_results: list[FixCaseResult]) -> str:
    """docs/doctor.md: what the doctor checks, the codes, the exit codes, and the measured precision/recall."""
    from trainwell.diagnose import thresholds as T
    from trainwell.diagnose.rules import RULES

    s = score(results)
    lines = [
        "# The doctor",
        "",
        "Generated by `python -m trainwell.docs doctor` from the planted-fault suite "
        "(`src/trainwell/diagnose/suite.py`); do not edit by hand.",
        "",
        "`trainwell doctor` gives the verdict a senior engineer would give on a network's health: per-layer",
        "statistics recorded with hooks (at initialisation, during training every "
        f"{T.SAMPLE_EVERY} steps, or on a finished run), turned",
        "into findings with a stable code, a severity, the layers concerned, the measured evidence and a fix.",
        "",
        "```python",
        "import trainwell",
        "from trainwell.diagnose import DoctorCallback, diagnose_run, plot_report",
        "report = trainwell.diagnose_model(model, x, y, lr=0.05)   # any nn.Module: one forward/backward",
        "report.render(); report.to_dict(); plot_report(report, 'out/')",
        "```",
        "",
        "Command line:",
        "",
        "```",
        "trainwell doctor [key=value ...]            # the model a config would train, at initialisation",
        "trainwell doctor preset=digits --epochs 3   # ... and during 3 epochs of training (no run dir)",
        "trainwell doctor RUN_DIR --strict           # a finished run: its model on its data, its history",
        "trainwell train doctor=true                 # while training: summary.json['doctor'], doctor.json",
        "trainwell doctor --model mynet.py:Net       # your own nn.Module class, on the configured data",
        "```",
        "",
        "`--model FILE.py:CLASS` takes a model class from your own Python file (built with no arguments, or with",
        "`--model-args '{\"hidden\": 256}'`) and diagnoses it on the configured data (`data.*` keys, `-c FILE`,",
        "`preset=`), behind the configured preprocessing; `trainwell train --model FILE.py:CLASS` trains it as a",
        "custom model. Only that file is imported, by its path: no module is looked up on `sys.path` for it.",
        "",
        "`--json` prints the report as JSON, `--out DIR` sets where report.json and the plots go.",
        "Exit codes:",
        "",
        *exit_code_lines(),
        "",
        "## How it measures",
        "",
        "- **Hooks, sampled.** One forward pre-hook on the model counts training steps; on every N-th step",
        "  (the first included) it installs forward hooks on each Linear/Conv and activation module, a hook",
        "  on each output tensor (dL/d output in the backward pass) and a post-accumulate-grad hook on each",
        "  weight, and removes them at the next step. Other steps cost one Python call. Statistics",
        "  accumulate in device tensors and are read once per epoch in one transfer.",
        "- **Functional activations** (`F.relu(x)`, `torch.tanh(x)`, `x.sigmoid()`, `x.relu_()`, `F.gelu`, ...),",
        "  which module hooks cannot see and most published models use, are caught on the sampled forward by a",
        "  `TorchFunctionMode` (`FUNCTIONAL_ACTIVATIONS` in `diagnose/recorder.py` lists them) and get the",
        "  statistics and thresholds of the activation module of the same name. Each is named after the layer",
        "  that ran just before it and its activation: `fc1→relu` for `F.relu(self.fc1(x))` (`input→tanh`",
        "  before any layer, `#k` on a repeat). A call inside an activation module (`nn.ReLU` calls `F.relu`)",
        "  is the module's, counted once.",
        "- **Per layer:** mean and std of the output, a fixed-range histogram (41 bins over [-4, 4], or the",
        "  activation's bounds; a strided sample of <= 8192 values per batch), the dead fraction (ReLU units",
        "  that are 0 on every sampled example: a per-unit 'ever positive' flag OR-ed across batches), the",
        "  saturated fraction (sigmoid/tanh within 2.5% of the range of a bound), the std of dL/d(output),",
        "  ||dL/dW|| and the update ratio.",
        "- **Update ratio** ||dW|| / ||W||: during training it is *measured*: the weight is copied at the",
        "  sampled step's gradient hook (before the optimiser step) and compared at the next forward, so",
        "  momentum, Adam's scaling, weight decay and clipping are all in it. At initialisation it is",
        "  *estimated* as the optimiser's first step: lr ||g|| / ||W|| (SGD), lr sqrt(n) / ||W|| (Adam).",
        "- **Scale rules** look at hidden Linear/Conv outputs not followed by a norm layer (batch norm undoes",
        "  their scale) and leave out the last layer (logits grow as the model gets confident); ratios are",
        "  taken against the std of the network's input, which is read after the model's own preprocessing",
        "  (trainwell's `Classifier.preprocess`), or the raw input of any other module.",
        "",
        "## Finding codes",
        "",
        "| code | rule |",
        "|---|---|",
    ]
    lines += [f"| `{e.name}` | {cell(e.doc)} |" for e in RULES]
    lines += [
        "",
        "Thresholds and their sources: `src/trainwell/diagnose/thresholds.py`.",
        "",
        "## Measured on the planted-fault suite",
        "",
        f"{len(results)} cases on scikit-learn's digits: {s.faults} planted faults and {s.healthy} healthy nets. "
        "A fault case lists the codes it must raise (recall) and the codes that are true consequences of the",
        "same fault (allowed: not counted as false alarms). Only warnings and errors count.",
        "",
        f"- **recall**: {s.detected}/{s.expected} expected codes flagged = **{s.recall:.2f}**; "
        f"faults with every expected code flagged: {s.faults_caught}/{s.faults}",
        f"- **precision**: {s.detected + s.secondary}/{s.flagged} flagged codes are expected or an allowed "
        f"consequence = **{s.precision:.2f}** (expected codes only: {s.strict_precision:.2f}); "
        f"false alarms: {s.false}",
        f"- **healthy nets with no warning or error**: {s.healthy_clean}/{s.healthy}",
        "",
        "The thresholds were set with these cases and the runs in `thresholds.py` in view: the figures are a",
        "regression test of the rules, not a held-out estimate.",
        "",
        "| code | expected in | detected |",
        "|---|---|---|",
    ]
    lines += [f"| `{code}` | {n} | {d} |" for code, (n, d) in sorted(s.per_code.items())]
    lines += ["", "| case | kind | what | expects | flagged | verdict |", "|---|---|---|---|---|---|"]
    for r in results:
        kind = "healthy" if r.case.healthy else "fault"
        verdict = "ok" if r.ok else "; ".join(
            ([f"missed {', '.join(sorted(r.missed))}"] if r.missed else [])
            + ([f"false {', '.join(sorted(r.unexpected))}"] if r.unexpected else []))
        lines.append(f"| `{r.case.name}` | {kind} | {cell(r.case.description)} | "
                     f"{', '.join(sorted(r.case.expects)) or '-'} | {', '.join(r.flagged) or '-'} | {verdict} |")
    lines += ["", *fix_section(fix_results)]
    lines += [
        "Regenerate with `python -m trainwell.docs doctor` (about 30 s on one CPU core);",
        "`python -m trainwell.docs doctor --check` exits 1 when this file is stale.",
    ]
    return "\n".join(lines) + "\n"


def doctor_page() -> str:
    """Run the suite (a line per case and the score on stderr) and render the page from its results."""
    results = run_suite()
    for r in results:
        mark = "ok  " if r.ok else "FAIL"
        print(f"{mark} {r.case.name:<22} {r.seconds:5.2f}s flagged: {', '.join(r.flagged) or '-'}", file=sys.stderr)
    s = score(results)
    print(f"recall {s.recall:.2f}  precision {s.precision:.2f}  healthy clean {s.healthy_clean}/{s.healthy}",
          file=sys.stderr)
    fixed = run_fix_suite()
    for f in fixed:
        print(f"{'ok  ' if f.ok else 'FAIL'} fix {f.case.name:<26} {f.seconds:5.2f}s faulty {_percent(f.faulty_mean)} "
              f"fixed {_percent(f.fixed_mean)} healthy {_percent(f.healthy_mean)}: {f.outcome.line()}", file=sys.stderr)
    return render_doctor(results, fixed)
