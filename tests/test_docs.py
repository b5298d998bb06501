"""The generated docs come from the code and go where they are told.

The cheap pages in the repository must match the code (``python -m trainwell.docs --check``);
generating writes into ``--out`` and nowhere else; and no module of the package finds a folder
outside itself through ``__file__`` (installed, the package does not lie beside the repository).
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

import trainwell
from trainwell.cli import registry_tables
from trainwell.diagnose.fixsuite import CASES as FIX_CASES
from trainwell.diagnose.fixsuite import run_fix_suite
from trainwell.diagnose.suite import CASES, run_suite
from trainwell.docs.__main__ import DEFAULT_PAGES, PAGES, build_parser, main
from trainwell.docs.foundations import render_foundations
from trainwell.docs.reference import render_reference

PACKAGE = Path(trainwell.__file__).resolve().parent
REPO = Path(__file__).resolve().parents[1]
CHEAP = ["reference", "foundations"]  # doctor.md: tests/test_doctor_faults.py; labs.md is measured


@pytest.mark.parametrize("name", CHEAP)
def test_generated_docs_are_up_to_date(name, repo_docs):
    for rel, text in PAGES[name].build(build_parser().parse_args([])).items():
        assert (repo_docs / rel).read_text() == text, f"docs/{rel} is stale: run python -m trainwell.docs {name}"


def test_check_passes_on_the_repository_docs(repo_docs, capsys):
    assert main([*CHEAP, "--check", "--out", str(repo_docs)]) == 0
    assert "up to date" in capsys.readouterr().err


def _stale_named(err: str) -> list[str]:
    found = re.search(r"stale in .*?: (.*?); run", err)
    assert found, err
    return found.group(1).split(", ")


def test_check_exits_1_and_names_only_the_stale_pages(tmp_path, capsys):
    assert main([*CHEAP, "--out", str(tmp_path)]) == 0
    assert main([*CHEAP, "--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "foundations.md").write_text((tmp_path / "foundations.md").read_text() + "a line by hand\n")
    capsys.readouterr()
    assert main([*CHEAP, "--check", "--out", str(tmp_path)]) == 1
    assert _stale_named(capsys.readouterr().err) == ["foundations"]
    (tmp_path / "reference.md").unlink()
    assert main([*CHEAP, "--check", "--out", str(tmp_path)]) == 1
    assert _stale_named(capsys.readouterr().err) == ["reference", "foundations"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foundations.md"]  # --check wrote nothing


def test_bad_page_choices_are_one_line_errors(capsys):
    assert main(["refrence"]) == 2
    err = capsys.readouterr().err
    assert "unknown page 'refrence'" in err and "Did you mean 'reference'" in err and len(err.splitlines()) == 1
    assert main(["labs", "--check"]) == 2
    assert "--check cannot compare labs" in capsys.readouterr().err
    assert main(["reference", "--quick"]) == 2
    assert "--quick" in capsys.readouterr().err
    assert DEFAULT_PAGES == ["reference", "foundations", "doctor"]  # labs only when named


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``root``, leaving out caches, virtual envs and run folders."""
    skip = {"__pycache__", "runs", "build", "mutants"}
    out = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip and not d.startswith(".") and not d.endswith(".egg-info")]
        for name in files:
            stat = (Path(folder) / name).stat()
            out[os.path.relpath(Path(folder) / name, root)] = (stat.st_size, stat.st_mtime_ns)
    return out


def test_generating_into_out_writes_only_there(tmp_path, monkeypatch):
    cwd, out = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a default relative to the current folder would land here
    # Two quick cases and one fix case on one seed: the doctor page's path through the generator, not the suites' 30 s.
    monkeypatch.setattr("trainwell.docs.doctor.run_suite",
                        lambda: run_suite([c for c in CASES if c.name in ("tiny-init-relu", "log-of-zero")]))
    monkeypatch.setattr("trainwell.docs.doctor.run_fix_suite",
                        lambda: run_fix_suite([c for c in FIX_CASES if c.name == "dead-relu-bias"], seeds=(0,)))
    repo, package = _tree(REPO), _tree(PACKAGE)
    assert main(["--out", str(out)]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["doctor.md", "foundations.md", "reference.md"]
    page = (out / "doctor.md").read_text()
    assert "`tiny-init-relu`" in page and "`dead-relu-bias`" in page
    assert _tree(REPO) == repo and _tree(PACKAGE) == package
    assert list(cwd.iterdir()) == []


# ----------------------------------------------------------------------------- nothing finds the repository


def _has_file_name(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "__file__" for n in ast.walk(node))


def _levels_up(node: ast.AST) -> int | None:
    """How many folders above the file a path expression built from ``__file__`` climbs (None: not one).

    ``Path(__file__).parents[k]`` climbs k+1, ``.parent`` chains and ``os.path.dirname`` nestings one
    each; a ``parents[i]`` whose index is not a constant counts as climbing without bound.
    """
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "parents":
        if not _has_file_name(node.value):
            return None
        index = node.slice
        return index.value + 1 if isinstance(index, ast.Constant) and isinstance(index.value, int) else 10**6
    if isinstance(node, ast.Attribute) and node.attr == "parent":
        inner = _levels_up(node.value)
        return (inner or 0) + 1 if inner is not None or _has_file_name(node.value) else None
    if (isinstance(node, ast.Call) and node.args and
            (getattr(node.func, "attr", None) == "dirname" or getattr(node.func, "id", None) == "dirname")):
        inner = _levels_up(node.args[0])
        return (inner or 0) + 1 if inner is not None or _has_file_name(node.args[0]) else None
    return None


def paths_out_of_the_package(source: str, depth: int) -> list[int]:
    """Lines of ``source`` (a module ``depth`` folders below the package root, 1 for trainwell/x.py)
    where a path built from ``__file__`` climbs out of the package."""
    return sorted({n.lineno for n in ast.walk(ast.parse(source))
                   if (levels := _levels_up(n)) is not None and levels > depth})


def test_no_module_reaches_outside_the_package_through_file():
    bad = [f"{path.relative_to(PACKAGE)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
           for line in paths_out_of_the_package(path.read_text(), len(path.relative_to(PACKAGE).parts))]
    assert not bad, "paths built from __file__ that leave the package (take a folder argument instead):\n" + \
        "\n".join(bad)


def test_a_path_out_of_the_package_is_caught():
    # The two lines this check was written against: diagnose/suite.py and docs.py before the docs generator.
    assert paths_out_of_the_package('DOC = Path(__file__).resolve().parents[3] / "docs" / "doctor.md"\n', 2) == [1]
    assert paths_out_of_the_package('DOCS = Path(__file__).resolve().parents[2] / "docs"\n', 1) == [1]
    assert paths_out_of_the_package("x = 1\nROOT = Path(__file__).parent.parent.parent\n", 2) == [2]
    assert paths_out_of_the_package("ROOT = os.path.dirname(os.path.dirname(__file__))\n", 1) == [1]
    assert paths_out_of_the_package("ROOT = Path(__file__).parents[n]\n", 3) == [1]
    # Inside the package: its own folder and the package root are fine.
    assert not paths_out_of_the_package('DATA = Path(__file__).parent / "data.json"\n', 1)
    assert not paths_out_of_the_package("ROOT = Path(__file__).resolve().parents[1]\n", 2)
    assert not paths_out_of_the_package("HERE = os.path.dirname(__file__)\n", 1)


# ----------------------------------------------------------------------------- the pages' content


def test_reference_lists_every_registry_entry():
    text = render_reference()
    for kind, rows in registry_tables().items():
        assert f"## {kind}" in text
        for name, _ in rows:
            assert f"`{name}`" in text


def test_foundations_tables_have_every_activation_and_init():
    from trainwell.nn import ACTIVATIONS, INITS

    text = render_foundations()
    for entry in list(ACTIVATIONS) + list(INITS):
        assert f"| `{entry.name}` |" in text
