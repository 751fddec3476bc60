"""The documentation: command pages list exactly each command's flags, README links resolve, the README
stays a front door, and the test tiers of tests/conftest.py are given as documented.

`make docs` (mkdocs build --strict, run by `make test`) checks the site's own links and nav.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT
from .helpers import help_flags

# unit tier by default (tests/conftest.py); the slow test below marks itself workflow


def _hooks():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "scripts" / "mkdocs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOKS = _hooks()


def page_sections(page: str) -> dict[str, str]:
    """{subcommand: its Markdown} of a command page ("" for a command without subcommands)."""
    parts = re.split(r"^## `([^`]+)`\n", page, flags=re.M)
    if len(parts) == 1:
        return {"": page}
    return dict(zip(parts[1::2], parts[2::2]))


def page_flags(section: str) -> set[str]:
    flags = set()
    for row in re.findall(r"^\| (`-.*?) \|", section, flags=re.M):
        flags.update(re.findall(r"`(--?[\w-]+)`", row))
    return flags


@pytest.mark.parametrize("room", HOOKS.COMMANDS)
def test_each_command_page_lists_the_same_flags_as_its_help(room, capsys):
    main = importlib.import_module(f"{room}.__main__").main
    main = getattr(main, "__wrapped__", main)
    sections = page_sections(HOOKS.command_page(room))
    assert sections, room
    expected_subcommands = set(HOOKS.subcommands(HOOKS.command_parser(room)))
    assert set(sections) == expected_subcommands
    for sub, section in sections.items():
        with pytest.raises(SystemExit) as done:
            main([sub, "--help"] if sub else ["--help"])
        assert done.value.code == 0
        shown = help_flags(capsys.readouterr().out)
        assert "--help" in shown and len(shown) >= 2, (room, sub, shown)
        assert page_flags(section) == shown, f"python -m {room} {sub}: page and --help differ"


# the project's own READMEs (not those of caches and tools in hidden folders: .pytest_cache, .venv)
READMES = sorted(p for p in [ROOT / "README.md", *ROOT.glob("*/README.md"), *ROOT.glob("examples/*/README.md")]
                 if not any(part.startswith(".") for part in p.relative_to(ROOT).parts))
LINK = re.compile(r"(?<!\\)\[[^\]]*\]\(([^)\s]+)\)")


def generated_pages() -> set[Path]:
    """docs/ pages that exist only in the built site (made by scripts/mkdocs_hooks.py)."""
    uris = {f"reference/commands/{room}.md" for room in HOOKS.COMMANDS} | set(HOOKS.REPO_PAGES)
    return {(ROOT / "docs" / uri).resolve() for uri in uris}


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_readme_link_resolves(readme):
    generated = generated_pages()
    broken = []
    for target in LINK.findall(readme.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (readme.parent / target.split("#")[0]).resolve()
        if not (path.exists() or path in generated):
            broken.append(target)
    assert not broken, f"{readme.relative_to(ROOT)}: links to nothing: {broken}"


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    for must in ("make demo", "make test", "docs/assets/report.png", "docs/reference/study-file.md"):
        assert must in text
    assert (ROOT / "docs" / "assets" / "report.png").stat().st_size > 10_000


def test_every_page_of_the_nav_exists_or_is_generated():
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]

    def pages(entries):
        for entry in entries:
            for value in (entry.values() if isinstance(entry, dict) else [entry]):
                if isinstance(value, list):
                    yield from pages(value)
                else:
                    yield value

    listed = list(pages(nav))
    missing = [p for p in listed if not (ROOT / "docs" / p).is_file() and (ROOT / "docs" / p).resolve() not in generated_pages()]
    assert not missing and len(listed) == len(set(listed)) > 30, missing
    on_disk = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert on_disk <= set(listed), f"pages missing from mkdocs.yml's nav: {sorted(on_disk - set(listed))}"


# --------------------------------------------------------------------------- the test tiers

TIER_PROBE = {
    "test_marked.py": "import pytest\npytestmark = pytest.mark.workflow\n\ndef test_a():\n    pass\n\n"
                      "def test_b():\n    snakemake('x')\n",
    "test_plain.py": "import pytest\n\ndef test_c():\n    pass\n\ndef test_d():\n    snakemake('x')\n\n"
                     "@pytest.mark.browser\ndef test_e():\n    pass\n\n@pytest.mark.slow\ndef test_f():\n    pass\n",
}


TIER_REPORTER = """
def pytest_collection_finish(session):
    for item in session.items:
        tiers = sorted(m.name for m in item.iter_markers() if m.name in ("unit", "workflow", "slurm", "browser", "gpu"))
        print("TIERS", item.name, ",".join(tiers))
"""


def test_every_test_gets_one_tier_and_explicit_marks_win(tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "__init__.py").write_text("")
    (tests / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    for name, text in TIER_PROBE.items():
        (tests / name).write_text(text)
    (tmp_path / "tier_reporter.py").write_text(TIER_REPORTER)
    markers = "\n".join(f"    {m}: x" for m in ("unit", "workflow", "slurm", "browser", "gpu", "slow"))
    (tmp_path / "pytest.ini").write_text(f"[pytest]\naddopts = --strict-markers\nmarkers =\n{markers}\n")
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                          "-p", "tier_reporter", "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), "tests"],
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    tiers = dict(line.split()[1:3] for line in res.stdout.splitlines() if line.startswith("TIERS "))
    assert tiers == {"test_a": "workflow", "test_b": "workflow",  # the module's own mark wins over what the body calls
                     "test_c": "unit", "test_d": "workflow",      # a body that starts Snakemake
                     "test_e": "browser", "test_f": "workflow"}   # an explicit mark; the slow mark
