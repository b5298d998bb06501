"""The whole lecture at once: every lab in one command, and one report over all of them.

``trainwell lab all [key=value ...] [--out DIR]`` runs each registered lab into ``DIR/<lab>/`` (a lab
folder as ``trainwell lab NAME`` writes it; started again with the same ``--out``, every finished run is
kept, so an interrupted lecture resumes), then writes

=============== ==============================================================================
``summary.json`` per lab: claim, held, verdict (with the runs it rests on), runs, time; the review answers
``report.html``  one self-contained page: every claim with its verdict, evidence and figures, and the
                 lecture's review questions answered from the labs' measured verdicts
=============== ==============================================================================

A lab that cannot run with the given overrides (one ConfigError/DataError line) is reported as not run,
with that line, and the others go on. Python::

    from trainwell.experiments.lecture import run_lecture
    entries = run_lecture(out="runs/lecture")
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from trainwell.errors import ConfigError, DataError
from trainwell.experiments.lab import LABS, LabOutcome, get_lab, run_lab
from trainwell.experiments.results import intervals_caption
from trainwell.experiments.trials import Backend, BackendError, as_backend, backend_session
from trainwell.fileio import write_json


@dataclass(frozen=True)
class ReviewQuestion:
    """One of the lecture's review questions: asked by the first lab's ``question`` ("Q1: ..."), answered
    by the measured verdicts of all of ``labs`` (labs not registered yet are skipped)."""

    labs: tuple[str, ...]


#: The lecture's five review questions (Q1-Q5, the labs' ``question``), each with the labs that answer it.
REVIEW_QUESTIONS = (
    ReviewQuestion(("activations", "dying_relu")),
    ReviewQuestion(("batchnorm",)),
    ReviewQuestion(("init", "selu", "orthogonal")),
    ReviewQuestion(("dropout", "augmentation", "ensembles")),
    ReviewQuestion(("mixup",)),
)


@dataclass
class LectureEntry:
    """One lab of the lecture: its outcome, or the one line that kept it from running."""

    name: str
    claim: str
    question: str
    out: Path
    outcome: LabOutcome | None = None
    error: str = ""
    seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)  # the lab's summary.json

    @property
    def status(self) -> str:
        if self.outcome is None:
            return "not run"
        return "held" if self.outcome.held else "did not hold"


def lab_names() -> list[str]:
    """Every registered lab, in registration order."""
    import trainwell.experiments.labs  # noqa: F401  (registers them)

    return LABS.names()


def review_answers(entries: list[LectureEntry]) -> list[dict[str, Any]]:
    """Each review question with the verdicts of the labs that answer it, as measured here."""
    by_name = {e.name: e for e in entries}
    answers = []
    for q in REVIEW_QUESTIONS:
        question = get_lab(q.labs[0]).question
        parts = []
        for name in q.labs:
            entry = by_name.get(name)
            if entry is None:
                continue
            if entry.outcome is None:
                parts.append(f"lab {name}: not run ({entry.error})")
            else:
                parts.append(f"lab {name} ({entry.status}): {entry.outcome.verdict}")
        answers.append({"question": question, "labs": [n for n in q.labs if n in by_name],
                        "answer": " ".join(parts) if parts else "No lab here measures it yet."})
    return answers


def run_lecture(names: list[str] | None = None, overrides: list[str] | None = None, *, out: str | Path,
                seeds: list[int] | None = None, workers: int | None = None, overwrite: bool = False,
                quiet: bool = False, quick: bool = False, command: str | None = None,
                console: Console | None = None, backend: str | Backend | None = None) -> list[LectureEntry]:
    """Run (or resume) the labs ``names`` (default: all) into ``out/<lab>`` and write the lecture report.

    ``backend``: where the runs run (see :func:`~trainwell.experiments.results.run_plan`); a Ray cluster is
    started once for every lab, and a problem with it (:class:`BackendError`) stops the lecture."""
    from trainwell.config import resolve

    resolve(list(overrides or []))  # a mistyped key or value is the user's one line (exit 2), before any lab runs
    out = Path(out)
    backend = as_backend(backend)
    console = console or Console(stderr=True, quiet=quiet, soft_wrap=True)
    entries = []
    with backend_session(backend):
        for name in names or lab_names():
            lab = get_lab(name)
            entry = LectureEntry(name, lab.claim, lab.question, out / name)
            t0 = time.perf_counter()
            console.print(f"lab {name} -> {entry.out}", highlight=False)
            try:
                entry.outcome = run_lab(name, overrides, out=entry.out, seeds=seeds, workers=workers,
                                        overwrite=overwrite, quiet=True, quick=quick,
                                        command=f"trainwell lab {name}" + "".join(f" {o}" for o in overrides or []),
                                        console=console, backend=backend)
            except BackendError:
                raise  # the cluster, not this lab: every other lab would fail alike
            except (ConfigError, DataError) as exc:
                entry.error = str(exc).strip().splitlines()[0]
                console.print(f"lab {name} not run: {entry.error}", highlight=False)
            entry.seconds = time.perf_counter() - t0
            if entry.outcome is not None:
                from trainwell.train.rundir import read_json

                entry.summary = read_json(entry.out / "summary.json", "lab summary")
            entries.append(entry)
    write_lecture(entries, out, command)
    return entries


def write_lecture(entries: list[LectureEntry], out: Path, command: str | None = None) -> None:
    """summary.json and the self-contained report.html of a lecture run."""
    from trainwell.htmlreport import Code, Image, Section, Table, Text, Verdict, write_report

    answers = review_answers(entries)
    held = sum(e.outcome is not None and e.outcome.held for e in entries)
    ran = sum(e.outcome is not None for e in entries)
    write_json(out / "summary.json", {
        "kind": "lecture", "held": held, "ran": ran, "labs_total": len(entries), "command": command,
        "labs": [{"lab": e.name, "claim": e.claim, "status": e.status, "error": e.error or None,
                  "held": e.outcome.held if e.outcome else None, "verdict": e.outcome.verdict if e.outcome else None,
                  "runs": e.summary.get("runs"), "seconds": round(e.seconds, 1),
                  "report": f"{e.name}/report.html"} for e in entries],
        "review": answers,
    })
    index = Table(["lab", "claim", "verdict", "runs", "time"],
                  [[e.name, e.claim, e.status if not e.error else f"not run: {e.error}", e.summary.get("runs", ""),
                    f"{e.seconds / 60:.1f} min"] for e in entries],
                  caption="each lab's verdict is computed from its runs (its own report: <lab>/report.html)")
    sections = [
        Section("The lecture's claims", [
            Text(f"{held} of {len(entries)} claims held here ({ran} labs ran). Each lab trains the configurations "
                 "the claim contrasts over several seeds on real data and decides from the numbers alone."),
            index]),
        Section("Review questions", [Text(f"{a['question']}\n\n{a['answer']}") for a in answers]),
    ]
    for e in entries:
        if e.outcome is None:
            sections.append(Section(f"lab {e.name}", [Text(f"{e.claim}\n\nNot run: {e.error}")]))
            continue
        compare = e.out / "compare"
        sections.append(Section(f"lab {e.name}", [
            Verdict(e.outcome.held, e.claim, e.outcome.verdict), Text(f"Lecture: {e.question}"),
            *e.outcome.tables, *[Image(p, caption=c) for p, c in e.outcome.figures],
            Image(compare / "intervals.png", caption=intervals_caption(e.summary.get("metric", "test_acc"))),
        ]))
    if command:
        sections.append(Section("Setup", [Code(command)]))
    write_report(out / "report.html", "The lecture, measured", sections,
                 subtitle=f"{held} of {len(entries)} claims held")
