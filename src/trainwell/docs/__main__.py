"""``python -m trainwell.docs``: regenerate the generated pages into a folder, or check that they are current.

    python -m trainwell.docs                          # reference, foundations, doctor into ./docs
    python -m trainwell.docs reference --out DIR      # one page, into DIR
    python -m trainwell.docs --check                  # exit 1 and name the pages that are stale
    python -m trainwell.docs labs [--labs init,dropout] [--resume]   # run the labs (make labs): minutes

The output folder is ``--out`` (default ``docs``, relative to the current folder), never a folder
found from where the package lies. ``labs`` is never part of the default and cannot be checked: it
runs every lab and records their times. Exit codes: 0 done (or current), 1 stale pages (``--check``),
2 a usage error (one line).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainwell.docs.doctor import doctor_page
from trainwell.docs.foundations import render_foundations
from trainwell.docs.labs import lab_names, labs_page
from trainwell.docs.reference import render_reference
from trainwell.errors import ConfigError, unknown_name_message
from trainwell.fileio import atomic_write_bytes

Files = dict[str, str | bytes]  # path under the output folder -> content


@dataclass(frozen=True)
class Page:
    """A generated page: what it holds, how to build its files, and whether ``--check`` can compare it."""

    name: str
    about: str
    build: Callable[[argparse.Namespace], Files]
    checkable: bool = True


PAGES: dict[str, Page] = {p.name: p for p in [
    Page("reference", "reference.md: every registry entry and config key",
         lambda args: {"reference.md": render_reference()}),
    Page("foundations", "foundations.md: the activation and initialisation tables",
         lambda args: {"foundations.md": render_foundations()}),
    Page("doctor", "doctor.md: runs the doctor's planted-fault suite and its --fix suite (about 30 s)",
         lambda args: {"doctor.md": doctor_page()}),
    Page("labs", "labs.md and labs/*.png: runs every lab (about 3 min on 2 cores; not checkable: it records times)",
         lambda args: labs_page(args.labs.split(",") if args.labs else lab_names(), Path(args.runs),
                                workers=args.workers, quick=args.quick, resume=args.resume,
                                readme=Path(args.readme) if args.readme else None),
         checkable=False),
]}
DEFAULT_PAGES = [name for name, page in PAGES.items() if page.checkable]
LAB_OPTIONS = ("labs", "workers", "quick", "resume", "readme")


def build_parser() -> argparse.ArgumentParser:
    pages = "\n".join(f"  {p.name:<12} {p.about}" for p in PAGES.values())
    parser = argparse.ArgumentParser(
        prog="python -m trainwell.docs", epilog=f"pages:\n{pages}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Regenerate the generated docs pages into a folder, or check that they are current.")
    parser.add_argument("pages", nargs="*", metavar="PAGE",
                        help=f"pages to generate (default: {' '.join(DEFAULT_PAGES)})")
    parser.add_argument("--out", default="docs", metavar="DIR",
                        help="the docs folder to write or check (default: docs, under the current folder)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 and name the stale pages")
    labs = parser.add_argument_group("the labs page")
    labs.add_argument("--labs", metavar="A,B", help="comma-separated labs (default: all)")
    labs.add_argument("--runs", default="runs/labs", metavar="DIR", help="where the labs' runs go (default: runs/labs)")
    labs.add_argument("--workers", type=int, default=None, help="parallel runs (default: one per free core)")
    labs.add_argument("--quick", action="store_true", help="smoke runs (tests): a page with meaningless numbers")
    labs.add_argument("--resume", action="store_true", help="keep runs that finished in an earlier call")
    labs.add_argument("--readme", metavar="FILE", help="also rewrite the lab section of this README (between its "
                                                        "labs:start/labs:end marker lines)")
    return parser


def chosen_pages(args: argparse.Namespace) -> list[Page]:
    """The pages named on the command line (the default set when none), checked against the options."""
    names = list(dict.fromkeys(args.pages)) or DEFAULT_PAGES
    for name in names:
        if name not in PAGES:
            usage = "Usage: python -m trainwell.docs [PAGE ...]."
            raise ConfigError(f"{unknown_name_message('page', name, PAGES)} {usage}")
    pages = [PAGES[name] for name in names]
    if args.check and (uncheckable := [p.name for p in pages if not p.checkable]):
        raise ConfigError(f"--check cannot compare {', '.join(uncheckable)}: the page records measured times; "
                          f"regenerate it with python -m trainwell.docs {' '.join(uncheckable)}.")
    used = [f"--{opt}" for opt in LAB_OPTIONS if getattr(args, opt) not in (None, False)]
    if used and "labs" not in names:
        raise ConfigError(f"{', '.join(used)}: options of the labs page, which is not among the pages; "
                          f"name it: python -m trainwell.docs labs {used[0]} ...")
    return pages


def is_current(folder: Path, files: Files) -> bool:
    """Whether every file is in ``folder`` with exactly this content."""
    for rel, content in files.items():
        path = folder / rel
        data = content.encode() if isinstance(content, str) else content
        if not path.is_file() or path.read_bytes() != data:
            return False
    return True


def write_files(folder: Path, files: Files) -> list[Path]:
    """Write each file under ``folder`` (whole or not at all); the paths written."""
    written = []
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, content.encode() if isinstance(content, str) else content)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        pages = chosen_pages(args)
    except ConfigError as exc:
        print(f"python -m trainwell.docs: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.check:
        stale = [p.name for p in pages if not is_current(out, p.build(args))]
        if stale:
            print(f"stale in {out}: {', '.join(stale)}; run: python -m trainwell.docs {' '.join(stale)} --out {out}",
                  file=sys.stderr)
            return 1
        print(f"up to date in {out}: {', '.join(p.name for p in pages)}", file=sys.stderr)
        return 0
    for page in pages:
        for path in write_files(out, page.build(args)):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
