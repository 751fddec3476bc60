"""What both trainers (`train.train_group`, `together.train_together`) do per step: the frozen model, the draws of
a step made ahead on the CPU, the latents on the device, the loss of each sample, and the loss log.

Randomness is explicit: the noise, timesteps, crops, flips and VAE samples of step s on process p come from a
generator seeded with (seed, s, p) (`step_generator`), drawn in one fixed order (`draw_step`); so every trainer,
and a resumed run, draws the same numbers for the same step.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prompts.errors import UserError

from .data import ImageSet, apply_flips, crop_batch, flip_flags, pixel_batch, to_model_range
from .plan import LoraJob

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
        """Start drawing the next step's inputs on the worker thread."""
        self.future = self.pool.submit(self.draw, *args)

    def get(self):
        """The inputs drawn by the last `submit` (waits for them)."""
        return self.future.result()

    def close(self) -> None:
        """Stop the worker thread (a pending draw is cancelled)."""
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
