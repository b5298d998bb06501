"""docs/doctor.md states the doctor's exit codes; the real command must exit with them.

The claims are read from the page itself (its "Exit codes:" list), so a page that says something the
command does not do fails here, and so does a command that changes what it does. Each situation is
tried on configs whose findings are checked first: a warning-only one, one with an error, a clean one.
"""

from __future__ import annotations

import json
import re

import pytest

from trainwell.cli import main
from trainwell.cli.doctor import EXIT_CODES
from trainwell.docs.doctor import exit_code_lines

NO_STRICT = "a diagnosis without `--strict`, whatever its findings (the report is the result)"
STRICT_CLEAN = "with `--strict`, no warning or error"
STRICT_FLAGGED = "with `--strict`, a warning or an error"
USER_ERROR = "a user error (one line on stderr, as every trainwell command)"

CLEAN = ["model.name=mlp"]
WARNING = ["model.name=mlp", "optim.lr=1e-5"]  # update-ratio-low, a warning, and nothing worse
ERROR = ["model.name=mlp", "model.norm=none", "model.depth=5", "model.width=32", "init.scheme=normal"]

#: (situation, doctor arguments, the worst severity its report must hold: None for a user error).
TRIES = [
    (NO_STRICT, WARNING, "warning"),
    (NO_STRICT, ERROR, "error"),
    (STRICT_CLEAN, CLEAN + ["--strict"], "none"),
    (STRICT_FLAGGED, WARNING + ["--strict"], "warning"),
    (STRICT_FLAGGED, ERROR + ["--strict"], "error"),
    (USER_ERROR, ["model.depht=5", "--strict"], None),
    (USER_ERROR, ["model.name=mlp", "--batch-size", "1"], None),
]


def stated_exit_codes(page: str) -> dict[str, int]:
    """The page's "Exit codes:" list as {situation: code}."""
    assert "Exit codes:\n\n" in page, "the page has no 'Exit codes:' list"
    block = page.split("Exit codes:\n\n", 1)[1].split("\n\n", 1)[0]
    found = [re.fullmatch(r"- `(\d+)`: (.+)", line) for line in block.splitlines()]
    assert all(found), f"not a '- `N`: situation' line in:\n{block}"
    return {m.group(2): int(m.group(1)) for m in found if m}


def test_the_page_states_the_cli_exit_codes_and_every_one_is_tried(repo_docs):
    page = (repo_docs / "doctor.md").read_text()
    assert stated_exit_codes(page) == EXIT_CODES
    assert "\n".join(exit_code_lines()) in page
    assert {situation for situation, _, _ in TRIES} == set(EXIT_CODES)


def _worst(report: dict) -> str:
    severities = {f["severity"] for f in report["findings"]}
    return next((s for s in ("error", "warning") if s in severities), "none")


@pytest.mark.parametrize("situation,argv,worst", TRIES, ids=[f"{i}-{t[2]}" for i, t in enumerate(TRIES)])
def test_the_doctor_exits_as_the_page_states(situation, argv, worst, repo_docs, tmp_path, capsys):
    stated = stated_exit_codes((repo_docs / "doctor.md").read_text())[situation]
    out = tmp_path / "doctor"
    code = main(["doctor", *argv, "--json", "--no-plots", "--out", str(out)])
    captured = capsys.readouterr()
    if worst is None:
        assert len(captured.err.strip().splitlines()) == 1 and "error" in captured.err and not out.exists()
    else:
        report = json.loads(captured.out)
        assert _worst(report) == worst, f"{argv}: the try needs a {worst} report, got {report['findings']}"
    assert code == stated, f"trainwell doctor {' '.join(argv)} exited {code}; docs/doctor.md says {stated}: {situation}"
