"""One document model for reports, rendered to Markdown and to HTML.

A report is a list of blocks: `Heading`, `Text`, `Table`, `Figure` and `Row` (blocks side by
side). `render_markdown` and `render_html` walk the same blocks, so neither output is made by
parsing the other and both say the same things. Text and table cells may use a small inline
subset of Markdown, `code` and **bold**, which both renderers understand.

Figures are made once, when the document is built (`attempt`): a figure that fails becomes a
visible error note in both outputs instead of vanishing.

The HTML page is a Jinja2 template (`analysis/templates/page.html.j2`, autoescape on): any room's
report (classification, segmentation) renders its blocks through it.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Union

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

log = logging.getLogger(__name__)


@dataclass
class Cell:
    """One table cell. shade: 0..1 background intensity (HTML); images: data URIs shown in the cell (HTML)."""

    text: str = ""
    bold: bool = False
    shade: float | None = None
    images: list[str] = field(default_factory=list)
    title: str = ""  # tooltip (HTML)
    wrap: bool = False  # long prose: the cell wraps instead of widening the table (HTML)


@dataclass
class Table:
    """columns: header texts; rows: one list of cells (or plain strings) per row; caption: a line above it."""

    columns: list[str]
    rows: list[list[Union[Cell, str]]]
    caption: str = ""
    compact: bool = False  # small square cells (confusion matrices)

    def cell(self, i: int, j: int) -> Cell:
        c = self.rows[i][j]
        return c if isinstance(c, Cell) else Cell(str(c))

    def header(self, j: int) -> Cell:
        return Cell(self.columns[j])


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    """A paragraph. kind: '' (plain), 'note', 'warn', 'banner' (the report's numbers mean nothing),
    'answer' (the report's conclusion), 'error' (something failed while the report was made)."""

    text: str
    kind: str = ""


@dataclass
class Figure:
    """A picture (PNG data URI) shown in the HTML; Markdown names it and points to the HTML."""

    title: str
    src: str
    alt: str = ""


@dataclass
class Row:
    """Blocks set side by side in HTML (wrapping to the next line when the page is narrow); one after another in Markdown."""

    blocks: list  # a block, or a list of blocks making one column
    caption: str = ""
    columns: bool = False  # True: the items share the width equally (text columns); False: each keeps its size


Block = Union[Heading, Text, Table, Figure, Row]


def attempt(what: str, make: Callable[[], Block | list]) -> list:
    """The block(s) `make()` returns, or an error note naming `what` and the error: shown, never swallowed."""
    try:
        out = make()
    except Exception as err:  # noqa: BLE001 - any failure of a figure must reach the reader, not stop the report
        log.warning("report: %s failed: %s: %s", what, type(err).__name__, err)
        return [Text(f"**{what} could not be made:** {type(err).__name__}: {err}", "error")]
    return out if isinstance(out, list) else [out]


# ---------------------------------------------------------------- Markdown


def _md_cell(c: Cell) -> str:
    text = c.text.replace("|", "\\|").replace("\n", " ")
    if c.images:
        text = (text + " " if text else "") + f"({len(c.images)} images in report.html)"
    return f"**{text}**" if c.bold and text else text


def markdown_table(t: Table) -> str:
    lines = [t.caption, ""] if t.caption else []
    lines.append("| " + " | ".join(_md_cell(Cell(h)) for h in t.columns) + " |")
    lines.append("|" + "---|" * len(t.columns))
    lines += ["| " + " | ".join(_md_cell(t.cell(i, j)) for j in range(len(row))) + " |" for i, row in enumerate(t.rows)]
    return "\n".join(lines)


def _md_block(b: Block) -> str:
    if isinstance(b, Heading):
        return "#" * b.level + " " + b.text
    if isinstance(b, Text):
        prefix = {"banner": "> ", "warn": "> ", "error": "> "}.get(b.kind, "")
        return prefix + b.text
    if isinstance(b, Table):
        return markdown_table(b)
    if isinstance(b, Figure):
        return f"*Figure (in report.html): {b.title}.*"
    if isinstance(b, Row):
        items = [x for item in b.blocks for x in (item if isinstance(item, list) else [item])]
        return "\n\n".join(([b.caption] if b.caption else []) + [_md_block(x) for x in items])
    raise TypeError(f"not a report block: {b!r}")


def render_markdown(blocks: list[Block]) -> str:
    """The blocks as Markdown, one blank line between blocks."""
    return "\n\n".join(_md_block(b) for b in blocks) + "\n"


# ---------------------------------------------------------------- HTML (Jinja2)

_TEMPLATES = Path(__file__).with_name("templates")
_NUMBER = re.compile(r"^[-+<>±—–]?\s?(\d|\.\d|—$|–$)")  # numbers, signed differences, "<0.001", "—" (none)


def inline(text: str, narrow: bool = False) -> Markup:
    """Escape text for HTML, keeping `code` and **bold** as markup; narrow: may break after "_" (long class names)."""
    out = str(escape(text))
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)
    return Markup(out.replace("_", "_<wbr>") if narrow else out)


def shade_style(shade: float) -> str:
    """CSS of a cell shaded 0..1 from white to a strong blue, with readable text."""
    s = max(0.0, min(1.0, shade))
    rgb = tuple(round(255 - s * (255 - v)) for v in (33, 102, 172))
    return f"background:rgb{rgb};color:{'#fff' if s > 0.55 else '#000'}"


def numeric_columns(t: Table) -> list[bool]:
    """Columns whose every non-empty cell is a number (right-aligned in HTML)."""
    out = []
    for j in range(len(t.columns)):
        texts = [t.cell(i, j).text for i in range(len(t.rows)) if j < len(t.rows[i]) and t.cell(i, j).text]
        out.append(bool(texts) and all(_NUMBER.match(x) for x in texts))
    return out


def _kind(b) -> str:
    for name, cls in (("heading", Heading), ("text", Text), ("table", Table), ("figure", Figure), ("row", Row)):
        if isinstance(b, cls):
            return name
    raise TypeError(f"not a report block: {b!r}")


def _items(item) -> list:
    return item if isinstance(item, list) else [item]


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The Jinja2 environment of every report page: autoescape on, the page template and its filters."""
    env = Environment(loader=FileSystemLoader(_TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True,
                      undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters.update(inline=inline, shade_style=shade_style)
    env.globals.update(kind=_kind, items=_items, numeric_columns=numeric_columns)
    return env


def render_html(blocks: list[Block], title: str, template: str = "page.html.j2", **extra) -> str:
    """The blocks as one self-contained HTML page (inline CSS, images as data URIs)."""
    for b in blocks:
        _kind(b)  # a wrong block fails here with its repr, not deep in the template
    return environment().get_template(template).render(title=title, blocks=blocks, **extra)
