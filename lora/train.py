"""The LoRA trainer's loop: one LoRA per group (class, cell line x class, or all), top to bottom.

`run()` plans the jobs (`lora.plan`: every input checked, nothing written yet), then trains each
in turn with `train_group()`: load the frozen model and add LoRA adapters, load the images, resume
from a checkpoint (`lora.checkpoints`), the loop, and the finished folder (`lora.outputs`).

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
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from diffusion.formats import from_peft
from prompts import layout
from prompts.cli import cpu_processes
from prompts.errors import Terminated, UserError
from prompts.schema.lora import together_size

from .checkpoints import list_checkpoints, load_checkpoint, register_lora_hooks, save_checkpoint
from .data import (
    ImageSet,
    apply_flips,
    crop_batch,
    epoch_batches,
    epoch_order,
    flip_flags,
    load_images,
    pixel_batch,
    steps_per_epoch,
    to_model_range,
)
from .outputs import tensorboard_tracker, write_group
from .plan import LoraJob, plan

__all__ = ["Diverged", "Interrupted", "LoraJob", "plan", "run", "train_group"]

log = logging.getLogger("lora")


class Diverged(UserError):
    """The loss or the LoRA weights stopped being finite numbers (a learning rate far too high); nothing was written."""


def diverged_message(job: LoraJob, settings, what: str, update: int, total_updates: int) -> str:
    """The one line for a run whose loss or weights stopped being finite numbers."""
    lrs = f"--unet-lr {settings.unet_lr:g}" + (f", --text-encoder-lr {settings.text_encoder_lr:g}" if settings.text_encoder_lr > 0 else "")
    return (f"{job.display_name}: {what} at update {update} of {total_updates}, so no LoRA was written for it; the "
            f"learning rate is likely too high ({lrs}): lower it"
            + (", or use --mixed-precision bf16 or no" if settings.mixed_precision == "fp16" else ""))


# --------------------------------------------------------------------------- model setup

def step_generator(seed: int, step: int, process: int) -> torch.Generator:
    """The CPU generator of one step on one process (noise, timesteps, crops, flips, VAE samples)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + process)


def load_frozen_model(settings, device, weight_dtype):
    """The base pipeline on `device`, every weight frozen, in the mixed-precision dtype."""
    from diffusion.model import load_pipeline

    pipe = load_pipeline(settings.model, torch_dtype=torch.float32, allow_pickle=settings.allow_pickle, config=settings.model_config)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False)
        m.to(device)
        if weight_dtype != torch.float32:
            m.to(dtype=weight_dtype)  # frozen weights in the mixed-precision dtype
    return pipe


def make_optimizer(param_groups: list[dict], settings, device):
    """AdamW over the LoRA parameters (bitsandbytes' 8-bit AdamW when asked)."""
    if settings.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(param_groups, weight_decay=settings.weight_decay)
    # fused: one kernel for all LoRA tensors instead of ~10 per tensor (12x faster on a CPU for the tiny model's 128)
    return torch.optim.AdamW(param_groups, weight_decay=settings.weight_decay, fused=device.type in ("cpu", "cuda"))


def throughput_stats(steps: int, updates: int, n_processes: int, batch_size: int, cache_seconds: float,
                     loop_seconds: float, step_seconds: list[float]) -> dict:
    """stats.json of a group: steps and updates run, wall times in seconds, median steps per second, GPU memory."""
    timed = sorted(step_seconds[1:])  # the first step warms up
    return {"steps": steps, "updates": updates, "processes": n_processes, "batch_size_per_process": batch_size,
            "cache_seconds": round(cache_seconds, 4), "loop_seconds": round(loop_seconds, 4),
            "steps_per_second_median": round(1 / timed[len(timed) // 2], 4) if timed else None,
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None,
            "step_seconds": [round(t, 5) for t in step_seconds]}


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


def encode_prompts(tokenizer, captions: list[str]) -> tuple[torch.Tensor, list[int]]:
    """Token ids [n_unique, 77] of the distinct captions, and each caption's row index."""
    unique = sorted(set(captions))
    ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    return ids, [unique.index(c) for c in captions]


@torch.no_grad()
def cache_latents(vae, images: ImageSet, flips: bool, seed: int, device, dtype) -> torch.Tensor:
    """VAE latents of every image [N, V, 4, res/8, res/8]; V = 4 flip variants (none, h, v, hv) or 1.

    Each is one sample of the VAE's latent distribution (as kohya caches it), times the scaling factor.
    """
    variants = [(False, False), (True, False), (False, True), (True, True)] if flips else [(False, False)]
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(len(images)):
        x = pixel_batch(images, [i], random_crop=False, generator=g)
        x = torch.cat([apply_flips(x, torch.tensor([v])) for v in variants])
        dist = vae.encode(x.to(device, dtype)).latent_dist
        out.append((dist.sample(generator=g) * vae.config.scaling_factor).float().cpu())
    return torch.stack(out)


def draw_noise(shape: torch.Size, generator: torch.Generator, settings, num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise [B, 4, h, w] (with the noise offset) and timesteps [B] of one step, drawn on the CPU from `generator`
    in a fixed order (noise, offset, timesteps): the same draws give the same step in every trainer."""
    noise = torch.randn(shape, generator=generator)
    if settings.noise_offset:
        noise = noise + settings.noise_offset * torch.randn(shape[0], shape[1], 1, 1, generator=generator)
    t = torch.randint(0, num_train_timesteps, (shape[0],), generator=generator)
    return noise, t


def per_sample_loss(unet, noise_scheduler, latents, noise, t, hidden, settings, weight_dtype, accelerator) -> torch.Tensor:
    """The diffusion loss of each sample [B]: noise the latents [B, 4, h, w] at timesteps `t` [B], predict the noise
    (or v) from the text states `hidden` [B, 77, dim], mean squared error per image, min-SNR weighted when asked."""
    from diffusers.training_utils import compute_snr

    noisy = noise_scheduler.add_noise(latents, noise, t)
    epsilon = noise_scheduler.config.prediction_type == "epsilon"
    target = noise if epsilon else noise_scheduler.get_velocity(latents, noise, t)
    with accelerator.autocast():
        pred = unet(noisy.to(weight_dtype), t, hidden.to(weight_dtype)).sample
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))  # [B]
    if settings.min_snr_gamma:
        snr = compute_snr(noise_scheduler, t)
        weight = torch.clamp(snr, max=settings.min_snr_gamma)
        loss = loss * (weight / snr if epsilon else weight / (snr + 1))
    return loss


# --------------------------------------------------------------------------- the CPU side of a step, drawn ahead

def to_device(x: torch.Tensor, device) -> torch.Tensor:
    """x on `device`; on a GPU copied from pinned memory without waiting (the values are the same)."""
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


@dataclass
class StepBatch:
    """Everything one step takes from memory and from its generators, for one or more groups one after another (CPU).

    flips [B, 2]; pixels uint8 [B, 3, res, res] with vae_noise [B, c, h, w] (the VAE posterior sample's noise, in the
    VAE's dtype), or latents [B, c, h, w] from the cache; noise [B, c, h, w] (with the offset); t [B]; per group: its
    epoch, its image indices and their caption rows.
    """

    epochs: list[int]
    batches: list[list[int]]
    caption_rows: list[torch.Tensor]
    flips: torch.Tensor
    pixels: torch.Tensor | None
    vae_noise: torch.Tensor | None
    latents: torch.Tensor | None
    noise: torch.Tensor
    t: torch.Tensor


def latent_shape(vae, resolution: int) -> tuple[int, int, int]:
    """(channels, height, width) of the VAE's latents of a resolution x resolution image."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return vae.config.latent_channels, resolution // factor, resolution // factor


def draw_step(g: torch.Generator, batch: list[int], images: ImageSet, latents_cache, caption_row: list[int], settings,
              latents_chw: tuple[int, int, int], vae_dtype, num_train_timesteps: int) -> dict:
    """One group's step on the CPU, drawn from its generator `g` in the one order every trainer uses: flips, crops,
    the VAE sample's noise, the noise (and its offset), the timesteps. A dict of StepBatch's per-sample fields."""
    flips = flip_flags(len(batch), g) if settings.random_flip else torch.zeros(len(batch), 2, dtype=torch.bool)
    out = {"flips": flips, "pixels": None, "vae_noise": None, "latents": None}
    if latents_cache is not None:
        variant = (flips[:, 0].long() + 2 * flips[:, 1].long()) if settings.random_flip else torch.zeros(len(batch), dtype=torch.long)
        out["latents"] = latents_cache[batch, variant]
    else:
        out["pixels"] = crop_batch(images, batch, settings.random_crop, g)
        out["vae_noise"] = torch.randn((len(batch), *latents_chw), generator=g, dtype=vae_dtype)
    out["noise"], out["t"] = draw_noise(torch.Size((len(batch), *latents_chw)), g, settings, num_train_timesteps)
    return out


def step_batch(epochs: list[int], batches: list[list[int]], caption_rows: list[list[int]], draws: list[dict], pin: bool) -> StepBatch:
    """The groups' draws one after another (pinned when `pin`, so that the copies to the GPU need not wait)."""
    def cat(key):
        if draws[0][key] is None:
            return None
        x = torch.cat([d[key] for d in draws])
        return x.pin_memory() if pin else x

    rows = [torch.tensor([r[i] for i in b]) for r, b in zip(caption_rows, batches)]
    return StepBatch(epochs, batches, [x.pin_memory() if pin else x for x in rows], cat("flips"), cat("pixels"),
                     cat("vae_noise"), cat("latents"), cat("noise"), cat("t"))


def batch_latents(vae, sb: StepBatch, device, weight_dtype) -> torch.Tensor:
    """Latents [B, c, h, w] of a step on the device, scaled for the U-Net: the cached ones, or the uint8 pixels moved
    once, flipped and scaled on the device, one VAE encode, and each sample's own posterior noise."""
    if sb.latents is not None:
        return to_device(sb.latents, device)
    x = to_model_range(apply_flips(to_device(sb.pixels, device), sb.flips)).to(weight_dtype)
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        return ((dist.mean + dist.std * to_device(sb.vae_noise, device)) * vae.config.scaling_factor).float()


class Prefetch:
    """Draws the next step's StepBatch in a worker thread while the current step trains (data loading off the main
    thread). The draws depend on the step alone, so the result does not depend on the thread's timing."""

    def __init__(self, draw):
        from concurrent.futures import ThreadPoolExecutor

        self.draw, self.pool, self.future = draw, ThreadPoolExecutor(1, thread_name_prefix="lora-data"), None

    def submit(self, *args) -> None:
        self.future = self.pool.submit(self.draw, *args)

    def get(self):
        return self.future.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- the loss log

LOSS_READ_EVERY = 10  # optimizer updates between reads of the loss from the device (each read waits for the device)


def add_loss(loss_sum: torch.Tensor | None, loss: torch.Tensor) -> torch.Tensor:
    """The running sum of a scalar loss, in float64 on its device (the exact sum a Python float would hold)."""
    loss = loss.detach().double()
    return loss if loss_sum is None else loss_sum + loss


def loss_row(update: int, epoch: int, lrs: list[float], train_te: bool, loss_sum: torch.Tensor, loss_n: int) -> tuple:
    """A loss-log row of one update without its loss, the mean loss of its steps (a float32 scalar on the device), the U-Net lr."""
    row = {"update": update, "epoch": epoch, "lr_unet": f"{lrs[0]:.3e}", "lr_text_encoder": f"{lrs[1]:.3e}" if train_te else ""}
    return row, (loss_sum / loss_n).float(), lrs[0]


def read_losses(pending: list, rows: list[dict], job: LoraJob, settings, total_updates: int, accelerator, tracker, info) -> None:
    """Read the pending updates' losses from the device in one go (averaged over processes), check them, log them.

    Raises Diverged at the first update whose loss is not a finite number (the same on every process: all stop together).
    """
    if not pending:
        return
    values = accelerator.reduce(torch.stack([loss for _, loss, _ in pending]), reduction="mean").tolist()
    for (row, _, lr_unet), value in zip(pending, values):
        update = row["update"]
        if not math.isfinite(value):
            raise Diverged(diverged_message(job, settings, f"the training loss became {value}", update, total_updates))
        rows.append({**row, "loss": f"{value:.6f}"})
        if tracker is not None:
            tracker.writer.add_scalar("loss", value, update)  # not tracker.log: it flushes the file every update
            tracker.writer.add_scalar("lr/unet", lr_unet, update)
        if update % 10 == 0 or update == total_updates:
            info("%s: update %d/%d  loss %.4f", job.group, update, total_updates, value)
    pending.clear()


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
        raise UserError("--together trains its groups in one process; drop --together or run one process")
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
