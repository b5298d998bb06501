"""Markdown pieces the generated pages share: a table cell and a table."""

from __future__ import annotations


def cell(text: object) -> str:
    """``text`` as one Markdown table cell: pipes escaped, line breaks made spaces."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table: a header row, the separator, one line per row."""
    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
