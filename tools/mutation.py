"""Mutation testing (mutmut 3) over the core modules, one module at a time with only its own tests.

mutmut reads its settings from ``pyproject.toml``'s ``[tool.mutmut]`` in the folder it runs in, so
each module gets a work folder ``.mutation/<module>/`` holding a copy of ``src/`` and ``tests/`` and
a ``pyproject.toml`` whose ``[tool.mutmut]`` is the project's plus that module's ``only_mutate`` and
test files. Run it with ``make mutation`` (all modules) or
``python tools/mutation.py train/mix.py`` (some); the summary of each module lands in
``.mutation/<module>/summary.txt``. Not in CI: a module takes minutes to an hour.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tomllib
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation"
#: Results carried between sessions (committed): mutmut's per-module ``.meta`` (each mutant's exit code
#: and each function's hash). Restored before a run, mutmut keeps the results of functions whose
#: source is unchanged and runs only the rest, so a module too slow for one session (the loop) is
#: finished over several. ``--save`` snapshots a running or finished module's results here.
RESULTS = ROOT / "tools" / "mutation-results"

# module (under src/trainwell/) -> the test files that exercise it; smallest module first.
MODULES: dict[str, list[str]] = {
    "train/mix.py": ["tests/test_mix.py"],
    "experiments/stats.py": ["tests/test_stats.py"],
    "train/calibration.py": ["tests/test_calibration.py"],
    "nn/activations.py": ["tests/test_nn_activations.py"],
    "nn/init.py": ["tests/test_nn_init.py", "tests/test_lsuv.py", "tests/test_nn_recurrent.py", "tests/test_registries.py"],
    "train/optim.py": ["tests/test_optim.py", "tests/test_momentum_cycle.py", "tests/test_registries.py"],
    "diagnose/rules.py": ["tests/test_doctor_rules.py"] + [f"tests/test_doctor.py::{t}" for t in (
        "test_every_rule_code_has_a_doc_and_the_issue_codes_exist", "test_update_ratio_rules_use_the_median_over_layers",
        "test_low_updates_are_expected_once_the_schedule_has_decayed_the_lr",
        "test_overfitting_needs_val_loss_rising_past_the_gl_threshold_while_train_falls",
        "test_divergence_and_lr_too_high_from_a_nan_history", "test_loss_worse_than_chance_after_an_epoch_means_lr_too_high",
        "test_unnormalized_input_thresholds")],
    "data/preprocess.py": ["tests/test_data_preprocess.py", "tests/test_registries.py"],
    "data/augment.py": ["tests/test_augment.py"],
    # The two ensemble tests train their members on the compare engine's process pool, whose workers cannot
    # import mutmut's copy of the package (mutmut: "could not figure out where the code to mutate is").
    # test_distributed.py's data-parallel runs train in subprocesses, which mutmut cannot map to the
    # functions they run: only its in-process tests of the loop's batching are in the selection.
    "train/trainer.py": ["tests/test_engine.py", "tests/test_train.py", "tests/test_imbalance.py",
                         "tests/test_distributed.py::test_fit_on_two_processes_takes_the_steps_of_one_and_both_stop_at_one_divergence",
                         "tests/test_distributed.py::test_steps_per_epoch_counts_the_batches_the_order_keeps_on_every_rank",
                         "tests/test_distributed.py::test_one_process_keeps_the_single_process_batches",
                         "-k", "not ensemble"],
}


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML spelling for {value!r}")


def module_config(module: str, tests: list[str]) -> str:
    """The project's [tool.mutmut] plus this module's mutation target and test selection."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    settings = dict(data["tool"]["mutmut"])
    settings["only_mutate"] = [f"src/trainwell/{module}"]
    settings["pytest_add_cli_args_test_selection"] = tests
    lines = ["[tool.mutmut]"] + [f"{k} = {toml_value(v)}" for k, v in settings.items()]
    pytest_opts = data["tool"]["pytest"]["ini_options"]
    lines += ["", "[tool.pytest.ini_options]"] + [f"{k} = {toml_value(v)}" for k, v in pytest_opts.items()]
    return "\n".join(lines) + "\n"


def undecorate(source: str) -> str:
    """``@dec(...) def f`` at module level rewritten as ``def f`` followed by ``f = dec(...)(f)``.

    mutmut 3 does not mutate decorated functions (it cannot put its trampoline under a decorator), so
    registered bodies (doctor rules, init schemes, augment ops, activations, optimisers, schedules)
    would go unscored. Applying the decorator by assignment right after the definition registers the
    trampoline instead, which is the same object as far as the registry and callers can tell (the
    decorators here register the function and return it unchanged); mutmut does not mutate
    module-level statements, so the registration itself is left alone. Done in the work folder's copy
    only; ``src/`` is untouched.
    """
    import libcst as cst

    tree = cst.parse_module(source)
    body: list[cst.BaseStatement] = []
    for stmt in tree.body:
        plain = {"staticmethod", "classmethod"}
        if (isinstance(stmt, cst.FunctionDef) and stmt.decorators
                and not any(isinstance(d.decorator, cst.Name) and d.decorator.value in plain for d in stmt.decorators)):
            body.append(stmt.with_changes(decorators=[]))
            value: cst.BaseExpression = cst.Name(stmt.name.value)
            for dec in reversed(stmt.decorators):  # the decorator nearest the def applies first
                value = cst.Call(func=dec.decorator, args=[cst.Arg(value)])
            body.append(cst.SimpleStatementLine([cst.Assign([cst.AssignTarget(cst.Name(stmt.name.value))], value)]))
        else:
            body.append(stmt)
    return tree.with_changes(body=body).code


def prepare(module: str, tests: list[str], fresh: bool, decorated: bool = False) -> Path:
    folder = WORK / module.replace("/", ".").removesuffix(".py")
    if fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("src", "tests"):  # a fresh copy each run: mutmut re-mutates what changed
        shutil.rmtree(folder / name, ignore_errors=True)
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if decorated:
        target = folder / "src" / "trainwell" / module
        target.write_text(undecorate(target.read_text()))
    (folder / "pyproject.toml").write_text(module_config(module, tests))
    saved, meta = saved_results(module), meta_path(folder, module)
    if not fresh and saved.is_file() and not meta.is_file():  # an earlier session's results
        meta.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(saved, meta)
    return folder


def meta_path(folder: Path, module: str) -> Path:
    """Where mutmut keeps ``module``'s results inside its work folder."""
    return folder / "mutants" / "src" / "trainwell" / f"{module}.meta"


def saved_results(module: str) -> Path:
    return RESULTS / (module.replace("/", ".").removesuffix(".py") + ".meta.json")


def save_results(module: str) -> Path:
    """Copy ``module``'s results (finished so far) to :data:`RESULTS`, to be committed."""
    folder = WORK / module.replace("/", ".").removesuffix(".py")
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = saved_results(module)
    shutil.copyfile(meta_path(folder, module), target)
    return target


def run_module(module: str, tests: list[str], fresh: bool, decorated: bool = False) -> int:
    folder = prepare(module, tests, fresh, decorated)
    mutmut = Path(sys.executable).with_name("mutmut")
    # Subprocess tests (python -m trainwell) import the mutated copy through PYTHONPATH. The folder
    # must exist before Python starts: a missing sys.path entry is cached as "no finder" for good.
    mutated_src = folder / "mutants" / "src"
    mutated_src.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(mutated_src))
    code = subprocess.call(["nice", "-n", "19", str(mutmut), "run", "--max-children", "1"], cwd=folder, env=env)
    results = subprocess.run([str(mutmut), "results", "--all", "true"], cwd=folder, env=env,
                             capture_output=True, text=True).stdout
    (folder / "summary.txt").write_text(results)
    save_results(module)
    return code


def show_survivors(module: str) -> None:
    """Print each mutant of ``module`` that was not killed, with its diff (from the last run)."""
    folder = WORK / module.replace("/", ".").removesuffix(".py")
    mutmut = Path(sys.executable).with_name("mutmut")
    for line in (folder / "summary.txt").read_text().splitlines():
        name, _, status = line.strip().rpartition(": ")
        if status != "killed":
            diff = subprocess.run([str(mutmut), "show", name], cwd=folder, capture_output=True, text=True).stdout
            changed = [d for d in diff.splitlines() if d[:1] in "+-" and d[:3] not in ("+++", "---")]
            print(f"{name}: {status}\n  " + "\n  ".join(changed))


def rerun_survivors(module: str) -> int:
    """Re-run only the last run's surviving mutants of ``module`` against the current tests/ (after tests were added)."""
    folder = WORK / module.replace("/", ".").removesuffix(".py")
    names = [line.strip().rpartition(": ")[0] for line in (folder / "summary.txt").read_text().splitlines()
             if line.strip().rpartition(": ")[2] not in ("killed", "")]
    for dest in (folder / "tests", folder / "mutants" / "tests"):
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(ROOT / "tests", dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    mutmut = Path(sys.executable).with_name("mutmut")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(folder / "mutants" / "src"))
    code = subprocess.call(["nice", "-n", "19", str(mutmut), "run", "--max-children", "1", *names], cwd=folder, env=env)
    results = subprocess.run([str(mutmut), "results", "--all", "true"], cwd=folder, env=env,
                             capture_output=True, text=True).stdout
    (folder / "summary.txt").write_text(results)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help=f"modules under src/trainwell/ (default: all of {list(MODULES)})")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results")
    parser.add_argument("--stop-at", metavar="HH:MM", help="start no module after this UTC time")
    parser.add_argument("--decorated", action="store_true",
                        help="also mutate decorated (registered) functions: see undecorate()")
    parser.add_argument("--rerun-survivors", action="store_true",
                        help="re-run only the last run's survivors against the current tests (after adding tests)")
    parser.add_argument("--survivors", action="store_true", help="list the last run's survivors with their diffs")
    parser.add_argument("--save", action="store_true",
                        help="copy the modules' results so far to tools/mutation-results/ (commit them: the next run "
                             "without --fresh continues from them)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; known: {list(MODULES)}")
    if args.survivors:
        for module in args.modules or MODULES:
            show_survivors(module)
        return 0
    if args.save:
        for module in args.modules or MODULES:
            print(f"{module}: {save_results(module)}")
        return 0
    if args.rerun_survivors:
        return max(rerun_survivors(module) for module in args.modules or MODULES)
    worst = 0
    for module in args.modules or MODULES:
        if args.stop_at and datetime.now(timezone.utc).strftime("%H:%M") >= args.stop_at:
            print(f"{args.stop_at} UTC passed: not starting {module}", flush=True)
            continue
        worst = max(worst, run_module(module, MODULES[module], args.fresh, args.decorated))
    return worst


if __name__ == "__main__":
    sys.exit(main())
