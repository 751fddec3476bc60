"""The workflow's folder outputs: sealed, verified, published whole, and moved aside when the study drops them.

- seal: after a job writes a folder (a LoRA, a synthetic tree, the realism or CV report), the
  checksums of all its files go into `.NAME.sha256` beside it (`sha256sum -c` format, paths
  relative to the parent). The seal is a file output Snakemake tracks.
- verify: before any job, a folder whose files no longer match its seal (a file deleted or
  changed) loses its seal, so Snakemake re-runs the job that makes it, and everything downstream.
- publish: `realism` and `cv` write into OUT/.stage/; only a finished folder is copied (hard
  links) over the published one, so a failing job never destroys the last good report.
- prune: outputs the current study no longer defines (`plan.stale_outputs()`: synthetic trees and
  LoRA folders of other LoRA weights, folds or groups; pair trees and ControlNets of other trees or
  folds) are moved to OUT/dropped/<time>/ and listed in SYN/dropped.json, which the report shows;
  nothing is deleted.
- own: a file under OUT that no record of the toolkit lists is the user's (`foreign_files`); no
  run deletes or replaces it, and the guard refuses before any job (study/guard.py).

    python -m study.outputs seal FOLDER
    python -m study.outputs publish STAGED FINAL
    python -m study.outputs default-templates FILE
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
from pathlib import Path

from prompts import layout
from prompts.errors import UserError
from prompts.files import write_json_atomic, write_text_atomic
from prompts.fingerprint import file_sha256

SNAKEMAKE_STAMP = ".snakemake_timestamp"  # Snakemake adds it to a directory output after the job: not the job's


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SNAKEMAKE_STAMP)


def checksums(folder: Path) -> str:
    """`sha256  NAME/relative/path` lines of every file under `folder` (sha256sum format, from its parent)."""
    folder = Path(folder)
    return "".join(f"{file_sha256(p)}  {p.relative_to(folder.parent).as_posix()}\n" for p in _files(folder))


def seal(folder: Path) -> Path:
    """Write the seal of a finished folder output (the record of every file its job wrote); returns the seal file."""
    target = layout.seal_file(folder)
    write_text_atomic(target, checksums(folder))
    return target


def is_intact(folder: Path) -> bool:
    """The folder exists and its files are exactly those its seal lists, with the same content."""
    sealed = layout.seal_file(folder)
    if not Path(folder).is_dir() or not sealed.is_file():
        return False
    return sealed.read_text(encoding="utf-8") == checksums(folder)


def unseal_changed(folders) -> list[Path]:
    """Remove the seal of every sealed folder whose content changed (or that is gone): their jobs run again."""
    changed = []
    for folder in map(Path, folders):
        if layout.seal_file(folder).is_file() and not is_intact(folder):
            layout.seal_file(folder).unlink()
            changed.append(folder)
    return changed


# --------------------------------------------------------------------------- ownership at every depth
#
# The rule: a file under OUT is the toolkit's when the outputs record of its own folder lists it
# (`prompts.fingerprint.claim`; a published folder is claimed at every depth), when the seal of the
# folder output it lies in lists it (a seal is the record of every file its job wrote, at any depth),
# or when its content says so (`written_by`).
# Anything else is the user's: no run deletes or replaces it, at any depth; the guard refuses first.

WORKFLOW = "workflow"  # the command name in the records the workflow itself writes


def claim_tree(folder: Path, command: str = WORKFLOW) -> None:
    """Record in every folder under `folder` (itself included) that `command` wrote what it holds now."""
    from prompts.fingerprint import claim, claimed

    for dirpath, dirnames, filenames in os.walk(folder):
        known = claimed(dirpath)  # a name a command claimed keeps that command as its writer
        names = [n for n in dirnames + filenames if n not in (layout.OUTPUTS_FILE, SNAKEMAKE_STAMP) and n not in known]
        if names:
            claim(dirpath, names, command)


def _sealed_names(folder: Path) -> set[str]:
    """Paths (relative to the folder's parent, posix) its seal lists: the files its job wrote."""
    sealed = layout.seal_file(folder)
    try:
        lines = sealed.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return set()
    return {line.split("  ", 1)[1] for line in lines if "  " in line}


def _is_ours(path: Path, claimed_names: dict, sealed: set[str], parent: Path) -> bool:
    from prompts.fingerprint import written_by

    if path.name == SNAKEMAKE_STAMP and not path.is_symlink():
        return True
    if path.name in claimed_names and path.name != layout.OUTPUTS_FILE:
        return True
    if not path.is_symlink() and path.relative_to(parent).as_posix() in sealed:
        return True
    return written_by(path) is not None


def foreign_files(folder: Path, *, incomplete: bool = False) -> list[Path]:
    """Files (and symlinks) under `folder`, at any depth, that no record of the toolkit lists: the user's.

    incomplete: Snakemake marks the folder as the output of a job that never finished (killed): all
    of it is that job's. A user's file or symlink where the folder itself should be counts too.
    """
    from prompts.fingerprint import claimed

    folder = Path(folder)
    if not (folder.exists() or folder.is_symlink()):
        return []
    if folder.is_symlink() or not folder.is_dir():
        return [] if _is_ours(folder, claimed(folder.parent), set(), folder.parent) else [folder]
    if incomplete:
        return []
    sealed, parent = _sealed_names(folder), folder.parent
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        names = claimed(here)
        links = [n for n in dirnames if (here / n).is_symlink()]  # never followed: judged as files
        for name in sorted(filenames + links):
            if not _is_ours(here / name, names, sealed, parent):
                found.append(here / name)
    return found


def refuse_foreign(folder: Path, *, incomplete: bool = False, why: str = "is replaced whole when its job runs again") -> None:
    """One-line UserError naming the first file of the user's under `folder` (nothing is touched)."""
    foreign = foreign_files(folder, incomplete=incomplete)
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise UserError(f"{foreign[0]}{more} was not written by the toolkit, and {folder} {why}; "
                        "move it out of that folder, then run again: nothing was run or replaced")


def publish(staged: Path, final: Path) -> None:
    """Copy a finished staged folder into place (hard links where possible), record it as ours, seal it.

    Raises UserError, replacing nothing, when the published folder holds a file the toolkit did not write
    (at any depth).
    """
    staged, final = Path(staged), Path(final)
    refuse_foreign(final, why=f"would be replaced whole by the new results waiting in {staged}")
    tmp = final.parent / f".{final.name}.publishing"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(staged, tmp, copy_function=_link_or_copy)
    claim_tree(tmp)  # written anew (atomic replace): the staged folder's hard links are untouched
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    seal(final)


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# --------------------------------------------------------------------------- outputs of earlier settings

def stale_outputs(plan) -> list[dict]:
    """The outputs of earlier settings under OUT (each task's plan knows its own: `plan.stale_outputs()`)."""
    return plan.stale_outputs()


def fold_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and layout.parse_fold_name(p.name) is not None)


def stale_in_folds(root: Path, folds: set[int], is_output, kind: str, unplanned) -> list[dict]:
    """Outputs under `root/fold_K/` of earlier settings: [{kind, path, reason}].

    Each sub-folder that `is_output(name)` accepts is stale when K is not a current fold, or when
    `unplanned(name)` gives a reason (the plan no longer defines it); every task's plan scans its
    per-fold folders (trees, LoRA groups) with this one rule.
    """
    found = []
    for fold_dir in fold_dirs(root):
        k = layout.parse_fold_name(fold_dir.name)
        for child in sorted(p for p in fold_dir.iterdir() if p.is_dir() and is_output(p.name)):
            reason = f"fold {k} is not in the current split" if k not in folds else unplanned(child.name)
            if reason:
                found.append({"kind": kind, "path": child, "reason": reason})
    return found


def move_aside(plan, stale: list[dict]) -> Path | None:
    """Move `stale` outputs (`plan.stale_outputs()`, and their seals) to OUT/dropped/<time>/ and list them in
    SYN/dropped.json, which the report shows: the one mechanism of every task (nothing is deleted)."""
    if not stale:
        return None
    lay = plan.layout
    now = datetime.datetime.now(datetime.timezone.utc)
    target_root = lay.dropped_root / now.strftime("%Y%m%dT%H%M%S%fZ")
    records = []
    for item in stale:
        src = Path(item["path"])
        rel = src.relative_to(lay.out)
        dst = target_root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        layout.seal_file(src).unlink(missing_ok=True)
        records.append({"kind": item["kind"], "path": rel.as_posix(), "moved_to": dst.relative_to(lay.out).as_posix(),
                        "reason": item["reason"], "time": now.strftime("%Y-%m-%dT%H:%M:%SZ")})
    previous = []
    if lay.dropped_file.is_file():
        try:
            previous = json.loads(lay.dropped_file.read_text(encoding="utf-8")).get("dropped", [])
        except (OSError, ValueError, AttributeError):
            previous = []
    write_json_atomic(lay.dropped_file, {"version": 1, "dropped": previous + records})
    return target_root


def write_default_templates(target: Path) -> None:
    """Copy the toolkit's default prompt templates to `target` (OUT/templates.yaml), recorded as the workflow's."""
    from prompts.fingerprint import claim
    from prompts.templates import DEFAULT_TEMPLATES

    claim(target.parent, [target.name], WORKFLOW)
    write_text_atomic(target, Path(DEFAULT_TEMPLATES).read_text(encoding="utf-8"))


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "seal":
        seal(Path(args[1]))
        return 0
    if len(args) == 2 and args[0] == "default-templates":
        write_default_templates(Path(args[1]))
        return 0
    if len(args) == 3 and args[0] == "publish":
        try:
            publish(Path(args[1]), Path(args[2]))
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    print("usage: python -m study.outputs seal FOLDER | publish STAGED FINAL | default-templates FILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
