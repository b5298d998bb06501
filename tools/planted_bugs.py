"""Plant each known bug in a scratch copy of src/ and check that its tests fail there.

Each bug is one text replacement in one file (the replaced text must occur exactly once) and the
test files that must catch it. For each: copy src/ to a temporary folder, plant the bug, run those
test files against the copy (PYTHONPATH), and report caught (tests failed) or SURVIVED. The clean
tree is run first: tests that fail without a bug prove nothing. Run: ``python tools/planted_bugs.py``
(``--only NAME`` for some); the exit status is 1 when a bug survives. docs/testing.md has the table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Bug:
    name: str
    file: str  # under src/trainwell/
    old: str
    new: str
    tests: tuple[str, ...]  # test files, or file::test ids


BUGS = [
    Bug("mix-lambda-swapped", "train/mix.py",
        "mixed_target = p.lam * target + (1 - p.lam) * target[p.perm]",
        "mixed_target = (1 - p.lam) * target + p.lam * target[p.perm]",
        ("tests/test_mix.py",)),
    Bug("smoothing-dropped-unmixed", "train/trainer.py",
        "loss = F.cross_entropy(logits, yb, label_smoothing=settings.label_smoothing)",
        "loss = F.cross_entropy(logits, yb)",
        ("tests/test_engine.py::test_one_unmixed_step_is_sgd_on_the_smoothed_targets_with_the_clipped_gradient",)),
    Bug("grad-clip-never-applied", "train/trainer.py",
        "if settings.grad_clip > 0:",
        "if settings.grad_clip < 0:",
        ("tests/test_engine.py::test_one_unmixed_step_is_sgd_on_the_smoothed_targets_with_the_clipped_gradient",)),
    Bug("dead-units-threshold-50", "diagnose/thresholds.py", "DEAD_WARN = 0.2", "DEAD_WARN = 0.5",
        ("tests/test_doctor_rules.py",)),
    Bug("lr-find-smoothing-identity", "train/lr_find.py",
        "smoothed = smooth_losses(result.losses, beta)[-1]", "smoothed = value",
        ("tests/test_lr_find.py",)),
    Bug("lr-find-smooth-losses-identity", "train/lr_find.py",
        "out.append(m / (1 - beta**t))", "out.append(loss)",
        ("tests/test_lr_find.py::test_smoothing_is_the_bias_corrected_weighted_average",)),
    Bug("png-read-transposed", "data/inputs.py",
        "parts.append(pixels[None, None] if channels == 1", "parts.append(pixels.T[None, None] if channels == 1",
        ("tests/test_cli.py::test_predicting_png_files_equals_predicting_the_same_pixels_from_an_npz",)),
    Bug("lab-verdict-inverted", "experiments/labs/activations.py",
        "held = relu_better and vanishes", "held = not (relu_better and vanishes)",
        ("tests/test_lab.py::test_run_lab_writes_summary_and_report",)),
]


def run_tests(src: Path, tests: tuple[str, ...]) -> int:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-q", "-x", *tests]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True).returncode


def plant(bug: Bug, scratch: Path) -> Path:
    src = scratch / bug.name / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    path = src / "trainwell" / bug.file
    text = path.read_text()
    if text.count(bug.old) != 1:
        raise SystemExit(f"{bug.name}: the text to replace occurs {text.count(bug.old)} times in {bug.file}; "
                         "update the bug to the current code.")
    path.write_text(text.replace(bug.old, bug.new))
    return src


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="bug names")
    args = parser.parse_args(argv)
    bugs = [b for b in BUGS if not args.only or b.name in args.only]
    survived = []
    with tempfile.TemporaryDirectory(prefix="planted-") as tmp:
        for bug in bugs:
            if run_tests(ROOT / "src", bug.tests) != 0:
                raise SystemExit(f"{bug.name}: {' '.join(bug.tests)} fail on the clean tree; fix them first.")
            code = run_tests(plant(bug, Path(tmp)), bug.tests)
            print(f"{bug.name:32} {'caught' if code != 0 else 'SURVIVED'}  ({' '.join(bug.tests)})", flush=True)
            if code == 0:
                survived.append(bug.name)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
