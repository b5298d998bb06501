"""Self-contained HTML reports: one ``report.html`` that opens anywhere, offline, years later.

A report is a title and a list of sections; each section holds blocks (:class:`Text`, :class:`Table`,
:class:`Image`, :class:`Verdict`, :class:`KeyValues`, :class:`Code`). The page needs nothing outside
itself: CSS is inline, images are embedded as base64 ``data:`` URIs, there is no JavaScript and no
web font, so the file can be mailed, archived or attached to a ticket and still show everything.
Everything that comes from the caller is HTML-escaped: run names and captions never become markup.
"""

from __future__ import annotations

import base64
import html
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Union

from trainwell.version import __version__
from trainwell.fileio import atomic_write_text
from trainwell.formatting import MISSING

# Image types a browser shows from a data: URI, by file suffix.
MIME_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
}

PLACEHOLDER = MISSING  # a missing number


@dataclass
class Text:
    """Prose; blank lines split paragraphs."""

    text: str


@dataclass
class Table:
    """A table; ``highlight`` holds the indices of rows to emphasise (e.g. significant differences)."""

    headers: list[str]
    rows: list[list[Any]]
    caption: str = ""
    highlight: set[int] = field(default_factory=set)


@dataclass
class Image:
    """An image file (PNG, JPEG, GIF or SVG), embedded in the page when it is rendered."""

    path: str | Path
    caption: str = ""
    alt: str = ""


@dataclass
class Verdict:
    """Whether a claim held: ``True`` held, ``False`` did not hold, ``None`` inconclusive."""

    held: bool | None
    claim: str
    text: str = ""


@dataclass
class KeyValues:
    """A two-column list of named figures (settings, totals)."""

    items: dict[str, Any]
    caption: str = ""


@dataclass
class Code:
    """Preformatted text, e.g. the command that reproduces the report."""

    text: str


Block = Union[Text, Table, Image, Verdict, KeyValues, Code]


@dataclass
class Section:
    heading: str
    blocks: list[Block] = field(default_factory=list)


def format_value(value: Any) -> str:
    """A cell's text: 4 significant digits for floats, an en dash for None and NaN, ``str`` otherwise.

    Integers stay exact (a count of 60000 must not become 6e+04); numpy scalars count as numbers.
    """
    if value is None:
        return PLACEHOLDER
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        return PLACEHOLDER if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(tag: str, value: Any) -> str:
    # Numbers are right-aligned so their digits line up down a column.
    cls = ' class="num"' if _is_number(value) else ""
    return f"<{tag}{cls}>{_esc(format_value(value))}</{tag}>"


def render_text(block: Text) -> str:
    paragraphs = [p.strip() for p in block.text.strip().split("\n\n")]
    return "\n".join(f"<p>{_esc(p)}</p>" for p in paragraphs if p)


def render_table(block: Table) -> str:
    width = len(block.headers)
    for i, row in enumerate(block.rows):
        if len(row) != width:
            # A short row would silently shift every later cell into the wrong column.
            raise ValueError(f"table row {i} has {len(row)} cells, the header has {width}")
    caption = f"<caption>{_esc(block.caption)}</caption>" if block.caption else ""
    head = "".join(f"<th>{_esc(h)}</th>" for h in block.headers)
    body = []
    for i, row in enumerate(block.rows):
        cls = ' class="highlight"' if i in block.highlight else ""
        body.append(f"<tr{cls}>{''.join(_cell('td', v) for v in row)}</tr>")
    return (f'<div class="table-wrap"><table>{caption}<thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def image_data_uri(path: str | Path) -> str:
    """The file as a ``data:`` URI; the MIME type comes from the suffix."""
    path = Path(path)
    mime = MIME_TYPES.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"cannot embed '{path}': unknown image type '{path.suffix}' "
                         f"(use one of {', '.join(sorted(MIME_TYPES))})")
    if not path.is_file():
        raise FileNotFoundError(f"image '{path}' for the report does not exist; was the plot written?")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def render_image(block: Image) -> str:
    alt = block.alt or block.caption or Path(block.path).stem  # screen readers need some text
    caption = f"<figcaption>{_esc(block.caption)}</figcaption>" if block.caption else ""
    # Inline size limits too, so the image still fits if the tag is copied out of the page.
    return (f'<figure><img src="{image_data_uri(block.path)}" alt="{_esc(alt)}" '
            f'style="max-width:100%;height:auto">{caption}</figure>')


VERDICT_LABELS = {True: ("held", "held"), False: ("failed", "did not hold"), None: ("unknown", "inconclusive")}


def render_verdict(block: Verdict) -> str:
    cls, label = VERDICT_LABELS[block.held]
    text = f"<p>{_esc(block.text)}</p>" if block.text else ""
    return (f'<div class="verdict {cls}"><p class="claim"><span class="label">{label}</span> '
            f"{_esc(block.claim)}</p>{text}</div>")


def render_key_values(block: KeyValues) -> str:
    caption = f"<caption>{_esc(block.caption)}</caption>" if block.caption else ""
    rows = "".join(f'<tr><th scope="row">{_esc(k)}</th>{_cell("td", v)}</tr>' for k, v in block.items.items())
    return f'<div class="table-wrap"><table class="kv">{caption}<tbody>{rows}</tbody></table></div>'


def render_code(block: Code) -> str:
    return f"<pre><code>{_esc(block.text)}</code></pre>"


RENDERERS: dict[type, Callable[[Any], str]] = {
    Text: render_text,
    Table: render_table,
    Image: render_image,
    Verdict: render_verdict,
    KeyValues: render_key_values,
    Code: render_code,
}


def render_block(block: Block) -> str:
    renderer = RENDERERS.get(type(block))
    if renderer is None:
        raise TypeError(f"cannot render a {type(block).__name__} in a report; "
                        f"use one of {', '.join(t.__name__ for t in RENDERERS)}")
    return renderer(block)


def render_section(section: Section) -> str:
    blocks = "\n".join(render_block(b) for b in section.blocks)
    return f"<section>\n<h2>{_esc(section.heading)}</h2>\n{blocks}\n</section>"


CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --zebra: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5;
       font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
.page { max-width: 1100px; margin: 0 auto; padding: 32px 24px; }
header { padding-bottom: 8px; border-bottom: 1px solid var(--line); }
h1 { margin: 0 0 4px; font-size: 1.9em; line-height: 1.25; }
.subtitle { margin: 0 0 12px; color: var(--muted); font-size: 1.1em; }
h2 { margin: 36px 0 12px; padding-bottom: 4px; font-size: 1.4em; border-bottom: 1px solid var(--line); }
p { margin: 0 0 12px; }
.table-wrap { overflow-x: auto; margin: 0 0 20px; }
table { border-collapse: collapse; font-size: 0.95em; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; padding: 4px 0; color: var(--muted); font-style: italic; }
th, td { padding: 6px 12px; border: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { background: #eaeef2; font-weight: 600; }
tbody tr:nth-child(even) { background: var(--zebra); }
td.num { text-align: right; white-space: nowrap; }
tr.highlight, tr.highlight:nth-child(even) { background: #fff8c5; font-weight: 600; }
table.kv th { background: var(--zebra); font-weight: 600; }
figure { margin: 0 0 24px; }
img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { margin-top: 6px; color: var(--muted); font-size: 0.9em; }
pre { margin: 0 0 20px; padding: 12px 16px; overflow-x: auto; background: var(--zebra);
      border: 1px solid var(--line); border-radius: 6px; font-size: 0.9em; line-height: 1.45; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; }
.verdict { margin: 0 0 20px; padding: 12px 16px; border-left: 6px solid; border-radius: 4px; }
.verdict p:last-child { margin-bottom: 0; }
.verdict .claim { font-weight: 600; }
.verdict .label { display: inline-block; margin-right: 8px; padding: 0 8px; border-radius: 10px;
                  color: #fff; font-size: 0.85em; text-transform: uppercase; letter-spacing: 0.04em; }
.verdict.held { background: #dafbe1; border-color: #1a7f37; }
.verdict.held .label { background: #1a7f37; }
.verdict.failed { background: #ffebe9; border-color: #cf222e; }
.verdict.failed .label { background: #cf222e; }
.verdict.unknown { background: #eff2f5; border-color: #6e7781; }
.verdict.unknown .label { background: #6e7781; }
footer { margin-top: 40px; padding-top: 12px; border-top: 1px solid var(--line);
         color: var(--muted); font-size: 0.85em; }
@media print { body { font-size: 12px; } .table-wrap { overflow: visible; } }
"""


def render_page(title: str, sections: list[Section], subtitle: str = "",
                generated: datetime | None = None) -> str:
    """The whole page as one string; ``generated`` fixes the footer's time (default: now)."""
    stamp = (generated or datetime.now().astimezone()).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    sub = f'<p class="subtitle">{_esc(subtitle)}</p>' if subtitle else ""
    body = "\n".join(render_section(s) for s in sections)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="trainwell {_esc(__version__)}">
<title>{_esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<div class="page">
<header>
<h1>{_esc(title)}</h1>
{sub}
</header>
<main>
{body}
</main>
<footer>Generated by trainwell {_esc(__version__)} on {_esc(stamp)}.</footer>
</div>
</body>
</html>
"""


def write_report(path: str | Path, title: str, sections: list[Section], subtitle: str = "") -> Path:
    """Render and write atomically: a reader (or a browser tab reloading) never sees half a page."""
    path = Path(path)
    # Render first, so a missing image leaves no file (and no previous report clobbered) behind.
    page = render_page(title, sections, subtitle)
    atomic_write_text(path, page)
    return path
