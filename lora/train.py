"""The LoRA trainer: one LoRA per group (class, cell line x class, or all), top to bottom.

`plan()` checks every input and lists the jobs (fold x group) before anything is
written; `train_group()` is the training loop of one job; `run()` does them in turn.

Each job has a fingerprint (`job_fingerprint`: settings, base model, images, captions, split,
templates), recorded in its checkpoints and its finished folder. `plan()` compares it with what
OUT holds: a finished folder with an equal fingerprint is kept, checkpoints with an equal one are
continued, anything else stops with one line saying what changed. Only folders this module wrote
(a finished LoRA with its fingerprint; OUT/.work/) are ever replaced or deleted.

Units: a *step* is one forward/backward pass of `batch_size` images on each
process; an *update* is one optimizer step (every `gradient_accumulation_steps`
steps). Checkpoints, warm-up and the loss log count updates.

Randomness is explicit: the image order of epoch e comes from (seed, e); the noise,
timesteps, crops and flips of step s on process p from a generator seeded with
(seed, s, p). Together with the checkpointed LoRA weights and optimizer state this
makes a resumed run end with the same LoRA as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import logging
import math
import os
import shutil
import signal
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from diffusion.formats import from_peft, network_args, write_diffusers, write_kohya
from prompts import fingerprint as fp
from prompts import layout
from prompts.config import as_dict, dump_yaml
from prompts.dataset import Dataset, read_dataset
from prompts.errors import UserError
from prompts.files import temp_dir_beside, write_text_atomic
from prompts.guard import check_output_dir
from prompts.images import fit_reading
from prompts.splits import read_split
from prompts.templates import DEFAULT_TEMPLATES, load_templates

from . import data as D

log = logging.getLogger("lora")

WORK = ".work"  # OUT/.work/[fold_<k>/]<group>/: checkpoints and logs of a group still training
KILL_ENV = "LORA_KILL_AFTER_UPDATE"  # testing hook: "N" SIGKILLs this process right after checkpoint N, "N:INT" is Ctrl-C
STATE_FILE = "train_state.json"  # written last into a checkpoint: its presence marks the checkpoint complete


@dataclass
class Job:
    """One LoRA to train: its images, their captions, and where it goes."""

    group: str  # class, <cell_line>__<class>, or "all"
    dataset: Dataset  # the training images (a fold's training part when a split is given)
    captions: list[str]  # one prompt per record, from the templates
    negative_prompt: str
    out_dir: Path  # OUT/[fold_<k>/]<group>
    work_dir: Path  # OUT/.work/[fold_<k>/]<group>
    fold: int | None = None  # index of the split's fold, folder layout.fold_name(fold)
    triggers: dict[str, str] = field(default_factory=dict)  # trigger word of each (cell line,) class in the job
    fingerprint: dict = field(default_factory=dict)  # what determines this LoRA (job_fingerprint)
    finished: bool = False  # out_dir already holds this very LoRA (equal fingerprint): nothing to do
    checkpoints: list[Path] = field(default_factory=list)  # checkpoints to continue from, newest first
    restart: bool = False  # --resume auto found checkpoints of other inputs: the group starts over (drops its own work)
    reading: object = None  # prompts.normalize.Reading (percentile-dataset: levels of the fold's training images)


# --------------------------------------------------------------------------- planning (all checks, no writes)

def plan(cfg, data_cfg, resume: str | None = None) -> list[Job]:
    """Check the inputs and list the jobs in order, each with its fingerprint and what to resume from.

    Raises UserError before anything is written: bad settings or data, an output folder inside the
    data, a group folder this tool did not write, a finished LoRA or a checkpoint made from other inputs.
    """
    if not data_cfg.data:
        raise UserError("no data folder given; pass --data DIR (DIR/<class>/<images> or DIR/<cell_line>/<class>/<images>)")
    if not cfg.output:
        raise UserError("no output folder given; pass --output DIR")
    out = check_output_dir(cfg.output, data=data_cfg.data, flag="--output")
    if cfg.resolution <= 0 or cfg.resolution % 8:
        raise UserError(f"--resolution {cfg.resolution}: must be a positive multiple of 8 (the VAE downsamples by 8)")
    for key in ("epochs", "repeats", "batch_size", "rank", "gradient_accumulation_steps"):
        if getattr(cfg, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} {getattr(cfg, key)}: must be at least 1")
    if cfg.cache_latents and cfg.random_crop:
        raise UserError("--cache-latents cannot be combined with --random-crop (each crop needs its own encoding); drop one")
    if resume is not None and cfg.overwrite:
        raise UserError(f"--resume {resume} continues and --overwrite starts over; drop one of them")
    if cfg.optimizer == "adamw8bit":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
            raise UserError("--optimizer adamw8bit needs the bitsandbytes package and a CUDA GPU; use --optimizer adamw")
    from diffusion.model import check_model

    check_model(cfg.model, cfg.allow_pickle)
    dataset = read_dataset(data_cfg.data, check_images=True, skip_bad_images=data_cfg.skip_bad_images)
    templates = load_templates(data_cfg.templates)
    templates.check_classes(dataset.classes)
    every = dataset  # all classes: percentile-dataset takes its percentiles over the fold's whole training set
    dataset = dataset.select(classes=cfg.classes or None, cell_lines=cfg.cell_lines or None)
    if cfg.per == "cell_line_class" and not dataset.cell_lines:
        raise UserError(f"--per cell_line_class: {dataset.root} has no cell lines; use DATA/<cell_line>/<class>/ or a cell_line column")
    parts: list[tuple[int | None, Dataset]] = [(None, dataset)]
    train_of: dict[int | None, Dataset] = {None: every}
    if data_cfg.split:
        if cfg.fold is None:
            raise UserError("--split needs --fold K or --fold all")
        split = read_split(data_cfg.split, read_dataset(data_cfg.data, skip_bad_images=data_cfg.skip_bad_images))
        parts = [(f.index, dataset.select(paths=f.train)) for f in split.select(cfg.fold)]
        train_of = {f.index: every.select(paths=f.train) for f in split.select(cfg.fold)}
    elif cfg.fold is not None:
        raise UserError(f"--fold {cfg.fold} needs --split FILE (a split file from `python -m classify split`)")
    jobs = []
    for fold, part in parts:
        reading = fit_reading([part.abspath(r) for r in train_of[fold].records])  # changes nothing unless percentile-dataset
        for group, records in _groups(part, cfg.per).items():
            sub = Dataset(part.root, records, part.source)
            prompts = [templates.for_group(r.label, r.cell_line if cfg.per != "class" else None) for r in records]
            jobs.append(Job(group, sub, [p.prompt for p in prompts], prompts[0].negative_prompt,
                            layout.lora_dir(out, fold, group), layout.lora_dir(out / WORK, fold, group), fold,
                            triggers=dict(sorted({p.group: p.trigger for p in prompts}.items())), reading=reading))
        wanted = set(cfg.classes) - {r.label for r in part.records}
        if wanted:
            where = layout.fold_name(fold) if fold is not None else "the data"
            raise UserError(f"class {sorted(wanted)[0]} has no training images in {where}; drop it from --classes")
    if resume not in (None, "latest", "auto") and len(jobs) != 1:
        raise UserError(f"--resume {resume}: a checkpoint path resumes one group; select it with --classes/--fold, or use --resume latest")
    for job in jobs:
        job.fingerprint = job_fingerprint(job, cfg, data_cfg)
        job.finished = _check_group_folder(job, cfg.overwrite)
        job.checkpoints = [] if job.finished or cfg.overwrite else _resumable_checkpoints(job, resume)
    return jobs


def _groups(dataset: Dataset, per: str) -> dict[str, list]:
    """Records of each group, in sorted group order (labels and cell lines checked as folder names)."""
    groups: dict[str, list] = {}
    for r in dataset.records:
        cell_line = layout.check_name(r.cell_line, "cell line") if per == "cell_line_class" else None
        key = "all" if per == "all" else layout.group_name(layout.check_name(r.label, "class"), cell_line)
        groups.setdefault(key, []).append(r)
    return dict(sorted(groups.items()))


def is_finished(out_dir: Path) -> bool:
    """A group folder this tool finished: the diffusers LoRA and the fingerprint (renamed into place whole)."""
    return (out_dir / layout.LORA_DIFFUSERS_FILE).is_file() and (out_dir / layout.FINGERPRINT_FILE).is_file()


def group_entries(group: str) -> set[str]:
    """The names `_write_group` puts into a group folder; nothing else there is ours to delete."""
    return {layout.LORA_DIFFUSERS_FILE, layout.lora_kohya_file(group), layout.FINGERPRINT_FILE, "config.yaml",
            "loss.csv", "stats.json", "tensorboard", "validation"}


def job_name(job: Job) -> str:
    """The group as the user sees it in messages: `bad` or `fold_0/bad`."""
    return f"{layout.fold_name(job.fold)}/{job.group}" if job.fold is not None else job.group


# --------------------------------------------------------------------------- fingerprints (resume and reuse)

def job_fingerprint(job: Job, cfg, data_cfg) -> dict:
    """What determines this job's LoRA (prompts/fingerprint.py), plus the records other commands read.

    parts: `settings` (the lora section's fields marked as changing the result), `model` (content of
    the base model's weight and config files, and of --model-config), `images` (content of this job's
    training images), `captions` (the prompts it trains with), `split` and `templates` (the files'
    content). Top-level records: `images` {data-relative path: sha256} and `triggers` {group: trigger
    word}, which `generate` checks against a fold's test set and its prompts; `settings` {key: value},
    which names a changed setting in messages.
    """
    images = fp.files_part([r.path for r in job.dataset.records], root=job.dataset.root)
    settings = json.loads(json.dumps(fp.settings_part(cfg), default=str))  # as it reads back from the file
    parts = fp.make(settings=settings, model=[fp.model_part(cfg.model), fp.model_part(cfg.model_config)],
                    images=images, captions=[job.captions, job.negative_prompt],
                    split=fp.file_sha256(data_cfg.split) if data_cfg.split else None,
                    templates=fp.file_sha256(data_cfg.templates or DEFAULT_TEMPLATES), reading=fp.reading_part(job.reading))
    return {**parts, "images": images, "triggers": job.triggers, "settings": settings, "reading": fp.reading_part(job.reading)}


def describe_changes(recorded: dict | None, current: dict) -> str:
    """'' when the fingerprints are equal, else what changed: 'settings (rank: 8 -> 4), split changed since'."""
    changed = fp.diff(recorded, current)
    if not changed:
        return ""
    if "settings" in changed:
        old, new = recorded.get("settings") or {}, current.get("settings") or {}
        keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if keys:
            changed[changed.index("settings")] = "settings (" + ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:4]) + ")"
    return ", ".join(changed) + " changed since"


def _check_group_folder(job: Job, overwrite: bool) -> bool:
    """Whether OUT/[fold_<k>/]<group>/ already holds this very LoRA; refuses what may not be replaced.

    Only a folder this tool finished (LoRA + fingerprint, nothing else in it) is ever replaced, and only
    with --overwrite; a folder with an equal fingerprint is reused; anything else there is the user's.
    """
    out = job.out_dir
    if not out.exists() and not out.is_symlink():
        return False
    if out.is_symlink() or not is_finished(out):
        raise UserError(f"{out} exists and is not a LoRA folder written by `lora train` (no {layout.LORA_DIFFUSERS_FILE} "
                        f"with {layout.FINGERPRINT_FILE}); it is left untouched: move it away or choose another --output")
    changes = describe_changes(fp.read(out / layout.FINGERPRINT_FILE), job.fingerprint)
    if not overwrite:
        if changes:
            raise UserError(f"{out} already holds a finished LoRA made from other inputs ({changes}); "
                            "pass --overwrite to replace it, or choose another --output")
        return True
    foreign = sorted(set(os.listdir(out)) - group_entries(job.group))
    if foreign:
        raise UserError(f"{out} holds files `lora train` did not write ({', '.join(foreign[:3])}); --overwrite replaces "
                        "only what it wrote: move them away first")
    return False


class Diverged(UserError):
    """The loss or the LoRA weights stopped being finite numbers (a learning rate far too high); nothing was written."""


def diverged_message(job: Job, cfg, what: str, update: int, total_updates: int) -> str:
    """The one line for a run whose loss or weights stopped being finite numbers."""
    lrs = f"--unet-lr {cfg.unet_lr:g}" + (f", --text-encoder-lr {cfg.text_encoder_lr:g}" if cfg.text_encoder_lr > 0 else "")
    return (f"{job_name(job)}: {what} at update {update} of {total_updates}, so no LoRA was written for it; the "
            f"learning rate is likely too high ({lrs}): lower it"
            + (", or use --mixed-precision bf16 or no" if cfg.mixed_precision == "fp16" else ""))


# --------------------------------------------------------------------------- model setup

def step_generator(seed: int, step: int, process: int) -> torch.Generator:
    """The CPU generator of one step on one process (noise, timesteps, crops, flips, VAE samples)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + process)


def add_lora(unet, text_encoder, cfg) -> list[dict]:
    """Add peft LoRA adapters (rank, alpha) and return the optimizer's parameter groups (fp32 LoRA params)."""
    from diffusion.formats import network_modules, peft_config

    torch.manual_seed(cfg.seed)  # LoRA init (A: Kaiming-uniform, B: zeros)
    train_te = cfg.text_encoder_lr > 0
    kinds = network_modules(unet, text_encoder if train_te else None, cfg.network, cfg.conv_dim)  # kohya's or attention

    def config(component):
        return peft_config({n: k for (c, n), k in kinds.items() if c == component}, cfg.rank, cfg.alpha, cfg.conv_dim, cfg.conv_alpha)

    unet.add_adapter(config("unet"))
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": cfg.unet_lr}]
    if train_te:
        text_encoder.add_adapter(config("text_encoder"))
        groups.append({"params": [p for p in text_encoder.parameters() if p.requires_grad], "lr": cfg.text_encoder_lr})
    for group in groups:
        for p in group["params"]:
            p.data = p.data.float()  # LoRA parameters stay fp32 under mixed precision
    return groups


def encode_prompts(tokenizer, captions: list[str]) -> tuple[torch.Tensor, list[int]]:
    """Token ids [n_unique, 77] of the distinct captions, and each caption's row index."""
    unique = sorted(set(captions))
    ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    return ids, [unique.index(c) for c in captions]


@torch.no_grad()
def cache_latents(vae, images: D.ImageSet, flips: bool, seed: int, device, dtype) -> torch.Tensor:
    """VAE latents of every image [N, V, 4, res/8, res/8]; V = 4 flip variants (none, h, v, hv) or 1.

    Each is one sample of the VAE's latent distribution (as kohya caches it), times the scaling factor.
    """
    variants = [(False, False), (True, False), (False, True), (True, True)] if flips else [(False, False)]
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(len(images)):
        x = D.pixel_batch(images, [i], random_crop=False, generator=g)
        x = torch.cat([D.apply_flips(x, torch.tensor([v])) for v in variants])
        dist = vae.encode(x.to(device, dtype)).latent_dist
        out.append((dist.sample(generator=g) * vae.config.scaling_factor).float().cpu())
    return torch.stack(out)


# --------------------------------------------------------------------------- the training loop of one group

def train_group(job: Job, cfg, data_cfg, accelerator, resume: str | None) -> Path:
    """Train one LoRA and write its folder atomically; returns OUT/[fold_<k>/]<group>."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import compute_snr

    from diffusion.model import load_pipeline

    info = log.info if accelerator.is_main_process else (lambda *a: None)  # log once, not once per process
    device = accelerator.device
    P, rank = accelerator.num_processes, accelerator.process_index
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]

    # 1. the frozen base model, LoRA adapters, optimizer and schedule
    pipe = load_pipeline(cfg.model, torch_dtype=torch.float32, allow_pickle=cfg.allow_pickle, config=cfg.model_config)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False)
        m.to(device)
        if weight_dtype != torch.float32:
            m.to(dtype=weight_dtype)  # frozen weights in the mixed-precision dtype
    train_te = cfg.text_encoder_lr > 0
    param_groups = add_lora(unet, text_encoder, cfg)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if train_te:
            text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(param_groups, weight_decay=cfg.weight_decay)
    else:
        # fused: one kernel for all LoRA tensors instead of ~10 per tensor (12x faster on a CPU for the tiny model's 128)
        optimizer = torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay, fused=device.type in ("cpu", "cuda"))
    n_images = len(job.dataset.records)
    steps_per_epoch = D.steps_per_epoch(n_images, cfg.repeats, cfg.batch_size, P)
    total_steps = steps_per_epoch * cfg.epochs
    total_updates = math.ceil(total_steps / cfg.gradient_accumulation_steps)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=total_updates)
    if train_te:
        unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    else:
        unet, optimizer = accelerator.prepare(unet, optimizer)
    models = [unet, text_encoder] if train_te else [unet]
    hooks = _register_lora_hooks(accelerator, models)
    lora_params = [p for grp in param_groups for p in grp["params"]]
    # accelerate's optimizer wrapper looks packages up and inspects signatures on every step; without an fp16
    # grad scaler it only forwards to the torch optimizer, so the loop calls that directly
    torch_optimizer = optimizer.optimizer if accelerator.scaler is None and hasattr(optimizer, "optimizer") else optimizer
    epoch_cache: dict[int, list[list[int]]] = {}  # this process's batches of each epoch

    # 2. the images (and their latents, once, when caching), the captions' token ids
    images = D.load_images(job.dataset, cfg.resolution, job.reading)
    t_cache = time.perf_counter()
    latents_cache = cache_latents(vae, images, cfg.random_flip, cfg.seed, device, weight_dtype) if cfg.cache_latents else None
    cache_seconds = time.perf_counter() - t_cache
    token_ids, caption_row = encode_prompts(tokenizer, job.captions)
    token_ids = token_ids.to(device)
    if not train_te:
        with torch.no_grad():
            text_states = text_encoder(token_ids)[0]  # [n_unique, 77, dim], fixed

    # 3. resume: LoRA weights, optimizer state and the update count from a checkpoint (fingerprints checked in plan())
    if (cfg.overwrite or job.restart) and job.work_dir.exists() and accelerator.is_main_process:
        shutil.rmtree(job.work_dir)  # starting over: this group's own checkpoints and logs go
    accelerator.wait_for_everyone()
    update, rows, ckpt = _load_checkpoint(job, accelerator, optimizer, named=resume not in (None, "latest", "auto"))
    if ckpt is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": intended here
            for _ in range(update):
                lr_scheduler.step()  # the schedule is a function of the update count
        info("%s: continuing from %s at update %d of %d", job_name(job), ckpt, update, total_updates)
    tracker = _tracker(job.work_dir / "tensorboard") if accelerator.is_main_process else None

    # 4. the loop
    info("%s: %d images x %d repeats, %d epochs, %d steps of %d x %d processes, %d updates",
         job.group, n_images, cfg.repeats, cfg.epochs, total_steps, cfg.batch_size, P, total_updates)
    accum = cfg.gradient_accumulation_steps
    step, loss_sum, loss_n = update * accum, 0.0, 0
    first_step, t_start, step_seconds = step, time.perf_counter(), []  # wall time of each whole iteration
    t_prev = t_start
    for m in models:
        m.train()
    while step < total_steps:
        if step > first_step:
            t_now = time.perf_counter()
            step_seconds.append(t_now - t_prev)
            t_prev = t_now
        epoch, k = divmod(step, steps_per_epoch)
        if epoch not in epoch_cache:
            epoch_cache.clear()
            epoch_cache[epoch] = D.epoch_batches(D.epoch_order(n_images, cfg.repeats, epoch, cfg.seed), cfg.batch_size, P, rank)
        batch = epoch_cache[epoch][k]
        g = step_generator(cfg.seed, step, rank)
        flips = D.flip_flags(len(batch), g) if cfg.random_flip else torch.zeros(len(batch), 2, dtype=torch.bool)
        sync = (step + 1) % accum == 0 or step + 1 == total_steps
        with contextlib.ExitStack() as no_sync:
            if not sync and P > 1:  # accumulate locally; DDP averages gradients only on the update step
                for m in models:
                    no_sync.enter_context(accelerator.no_sync(m))
            # latents [B, 4, res/8, res/8] of the batch, scaled for the U-Net
            if latents_cache is not None:
                variant = (flips[:, 0].long() + 2 * flips[:, 1].long()) if cfg.random_flip else torch.zeros(len(batch), dtype=torch.long)
                latents = latents_cache[batch, variant].to(device)
            else:
                pixels = D.apply_flips(D.pixel_batch(images, batch, cfg.random_crop, g), flips)
                with torch.no_grad():
                    dist = vae.encode(pixels.to(device, weight_dtype)).latent_dist
                    latents = (dist.sample(generator=g) * vae.config.scaling_factor).float()
            noise = torch.randn(latents.shape, generator=g).to(device)
            if cfg.noise_offset:
                noise = noise + cfg.noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1, generator=g).to(device)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(batch),), generator=g).to(device)
            noisy = noise_scheduler.add_noise(latents, noise, t)
            rows_idx = torch.tensor([caption_row[i] for i in batch], device=device)
            hidden = text_encoder(token_ids[rows_idx])[0] if train_te else text_states[rows_idx]
            target = noise if noise_scheduler.config.prediction_type == "epsilon" else noise_scheduler.get_velocity(latents, noise, t)
            with accelerator.autocast():
                pred = unet(noisy.to(weight_dtype), t, hidden.to(weight_dtype)).sample
            loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))  # [B]
            if cfg.min_snr_gamma:
                snr = compute_snr(noise_scheduler, t)
                weight = torch.clamp(snr, max=cfg.min_snr_gamma)
                loss = loss * (weight / snr if noise_scheduler.config.prediction_type == "epsilon" else weight / (snr + 1))
            loss = loss.mean()
            accelerator.backward(loss / accum)
        loss_sum, loss_n, step = loss_sum + loss.detach().item(), loss_n + 1, step + 1
        if not sync:
            continue
        if cfg.max_grad_norm > 0:
            if accelerator.scaler is None:  # accelerate's wrapper costs more than the norm itself; it is needed only to unscale fp16
                torch.nn.utils.clip_grad_norm_(lora_params, cfg.max_grad_norm, foreach=True)
            else:
                accelerator.clip_grad_norm_(lora_params, cfg.max_grad_norm)
        torch_optimizer.step()
        lr_scheduler.step()
        torch_optimizer.zero_grad(set_to_none=True)
        update += 1
        mean_loss = accelerator.reduce(torch.tensor(loss_sum / loss_n, device=device), reduction="mean").item()
        loss_sum, loss_n = 0.0, 0
        if not math.isfinite(mean_loss):  # the same reduced value on every process: all stop together
            raise Diverged(diverged_message(job, cfg, f"the training loss became {mean_loss}", update, total_updates))
        lrs = lr_scheduler.get_last_lr()
        rows.append({"update": update, "epoch": epoch, "loss": f"{mean_loss:.6f}", "lr_unet": f"{lrs[0]:.3e}",
                     "lr_text_encoder": f"{lrs[1]:.3e}" if train_te else ""})
        if tracker is not None:
            tracker.writer.add_scalar("loss", mean_loss, update)  # not tracker.log: it flushes the file every update
            tracker.writer.add_scalar("lr/unet", lrs[0], update)
        if update % 10 == 0 or update == total_updates:
            info("%s: update %d/%d  loss %.4f", job.group, update, total_updates, mean_loss)
        if cfg.checkpointing_steps and update % cfg.checkpointing_steps == 0 and update < total_updates:
            _save_checkpoint(accelerator, job, cfg, update, rows)

    if not all(torch.isfinite(p).all() for grp in param_groups for p in grp["params"]):
        raise Diverged(diverged_message(job, cfg, "the LoRA weights stopped being finite numbers", update, total_updates))
    t_end = time.perf_counter()
    if step > first_step:
        step_seconds.append(t_end - t_prev)
    timed = sorted(step_seconds[1:])  # the first step warms up
    stats = {"steps": step - first_step, "updates": update, "processes": P, "batch_size_per_process": cfg.batch_size,
             "cache_seconds": round(cache_seconds, 4), "loop_seconds": round(t_end - t_start, 4),
             "steps_per_second_median": round(1 / timed[len(timed) // 2], 4) if timed else None,
             "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None,
             "step_seconds": [round(t, 5) for t in step_seconds]}

    # 5. outputs, written into a temporary folder and renamed into place
    accelerator.wait_for_everyone()
    if tracker is not None:
        tracker.finish()
    if accelerator.is_main_process:
        lora = from_peft(accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder) if train_te else None)
        pipe.unet, pipe.text_encoder = accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder)
        _write_group(job, cfg, data_cfg, lora, rows, stats, pipe, accelerator)
    accelerator.wait_for_everyone()
    for h in hooks:
        h.remove()
    accelerator.free_memory()
    return job.out_dir


# --------------------------------------------------------------------------- checkpoints

def _register_lora_hooks(accelerator, models) -> list:
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


def _save_checkpoint(accelerator, job: Job, cfg, update: int, rows: list[dict]) -> None:
    """OUT/.work/.../checkpoints/checkpoint-<update>/: accelerate state, loss.csv, fingerprint.json, train_state.json.

    Built as `.checkpoint-<update>.partial` and renamed into place, so a kill or a full disk leaves
    either a complete checkpoint or none; train_state.json, written last, marks it complete.
    """
    folder = job.work_dir / "checkpoints" / f"checkpoint-{update}"
    partial = folder.with_name(f".{folder.name}.partial")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)  # ours: left by a killed save
    accelerator.wait_for_everyone()
    try:
        try:
            accelerator.save_state(str(partial))  # all processes must call it
        except Exception as err:  # torch.save and safetensors report a refused write as their own types
            raise_storage_error(err, folder)
        if accelerator.is_main_process:
            _write_rows(partial / "loss.csv", rows)
            fp.write(partial / layout.FINGERPRINT_FILE, job.fingerprint)
            write_text_atomic(partial / STATE_FILE, json.dumps({"update": update, "group": job.group}, indent=2))
            if folder.exists():
                shutil.rmtree(folder)  # ours: a checkpoint of this update that could not be loaded
            os.replace(partial, folder)
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        for p in _checkpoints(job.work_dir)[cfg.checkpoints_total_limit:]:
            shutil.rmtree(p)  # the oldest beyond --checkpoints-total-limit, all of this run's inputs
        log.info("%s: saved %s", job_name(job), folder)
    accelerator.wait_for_everyone()
    _testing_signal(update)


def _testing_signal(update: int) -> None:
    """The testing hook KILL_ENV="N" (SIGKILL) or "N:INT" (Ctrl-C) right after checkpointing update N."""
    when, _, sig = os.environ.get(KILL_ENV, "").partition(":")
    if when == str(update):
        os.kill(os.getpid(), signal.SIGINT if sig == "INT" else signal.SIGKILL)


# How writers that do not raise OSError (torch.save, safetensors) word a refused write.
_WRITE_FAILURES = {
    errno.ENOSPC: ("No space left on device", "os error 28", "unexpected pos", "write failed"),  # the last two: torch.save
    errno.EROFS: ("Read-only file system", "os error 30"),
    errno.EACCES: ("Permission denied", "os error 13"),
}


def raise_storage_error(err: Exception, path: Path) -> None:
    """Raise the OSError that a failed write of `path` really was (the CLI makes it one line), else `err` itself."""
    text = str(err)
    for code, words in _WRITE_FAILURES.items():
        if any(w in text for w in words):
            raise OSError(code, os.strerror(code), str(path)) from err
    raise err


def _checkpoints(work_dir: Path) -> list[Path]:
    """The complete checkpoints (train_state.json present) of a group, newest first."""
    found = []
    for p in (work_dir / "checkpoints").glob("checkpoint-*"):
        number = p.name.removeprefix("checkpoint-")
        if number.isdigit() and (p / STATE_FILE).is_file():
            found.append((int(number), p))
    return [p for _, p in sorted(found, reverse=True)]


def _read_state(ckpt: Path) -> dict | None:
    """train_state.json of a checkpoint ({"update": N, "group": ...}), or None when absent or unreadable."""
    try:
        state = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("update"), int) and state["update"] > 0 else None


def _resumable_checkpoints(job: Job, resume: str | None) -> list[Path]:
    """The checkpoints `job` continues from, newest first; each was made from this run's inputs.

    Without --resume and with --resume latest: the group's complete checkpoints in OUT/.work/. One whose
    fingerprint cannot be read is passed over, saying so; one made from other inputs stops the run, since
    only the user can say whether to restore those inputs or to start over (--overwrite). With --resume auto
    (the workflow's choice: a changed study file is the user's decision) the group starts over instead, saying so.
    """
    if resume not in (None, "latest", "auto"):
        ckpt = Path(resume)
        if _read_state(ckpt) is None:
            raise UserError(f"--resume {ckpt}: not a complete checkpoint of `lora train` (no readable {STATE_FILE}); "
                            "give a checkpoint-N folder from OUT/.work/, or drop --resume")
        changes = describe_changes(fp.read(ckpt / layout.FINGERPRINT_FILE), job.fingerprint)
        if changes:
            raise UserError(f"checkpoint {ckpt} was made from other inputs ({changes}); "
                            "resume with the inputs it was made from, or drop --resume to start over")
        return [ckpt]
    found, every = [], _checkpoints(job.work_dir)
    for ckpt in every:
        recorded = fp.read(ckpt / layout.FINGERPRINT_FILE)
        if _read_state(ckpt) is None or recorded is None:
            log.warning("%s: checkpoint %s is unreadable (%s or %s); passed over", job_name(job), ckpt,
                        STATE_FILE, layout.FINGERPRINT_FILE)
            continue
        changes = describe_changes(recorded, job.fingerprint)
        if changes and resume == "auto":
            log.warning("%s: checkpoint %s was made from other inputs (%s); starting the group over", job_name(job), ckpt, changes)
            job.restart = True
            return []
        if changes:
            raise UserError(f"checkpoint {ckpt} was made from other inputs ({changes}); run with the inputs it was "
                            f"made from to continue it, or pass --overwrite to start {job_name(job)} over (drops its checkpoints)")
        found.append(ckpt)
    if every and not found:
        raise UserError(f"no checkpoint of {job_name(job)} in {job.work_dir / 'checkpoints'} can be read; "
                        f"pass --overwrite to start {job_name(job)} over (drops them)")
    return found


def _load_checkpoint(job: Job, accelerator, optimizer, named: bool) -> tuple[int, list[dict], Path | None]:
    """Load the newest loadable checkpoint of `job.checkpoints`: (update, loss rows, folder), or (0, [], None).

    A checkpoint that fails to load (a damaged file, a foreign optimizer state) is passed over for the
    previous one, saying so; a checkpoint named by --resume PATH (`named`) must load.
    """
    for i, ckpt in enumerate(job.checkpoints):
        try:
            state = _read_state(ckpt)
            accelerator.load_state(str(ckpt))  # LoRA weights (our hook) and the optimizer state
            _check_optimizer_state(optimizer)
            rows = _read_rows(ckpt / "loss.csv")
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
        log.warning("%s: checkpoint %s cannot be loaded (%s); %s", job_name(job), ckpt, reason,
                    f"falling back to {rest[0].name}" if rest else "no earlier checkpoint")
    if job.checkpoints:
        raise UserError(f"no checkpoint of {job_name(job)} in {job.work_dir / 'checkpoints'} can be loaded; "
                        f"pass --overwrite to start {job_name(job)} over (drops them)")
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


def _read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write_rows(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["update", "epoch", "loss", "lr_unet", "lr_text_encoder"])
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def _tracker(folder: Path):
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


# --------------------------------------------------------------------------- outputs

def kohya_metadata(job: Job, cfg, lora, n_images: int) -> dict[str, str]:
    """kohya sd-scripts' `ss_*` training metadata (all values strings)."""
    from diffusion.model import model_hash

    tags = Counter(t.strip() for c in job.captions for t in c.split(",") if t.strip())
    return {
        "ss_network_module": "networks.lora", "ss_network_dim": str(cfg.rank), "ss_network_alpha": str(cfg.alpha),
        "ss_base_model_version": "sd_v1", "ss_v2": "False", "ss_sd_model_name": Path(str(cfg.model)).name,
        "ss_new_sd_model_hash": model_hash(cfg.model), "ss_output_name": job.group,
        "ss_tag_frequency": json.dumps({f"{cfg.repeats}_{job.group}": dict(tags)}),
        "ss_num_train_images": str(n_images * cfg.repeats), "ss_num_epochs": str(cfg.epochs),
        "ss_batch_size_per_device": str(cfg.batch_size), "ss_resolution": f"({cfg.resolution}, {cfg.resolution})",
        "ss_learning_rate": str(cfg.unet_lr), "ss_unet_lr": str(cfg.unet_lr), "ss_text_encoder_lr": str(cfg.text_encoder_lr),
        "ss_lr_scheduler": cfg.lr_scheduler, "ss_lr_warmup_steps": str(cfg.lr_warmup_steps), "ss_seed": str(cfg.seed),
        "ss_mixed_precision": cfg.mixed_precision, "ss_gradient_accumulation_steps": str(cfg.gradient_accumulation_steps),
        "ss_min_snr_gamma": str(cfg.min_snr_gamma), "ss_noise_offset": str(cfg.noise_offset),
        "ss_flip_aug": str(cfg.random_flip), "ss_random_crop": str(cfg.random_crop), "ss_cache_latents": str(cfg.cache_latents),
        "ss_network_args": json.dumps(network_args(cfg.network, cfg.conv_dim, cfg.conv_alpha)),
        "ss_training_comment": f"cellsynth lora train, group {job.group}" + (f", {layout.fold_name(job.fold)}" if job.fold is not None else ""),
    }


def _write_group(job: Job, cfg, data_cfg, lora, rows, stats, pipe, accelerator) -> None:
    """Build the group folder beside its final place and rename it in (a killed run leaves no half group)."""
    tmp = temp_dir_beside(job.out_dir, prefix=f".{job.group}.tmp-")
    try:
        write_diffusers(lora, tmp)
        write_kohya(lora, tmp / layout.lora_kohya_file(job.group), kohya_metadata(job, cfg, lora, len(job.dataset.records)))
        fold = layout.fold_name(job.fold) if job.fold is not None else None
        resolved = {"data": as_dict(data_cfg), "lora": as_dict(cfg),
                    "group": {"name": job.group, "fold": fold, "images": [r.path for r in job.dataset.records],
                              "prompts": sorted(set(job.captions)), "negative_prompt": job.negative_prompt}}
        write_text_atomic(tmp / "config.yaml", dump_yaml(resolved))
        _write_rows(tmp / "loss.csv", rows)
        write_text_atomic(tmp / "stats.json", json.dumps(stats, indent=2) + "\n")  # throughput of this run
        if (job.work_dir / "tensorboard").is_dir():
            shutil.copytree(job.work_dir / "tensorboard", tmp / "tensorboard")
        if cfg.validation_images > 0:
            _validation_images(pipe, job, cfg, tmp / "validation", accelerator)
        fp.write(tmp / layout.FINGERPRINT_FILE, job.fingerprint)  # last: what determined this LoRA
        old = None
        if job.out_dir.exists() or job.out_dir.is_symlink():  # plan() let through only our finished folder, with --overwrite
            if not cfg.overwrite:
                raise UserError(f"{job.out_dir} appeared while {job_name(job)} trained (another run?); the new LoRA was not "
                                "written: pass --overwrite to replace it, or choose another --output")
            _check_group_folder(job, overwrite=True)  # again: the folder may have changed since plan()
            old = job.out_dir.with_name(f".{job.group}.old-{os.getpid()}")
            os.replace(job.out_dir, old)
        os.replace(tmp, job.out_dir)
        if old is not None:
            shutil.rmtree(old)
        shutil.rmtree(job.work_dir, ignore_errors=True)  # ours: the finished group's checkpoints and logs
        _remove_empty_parents(job.work_dir, Path(cfg.output))
        log.info("%s: wrote %s", job.group, job.out_dir)
    except Exception as err:  # safetensors reports a full disk as its own error type
        raise_storage_error(err, job.out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    for parent in folder.parents:
        if parent == stop or stop not in parent.parents:
            return
        try:
            parent.rmdir()
        except OSError:
            return


@torch.no_grad()
def _validation_images(pipe, job: Job, cfg, folder: Path, accelerator) -> None:
    """A few images with Euler a (A1111's sampler: Euler ancestral, linspace spacing), 20 steps, CFG 7, seeds seed+i."""
    from diffusers import EulerAncestralDiscreteScheduler

    folder.mkdir()
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.eval()
    pipe.text_encoder.eval()
    prompts = sorted(set(job.captions))
    for i in range(cfg.validation_images):
        g = torch.Generator().manual_seed(cfg.seed + i)
        with accelerator.autocast():
            image = pipe(prompts[i % len(prompts)], negative_prompt=job.negative_prompt, num_inference_steps=20, guidance_scale=7.0,
                         height=cfg.resolution, width=cfg.resolution, generator=g).images[0]
        image.save(folder / f"{i:02d}_seed{cfg.seed + i}.png")


# --------------------------------------------------------------------------- all groups

def run(cfg, data_cfg, resume: str | None = None) -> list[Path]:
    """Train every planned group in turn (skipping finished ones when resuming); returns the group folders."""
    from accelerate import Accelerator

    jobs = plan(cfg, data_cfg, resume)
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise UserError("--mixed-precision fp16 needs a GPU; on a CPU use bf16 or no")
    # Several processes without CUDA (torchrun, `accelerate launch --multi_gpu` on a CPU machine): data-parallel
    # on the CPU with gloo; accelerate picks that only when told `cpu=True`.
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=multi_cpu or None)
    if accelerator.is_main_process:
        log.info("training %d LoRA(s): %s", len(jobs), ", ".join(str(j.out_dir) for j in jobs))
    done = []
    for job in jobs:
        if job.finished:
            log.info("%s: finished already from the same inputs, kept", job.out_dir)
            done.append(job.out_dir)
            continue
        try:
            done.append(train_group(job, cfg, data_cfg, accelerator, resume))
        except KeyboardInterrupt:
            raise Interrupted(resume_hint(job, cfg, len(done))) from None
    accelerator.end_training()
    return done


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while a group trained; the message says exactly what to run to go on."""


def resume_hint(job: Job, cfg, n_done: int) -> str:
    """What a user runs after Ctrl-C: a plain re-run continues from the newest checkpoint and keeps finished groups."""
    kept = f"; the {n_done} group(s) finished before it are kept" if n_done else ""
    ckpts = _checkpoints(job.work_dir)
    again = "run the same command again" + (" without --overwrite" if cfg.overwrite and ckpts else "")
    if ckpts:
        return f"{job_name(job)} stopped; {again} to continue it from its checkpoint {ckpts[0]}{kept}"
    why = f"--checkpointing-steps {cfg.checkpointing_steps} not reached" if cfg.checkpointing_steps else "--checkpointing-steps 0"
    return f"{job_name(job)} stopped before its first checkpoint ({why}); {again} to train it from the start{kept}"
