"""What `lora train` leaves behind: the finished group folder, and the TensorBoard log while a group trains.

OUT/[fold_<k>/]<group>/ holds pytorch_lora_weights.safetensors (diffusers/peft keys), <group>.safetensors
(kohya/A1111, `ss_*` training metadata and the toolkit's `written_by` mark), config.yaml (the resolved
settings and the group's images and prompts), loss.csv, stats.json (throughput), tensorboard/, validation/
(a few Euler a images) and fingerprint.json, written last. The folder is built beside its place and renamed
in, so a killed run leaves no half group.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path

import torch

from diffusion.formats import network_args, write_diffusers, write_kohya
from prompts import fingerprint, layout
from prompts.config import as_dict, dump_yaml
from prompts.errors import UserError, raise_storage_error
from prompts.files import temp_dir_beside, write_text_atomic

from .checkpoints import write_loss_rows
from .plan import LoraJob, check_group_folder

log = logging.getLogger("lora")


def kohya_metadata(job: LoraJob, settings, n_images: int) -> dict[str, str]:
    """kohya sd-scripts' `ss_*` training metadata (all values strings), and the toolkit's `written_by` mark."""
    from diffusion.model import model_hash

    tags = Counter(t.strip() for c in job.captions for t in c.split(",") if t.strip())
    s = settings
    return {
        "ss_network_module": "networks.lora", "ss_network_dim": str(s.rank), "ss_network_alpha": str(s.alpha),
        "ss_base_model_version": "sd_v1", "ss_v2": "False", "ss_sd_model_name": Path(str(s.model)).name,
        "ss_new_sd_model_hash": model_hash(s.model), "ss_output_name": job.group,
        "ss_tag_frequency": json.dumps({f"{s.repeats}_{job.group}": dict(tags)}),
        "ss_num_train_images": str(n_images * s.repeats), "ss_num_epochs": str(s.epochs),
        "ss_batch_size_per_device": str(s.batch_size), "ss_resolution": f"({s.resolution}, {s.resolution})",
        "ss_learning_rate": str(s.unet_lr), "ss_unet_lr": str(s.unet_lr), "ss_text_encoder_lr": str(s.text_encoder_lr),
        "ss_lr_scheduler": s.lr_scheduler, "ss_lr_warmup_steps": str(s.lr_warmup_steps), "ss_seed": str(s.seed),
        "ss_mixed_precision": s.mixed_precision, "ss_gradient_accumulation_steps": str(s.gradient_accumulation_steps),
        "ss_min_snr_gamma": str(s.min_snr_gamma), "ss_noise_offset": str(s.noise_offset),
        "ss_flip_aug": str(s.random_flip), "ss_random_crop": str(s.random_crop), "ss_cache_latents": str(s.cache_latents),
        "ss_network_args": json.dumps(network_args(s.network, s.conv_dim, s.conv_alpha)),
        "ss_training_comment": f"cellsynth lora train, group {job.group}" + (f", {layout.fold_name(job.fold)}" if job.fold is not None else ""),
        fingerprint.WRITTEN_BY: fingerprint.mark("lora train"),
    }


def write_group(job: LoraJob, settings, data_settings, lora, rows, stats, pipe, accelerator) -> None:
    """Build the group folder beside its final place and rename it in (a killed run leaves no half group).

    lora: the trained `diffusion.formats.LoraWeights`; rows: the loss log; stats: throughput figures;
    pipe: the pipeline with the trained LoRA, for the validation images.
    """
    tmp = temp_dir_beside(job.out_dir, prefix=f".{job.group}.tmp-")
    try:
        write_diffusers(lora, tmp, {fingerprint.WRITTEN_BY: fingerprint.mark("lora train")})
        write_kohya(lora, tmp / layout.lora_kohya_file(job.group), kohya_metadata(job, settings, len(job.dataset.records)))
        fold = layout.fold_name(job.fold) if job.fold is not None else None
        resolved = {"data": as_dict(data_settings), "lora": as_dict(settings),
                    "group": {"name": job.group, "fold": fold, "images": [r.path for r in job.dataset.records],
                              "prompts": sorted(set(job.captions)), "negative_prompt": job.negative_prompt}}
        write_text_atomic(tmp / layout.LORA_CONFIG_FILE, dump_yaml(resolved))
        write_loss_rows(tmp / layout.LORA_LOSS_FILE, rows)
        write_text_atomic(tmp / layout.LORA_STATS_FILE, json.dumps(stats, indent=2) + "\n")  # throughput of this run
        if (job.work_dir / layout.LORA_TENSORBOARD_DIR).is_dir():
            shutil.copytree(job.work_dir / layout.LORA_TENSORBOARD_DIR, tmp / layout.LORA_TENSORBOARD_DIR)
        if settings.validation_images > 0:
            validation_images(pipe, job, settings, tmp / layout.LORA_VALIDATION_DIR, accelerator)
        fingerprint.write(tmp / layout.FINGERPRINT_FILE, job.fingerprint)  # last: what determined this LoRA
        _replace_group(job, tmp, settings.overwrite)
        shutil.rmtree(job.work_dir, ignore_errors=True)  # ours: the finished group's checkpoints and logs
        _remove_empty_parents(job.work_dir, Path(settings.output))
        log.info("%s: wrote %s", job.group, job.out_dir)
    except Exception as err:  # safetensors reports a full disk as its own error type
        raise_storage_error(err, job.out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_group(job: LoraJob, tmp: Path, overwrite: bool) -> None:
    """Rename the built folder into place; an old folder there goes only if `plan` let it through (ours, --overwrite)."""
    old = None
    if job.out_dir.exists() or job.out_dir.is_symlink():
        if not overwrite:
            raise UserError(f"{job.out_dir} appeared while {job.display_name} trained (another run?); the new LoRA was not "
                            "written: pass --overwrite to replace it, or choose another --output")
        check_group_folder(job, overwrite=True)  # again: the folder may have changed since plan()
        old = job.out_dir.with_name(f".{job.group}.old-{os.getpid()}")
        os.replace(job.out_dir, old)
    os.replace(tmp, job.out_dir)
    if old is not None:
        shutil.rmtree(old)


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    for parent in folder.parents:
        if parent == stop or stop not in parent.parents:
            return
        try:
            parent.rmdir()
        except OSError:
            return


@torch.no_grad()
def validation_images(pipe, job: LoraJob, settings, folder: Path, accelerator) -> None:
    """A few images with Euler a (A1111's sampler: Euler ancestral, linspace spacing), 20 steps, CFG 7, seeds seed+i."""
    from diffusers import EulerAncestralDiscreteScheduler

    folder.mkdir()
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.eval()
    pipe.text_encoder.eval()
    prompts = sorted(set(job.captions))
    for i in range(settings.validation_images):
        g = torch.Generator().manual_seed(settings.seed + i)
        with accelerator.autocast():
            image = pipe(prompts[i % len(prompts)], negative_prompt=job.negative_prompt, num_inference_steps=20, guidance_scale=7.0,
                         height=settings.resolution, width=settings.resolution, generator=g).images[0]
        image.save(folder / f"{i:02d}_seed{settings.seed + i}.png")


def tensorboard_tracker(folder: Path):
    """accelerate's TensorBoard tracker when tensorboard is installed, else None (the CSV log is always written)."""
    import sys
    import types

    # TensorBoard imports TensorFlow when it can find it; its own switch `tensorboard.compat.notf`
    # makes it use its TF stub instead (lora never imports TensorFlow).
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    try:
        from accelerate.tracking import TensorBoardTracker

        tracker = TensorBoardTracker(folder.name, str(folder.parent))
        tracker.start()
        return tracker
    except ImportError:  # neither tensorboard nor tensorboardX: the CSV log only
        return None
