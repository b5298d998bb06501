"""The ``trainwell`` command line, the top layer: every command's parser and handler lives here.

``app`` builds the parser and runs a command; ``doctor``, ``experiments`` (compare, lab),
``finetune`` and ``ensemble`` add their subcommands. Every user mistake prints one line (what,
where, how to fix) and exits with code 2, never a traceback.
"""

from trainwell.cli.app import build_parser, main, registry_tables

__all__ = ["build_parser", "main", "registry_tables"]
