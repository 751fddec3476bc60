"""The checkpoint protocol of `lora train`: save, find, load, and the loss log they carry.

OUT/.work/[fold_<k>/]<group>/checkpoints/checkpoint-<update>/ holds accelerate's state (only the
LoRA weights and the optimizer: `register_lora_hooks`), loss.csv (one row per update so far),
fingerprint.json (the job's inputs) and train_state.json, written last: a checkpoint without it is
incomplete. Each is built as `.checkpoint-<update>.partial` and renamed into place, so a kill or a
full disk leaves either a complete checkpoint or none.

`job` arguments are `lora.plan.LoraJob`s (work_dir, fingerprint, group, display_name, checkpoints).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import signal
from pathlib import Path

from prompts import fingerprint, layout
from prompts.errors import UserError, raise_storage_error
from prompts.files import write_text_atomic

log = logging.getLogger("lora")

KILL_ENV = "LORA_KILL_AFTER_UPDATE"  # testing hook: "N" SIGKILLs this process right after checkpoint N; "N:INT" Ctrl-C, "N:TERM" SIGTERM
LOSS_COLUMNS = ["update", "epoch", "loss", "lr_unet", "lr_text_encoder"]


def checkpoints_dir(work_dir: Path) -> Path:
    """The folder of a group's checkpoints inside its work folder."""
    return work_dir / layout.LORA_CHECKPOINTS_DIR


def list_checkpoints(work_dir: Path) -> list[Path]:
    """The complete checkpoints (train_state.json present) of a group, newest first."""
    found = []
    for p in checkpoints_dir(work_dir).glob(f"{layout.LORA_CHECKPOINT_PREFIX}*"):
        number = p.name.removeprefix(layout.LORA_CHECKPOINT_PREFIX)
        if number.isdigit() and (p / layout.LORA_TRAIN_STATE_FILE).is_file():
            found.append((int(number), p))
    return [p for _, p in sorted(found, reverse=True)]


def read_state(ckpt: Path) -> dict | None:
    """train_state.json of a checkpoint ({"update": N, "group": ...}), or None when absent or unreadable."""
    try:
        state = json.loads((ckpt / layout.LORA_TRAIN_STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("update"), int) and state["update"] > 0 else None


# --------------------------------------------------------------------------- the loss log

def read_loss_rows(path: Path) -> list[dict]:
    """The rows of a loss log (`loss.csv`), one dict per optimizer update."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_loss_rows(path: Path, rows: list[dict]) -> None:
    """loss.csv: one row per optimizer update (update, epoch, loss, learning rates), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOSS_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


# --------------------------------------------------------------------------- save

def register_lora_hooks(accelerator, models) -> list:
    """Make accelerate's save_state/load_state store only the LoRA weights (not the frozen base)."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    def save_hook(hook_models, weights, output_dir):
        for i, m in enumerate(hook_models):
            save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(accelerator.unwrap_model(m)).items()},
                      os.path.join(output_dir, f"lora_{i}.safetensors"))
        weights.clear()  # nothing else: the base weights are frozen and reloaded from the model

    def load_hook(hook_models, input_dir):
        for i, m in enumerate(list(hook_models)):
            set_peft_model_state_dict(accelerator.unwrap_model(m), load_file(os.path.join(input_dir, f"lora_{i}.safetensors")))
        hook_models.clear()

    return [accelerator.register_save_state_pre_hook(save_hook), accelerator.register_load_state_pre_hook(load_hook)]


def save_checkpoint(accelerator, job, keep: int, update: int, rows: list[dict], save_state=None) -> None:
    """OUT/.work/.../checkpoints/checkpoint-<update>/, built beside and renamed in; keeps the newest `keep`.

    save_state(folder): writes the LoRA weights and optimizer state (default: `accelerator.save_state`; the
    multi-adapter trainer passes one group's, in the same files).
    """
    folder = checkpoints_dir(job.work_dir) / f"{layout.LORA_CHECKPOINT_PREFIX}{update}"
    partial = folder.with_name(f".{folder.name}.partial")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)  # ours: left by a killed save
    accelerator.wait_for_everyone()
    try:
        try:
            (save_state or accelerator.save_state)(str(partial))  # all processes must call it
        except Exception as err:  # torch.save and safetensors report a refused write as their own types
            raise_storage_error(err, folder)
        if accelerator.is_main_process:
            write_loss_rows(partial / layout.LORA_LOSS_FILE, rows)
            fingerprint.write(partial / layout.FINGERPRINT_FILE, job.fingerprint)
            write_text_atomic(partial / layout.LORA_TRAIN_STATE_FILE, json.dumps({"update": update, "group": job.group}, indent=2))
            if folder.exists():
                shutil.rmtree(folder)  # ours: a checkpoint of this update that could not be loaded
            os.replace(partial, folder)
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        for p in list_checkpoints(job.work_dir)[keep:]:
            shutil.rmtree(p)  # the oldest beyond --checkpoints-total-limit, all of this run's inputs
        log.info("%s: saved %s", job.display_name, folder)
    accelerator.wait_for_everyone()
    _testing_signal(update)


def _testing_signal(update: int) -> None:
    """The testing hook KILL_ENV="N" (SIGKILL), "N:INT" (Ctrl-C) or "N:TERM" (SIGTERM) right after checkpointing update N."""
    when, _, name = os.environ.get(KILL_ENV, "").partition(":")
    if when == str(update):
        os.kill(os.getpid(), {"INT": signal.SIGINT, "TERM": signal.SIGTERM}.get(name, signal.SIGKILL))


# --------------------------------------------------------------------------- load

def load_checkpoint(job, accelerator, optimizer, named: bool, load_state=None) -> tuple[int, list[dict], Path | None]:
    """Load the newest loadable checkpoint of `job.checkpoints`: (update, loss rows, folder), or (0, [], None).

    load_state(folder): reads what `save_checkpoint`'s save_state wrote (default: `accelerator.load_state`).
    A checkpoint that fails to load (a damaged file, a foreign optimizer state) is passed over for the
    previous one, saying so; a checkpoint named by --resume PATH (`named`) must load.
    """
    for i, ckpt in enumerate(job.checkpoints):
        try:
            state = read_state(ckpt)
            (load_state or accelerator.load_state)(str(ckpt))  # LoRA weights (our hook) and the optimizer state
            _check_optimizer_state(optimizer)
            rows = read_loss_rows(ckpt / layout.LORA_LOSS_FILE)
            if state is None or len(rows) != state["update"]:
                raise ValueError(f"loss.csv has {len(rows)} rows for {state and state['update']} updates")
            return state["update"], rows, ckpt
        except OSError as err:
            if not isinstance(err, FileNotFoundError):  # a missing file is damage; no permission is not
                raise
            reason = f"{Path(err.filename or '').name} is missing"
        except Exception as err:  # safetensors, torch.load and load_state_dict raise many types for damage
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        if named:
            raise UserError(f"--resume {ckpt}: cannot load it ({reason}); give a checkpoint-N folder written by "
                            "this run's `lora train`, or drop --resume")
        rest = job.checkpoints[i + 1:]
        log.warning("%s: checkpoint %s cannot be loaded (%s); %s", job.display_name, ckpt, reason,
                    f"falling back to {rest[0].name}" if rest else "no earlier checkpoint")
    if job.checkpoints:
        raise UserError(f"no checkpoint of {job.display_name} in {checkpoints_dir(job.work_dir)} can be loaded; "
                        f"pass --overwrite to start {job.display_name} over (drops them)")
    return 0, [], None


def _check_optimizer_state(optimizer) -> None:
    """Raise ValueError when the loaded AdamW moments do not have their parameters' shapes (a foreign state)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    for group in inner.param_groups:
        for p in group["params"]:
            for key in ("exp_avg", "exp_avg_sq"):
                value = inner.state.get(p, {}).get(key)
                if value is not None and value.shape != p.shape:
                    raise ValueError(f"optimizer state {key} has shape {tuple(value.shape)} for a parameter of {tuple(p.shape)}")
