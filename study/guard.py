"""What the workflow does once its plan is checked, before Snakemake builds the job graph.

    run (jobs execute)   take the study lock (refused: one line, exit 2), clear Snakemake's stale
                         locks on OUT, unseal changed folder outputs, move aside outputs of earlier
                         settings, write OUT/study.yaml (the merged study every job reads)
    dry run (-n)         the same checks, but only says what it would move; nothing is locked for long
    job step             (a SLURM job or a subprocess of Snakemake) nothing: the main run did it
"""
from __future__ import annotations

import sys
from pathlib import Path

from prompts.errors import UserError

from . import lock, outputs

# Snakemake flags after which no job runs (the workflow only reports).
_REPORTING = {"--dry-run", "--dryrun", "--unlock", "--report", "--list", "--list-rules", "--lint", "--summary",
              "--detailed-summary", "--dag", "--rulegraph", "--filegraph", "--d3dag", "--list-target-rules",
              "--list-changes", "--lc", "--li", "--lp", "--cleanup-metadata", "--cm"}


def run_kind(argv: list[str], workflow) -> str:
    """'job' (inside a job of a running workflow), 'dry' (nothing will execute) or 'run'."""
    if getattr(workflow, "remote_exec", False) or getattr(workflow, "subprocess_exec", False):
        return "job"
    for arg in argv[1:]:
        if arg.split("=", 1)[0] in _REPORTING:
            return "dry"
        if arg.startswith("-") and not arg.startswith("--") and "n" in arg[1:] and arg[1:].isalpha():
            return "dry"  # -n, -np, -pn ...
    return "run"


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def start(plan, kind: str, workdir: Path) -> None:
    """Lock, verify and tidy the study's output folder before any job (see the module docstring)."""
    if kind == "job":
        return
    lay = plan.layout
    if kind == "dry" and not lay.out.is_dir():
        return  # nothing made yet: nothing to lock, verify or move, and a dry run writes nothing
    if not lock.acquire(lay.lock_file):
        if kind == "run":
            _fail(lock.refuse(lay.lock_file))
        note(f"a run is working on {lay.out} ({lock.holder(lay.lock_file)}): this dry run shows the plan as the files are now")
        return
    for folder in (lay.report_dir, lay.realism_dir):  # replaced whole when published: Snakemake deletes them first
        foreign = outputs.foreign_entries(None, folder)
        if foreign:
            _fail(f"{folder} holds {', '.join(foreign)}, which the toolkit did not write; move it out of that folder "
                  "before running the study again (the folder is replaced whole by the next report): nothing was run")
    for f in lock.clear_stale_snakemake_locks(lay.out, workdir):
        note(f"removed Snakemake's lock {f}, left on {lay.out} by a run that is gone (killed?): no run holds {lay.lock_file}")
    for folder in outputs.unseal_changed(plan.sealed_folders()):
        note(f"{folder} changed since its job wrote it (a file deleted or edited): its job runs again")
    stale = outputs.stale_outputs(plan)
    if kind == "dry":
        for item in stale:
            note(f"would move aside {item['path']} ({item['reason']}) to {lay.dropped_root}/")
        return
    moved = outputs.move_aside(plan, stale)
    if moved:
        note(f"moved {len(stale)} output(s) of earlier settings to {moved} (listed in {lay.dropped_file})")
    write_study(plan)


def write_study(plan) -> None:
    """OUT/study.yaml: the merged, validated, path-resolved study; rewritten only when it changed."""
    from prompts.config import as_dict, dump_yaml
    from prompts.files import write_text_atomic
    from prompts.schema import SECTIONS

    text = ("# Written by the workflow from the --configfile(s) and --config overrides of its last run; every job reads it.\n"
            + dump_yaml({name: as_dict(getattr(plan.study, name)) for name in SECTIONS}))
    target = plan.layout.study_file
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        write_text_atomic(target, text)


def _fail(err: UserError):
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
