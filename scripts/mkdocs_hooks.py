"""MkDocs hooks (mkdocs.yml `hooks:`): the reference pages that are generated, never written by hand.

- ``reference/commands/<room>.md``: every subcommand's flags, read from the room's own argparse parser
  (tests/test_docs.py checks that each page lists the same flags as ``--help``);
- ``reference/study-file.md``: its schema block is re-rendered from the schema at every build, and a
  committed block that is stale is a warning, so ``mkdocs build --strict`` fails on it
  (``python -m prompts schema --readme docs/reference/study-file.md`` brings it up to date);
- ``explanation/benchmarks.md``: BENCHMARKS.md as a page, its links to files outside docs/ turned into
  plain paths.

The room guides (``rooms/<room>.md``) are written by hand; each room's README is short and links to its guide.

The functions are plain Python so the tests can call them without MkDocs.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import posixpath
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("mkdocs.hooks.cellsynth")

# `python -m ROOM`: the commands whose flags the reference lists (study.run hands its flags to Snakemake).
COMMANDS = ("prompts", "lora", "generate", "classify", "controlnet", "segment", "phenotype", "study")
# Markdown files of the repository shown as pages of the site.
REPO_PAGES = {"explanation/benchmarks.md": "BENCHMARKS.md"}
STUDY_FILE_PAGE = "reference/study-file.md"


# --------------------------------------------------------------------------- command reference

class _Captured(BaseException):
    """Raised by the patched parse_args: carries the parser a command's main() built."""

    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__()
        self.parser = parser


def command_parser(room: str) -> argparse.ArgumentParser:
    """The argparse parser `python -m ROOM` builds, taken from its main() before it parses anything.

    Parameters
    ----------
    room : str
        A top-level package with a ``__main__`` module whose ``main(argv)`` calls ``parse_args``.

    Returns
    -------
    argparse.ArgumentParser
        The top-level parser, with its subcommands' parsers in its subparsers action.
    """
    main = importlib.import_module(f"{room}.__main__").main
    main = getattr(main, "__wrapped__", main)  # run_cli's wrapper sets signal handlers: not wanted here

    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    saved = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture
    try:
        main([])
    except _Captured as captured:
        return captured.parser
    finally:
        argparse.ArgumentParser.parse_args = saved
    raise RuntimeError(f"python -m {room}: main() returned without parsing its arguments")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """{name: parser} of each subcommand, or {"": parser} for a command without subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {"": parser}


def _cell(text: str) -> str:
    """Text fit for one Markdown table cell: one line, pipes escaped, ``<`` ``>`` escaped outside code spans."""
    parts = " ".join(str(text).split()).split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts).replace("|", "\\|")


def _flag_cell(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    names = ", ".join(f"`{s}`" for s in action.option_strings)
    if action.nargs == 0:
        return names
    metavar = action.metavar or action.dest.upper()
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    return f"{names} {_cell(metavar)}"


def _default_cell(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or action.required:
        return "required" if action.required else ""
    return f"`{action.default!r}`"


def flag_rows(parser: argparse.ArgumentParser) -> list[tuple[str, str, str]]:
    """(flag, default, meaning) for every argument of one parser, in its --help order."""
    formatter = parser._get_formatter()
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        meaning = formatter._expand_help(action) if action.help else ""
        if action.choices and not isinstance(action.choices, dict):
            meaning = f"{meaning} (one of: {', '.join(map(str, action.choices))})".strip()
        rows.append((_flag_cell(action), _default_cell(action), _cell(meaning)))
    return rows


def command_page(room: str) -> str:
    """The Markdown reference page of `python -m ROOM`: one section per subcommand, a table of its flags."""
    parser = command_parser(room)
    lines = [f"# `python -m {room}`", "",
             "Generated from the command's own parser at every build of the site: it lists exactly the flags of "
             f"`python -m {room} ... --help`. Flags made from the study schema are also keys of the "
             "[study file](../study-file.md) (`--some-key` is `some_key`); a flag overrides `--config`.", ""]
    if parser.description:
        lines += [_cell(parser.description), ""]
    for name, sub in subcommands(parser).items():
        if name:
            lines += [f"## `{name}`", ""]
        if sub.description:
            lines += [_cell(sub.description), ""]
        lines += ["```text", sub.format_usage().strip(), "```", "", "| flag | default | meaning |", "| --- | --- | --- |"]
        lines += [f"| {flag} | {default} | {meaning} |" for flag, default, meaning in flag_rows(sub)]
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- Markdown files of the repository

LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


def repo_page(page_uri: str, source: str) -> str:
    """A repository Markdown file as a page at `page_uri`: links to files outside docs/ become plain paths.

    Links to another file shown on the site point to its page; web
    links and anchors stay as they are.
    """
    text = (ROOT / source).read_text(encoding="utf-8")
    shown = {src: uri for uri, src in REPO_PAGES.items()}
    base = posixpath.dirname(source)

    def fix(match: re.Match) -> str:
        label, target = match.groups()
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            return match.group(0)
        path, _, anchor = target.partition("#")
        resolved = posixpath.normpath(posixpath.join(base, path))
        if resolved in shown:
            rel = posixpath.relpath(shown[resolved], posixpath.dirname(page_uri))
            return f"[{label}]({rel}{'#' + anchor if anchor else ''})"
        if resolved.startswith("docs/"):
            rel = posixpath.relpath(resolved[len("docs/"):], posixpath.dirname(page_uri))
            return f"[{label}]({rel}{'#' + anchor if anchor else ''})"
        return label if label.strip("`") == resolved else f"{label} (`{resolved}`)"

    note = f"<!-- generated from {source} at build time: edit that file -->\n"
    return note + LINK.sub(fix, text)


# --------------------------------------------------------------------------- the study file

def study_file_markdown(markdown: str) -> str:
    """The study-file page with its schema block re-rendered; a stale committed block is a warning."""
    from prompts.config import readme_with_schema

    fresh = readme_with_schema(markdown)
    if fresh != markdown:
        log.warning("%s: the schema table is stale: run `python -m prompts schema --readme docs/%s`",
                    STUDY_FILE_PAGE, STUDY_FILE_PAGE)
    return fresh


# --------------------------------------------------------------------------- MkDocs events

def on_files(files, config):
    """Add the generated pages (commands, benchmarks) to the site's files."""
    from mkdocs.structure.files import File

    for room in COMMANDS:
        files.append(File.generated(config, f"reference/commands/{room}.md", content=command_page(room)))
    for uri, source in REPO_PAGES.items():
        files.append(File.generated(config, uri, content=repo_page(uri, source)))
    return files


def on_page_markdown(markdown, page, config, files):
    """Re-render the study file's schema block from the schema."""
    if page.file.src_uri == STUDY_FILE_PAGE:
        return study_file_markdown(markdown)
    return markdown
