"""One document model for reports, rendered to Markdown and to HTML.

A report is a list of blocks: `Heading`, `Text`, `Table`, `Figure` and `Row` (blocks side by
side). `render_markdown` and `render_html` walk the same blocks, so neither output is made by
parsing the other and both say the same things. Text and table cells may use a small inline
subset of Markdown, `code` and **bold**, which both renderers understand.

Figures are made once, when the document is built (`attempt`): a figure that fails becomes a
visible error note in both outputs instead of vanishing.
"""
from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass, field
from typing import Callable, Union

log = logging.getLogger(__name__)


@dataclass
class Cell:
    """One table cell. shade: 0..1 background intensity (HTML); images: data URIs shown in the cell (HTML)."""

    text: str = ""
    bold: bool = False
    shade: float | None = None
    images: list[str] = field(default_factory=list)
    title: str = ""  # tooltip (HTML)


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


# ---------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;font-size:15px;line-height:1.45;color:#222;
     max-width:1200px;margin:1.5em auto;padding:0 1.2em}
h1{font-size:1.7em;margin:.2em 0 .6em}h2{font-size:1.3em;margin-top:1.8em;border-bottom:1px solid #ddd}
h3{font-size:1.1em;margin-top:1.3em}
code{background:#f3f3f3;padding:0 .25em;border-radius:3px;font-size:.92em}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.4em 0 1em}
td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:left;white-space:nowrap}
td.num,th.num{text-align:right}
th{background:#f3f3f3;white-space:normal;vertical-align:bottom}
table.compact td,table.compact th{padding:2px 5px;font-size:12px;text-align:center;min-width:2.2em}
table.compact thead th{max-width:7em;overflow-wrap:anywhere}table.compact tbody th{text-align:left}
.caption{margin:.6em 0 .2em}
.row{display:flex;flex-wrap:wrap;gap:.4em 1.6em;align-items:flex-start}
.row>div{max-width:100%}.row.columns>div{flex:1 1 380px}.row.columns p{margin:.4em 0 .6em}
.answer{background:#eef6ee;border-left:5px solid #3a7d44;padding:.6em 1em;margin:.5em 0;font-size:1.05em}
.note{color:#444}
.warn{background:#fff3cd;border-left:5px solid #e0a800;padding:.5em 1em}
.error{background:#fde8e8;border-left:5px solid #c0392b;padding:.5em 1em}
.banner{background:#c0392b;color:#fff;padding:.7em 1em;font-size:1.1em;border-radius:4px}
.banner code{background:rgba(255,255,255,.2)}
img{max-width:100%}td img{margin:1px;vertical-align:top}
td.images{text-align:left;white-space:normal}
"""


def inline(text: str) -> str:
    """Escape text for HTML, keeping `code` and **bold** as markup."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


_NUMBER = re.compile(r"^[-+<>±—–]?\s?(\d|\.\d|—$|–$)")  # numbers, signed differences, "<0.001", "—" (none)


def _html_cell(c: Cell, tag: str, num: bool = False, narrow: bool = False) -> str:
    attrs, body = [], inline(c.text)
    if narrow:  # a narrow header may break after "_" (class names such as neutrophil_segmented)
        body = body.replace("_", "_<wbr>")
    if c.bold and body:
        body = f"<b>{body}</b>"
    if c.images:
        body += "".join(f'<img src="{src}" width="96" height="96" alt="">' for src in c.images)
        attrs.append('class="images"')
    elif num:
        attrs.append('class="num"')
    if c.shade is not None:
        s = max(0.0, min(1.0, c.shade))
        rgb = tuple(round(255 - s * (255 - v)) for v in (33, 102, 172))  # white -> a strong blue
        attrs.append(f'style="background:rgb{rgb};color:{"#fff" if s > 0.55 else "#000"}"')
    if c.title:
        attrs.append(f'title="{html.escape(c.title)}"')
    return f"<{tag}{' ' if attrs else ''}{' '.join(attrs)}>{body}</{tag}>"


def numeric_columns(t: Table) -> list[bool]:
    """Columns whose every non-empty cell is a number (right-aligned in HTML)."""
    out = []
    for j in range(len(t.columns)):
        texts = [t.cell(i, j).text for i in range(len(t.rows)) if j < len(t.rows[i]) and t.cell(i, j).text]
        out.append(bool(texts) and all(_NUMBER.match(x) for x in texts))
    return out


def html_table(t: Table) -> str:
    num = numeric_columns(t)
    head = "<tr>" + "".join(_html_cell(Cell(h), "th", num[j], narrow=t.compact) for j, h in enumerate(t.columns)) + "</tr>"
    body = "".join(
        "<tr>" + "".join(_html_cell(t.cell(i, j), "th" if (t.compact and j == 0) else "td", num[j]) for j in range(len(row)))
        + "</tr>" for i, row in enumerate(t.rows)
    )
    cls = ' class="compact"' if t.compact else ""
    cap = f'<p class="caption">{inline(t.caption)}</p>' if t.caption else ""
    return f'<div>{cap}<div class="scroll"><table{cls}><thead>{head}</thead><tbody>{body}</tbody></table></div></div>'


def _html_block(b: Block) -> str:
    if isinstance(b, Heading):
        return f"<h{b.level}>{inline(b.text)}</h{b.level}>"
    if isinstance(b, Text):
        cls = f' class="{b.kind}"' if b.kind else ""
        role = ' role="alert"' if b.kind in ("banner", "error") else ""
        return f"<p{cls}{role}>{inline(b.text)}</p>"
    if isinstance(b, Table):
        return html_table(b)
    if isinstance(b, Figure):
        return f'<figure><img src="{b.src}" alt="{html.escape(b.alt or b.title)}"><figcaption>{inline(b.title)}</figcaption></figure>'
    if isinstance(b, Row):
        cap = f'<p class="caption">{inline(b.caption)}</p>' if b.caption else ""
        items = "".join("<div>" + "".join(_html_block(x) for x in (item if isinstance(item, list) else [item])) + "</div>"
                        for item in b.blocks)
        return cap + f'<div class="row{" columns" if b.columns else ""}">{items}</div>'
    raise TypeError(f"not a report block: {b!r}")


def render_html(blocks: list[Block], title: str) -> str:
    """The blocks as one self-contained HTML page (inline CSS, images as data URIs)."""
    body = "\n".join(_html_block(b) for b in blocks)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")
