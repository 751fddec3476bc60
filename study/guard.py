"""What the workflow does once its plan is checked, before Snakemake builds the job graph.

    run (jobs execute)   take the study lock (refused: one line, exit 2, also for a folder that cannot
                         be written), refuse a file of the user's at any depth of a folder output the
                         plan may re-make or move (`check_owned`: Snakemake deletes a job's folder
                         output before the job runs), clear Snakemake's stale locks on OUT, unseal
                         changed folder outputs, move aside outputs of earlier settings, write
                         OUT/study.yaml (the merged study every job reads)
    dry run (-n)         the same checks, but only notes what a run would refuse or move; nothing is
                         locked for long
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
    try:
        locked = lock.acquire(lay.lock_file)
    except UserError as err:
        if kind == "run":
            _fail(err)
        note(f"{err}: this dry run shows the plan as the files are now")
        locked = None
    if not locked:
        if locked is False and kind == "run":
            _fail(lock.refuse(lay.lock_file))
        if locked is False:
            note(f"a run is working on {lay.out} ({lock.holder(lay.lock_file)}): this dry run shows the plan as the files are now")
        return
    try:
        check_owned(plan, workdir)
    except UserError as err:
        if kind == "run":
            _fail(err)
        note(f"a run would stop here: {err}")
    for f in lock.clear_stale_snakemake_locks(lay.out, workdir):
        note(f"removed Snakemake's lock {f}, left on {lay.out} by a run that is gone (killed?): no run holds {lay.lock_file}")
    for folder in outputs.unseal_changed(plan.sealed_folders()):
        note(f"{folder} changed since its job wrote it (a file deleted or edited): its job runs again")
    stale = plan.stale_outputs()
    if kind == "dry":
        for item in stale:
            note(f"would move aside {item['path']} ({item['reason']}) to {lay.dropped_root}/")
        return
    moved = outputs.move_aside(plan, stale)
    if moved:
        note(f"moved {len(stale)} output(s) of earlier settings to {moved} (listed in {lay.dropped_file})")
    write_study(plan)


def check_owned(plan, workdir: Path) -> None:
    """UserError (one line) when a folder output the plan may (re)make, or an output of earlier settings it would
    move aside, holds a file the toolkit did not write, at any depth: Snakemake deletes a job's folder output
    before the job runs, so this is the last moment nothing of the user's has been touched."""
    lay = plan.layout
    for folder in plan.folder_outputs():
        outputs.refuse_foreign(Path(folder), incomplete=lock.snakemake_incomplete(workdir, folder) or _legacy_tiny_model(lay, folder))
    for item in plan.stale_outputs():
        outputs.refuse_foreign(Path(item["path"]), incomplete=lock.snakemake_incomplete(workdir, item["path"]),
                               why=f"would be moved to {lay.dropped_root}/ ({item['reason']})")
    from prompts.fingerprint import written_by

    templates = lay.templates_file
    if (templates.exists() or templates.is_symlink()) and not getattr(plan, "templates_given", True) and not written_by(templates):
        raise UserError(f"{templates} exists and the toolkit did not write it; the workflow copies its default templates "
                        "there: move it away, or name it as data.templates: nothing was run")
    study_file = lay.study_file
    if (study_file.exists() or study_file.is_symlink()) and not _is_our_study_file(study_file):
        raise UserError(f"{study_file} exists and is not the merged study the workflow writes there; move it away "
                        "(the workflow writes OUT/study.yaml for its jobs): nothing was run")


def _legacy_tiny_model(lay, folder) -> bool:
    """The tiny model of a study made before folder outputs had records: unsealed, with the marker `lora tiny-model`
    writes (re-made whole once after an upgrade, as every job whose command text changed)."""
    from prompts.layout import TINY_MODEL_MARKER, seal_file

    folder = Path(folder)
    return folder == lay.tiny_model_dir and (folder / TINY_MODEL_MARKER).is_file() and not seal_file(folder).exists()


_STUDY_HEADER = "# Written by the workflow"


def _is_our_study_file(path: Path) -> bool:
    from prompts.fingerprint import written_by

    if path.is_symlink() or not path.is_file():
        return False
    if written_by(path):
        return True
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().startswith(_STUDY_HEADER)
    except (OSError, UnicodeDecodeError):
        return False


def write_study(plan) -> None:
    """OUT/study.yaml: the merged, validated, path-resolved study; rewritten only when it changed."""
    from prompts.config import as_dict, dump_yaml
    from prompts.files import write_text_atomic
    from prompts.fingerprint import claim
    from prompts.schema import SECTIONS

    text = (_STUDY_HEADER + " from the --configfile(s) and --config overrides of its last run; every job reads it.\n"
            + dump_yaml({name: as_dict(getattr(plan.study, name)) for name in SECTIONS}))
    target = plan.layout.study_file
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        write_text_atomic(target, text)
    claim(target.parent, [target.name], "workflow")


def _fail(err: UserError):
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
