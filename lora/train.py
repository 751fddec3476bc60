"""The LoRA trainer: one LoRA per group (class, cell line x class, or all), top to bottom.

`plan()` checks every input and lists the jobs (fold x group) before anything is
written; `train_group()` is the training loop of one job; `run()` does them in turn.

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
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from prompts.config import as_dict, dump_yaml
from prompts.dataset import Dataset, read_dataset
from prompts.errors import UserError
from prompts.files import temp_dir_beside, write_text_atomic
from prompts.splits import read_split
from prompts.templates import load_templates

from . import data as D
from .formats import DIFFUSERS_WEIGHT_NAME, from_peft, write_diffusers, write_kohya

log = logging.getLogger("lora")

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
WORK = ".work"  # OUT/.work/[fold_<k>/]<group>/: checkpoints and logs of a group still training
KILL_ENV = "LORA_KILL_AFTER_UPDATE"  # testing hook: SIGKILL this process right after checkpointing update N
# Settings that change the result; a checkpoint made with other values is not resumed.
RESULT_KEYS = ("model", "per", "epochs", "repeats", "batch_size", "resolution", "unet_lr", "text_encoder_lr", "rank",
               "alpha", "seed", "lr_scheduler", "lr_warmup_steps", "optimizer", "weight_decay", "max_grad_norm",
               "mixed_precision", "gradient_accumulation_steps", "min_snr_gamma", "noise_offset", "random_flip",
               "random_crop", "cache_latents")


@dataclass
class Job:
    """One LoRA to train: its images, their captions, and where it goes."""

    group: str  # class, <cell_line>__<class>, or "all"
    dataset: Dataset  # the training images (a fold's training part when a split is given)
    captions: list[str]  # one prompt per record, from the templates
    negative_prompt: str
    out_dir: Path  # OUT/[fold_<k>/]<group>
    work_dir: Path  # OUT/.work/[fold_<k>/]<group>
    fold: str | None = None


# --------------------------------------------------------------------------- planning (all checks, no writes)

def plan(cfg, data_cfg, resume: str | None = None) -> list[Job]:
    """Check the inputs and list the jobs in order; raises UserError before anything is written."""
    if not data_cfg.data:
        raise UserError("no data folder given; pass --data DIR (DIR/<class>/<images> or DIR/<cell_line>/<class>/<images>)")
    if not cfg.output:
        raise UserError("no output folder given; pass --output DIR")
    if cfg.resolution <= 0 or cfg.resolution % 8:
        raise UserError(f"--resolution {cfg.resolution}: must be a positive multiple of 8 (the VAE downsamples by 8)")
    for key in ("epochs", "repeats", "batch_size", "rank", "gradient_accumulation_steps"):
        if getattr(cfg, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} {getattr(cfg, key)}: must be at least 1")
    if cfg.cache_latents and cfg.random_crop:
        raise UserError("--cache-latents cannot be combined with --random-crop (each crop needs its own encoding); drop one")
    if cfg.optimizer == "adamw8bit":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
            raise UserError("--optimizer adamw8bit needs the bitsandbytes package and a CUDA GPU; use --optimizer adamw")
    from .model import check_model

    check_model(cfg.model, cfg.allow_pickle)
    dataset = read_dataset(data_cfg.data, check_images=True, skip_bad_images=data_cfg.skip_bad_images)
    dataset = dataset.select(classes=cfg.classes or None, cell_lines=cfg.cell_lines or None)
    if cfg.per == "cell_line_class" and not dataset.cell_lines:
        raise UserError(f"--per cell_line_class: {dataset.root} has no cell lines; use DATA/<cell_line>/<class>/ or a cell_line column")
    templates = load_templates(data_cfg.templates)
    out = Path(cfg.output)
    parts: list[tuple[str | None, Dataset]] = [(None, dataset)]
    if data_cfg.split:
        if cfg.fold is None:
            raise UserError("--split needs --fold K or --fold all")
        split = read_split(data_cfg.split, read_dataset(data_cfg.data, skip_bad_images=data_cfg.skip_bad_images))
        parts = [(f.name, dataset.select(paths=f.train)) for f in split.select(cfg.fold)]
    elif cfg.fold is not None:
        raise UserError(f"--fold {cfg.fold} needs --split FILE (a split file from `python -m classify split`)")
    jobs = []
    for fold, part in parts:
        for group, records in _groups(part, cfg.per).items():
            sub = Dataset(part.root, records, part.source)
            prompts = [templates.for_group(r.label, r.cell_line if cfg.per != "class" else None) for r in records]
            rel = Path(fold, group) if fold else Path(group)
            jobs.append(Job(group, sub, [p.prompt for p in prompts], prompts[0].negative_prompt, out / rel, out / WORK / rel, fold))
        wanted = set(cfg.classes) - {r.label for r in part.records}
        if wanted:
            raise UserError(f"class {sorted(wanted)[0]} has no training images in {fold or 'the data'}; drop it from --classes")
    finished = [j for j in jobs if is_finished(j.out_dir)]
    if finished and not cfg.overwrite and resume is None:
        raise UserError(f"{finished[0].out_dir} already holds a finished LoRA; pass --overwrite to replace it, "
                        "--resume latest to skip finished groups, or choose another --output")
    if resume not in (None, "latest") and len(jobs) != 1:
        raise UserError(f"--resume {resume}: a checkpoint path resumes one group; select it with --classes/--fold, or use --resume latest")
    if resume not in (None, "latest") and not (Path(resume) / "train_state.json").is_file():
        raise UserError(f"--resume {resume}: not a checkpoint folder (no train_state.json); use --resume latest or a checkpoint-N folder")
    for job in jobs:
        ckpt = _find_checkpoint(job, resume)
        if ckpt is not None:
            _check_same_settings(ckpt, json.loads((ckpt / "train_state.json").read_text())["config"], cfg)
    return jobs


def _groups(dataset: Dataset, per: str) -> dict[str, list]:
    """Records of each group, in sorted group order."""
    from prompts.templates import group_name

    groups: dict[str, list] = {}
    for r in dataset.records:
        key = "all" if per == "all" else group_name(r.label, r.cell_line if per == "cell_line_class" else None)
        groups.setdefault(key, []).append(r)
    return dict(sorted(groups.items()))


def is_finished(out_dir: Path) -> bool:
    """A group folder is finished when it holds the diffusers LoRA (groups are renamed into place whole)."""
    return (out_dir / DIFFUSERS_WEIGHT_NAME).is_file()


# --------------------------------------------------------------------------- model setup

def step_generator(seed: int, step: int, process: int) -> torch.Generator:
    """The CPU generator of one step on one process (noise, timesteps, crops, flips, VAE samples)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + process)


def add_lora(unet, text_encoder, cfg) -> list[dict]:
    """Add peft LoRA adapters (rank, alpha) and return the optimizer's parameter groups (fp32 LoRA params)."""
    from peft import LoraConfig

    torch.manual_seed(cfg.seed)  # LoRA init (A: Kaiming-uniform, B: zeros)
    unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=UNET_TARGETS, init_lora_weights=True))
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": cfg.unet_lr}]
    if cfg.text_encoder_lr > 0:
        text_encoder.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=TEXT_ENCODER_TARGETS, init_lora_weights=True))
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

    from .model import load_pipeline

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
        optimizer = torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay)
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

    # 2. the images (and their latents, once, when caching), the captions' token ids
    images = D.load_images(job.dataset, cfg.resolution)
    t_cache = time.perf_counter()
    latents_cache = cache_latents(vae, images, cfg.random_flip, cfg.seed, device, weight_dtype) if cfg.cache_latents else None
    cache_seconds = time.perf_counter() - t_cache
    token_ids, caption_row = encode_prompts(tokenizer, job.captions)
    token_ids = token_ids.to(device)
    if not train_te:
        with torch.no_grad():
            text_states = text_encoder(token_ids)[0]  # [n_unique, 77, dim], fixed

    # 3. resume: LoRA weights, optimizer state and the update count from a checkpoint
    update, rows = 0, []
    ckpt = _find_checkpoint(job, resume)
    if ckpt is not None:
        state = json.loads((ckpt / "train_state.json").read_text())  # settings checked in plan()
        accelerator.load_state(str(ckpt))
        update, rows = state["update"], _read_rows(ckpt / "loss.csv")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": intended here
            for _ in range(update):
                lr_scheduler.step()  # the schedule is a function of the update count
        info("%s: resumed from %s at update %d of %d", job.group, ckpt, update, total_updates)
    elif resume is None and job.work_dir.exists() and accelerator.is_main_process:
        shutil.rmtree(job.work_dir / "checkpoints", ignore_errors=True)  # a fresh start discards old checkpoints
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
        batch = D.epoch_batches(D.epoch_order(n_images, cfg.repeats, epoch, cfg.seed), cfg.batch_size, P, rank)[k]
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
            accelerator.clip_grad_norm_([p for grp in param_groups for p in grp["params"]], cfg.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        update += 1
        mean_loss = accelerator.reduce(torch.tensor(loss_sum / loss_n, device=device), reduction="mean").item()
        loss_sum, loss_n = 0.0, 0
        lrs = lr_scheduler.get_last_lr()
        rows.append({"update": update, "epoch": epoch, "loss": f"{mean_loss:.6f}", "lr_unet": f"{lrs[0]:.3e}",
                     "lr_text_encoder": f"{lrs[1]:.3e}" if train_te else ""})
        if tracker is not None:
            tracker.log({"loss": mean_loss, "lr/unet": lrs[0]}, step=update)
        if update % 10 == 0 or update == total_updates:
            info("%s: update %d/%d  loss %.4f", job.group, update, total_updates, mean_loss)
        if cfg.checkpointing_steps and update % cfg.checkpointing_steps == 0 and update < total_updates:
            _save_checkpoint(accelerator, job, cfg, update, rows)

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
    """OUT/.work/.../checkpoints/checkpoint-<update>/: accelerate state + train_state.json + loss.csv."""
    folder = job.work_dir / "checkpoints" / f"checkpoint-{update}"
    accelerator.save_state(str(folder))  # all processes must call it
    if accelerator.is_main_process:
        _write_rows(folder / "loss.csv", rows)
        state = {"update": update, "group": job.group, "config": {k: getattr(cfg, k) for k in RESULT_KEYS}}
        write_text_atomic(folder / "train_state.json", json.dumps(state, indent=2))  # last: marks it complete
        old = sorted(_checkpoints(job.work_dir), key=lambda p: int(p.name.split("-")[1]))
        for p in old[: max(0, len(old) - cfg.checkpoints_total_limit)]:
            shutil.rmtree(p, ignore_errors=True)
        log.info("%s: saved %s", job.group, folder)
    accelerator.wait_for_everyone()
    if os.environ.get(KILL_ENV) == str(update):
        os.kill(os.getpid(), signal.SIGKILL)


def _checkpoints(work_dir: Path) -> list[Path]:
    return [p for p in (work_dir / "checkpoints").glob("checkpoint-*") if (p / "train_state.json").is_file()]


def _find_checkpoint(job: Job, resume: str | None) -> Path | None:
    if resume is None:
        return None
    if resume != "latest":
        return Path(resume)
    found = sorted(_checkpoints(job.work_dir), key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


def _check_same_settings(ckpt: Path, saved: dict, cfg) -> None:
    for key, old in saved.items():
        new = getattr(cfg, key)
        if old != new:
            raise UserError(f"checkpoint {ckpt} was made with {key}={old!r}, this run has {new!r}; "
                            "resume with the same settings, or drop --resume to start over")


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
    from .model import model_hash

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
        "ss_network_args": json.dumps({"unet_targets": UNET_TARGETS, "text_encoder_targets": TEXT_ENCODER_TARGETS}),
        "ss_training_comment": f"cellsynth lora train, group {job.group}" + (f", {job.fold}" if job.fold else ""),
    }


def _write_group(job: Job, cfg, data_cfg, lora, rows, stats, pipe, accelerator) -> None:
    """Build the group folder beside its final place and rename it in (a killed run leaves no half group)."""
    tmp = temp_dir_beside(job.out_dir, prefix=f".{job.group}.tmp-")
    try:
        write_diffusers(lora, tmp)
        write_kohya(lora, tmp / f"{job.group}.safetensors", kohya_metadata(job, cfg, lora, len(job.dataset.records)))
        resolved = {"data": as_dict(data_cfg), "lora": as_dict(cfg),
                    "group": {"name": job.group, "fold": job.fold, "images": [r.path for r in job.dataset.records],
                              "prompts": sorted(set(job.captions)), "negative_prompt": job.negative_prompt}}
        write_text_atomic(tmp / "config.yaml", dump_yaml(resolved))
        _write_rows(tmp / "loss.csv", rows)
        write_text_atomic(tmp / "stats.json", json.dumps(stats, indent=2) + "\n")  # throughput of this run
        if (job.work_dir / "tensorboard").is_dir():
            shutil.copytree(job.work_dir / "tensorboard", tmp / "tensorboard")
        if cfg.validation_images > 0:
            _validation_images(pipe, job, cfg, tmp / "validation", accelerator)
        old = None
        if job.out_dir.exists():  # only reached with --overwrite (plan() refuses otherwise)
            old = job.out_dir.with_name(f".{job.group}.old-{os.getpid()}")
            os.replace(job.out_dir, old)
        os.replace(tmp, job.out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(job.work_dir, ignore_errors=True)
        _remove_empty_parents(job.work_dir, Path(cfg.output))
        log.info("%s: wrote %s", job.group, job.out_dir)
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
        if is_finished(job.out_dir) and not cfg.overwrite:
            log.info("%s: finished already, skipped", job.out_dir)
            done.append(job.out_dir)
            continue
        done.append(train_group(job, cfg, data_cfg, accelerator, resume))
    accelerator.end_training()
    return done
