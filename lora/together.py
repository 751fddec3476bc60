"""Several LoRAs trained at once (`lora.together`): one forward/backward pass over the batches of K groups.

Every LoRA target layer carries K peft adapters, one per group (`g0`, `g1`, ...), each initialised exactly as a
separate run initialises its one. The batch of a step is the active groups' batches one after another
(`batch_size` samples each); a forward hook on each LoRA layer gives every slice its own adapter's update, in
one batched product for all adapters (so K adapters cost about the kernel launches of one). The samples of a
Stable Diffusion batch never interact (group norm, layer norm and attention work within one image), so the
gradient of group k's loss reaches adapter k only: summing the K mean losses and calling backward once gives
each adapter the very gradient its separate run computes.

Everything else is per group, as in `train.train_group`: its images and captions, epoch order, step generator
(seeded as a separate run seeds it), optimizer and its state, learning-rate schedule, gradient clipping (each
group's own norm), loss log, checkpoints and finished folder. A group with fewer images runs fewer steps, as
its separate run would, and then leaves the batch. The files written are those of separate runs, equal within
float tolerance (docs/howto/lora-together.md states it; tests/test_lora_together.py checks it).

In fp16 each group also has its own loss scaler (`torch.amp.GradScaler`, as accelerate gives a separate run): its
loss is scaled by its own scale before the one backward, and an overflow in its samples skips its own update and
halves its own scale only, as in its separate run (the samples of other groups, and so their gradients, never meet
the overflow; tests/test_lora_together_fp16.py checks it).
"""
from __future__ import annotations

import logging
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from diffusion.formats import from_peft
from prompts import layout
from prompts.errors import UserError

from .checkpoints import load_checkpoint, save_checkpoint
from .data import ImageSet, epoch_batches, epoch_order, load_images, steps_per_epoch
from .outputs import tensorboard_tracker, write_group
from .plan import LoraJob
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

__all__ = ["Router", "add_adapters", "backward_groups", "group_scaler", "step_optimizer", "train_together"]

log = logging.getLogger("lora")


# --------------------------------------------------------------------------- K adapters and the routing of a batch

def adapter_name(index: int) -> str:
    """The peft adapter name of the index-th group of a joint run."""
    return f"g{index}"


def lora_layers(model) -> list:
    """The peft LoRA layers of a model (those that carry adapters)."""
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


class Router:
    """Routes each slice of a batch to its group's adapter in every LoRA layer of the given models.

    `order` lists adapter names, one per equal slice of the batch (dim 0): with order [g0, g2] and a batch of
    2B samples, samples 0..B-1 get adapter g0 and B..2B-1 get g2. A single name routes the whole batch to it
    (generation with one group's LoRA). peft's own per-layer update is switched off; the hook adds the routed one.
    """

    def __init__(self, models):
        self.order: list[str] = []
        self.handles = []
        for model in models:
            for layer in lora_layers(model):
                params = [p for d in (layer.lora_A, layer.lora_B) for p in d.parameters()]
                layer.enable_adapters(False)  # peft's forward: the base layer only (it also freezes the factors)
                for p in params:
                    p.requires_grad_(True)
                self.handles.append(layer.register_forward_hook(self._hook))

    def _hook(self, layer, args, output):
        if not self.order:
            return None
        delta = routed_delta(layer, args[0], self.order)
        return (output + delta).to(output.dtype)  # peft: result + lora_B(lora_A(x)) * scaling, cast back

    def remove(self) -> None:
        """Take the routing hooks off every layer."""
        for h in self.handles:
            h.remove()


def routed_delta(layer, x: torch.Tensor, order: list[str]) -> torch.Tensor:
    """The LoRA update of a layer for a batch x [N, ...] split into len(order) equal slices, slice i by adapter order[i].

    Linear: x [N, ..., in] -> [N, ..., out] by two batched products; Conv2d: x [N, C, H, W] -> [N, out, H', W'] by two
    grouped convolutions (one group per adapter). Same math as peft: scaling * B(A(x)), x cast to the factors' dtype.
    """
    n = len(order)
    first_a, first_b = layer.lora_A[order[0]], layer.lora_B[order[0]]
    scaling = layer.scaling[order[0]]
    if x.shape[0] % n:
        raise ValueError(f"a batch of {x.shape[0]} samples does not split into {n} equal slices")
    x = x.to(first_a.weight.dtype)
    if isinstance(first_a, torch.nn.Linear):
        down = torch.stack([layer.lora_A[a].weight for a in order])  # [n, r, in]
        up = torch.stack([layer.lora_B[a].weight for a in order])  # [n, out, r]
        xs = x.reshape(n, -1, x.shape[-1])
        d = torch.bmm(torch.bmm(xs, down.transpose(1, 2)), up.transpose(1, 2))
        return d.reshape(*x.shape[:-1], up.shape[1]) * scaling
    if isinstance(first_a, torch.nn.Conv2d) and first_a.groups == 1 and first_b.groups == 1:
        b = x.shape[0] // n
        xg = x.reshape(n, b, *x.shape[1:]).transpose(0, 1).reshape(b, n * x.shape[1], *x.shape[2:])
        down = torch.cat([layer.lora_A[a].weight for a in order])  # [n*r, C, kh, kw]
        up = torch.cat([layer.lora_B[a].weight for a in order])  # [n*out, r, 1, 1]
        h = F.conv2d(xg, down, None, first_a.stride, first_a.padding, first_a.dilation, groups=n)
        d = F.conv2d(h, up, None, first_b.stride, first_b.padding, first_b.dilation, groups=n)
        d = d.reshape(b, n, -1, *d.shape[2:]).transpose(0, 1).reshape(n * b, -1, *d.shape[2:])
        return d * scaling
    raise UserError(f"lora.together: a LoRA layer of type {type(first_a).__name__} cannot be routed per group "
                    "(Linear and Conv2d can); train these groups one at a time (drop lora.together)")


def add_adapters(unet, text_encoder, settings, k: int) -> list[list[dict]]:
    """K peft adapters on the U-Net (and text encoder when it trains), each equal at the start to the one adapter of
    a separate run (`train.add_lora`: seeded by settings.seed); returns each adapter's optimizer parameter groups."""
    from diffusion.formats import network_modules, peft_config

    train_te = settings.text_encoder_lr > 0
    kinds = network_modules(unet, text_encoder if train_te else None, settings.network, settings.conv_dim)
    components = [("unet", unet, settings.unet_lr)] + ([("text_encoder", text_encoder, settings.text_encoder_lr)] if train_te else [])
    torch.manual_seed(settings.seed)  # as train.add_lora: adapter g0's initial factors are a separate run's
    for index in range(k):
        for comp, model, _ in components:
            config = peft_config({n: kd for (c, n), kd in kinds.items() if c == comp}, settings.rank, settings.alpha,
                                 settings.conv_dim, settings.conv_alpha)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # K adapters: intended
                model.add_adapter(config, adapter_name=adapter_name(index))
    groups = []
    for index in range(k):
        name = adapter_name(index)
        per_adapter = []
        for _, model, lr in components:
            params = []
            for layer in lora_layers(model):
                for d in (layer.lora_A, layer.lora_B):
                    p = d[name].weight
                    with torch.no_grad():  # every adapter starts from g0's draw (later adapters' draws are discarded)
                        p.copy_(d[adapter_name(0)].weight)
                    p.data = p.data.float()  # LoRA parameters stay fp32 under mixed precision
                    p.requires_grad_(True)
                    params.append(p)
            per_adapter.append({"params": params, "lr": lr})
        groups.append(per_adapter)
    return groups


# --------------------------------------------------------------------------- one group's share of a joint run

@dataclass
class GroupRun:
    """What belongs to one group in a joint run: its data, optimizer, schedule, step count and loss log."""

    job: LoraJob
    adapter: str
    images: ImageSet
    latents_cache: torch.Tensor | None
    caption_row: list[int]
    token_ids: torch.Tensor  # [n_unique, 77] on the device
    text_states: torch.Tensor | None  # [n_unique, 77, dim] when the text encoder is frozen
    param_groups: list[dict]
    optimizer: object
    lr_scheduler: object
    epoch_steps: int
    total_steps: int
    total_updates: int
    cache_seconds: float
    step: int = 0
    update: int = 0
    first_step: int = 0
    rows: list[dict] = field(default_factory=list)
    loss_sum: torch.Tensor | None = None  # float64 on the device
    loss_n: int = 0
    pending: list = field(default_factory=list)  # updates whose loss is still on the device (train.read_losses)
    tracker: object = None
    scaler: object = None  # fp16: this group's own torch.amp.GradScaler; None otherwise
    epochs: dict = field(default_factory=dict)  # this group's batches of the current epoch

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def batch(self, settings, step: int) -> tuple[int, list[int]]:
        """(epoch, image indices) of this group's step `step`, as its separate run orders them."""
        epoch, k = divmod(step, self.epoch_steps)
        if epoch not in self.epochs:
            self.epochs.clear()
            self.epochs[epoch] = epoch_batches(epoch_order(len(self.images), settings.repeats, epoch, settings.seed), settings.batch_size, 1, 0)
        return epoch, self.epochs[epoch][k]


def save_group_state(models, run: GroupRun, folder: str) -> None:
    """One group's LoRA weights and optimizer state, in the files `accelerator.save_state` writes for a separate run
    (lora_<i>.safetensors by `checkpoints.register_lora_hooks`, optimizer.bin), so either trainer can continue it."""
    import os

    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    for i, m in enumerate(models):
        state = get_peft_model_state_dict(m, adapter_name=run.adapter)
        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(folder, f"lora_{i}.safetensors"))
    torch.save(run.optimizer.state_dict(), os.path.join(folder, "optimizer.bin"))
    if run.scaler is not None:  # accelerate's file name for the scaler of a separate fp16 run
        torch.save(run.scaler.state_dict(), os.path.join(folder, SCALER_FILE))


def load_group_state(models, run: GroupRun, folder: str, device) -> None:
    """Inverse of `save_group_state` (also reads a separate run's checkpoint)."""
    import os

    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    for i, m in enumerate(models):
        set_peft_model_state_dict(m, load_file(os.path.join(folder, f"lora_{i}.safetensors")), adapter_name=run.adapter)
    run.optimizer.load_state_dict(torch.load(os.path.join(folder, "optimizer.bin"), map_location=device, weights_only=True))
    scaler_file = os.path.join(folder, SCALER_FILE)
    if run.scaler is not None and os.path.exists(scaler_file):
        run.scaler.load_state_dict(torch.load(scaler_file, weights_only=True))


# --------------------------------------------------------------------------- fp16: one loss scaler per group

TOGETHER_ONE_PROCESS = ("--together trains its groups in one batch in one process, and this run has {n} processes: launch it "
                        "as one process (`python -m lora train ...`, not `accelerate launch --num_processes {n}`), or set "
                        "`lora.together: 1` (--together 1) to train the groups one at a time on {n} processes")
SCALER_FILE = "scaler.pt"  # the scaler state in a checkpoint folder (accelerate's SCALER_NAME for a separate run)


def group_scaler(settings, device, accelerator=None):
    """A group's own fp16 loss scaler (torch's defaults, as accelerate makes for a separate run), or None.

    None without fp16, and None where the run's `accelerator` has no scaler (accelerate makes none for fp16 on a
    CPU): a group is scaled exactly when its separate run would be.
    """
    if settings.mixed_precision != "fp16" or (accelerator is not None and accelerator.scaler is None):
        return None
    return torch.amp.GradScaler(device.type)


def backward_groups(group_losses: torch.Tensor, scalers: list, accum: int, accelerator) -> None:
    """One backward pass for the K groups' mean losses [K] (one per active group, in batch order).

    Without loss scaling (scalers all None): backward of the sum / accum. With fp16 scalers: backward of the sum of
    each group's loss / accum scaled by its own scaler, as a separate run's `accelerator.backward` scales it; since
    group k's loss reaches adapter k only, adapter k's gradient is its separate run's scaled gradient.
    """
    if all(s is None for s in scalers):
        accelerator.backward(group_losses.sum() / accum)
        return
    torch.stack([s.scale(loss / accum) for s, loss in zip(scalers, group_losses)]).sum().backward()


def step_optimizer(optimizer, params: list[torch.Tensor], max_grad_norm: float, scaler=None) -> None:
    """One group's update: its gradients clipped to its own norm, its optimizer stepped.

    With a scaler (fp16): unscale first (so the clipping sees true gradients), then `scaler.step` skips the update
    when any of this group's gradients is inf or NaN, and `scaler.update` halves this group's scale after a skip
    (and grows it after 2000 clean updates): what accelerate's optimizer wrapper does in a separate fp16 run.
    """
    if scaler is not None and max_grad_norm > 0:
        scaler.unscale_(optimizer)
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True)
    if scaler is None:
        optimizer.step()
        return
    scaler.step(optimizer)
    scaler.update()


# --------------------------------------------------------------------------- the joint loop

def check_together(settings, accelerator) -> None:
    """What a joint run cannot do: several processes (one process trains the K groups in one batch already)."""
    if accelerator.num_processes > 1:
        raise UserError(TOGETHER_ONE_PROCESS.format(n=accelerator.num_processes))


def train_together(jobs: list[LoraJob], settings, data_settings, accelerator, resume: str | None) -> list[Path]:  # noqa: C901, PLR0915 (the loop, top to bottom)
    """Train the LoRAs of `jobs` in one pass and write each group's folder as its separate run would; returns them."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    check_together(settings, accelerator)
    device = accelerator.device
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[settings.mixed_precision]
    train_te = settings.text_encoder_lr > 0
    accum = settings.gradient_accumulation_steps

    # 1. the frozen base model with K adapters, routed per slice of the batch
    pipe = load_frozen_model(settings, device, weight_dtype)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    per_adapter = add_adapters(unet, text_encoder, settings, len(jobs))
    router = Router([unet, text_encoder] if train_te else [unet])
    if settings.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if train_te:
            text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if train_te:
        unet, text_encoder = accelerator.prepare(unet, text_encoder)
    else:
        unet = accelerator.prepare(unet)
    models = [unet, text_encoder] if train_te else [unet]

    # 2. each group: images (and latents), captions, optimizer, schedule, checkpoint
    runs = []
    for index, (job, groups) in enumerate(zip(jobs, per_adapter)):
        images = load_images(job.dataset, settings.resolution, job.reading)
        t_cache = time.perf_counter()
        cache = cache_latents(vae, images, settings.random_flip, settings.seed, device, weight_dtype) if settings.cache_latents else None
        cache_seconds = time.perf_counter() - t_cache
        token_ids, caption_row = encode_prompts(tokenizer, job.captions)
        token_ids = token_ids.to(device)
        text_states = None
        if not train_te:
            with torch.no_grad():
                text_states = text_encoder(token_ids)[0]
        optimizer = make_optimizer(groups, settings, device)
        epoch_steps = steps_per_epoch(len(images), settings.repeats, settings.batch_size, 1)
        total_steps = epoch_steps * settings.epochs
        total_updates = math.ceil(total_steps / accum)
        scheduler = get_scheduler(settings.lr_scheduler, optimizer, num_warmup_steps=settings.lr_warmup_steps, num_training_steps=total_updates)
        run = GroupRun(job, adapter_name(index), images, cache, caption_row, token_ids, text_states, groups, optimizer, scheduler,
                       epoch_steps, total_steps, total_updates, cache_seconds, scaler=group_scaler(settings, device, accelerator))
        resume_group(run, models, settings, accelerator, resume, device)
        runs.append(run)

    # 3. the loop: every group with steps left takes its next step, in one pass
    log.info("training %d LoRAs together: %s", len(runs), ", ".join(r.job.display_name for r in runs))
    for m in models:
        m.train()
    t_start = time.perf_counter()
    t_prev, step_seconds, iterations = t_start, [], 0
    latents_chw = latent_shape(vae, settings.resolution)
    n_timesteps = noise_scheduler.config.num_train_timesteps

    def draw(steps: list[tuple[GroupRun, int]]) -> StepBatch:  # in the worker thread only (it alone touches r.epochs)
        epochs, batches, draws = [], [], []
        for r, step in steps:
            epoch, batch = r.batch(settings, step)
            cache = r.latents_cache
            chw = tuple(cache.shape[2:]) if cache is not None else latents_chw
            draws.append(draw_step(step_generator(settings.seed, step, 0), batch, r.images, cache, r.caption_row, settings, chw,
                                   weight_dtype, n_timesteps))
            epochs.append(epoch)
            batches.append(batch)
        return step_batch(epochs, batches, [r.caption_row for r, _ in steps], draws, pin=device.type == "cuda")

    prefetch = Prefetch(draw)
    active = [r for r in runs if r.step < r.total_steps]
    if active:
        prefetch.submit([(r, r.step) for r in active])
    try:
        while active:
            if iterations:
                t_now = time.perf_counter()
                step_seconds.append(t_now - t_prev)
                t_prev = t_now
            sb = prefetch.get()  # each group's draws from its own generator, in its separate run's order
            upcoming = [r for r in active if r.step + 1 < r.total_steps]
            if upcoming:
                prefetch.submit([(r, r.step + 1) for r in upcoming])
            latents = batch_latents(vae, sb, device, weight_dtype)  # one VAE encode (or cache read) for every group
            router.order = [r.adapter for r in active]
            rows = [to_device(x, device) for x in sb.caption_rows]
            if train_te:
                hidden = text_encoder(torch.cat([r.token_ids[i] for r, i in zip(active, rows)]))[0]
            else:
                hidden = torch.cat([r.text_states[i] for r, i in zip(active, rows)])
            losses = per_sample_loss(unet, noise_scheduler, latents, to_device(sb.noise, device), to_device(sb.t, device), hidden,
                                     settings, weight_dtype, accelerator)
            group_losses = losses.view(len(active), -1).mean(dim=1)  # each group's loss: the mean over its own samples
            backward_groups(group_losses, [r.scaler for r in active], accum, accelerator)  # adapter k: d(loss_k)/d(its factors) only
            iterations += 1
            for r, loss, epoch in zip(active, group_losses, sb.epochs):
                r.loss_sum = add_loss(r.loss_sum, loss)
                r.loss_n += 1
                r.step += 1
                if r.step % accum == 0 or r.step == r.total_steps:
                    optimizer_update(r, settings, epoch, train_te, models, accelerator, device)
            active = upcoming
    finally:
        prefetch.close()
    router.order = []

    # 4. outputs: each group's folder as its separate run writes it, generated with its own adapter
    t_end = time.perf_counter()
    if iterations:
        step_seconds.append(t_end - t_prev)
    done = []
    for r in runs:
        if not all(torch.isfinite(p).all() for p in r.params):
            raise Diverged(diverged_message(r.job, settings, "the LoRA weights stopped being finite numbers", r.update, r.total_updates))
        stats = throughput_stats(r.step - r.first_step, r.update, 1, settings.batch_size, r.cache_seconds, t_end - t_start, step_seconds)
        stats["trained_together"] = {"groups": len(runs), "with": [o.job.display_name for o in runs]}  # step times: joint steps
        if r.tracker is not None:
            r.tracker.finish()
        lora = from_peft(accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder) if train_te else None, adapter=r.adapter)
        pipe.unet, pipe.text_encoder = accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder)
        router.order = [r.adapter]  # the validation images use this group's LoRA alone
        write_group(r.job, settings, data_settings, lora, r.rows, stats, pipe, accelerator)
        router.order = []
        done.append(r.job.out_dir)
    router.remove()
    accelerator.free_memory()
    return done


def resume_group(run: GroupRun, models, settings, accelerator, resume: str | None, device) -> None:
    """Start the group over (its own work folder goes), or continue it from its newest loadable checkpoint."""
    job = run.job
    if (settings.overwrite or job.restart) and job.work_dir.exists():
        shutil.rmtree(job.work_dir)  # starting over: this group's own checkpoints and logs go
    named = resume not in (None, "latest", "auto")
    update, rows, ckpt = load_checkpoint(job, accelerator, run.optimizer, named,
                                         load_state=lambda folder: load_group_state(models, run, folder, device))
    if ckpt is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": intended here
            for _ in range(update):
                run.lr_scheduler.step()
        log.info("%s: continuing from %s at update %d of %d", job.display_name, ckpt, update, run.total_updates)
    run.update, run.rows = update, rows
    run.step = run.first_step = update * settings.gradient_accumulation_steps
    run.tracker = tensorboard_tracker(job.work_dir / layout.LORA_TENSORBOARD_DIR)
    log.info("%s: %d images x %d repeats, %d epochs, %d steps of %d, %d updates", job.group, len(run.images), settings.repeats,
             settings.epochs, run.total_steps, settings.batch_size, run.total_updates)


def optimizer_update(run: GroupRun, settings, epoch: int, train_te: bool, models, accelerator, device) -> None:
    """One group's optimizer update: its own gradient norm clipped, its optimizer and schedule stepped, its loss logged."""
    step_optimizer(run.optimizer, run.params, settings.max_grad_norm, run.scaler)
    run.lr_scheduler.step()  # also after an fp16 skip: a separate run's schedule counts updates, skipped or not
    run.optimizer.zero_grad(set_to_none=True)
    run.update += 1
    run.pending.append(loss_row(run.update, epoch, run.lr_scheduler.get_last_lr(), train_te, run.loss_sum, run.loss_n))
    run.loss_sum, run.loss_n = None, 0
    job = run.job
    checkpoint_now = settings.checkpointing_steps and run.update % settings.checkpointing_steps == 0 and run.update < run.total_updates
    if run.update % LOSS_READ_EVERY == 0 or run.update == run.total_updates or checkpoint_now:
        read_losses(run.pending, run.rows, job, settings, run.total_updates, accelerator, run.tracker, log.info)
    if checkpoint_now:
        save_checkpoint(accelerator, job, settings.checkpoints_total_limit, run.update, run.rows,
                        save_state=lambda folder: save_group_state(models, run, folder))
