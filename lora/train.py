"""The LoRA trainer's loop: one LoRA per group (class, cell line x class, or all), top to bottom.

`run()` plans the jobs (`lora.plan`: every input checked, nothing written yet), then trains each
in turn with `train_group()`: load the frozen model and add LoRA adapters, load the images, resume
from a checkpoint (`lora.checkpoints`), the loop, and the finished folder (`lora.outputs`). With
`lora.together`, runs of K groups of a fold go to `together.train_together()` instead (one pass for K).
What a step does is shared with it (`lora.steps`).

Units: a *step* is one forward/backward pass of `batch_size` images on each
process; an *update* is one optimizer step (every `gradient_accumulation_steps`
steps). Checkpoints, warm-up and the loss log count updates.

Randomness is explicit: the image order of epoch e comes from (seed, e); the noise,
timesteps, crops and flips of step s on process p from a generator seeded with
(seed, s, p). Together with the checkpointed LoRA weights and optimizer state this
makes a resumed run end with the same LoRA as an uninterrupted one.

Names: `settings` is the validated `lora` section of the study (prompts/schema/lora.py),
`data_settings` its `data` section.
"""
from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
import warnings
from pathlib import Path

import torch

from diffusion.formats import from_peft
from prompts import layout
from prompts.cli import cpu_processes
from prompts.errors import Terminated, UserError
from prompts.schema.lora import together_size

from .checkpoints import list_checkpoints, load_checkpoint, register_lora_hooks, save_checkpoint
from .data import (
    epoch_batches,
    epoch_order,
    load_images,
    steps_per_epoch,
)
from .outputs import tensorboard_tracker, write_group
from .plan import LoraJob, plan
from .steps import (
    LOSS_READ_EVERY,
    Diverged,
    Prefetch,
    StepBatch,
    add_loss,
    batch_latents,
    cache_latents,
    diverged_message,
    draw_step,
    encode_prompts,
    latent_shape,
    load_frozen_model,
    loss_row,
    make_optimizer,
    per_sample_loss,
    read_losses,
    step_batch,
    step_generator,
    throughput_stats,
    to_device,
)

__all__ = ["Diverged", "Interrupted", "LoraJob", "plan", "run", "train_group"]

log = logging.getLogger("lora")


def add_lora(unet, text_encoder, settings) -> list[dict]:
    """Add peft LoRA adapters (rank, alpha) and return the optimizer's parameter groups (fp32 LoRA params)."""
    from diffusion.formats import network_modules, peft_config

    torch.manual_seed(settings.seed)  # LoRA init (A: Kaiming-uniform, B: zeros)
    train_te = settings.text_encoder_lr > 0
    kinds = network_modules(unet, text_encoder if train_te else None, settings.network, settings.conv_dim)  # kohya's or attention

    def config(component):
        return peft_config({n: k for (c, n), k in kinds.items() if c == component}, settings.rank, settings.alpha, settings.conv_dim, settings.conv_alpha)

    unet.add_adapter(config("unet"))
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": settings.unet_lr}]
    if train_te:
        text_encoder.add_adapter(config("text_encoder"))
        groups.append({"params": [p for p in text_encoder.parameters() if p.requires_grad], "lr": settings.text_encoder_lr})
    for group in groups:
        for p in group["params"]:
            p.data = p.data.float()  # LoRA parameters stay fp32 under mixed precision
    return groups


# --------------------------------------------------------------------------- the training loop of one group

def train_group(job: LoraJob, settings, data_settings, accelerator, resume: str | None) -> Path:  # noqa: C901, PLR0915 (the loop, top to bottom)
    """Train one LoRA and write its folder atomically; returns OUT/[fold_<k>/]<group>."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    info = log.info if accelerator.is_main_process else (lambda *a: None)  # log once, not once per process
    device = accelerator.device
    n_processes, rank = accelerator.num_processes, accelerator.process_index
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[settings.mixed_precision]

    # 1. the frozen base model, LoRA adapters, optimizer and schedule
    pipe = load_frozen_model(settings, device, weight_dtype)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    train_te = settings.text_encoder_lr > 0
    param_groups = add_lora(unet, text_encoder, settings)
    if settings.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if train_te:
            text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = make_optimizer(param_groups, settings, device)
    n_images = len(job.dataset.records)
    epoch_steps = steps_per_epoch(n_images, settings.repeats, settings.batch_size, n_processes)
    total_steps = epoch_steps * settings.epochs
    total_updates = math.ceil(total_steps / settings.gradient_accumulation_steps)
    lr_scheduler = get_scheduler(settings.lr_scheduler, optimizer, num_warmup_steps=settings.lr_warmup_steps, num_training_steps=total_updates)
    if train_te:
        unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    else:
        unet, optimizer = accelerator.prepare(unet, optimizer)
    models = [unet, text_encoder] if train_te else [unet]
    hooks = register_lora_hooks(accelerator, models)
    lora_params = [p for grp in param_groups for p in grp["params"]]
    # accelerate's optimizer wrapper looks packages up and inspects signatures on every step; without an fp16
    # grad scaler it only forwards to the torch optimizer, so the loop calls that directly
    torch_optimizer = optimizer.optimizer if accelerator.scaler is None and hasattr(optimizer, "optimizer") else optimizer
    epoch_cache: dict[int, list[list[int]]] = {}  # this process's batches of each epoch

    # 2. the images (and their latents, once, when caching), the captions' token ids
    images = load_images(job.dataset, settings.resolution, job.reading)
    t_cache = time.perf_counter()
    latents_cache = cache_latents(vae, images, settings.random_flip, settings.seed, device, weight_dtype) if settings.cache_latents else None
    cache_seconds = time.perf_counter() - t_cache
    token_ids, caption_row = encode_prompts(tokenizer, job.captions)
    token_ids = token_ids.to(device)
    if not train_te:
        with torch.no_grad():
            text_states = text_encoder(token_ids)[0]  # [n_unique, 77, dim], fixed

    # 3. resume: LoRA weights, optimizer state and the update count from a checkpoint (fingerprints checked in plan())
    if (settings.overwrite or job.restart) and job.work_dir.exists() and accelerator.is_main_process:
        shutil.rmtree(job.work_dir)  # starting over: this group's own checkpoints and logs go
    accelerator.wait_for_everyone()
    update, rows, ckpt = load_checkpoint(job, accelerator, optimizer, named=resume not in (None, "latest", "auto"))
    if ckpt is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": intended here
            for _ in range(update):
                lr_scheduler.step()  # the schedule is a function of the update count
        info("%s: continuing from %s at update %d of %d", job.display_name, ckpt, update, total_updates)
    tracker = tensorboard_tracker(job.work_dir / layout.LORA_TENSORBOARD_DIR) if accelerator.is_main_process else None

    # 4. the loop
    info("%s: %d images x %d repeats, %d epochs, %d steps of %d x %d processes, %d updates",
         job.group, n_images, settings.repeats, settings.epochs, total_steps, settings.batch_size, n_processes, total_updates)
    accum = settings.gradient_accumulation_steps
    step, loss_sum, loss_n = update * accum, None, 0
    pending: list = []  # updates whose loss is still on the device (read every LOSS_READ_EVERY updates)
    first_step, t_start, step_seconds = step, time.perf_counter(), []  # wall time of each whole iteration
    t_prev = t_start
    for m in models:
        m.train()
    latents_chw = tuple(latents_cache.shape[2:]) if latents_cache is not None else latent_shape(vae, settings.resolution)
    n_timesteps = noise_scheduler.config.num_train_timesteps

    def draw(s: int) -> StepBatch:  # in the worker thread only (it alone touches epoch_cache)
        epoch, k = divmod(s, epoch_steps)
        if epoch not in epoch_cache:
            epoch_cache.clear()
            epoch_cache[epoch] = epoch_batches(epoch_order(n_images, settings.repeats, epoch, settings.seed), settings.batch_size, n_processes, rank)
        batch = epoch_cache[epoch][k]
        d = draw_step(step_generator(settings.seed, s, rank), batch, images, latents_cache, caption_row, settings, latents_chw,
                      weight_dtype, n_timesteps)
        return step_batch([epoch], [batch], [caption_row], [d], pin=device.type == "cuda")

    prefetch = Prefetch(draw)
    if step < total_steps:
        prefetch.submit(step)
    try:
        while step < total_steps:
            if step > first_step:
                t_now = time.perf_counter()
                step_seconds.append(t_now - t_prev)
                t_prev = t_now
            sb = prefetch.get()
            if step + 1 < total_steps:
                prefetch.submit(step + 1)
            epoch = sb.epochs[0]
            sync = (step + 1) % accum == 0 or step + 1 == total_steps
            with contextlib.ExitStack() as no_sync:
                if not sync and n_processes > 1:  # accumulate locally; DDP averages gradients only on the update step
                    for m in models:
                        no_sync.enter_context(accelerator.no_sync(m))
                latents = batch_latents(vae, sb, device, weight_dtype)  # [B, 4, res/8, res/8], scaled for the U-Net
                rows_idx = to_device(sb.caption_rows[0], device)
                hidden = text_encoder(token_ids[rows_idx])[0] if train_te else text_states[rows_idx]
                loss = per_sample_loss(unet, noise_scheduler, latents, to_device(sb.noise, device), to_device(sb.t, device),
                                       hidden, settings, weight_dtype, accelerator).mean()
                accelerator.backward(loss / accum)
            loss_sum = add_loss(loss_sum, loss)  # on the device: reading it would wait for the step to finish
            loss_n, step = loss_n + 1, step + 1
            if not sync:
                continue
            if settings.max_grad_norm > 0:
                if accelerator.scaler is None:  # accelerate's wrapper costs more than the norm itself; it is needed only to unscale fp16
                    torch.nn.utils.clip_grad_norm_(lora_params, settings.max_grad_norm, foreach=True)
                else:
                    accelerator.clip_grad_norm_(lora_params, settings.max_grad_norm)
            torch_optimizer.step()
            lr_scheduler.step()
            torch_optimizer.zero_grad(set_to_none=True)
            update += 1
            pending.append(loss_row(update, epoch, lr_scheduler.get_last_lr(), train_te, loss_sum, loss_n))
            loss_sum, loss_n = None, 0
            checkpoint_now = settings.checkpointing_steps and update % settings.checkpointing_steps == 0 and update < total_updates
            if update % LOSS_READ_EVERY == 0 or update == total_updates or checkpoint_now:
                read_losses(pending, rows, job, settings, total_updates, accelerator, tracker, info)
            if checkpoint_now:
                save_checkpoint(accelerator, job, settings.checkpoints_total_limit, update, rows)
    finally:
        prefetch.close()

    if not all(torch.isfinite(p).all() for grp in param_groups for p in grp["params"]):
        raise Diverged(diverged_message(job, settings, "the LoRA weights stopped being finite numbers", update, total_updates))
    t_end = time.perf_counter()
    if step > first_step:
        step_seconds.append(t_end - t_prev)
    stats = throughput_stats(step - first_step, update, n_processes, settings.batch_size, cache_seconds, t_end - t_start, step_seconds)

    # 5. outputs, written into a temporary folder and renamed into place
    accelerator.wait_for_everyone()
    if tracker is not None:
        tracker.finish()
    if accelerator.is_main_process:
        lora = from_peft(accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder) if train_te else None)
        pipe.unet, pipe.text_encoder = accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder)
        write_group(job, settings, data_settings, lora, rows, stats, pipe, accelerator)
    accelerator.wait_for_everyone()
    for h in hooks:
        h.remove()
    accelerator.free_memory()
    return job.out_dir


# --------------------------------------------------------------------------- all groups

def run(settings, data_settings, resume: str | None = None) -> list[Path]:
    """Train every planned group in turn (skipping finished ones when resuming); returns the group folders."""
    from accelerate import Accelerator

    jobs = plan(settings, data_settings, resume)
    if settings.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise UserError("--mixed-precision fp16 needs a GPU; on a CPU use bf16 or no")
    # Several processes without CUDA (torchrun, `accelerate launch --multi_gpu` on a CPU machine): data-parallel
    # on the CPU with gloo; accelerate picks that only when told `cpu=True`.
    accelerator = Accelerator(mixed_precision=settings.mixed_precision, cpu=cpu_processes() or None)
    if accelerator.num_processes > 1 and together_size(settings.together, 2) > 1:
        from .together import TOGETHER_ONE_PROCESS

        raise UserError(TOGETHER_ONE_PROCESS.format(n=accelerator.num_processes))
    if accelerator.is_main_process:
        log.info("training %d LoRA(s): %s", len(jobs), ", ".join(str(j.out_dir) for j in jobs))
    done = []
    for job in jobs:
        if job.finished:
            log.info("%s: finished already from the same inputs, kept", job.out_dir)
            done.append(job.out_dir)
    for chunk in together_chunks([j for j in jobs if not j.finished], settings.together):
        try:
            if len(chunk) == 1:
                done.append(train_group(chunk[0], settings, data_settings, accelerator, resume))
            else:
                from .together import train_together

                done.extend(train_together(chunk, settings, data_settings, accelerator, resume))
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (prompts.errors.Terminated: SLURM's time limit)
            raise Interrupted(resume_hint(chunk[0], settings, len(done)), terminated=isinstance(stop, Terminated)) from None
    accelerator.end_training()
    return done


def together_chunks(jobs: list[LoraJob], together) -> list[list[LoraJob]]:
    """The jobs in plan order, cut into runs of `lora.together` groups of one fold (each alone when it is unset)."""
    from itertools import groupby

    chunks = []
    for _, fold_jobs in groupby(jobs, key=lambda j: j.fold):
        fold_jobs = list(fold_jobs)
        size = together_size(together, len(fold_jobs))
        chunks += [fold_jobs[i:i + size] for i in range(0, len(fold_jobs), size)]
    return chunks


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM while a group trained; the message says exactly what to run to go on."""

    def __init__(self, message: str, terminated: bool = False):
        super().__init__(message)
        self.terminated = terminated


def resume_hint(job: LoraJob, settings, n_done: int) -> str:
    """What a user runs after Ctrl-C: a plain re-run continues from the newest checkpoint and keeps finished groups."""
    kept = f"; the {n_done} group(s) finished before it are kept" if n_done else ""
    ckpts = list_checkpoints(job.work_dir)
    again = "run the same command again" + (" without --overwrite" if settings.overwrite and ckpts else "")
    if ckpts:
        return f"{job.display_name} stopped; {again} to continue it from its checkpoint {ckpts[0]}{kept}"
    why = f"--checkpointing-steps {settings.checkpointing_steps} not reached" if settings.checkpointing_steps else "--checkpointing-steps 0"
    return f"{job.display_name} stopped before its first checkpoint ({why}); {again} to train it from the start{kept}"
