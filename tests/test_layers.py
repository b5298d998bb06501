"""Imports point one way: errors/registry/config -> data, nn -> train -> diagnose -> runs -> experiments -> api -> cli.

Every ``import`` in the package, including the lazy ones inside functions, is read from the source
(ast): a module may import its own layer or the layers below it, never one above. A plant of an
upward import makes this fail (test_an_upward_import_is_caught).
"""

from __future__ import annotations

import ast
from pathlib import Path

import trainwell

SRC = Path(trainwell.__file__).parent

#: Lowest first. ``trainwell`` (the package root) re-exports the API, so it sits with it.
LAYERS: list[tuple[str, ...]] = [
    ("trainwell.errors", "trainwell.registry", "trainwell.config", "trainwell.seeds", "trainwell.fileio",
     "trainwell.version", "trainwell.formatting", "trainwell.htmlreport"),
    ("trainwell.data", "trainwell.nn"),
    ("trainwell.train",),
    ("trainwell.diagnose",),
    ("trainwell.runs",),
    ("trainwell.experiments",),
    ("trainwell.api", "trainwell"),
    ("trainwell.cli", "trainwell.__main__", "trainwell.docs"),
]


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    return best[0] if best else None


def imports(source: str) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return [(name, line) for name, line in found if name == "trainwell" or name.startswith("trainwell.")]


def upward_imports(module: str, source: str) -> list[str]:
    own = layer_of(module)
    assert own is not None, f"{module} is in no layer: add it to LAYERS"
    return [f"{module}:{line} imports {name}" for name, line in imports(source)
            if (target := layer_of(name)) is not None and target > own]


def package_modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        out.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return out


def test_every_import_points_down_the_layers():
    bad = [b for module, path in package_modules() for b in upward_imports(module, path.read_text())]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_an_upward_import_is_caught():
    assert upward_imports("trainwell.train.trainer", "def f():\n    from trainwell.diagnose import DoctorCallback\n")
    assert upward_imports("trainwell.data.sources", "import trainwell.cli\n")
    assert not upward_imports("trainwell.diagnose.doctor", "from trainwell.train.trainer import fit\n")
