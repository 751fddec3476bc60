"""The workflow's folder outputs: sealed, verified, published whole, and moved aside when the study drops them.

- seal: after a job writes a folder (a LoRA, a synthetic tree, the realism or CV report), the
  checksums of all its files go into `.NAME.sha256` beside it (`sha256sum -c` format, paths
  relative to the parent). The seal is a file output Snakemake tracks.
- verify: before any job, a folder whose files no longer match its seal (a file deleted or
  changed) loses its seal, so Snakemake re-runs the job that makes it, and everything downstream.
- publish: `realism` and `cv` write into OUT/.stage/; only a finished folder is copied (hard
  links) over the published one, so a failing job never destroys the last good report.
- prune: synthetic trees and LoRA folders that the current study no longer defines (other LoRA
  weights, folds or groups) are moved to OUT/dropped/<time>/ and listed in SYN/dropped.json,
  which the report shows; nothing is deleted.

    python -m study.outputs seal FOLDER
    python -m study.outputs publish STAGED FINAL
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
    """Write the seal of a finished folder output; returns the seal file."""
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


def foreign_entries(staged: Path | None, final: Path) -> list[str]:
    """Names in the published folder that no command wrote: neither claimed in its outputs record, nor made anew by the
    staged job (e.g. a figure the user saved into OUT/report). Publishing never deletes them."""
    from prompts.fingerprint import claimed, written_by

    if not final.is_dir() or not claimed(final):
        return []  # no outputs record (an older or another room's folder): nothing tells ours from the user's
    ours = set(claimed(final)) | {layout.OUTPUTS_FILE, ".snakemake_timestamp"}
    if staged is not None and staged.is_dir():
        ours |= {p.name for p in staged.iterdir()}
    return sorted(p.name for p in final.iterdir() if p.name not in ours and not written_by(p))


def publish(staged: Path, final: Path) -> None:
    """Copy a finished staged folder into place (hard links where possible) and seal it.

    Raises UserError, replacing nothing, when the published folder holds a file the toolkit did not write.
    """
    staged, final = Path(staged), Path(final)
    foreign = foreign_entries(staged, final)
    if foreign:
        raise UserError(f"{final} holds {', '.join(foreign)}, which the toolkit did not write; move it out of that folder "
                        "(the new results wait in " + str(staged) + "), then run again: nothing was replaced")
    tmp = final.parent / f".{final.name}.publishing"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(staged, tmp, copy_function=_link_or_copy)
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
    """Synthetic trees and LoRA folders under OUT that the plan no longer defines: [{kind, path, reason}]."""
    if plan.task == "segmentation":
        return _stale_segmentation_outputs(plan)
    lay = plan.layout
    folds, weights, groups = set(plan.folds), set(plan.weight_dirs), {g["group"] for g in plan.groups}
    found = []
    for fold_dir in _fold_dirs(lay.synthetic_root):
        k = layout.parse_fold_name(fold_dir.name)
        for tree in sorted(p for p in fold_dir.iterdir() if p.is_dir() and layout.parse_weight_dir(p.name) is not None):
            if k not in folds:
                found.append({"kind": "synthetic tree", "path": tree, "reason": f"fold {k} is not in the current split"})
            elif tree.name not in weights:
                found.append({"kind": "synthetic tree", "path": tree,
                              "reason": f"LoRA weight {layout.parse_weight_dir(tree.name)!r} is not in generate.lora_weights"})
    for fold_dir in _fold_dirs(lay.lora_root):
        k = layout.parse_fold_name(fold_dir.name)
        for group in sorted(p for p in fold_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if k not in folds:
                found.append({"kind": "LoRA", "path": group, "reason": f"fold {k} is not in the current split"})
            elif group.name not in groups:
                found.append({"kind": "LoRA", "path": group, "reason": f"group {group.name!r} is not in the current study"})
    return found


def _stale_segmentation_outputs(plan) -> list[dict]:
    """Pairs trees (`aug`, `density<X>`) and fold ControlNets under OUT that a segmentation plan no longer defines."""
    folds, trees = set(plan.folds), set(plan.trees)
    found = []
    for fold_dir in _fold_dirs(plan.synthetic_root):
        k = layout.parse_fold_name(fold_dir.name)
        for tree in sorted(p for p in fold_dir.iterdir() if p.is_dir() and layout.parse_pairs_tree(p.name) is not False):
            if k not in folds:
                found.append({"kind": "synthetic pairs", "path": tree, "reason": f"fold {k} is not in the current split"})
            elif tree.name not in trees:
                found.append({"kind": "synthetic pairs", "path": tree,
                              "reason": f"tree {tree.name} is not planned (controlnet.augment, controlnet.densities)"})
    for fold_dir in _fold_dirs(plan.controlnet_root):
        k = layout.parse_fold_name(fold_dir.name)
        cn = fold_dir / layout.CONTROLNET_DIR
        if k not in folds and cn.is_dir():
            found.append({"kind": "ControlNet", "path": cn, "reason": f"fold {k} is not in the current split"})
    return found


def _fold_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and layout.parse_fold_name(p.name) is not None)


def move_aside(plan, stale: list[dict]) -> Path | None:
    """Move `stale` outputs (and their seals) to OUT/dropped/<time>/ and add them to SYN/dropped.json."""
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


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "seal":
        seal(Path(args[1]))
        return 0
    if len(args) == 3 and args[0] == "publish":
        try:
            publish(Path(args[1]), Path(args[2]))
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    print("usage: python -m study.outputs seal FOLDER | publish STAGED FINAL", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
