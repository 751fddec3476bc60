"""The ControlNet trainer: one ControlNet per fold, on that fold's training pairs only.

`plan()` checks every input and lists the jobs (one per fold, or one without a split) before
anything is written; `train_one()` is the training loop of one job; `run()` does them in turn.

The loop is diffusers' examples/controlnet/train_controlnet.py: the ControlNet starts as a copy of
the U-Net's encoder (`ControlNetModel.from_unet`, zero-initialised output convolutions), the base
model (VAE, text encoder, U-Net, and a LoRA fused into the U-Net when given) stays frozen, and the
loss is the MSE of the U-Net's noise (or v) prediction with the ControlNet's residuals added. The
condition is the mask rendered as foreground + instance boundaries (`masks.render_condition`), in
0..1 as the example feeds it. Images and masks are resized and centre-cropped together, and get the
same random flip/rot90 per step (micrographs have no "up").

Outputs: OUT/[fold_<k>/]controlnet/ with `config.json` + `diffusion_pytorch_model.safetensors`
(`save_pretrained`: loads with `ControlNetModel.from_pretrained`, and in ComfyUI's ControlNet loader,
which reads diffusers keys), `fingerprint.json` (parts, and the records `images` and `masks`:
{data-relative path: sha256} of every training file, which `controlnet generate` checks against the
fold's test pairs), `config.yaml`, `loss.csv`, `stats.json`. The folder is built beside its place
and renamed in, so a killed run leaves no half ControlNet; a re-run keeps a finished one made from
the same inputs.

Randomness: the order of epoch e from (seed, e); noise, timesteps, flips and empty captions of
step s from a generator seeded with (seed, s).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from prompts import fingerprint as fp
from prompts import layout
from prompts.config import as_dict, dump_yaml
from prompts.errors import UserError
from prompts.files import temp_dir_beside, write_text_atomic
from prompts.guard import check_output_dir
from prompts.normalize import from_section
from prompts.pair_layouts import layout_of
from prompts.pairs import Pair, load_mask, read_pairs

from . import masks as M

log = logging.getLogger("controlnet")

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
CONFIG_FILE = "config.json"
OUR_FILES = {WEIGHTS_FILE, CONFIG_FILE, layout.FINGERPRINT_FILE, "config.yaml", "loss.csv", "stats.json"}


class Diverged(UserError):
    """The loss stopped being a finite number (a learning rate far too high); nothing was written."""


@dataclass
class Job:
    """One ControlNet: its training pairs and where it goes."""

    fold: int | None
    pairs: list[Pair]
    data_root: Path
    out_dir: Path
    test: list[Pair] = field(default_factory=list)  # the fold's test pairs (never trained on; checked against the LoRA)
    lora: Path | None = None
    fingerprint: dict = field(default_factory=dict)
    finished: bool = False
    reading: object = None  # prompts.normalize.Reading: the data section's rule its images are read with (set by `plan`)

    @property
    def name(self) -> str:
        return layout.fold_name(self.fold) if self.fold is not None else "all pairs"


# --------------------------------------------------------------------------- planning (all checks, no writes)

def fold_pairs(data: str, split: str | None, fold, pair_layout=None) -> list[tuple[int | None, list[Pair], list[Pair]]]:
    """[(fold or None, training pairs, test pairs)] of a data folder, for every selected fold of `split`.

    The split file is `classify split`'s format (prompts/splits.py) whose entries are pair names
    (image paths relative to DATA, `Pair.name`). Without a split: one entry of all pairs, no test.
    """
    from prompts.splits import read_split

    pairs = read_pairs(data, pair_layout)  # pair_layout: prompts.pair_layouts.PairLayout of the data section (None: default)
    if not split:
        if fold is not None:
            raise UserError(f"--fold {fold} needs --split FILE (a split file whose entries are the pairs' image paths)")
        return [(None, pairs, [])]
    by_name = {p.name: p for p in pairs}
    s = read_split(split)
    out = []
    for f in s.select(fold):
        missing = [n for n in (*f.train, *f.test) if n not in by_name]
        if missing:
            raise UserError(f"split file {split} does not match data folder {data}: {len(missing)} pair(s) of fold {f.index} "
                            f"are not there, e.g. {missing[0]}; write a split for these pairs")
        if not f.train:
            raise UserError(f"split file {split}: fold {f.index} has no training pairs")
        out.append((f.index, [by_name[n] for n in f.train], [by_name[n] for n in f.test]))
    return out


def resolve_lora(lora: str | None, fold: int | None) -> Path | None:
    """The LoRA file for a fold: a file as given, or in a `lora train` folder ([fold_<k>/]<group>/) the one group's file."""
    if not lora:
        return None
    path = Path(lora)
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"--lora {path} does not exist; give a LoRA .safetensors file or a `lora train` output folder")
    base = layout.fold_root(path, fold) if fold is not None and layout.fold_root(path, fold).is_dir() else path
    if fold is not None and base == path and any(layout.parse_fold_name(p.name) is not None for p in path.iterdir()):
        raise UserError(f"--lora {path} has no {layout.fold_name(fold)}/; train the LoRAs with the same split")
    if (base / layout.LORA_DIFFUSERS_FILE).is_file():
        return base / layout.LORA_DIFFUSERS_FILE
    found = sorted(base.glob(f"*/{layout.LORA_DIFFUSERS_FILE}"))
    if len(found) != 1:
        raise UserError(f"--lora {base}: expected one LoRA group folder with {layout.LORA_DIFFUSERS_FILE}, found {len(found)}; "
                        "give the LoRA file itself")
    return found[0]


def check_no_test_files(record: dict | None, test: list[Pair], data_root: Path, what: str) -> None:
    """Refuse a model whose fingerprint lists a test image or mask of the fold, by data-relative path or by sha256.

    record: a fingerprint with `images` (and `masks`) records {path: sha256}; None (no record) passes:
    the caller warns that it cannot be checked.
    """
    if record is None or not test:
        return
    test_files = {}
    for p in test:
        test_files.update(fp.files_part([p.image.relative_to(data_root), p.mask.relative_to(data_root)], root=data_root))
    by_hash = {sha: name for name, sha in test_files.items()}
    seen = []
    for key in ("images", "masks"):
        for name, sha in (record.get(key) or {}).items():
            if name in test_files or sha in by_hash:
                seen.append(name if name in test_files else f"{name} (a copy of {by_hash[sha]})")
    if seen:
        raise UserError(f"{what} was trained on {len(seen)} test file(s) of this fold (e.g. {sorted(seen)[0]}), by path or "
                        "content: it was trained with another split; train it with this split, or pass the split it was trained with")


def plan(cfg, data_cfg) -> list[Job]:
    """Check the inputs and list the jobs, each with its fingerprint; raises UserError before anything is written."""
    if not data_cfg.data:
        raise UserError("--data is missing: give a folder of image–mask pairs (images/ + masks/, or Cellpose names)")
    if not cfg.output:
        raise UserError("--output is missing: give the folder the ControlNets go to")
    out = check_output_dir(cfg.output, data=data_cfg.data, flag="--output")
    if cfg.resolution % 8:
        raise UserError(f"--resolution {cfg.resolution}: must be a multiple of 8 (the VAE downsamples by 8)")
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise UserError("--mixed-precision fp16 needs a GPU; on a CPU use bf16 or no")
    from diffusion.model import check_model

    check_model(cfg.model, cfg.allow_pickle)
    jobs = []
    for fold, train, test in fold_pairs(data_cfg.data, data_cfg.split, cfg.fold, layout_of(data_cfg)):
        job = Job(fold, train, Path(data_cfg.data), layout.controlnet_dir(out, fold), test, resolve_lora(cfg.lora, fold),
                  reading=from_section(data_cfg))
        if job.lora is not None:
            check_no_test_files(fp.read(job.lora.parent / layout.FINGERPRINT_FILE), test, job.data_root, f"LoRA {job.lora}")
        job.fingerprint = job_fingerprint(job, cfg, data_cfg)
        job.finished = _check_folder(job, cfg.overwrite)
        jobs.append(job)
    return jobs


def job_fingerprint(job: Job, cfg, data_cfg) -> dict:
    """What determines this ControlNet (settings, base model, LoRA, training files, split, the reading rule of the
    `data` section: its pixels are the files as read) plus the records `images` and `masks` ({data-relative path:
    sha256} of every training file), `settings` and `reading`."""
    root = job.data_root
    images = fp.files_part([p.image.relative_to(root) for p in job.pairs], root=root)
    masks = fp.files_part([p.mask.relative_to(root) for p in job.pairs], root=root)
    settings = train_settings(cfg)
    reading = fp.reading_part(job.reading)
    parts = fp.make(settings=settings, model=[fp.model_part(cfg.model), fp.model_part(cfg.model_config)],
                    lora=fp.file_sha256(job.lora) if job.lora else None, images=images, masks=masks,
                    labels=[p.label for p in job.pairs], split=fp.file_sha256(data_cfg.split) if data_cfg.split else None,
                    reading=reading, **_mask_kind_part(data_cfg))
    return {**parts, "images": images, "masks": masks, "fold": job.fold, "settings": settings, "reading": reading}


def _mask_kind_part(data_cfg) -> dict:
    """data.masks in the fingerprint when it is not the default `auto` (so earlier fingerprints stay valid)."""
    kind = getattr(data_cfg, "masks", "auto")
    return {} if kind == "auto" else {"mask_kind": kind}


def train_settings(cfg) -> dict:
    """The result-changing settings of `controlnet train` (generate's keys of the section do not count)."""
    from prompts.schema.controlnet import TRAIN_KEYS

    part = fp.settings_part(cfg)
    return json.loads(json.dumps({k: part[k] for k in TRAIN_KEYS if k in part}, default=str))


def is_finished(folder: Path) -> bool:
    """A ControlNet folder this tool finished (weights, config and fingerprint, renamed into place whole)."""
    return all((folder / f).is_file() for f in (WEIGHTS_FILE, CONFIG_FILE, layout.FINGERPRINT_FILE))


def _check_folder(job: Job, overwrite: bool) -> bool:
    """Whether the job's folder already holds this very ControlNet; refuses what may not be replaced."""
    out = job.out_dir
    if not out.exists() and not out.is_symlink():
        return False
    if out.is_symlink() or not is_finished(out):
        raise UserError(f"{out} exists and is not a ControlNet written by `controlnet train`; it is left untouched: "
                        "move it away or choose another --output")
    changed = fp.diff(fp.read(out / layout.FINGERPRINT_FILE), job.fingerprint)
    if not changed:
        return not overwrite
    if not overwrite:
        raise UserError(f"{out} holds a ControlNet made from other inputs ({', '.join(changed)} changed since); "
                        "pass --overwrite to replace it, or choose another --output")
    foreign = sorted(set(os.listdir(out)) - OUR_FILES)
    if foreign:
        raise UserError(f"{out} holds files `controlnet train` did not write ({', '.join(foreign[:3])}); move them away first")
    return False


# --------------------------------------------------------------------------- data

def caption(prompt: str, label: str | None) -> str:
    """The prompt with {class} filled in (the pair's class, or nothing), spaces tidied."""
    return " ".join(prompt.replace("{class}", label or "").split())


def load_training_set(pairs: list[Pair], resolution: int, reading) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N, 3, R, R], conditions float32 [N, 3, R, R] in 0..1), resized and centre-cropped together;
    images read under `reading` (the data section's `prompts.normalize.Reading`)."""
    from prompts.images import center_crop, load_image, resize_shortest_side

    images, conds = [], []
    for p in pairs:
        img = center_crop(resize_shortest_side(load_image(p.image, reading).convert("RGB"), resolution), resolution)
        images.append(torch.from_numpy(np.array(img, np.uint8)).permute(2, 0, 1))
        conds.append(torch.from_numpy(M.render_condition(M.resize_mask(load_mask(p.mask, p.mask_kind), resolution))))
    return torch.stack(images), torch.stack(conds)


def augment_batch(x: torch.Tensor, ops: list[tuple[int, bool, bool]]) -> torch.Tensor:
    """Per sample of x [B, C, H, W]: rot90 by k, then horizontal and vertical flips (the same ops for image and condition)."""
    out = []
    for sample, (k, h, v) in zip(x, ops):
        sample = torch.rot90(sample, k, dims=(-2, -1))
        if h:
            sample = sample.flip(-1)
        if v:
            sample = sample.flip(-2)
        out.append(sample)
    return torch.stack(out)


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def epoch_order(n: int, repeats: int, epoch: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 7_919 + epoch)
    items = torch.arange(n).repeat(repeats)
    return items[torch.randperm(len(items), generator=g)].tolist()


# --------------------------------------------------------------------------- model

def load_base(cfg):
    """The frozen base pipeline on `device` (a LoRA fused into the U-Net when given), progress bars off."""
    from diffusers.utils import logging as dlog

    from diffusion.model import load_pipeline

    dlog.set_verbosity_error()
    pipe = load_pipeline(cfg.model, torch_dtype=torch.float32, allow_pickle=cfg.allow_pickle, config=cfg.model_config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def fuse_lora(pipe, lora: Path | None, weight: float) -> None:
    """Load a LoRA (diffusers or kohya keys) and fuse it into the weights at `weight`; UserError when it does not fit."""
    if lora is None:
        return
    try:
        pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="lora")
        pipe.fuse_lora(lora_scale=weight)
        pipe.unload_lora_weights()
    except Exception as err:  # diffusers and peft raise several types for a LoRA of another model
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"LoRA {lora} does not fit the base model ({first}); give a LoRA trained on this --model") from None


def new_controlnet(unet):
    """A ControlNet copied from the U-Net's encoder (diffusers' `from_unet`), 3 condition channels."""
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(unet, conditioning_channels=3)


# --------------------------------------------------------------------------- the training loop

def train_one(job: Job, cfg, device: torch.device | None = None) -> Path:
    """Train one ControlNet and write its folder atomically; returns OUT/[fold_<k>/]controlnet."""
    from diffusers import DDPMScheduler

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]
    pipe = load_base(cfg)
    fuse_lora(pipe, job.lora, cfg.lora_weight)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    torch.manual_seed(cfg.seed)
    controlnet = new_controlnet(unet).to(device).train()
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False)
        m.to(device, dtype=weight_dtype)
    if cfg.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=cfg.learning_rate, fused=device.type in ("cpu", "cuda"))

    images, conds = load_training_set(job.pairs, cfg.resolution, job.reading)
    captions = [caption(cfg.prompt, p.label) for p in job.pairs]
    unique = sorted(set(captions)) + [""]  # the last row: the empty caption
    with torch.no_grad():
        ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        text_states = text_encoder(ids)[0]  # [n_unique + 1, 77, dim]
    caption_row = torch.tensor([unique.index(c) for c in captions])

    n = len(job.pairs)
    steps_per_epoch = -(-(n * cfg.repeats) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    log.info("%s: %d pairs x %d repeats, %d epochs, %d steps of %d at %d px", job.name, n, cfg.repeats, cfg.epochs, total,
             cfg.batch_size, cfg.resolution)
    rows, step_seconds, order = [], [], []
    autocast = torch.autocast(device.type, dtype=weight_dtype, enabled=weight_dtype != torch.float32)
    t_start = t_prev = time.perf_counter()
    for step in range(total):
        epoch, k = divmod(step, steps_per_epoch)
        if k == 0:
            order = epoch_order(n, cfg.repeats, epoch, cfg.seed)
        batch = order[k * cfg.batch_size:(k + 1) * cfg.batch_size] or order[:cfg.batch_size]
        g = step_generator(cfg.seed, step)
        ops = [(int(r), bool(h), bool(v)) for r, h, v in zip(torch.randint(0, 4, (len(batch),), generator=g),
                                                             *(torch.rand(2, len(batch), generator=g) < 0.5))]
        pixels = augment_batch(images[batch].float().div(127.5).sub(1.0), ops).to(device, weight_dtype)
        cond = augment_batch(conds[batch], ops).to(device, weight_dtype)
        with torch.no_grad():
            latents = (vae.encode(pixels).latent_dist.sample(generator=g) * vae.config.scaling_factor).float()
        noise = torch.randn(latents.shape, generator=g).to(device)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(batch),), generator=g).to(device)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        rows_idx = caption_row[batch].clone()
        rows_idx[torch.rand(len(batch), generator=g) < cfg.empty_prompt_fraction] = len(unique) - 1
        hidden = text_states[rows_idx.to(device)]
        target = noise if noise_scheduler.config.prediction_type == "epsilon" else noise_scheduler.get_velocity(latents, noise, t)
        with autocast:
            down, mid = controlnet(noisy.to(weight_dtype), t, encoder_hidden_states=hidden, controlnet_cond=cond, return_dict=False)
            pred = unet(noisy.to(weight_dtype), t, encoder_hidden_states=hidden,
                        down_block_additional_residuals=[d.to(weight_dtype) for d in down],
                        mid_block_additional_residual=mid.to(weight_dtype)).sample
        loss = F.mse_loss(pred.float(), target.float())
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(controlnet.parameters(), cfg.max_grad_norm, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.detach().item()
        if not math.isfinite(value):
            raise Diverged(f"{job.name}: the training loss became {value} at step {step + 1} of {total}, so no ControlNet was "
                           f"written; the learning rate is likely too high (--learning-rate {cfg.learning_rate:g}): lower it")
        rows.append({"step": step + 1, "epoch": epoch, "loss": f"{value:.6f}"})
        now = time.perf_counter()
        step_seconds.append(now - t_prev)
        t_prev = now
        if (step + 1) % 10 == 0 or step + 1 == total:
            log.info("%s: step %d/%d  loss %.4f", job.name, step + 1, total, value)
    timed = sorted(step_seconds[1:])  # the first step warms up
    stats = {"steps": total, "batch_size": cfg.batch_size, "resolution": cfg.resolution,
             "loop_seconds": round(time.perf_counter() - t_start, 4),
             "steps_per_second_median": round(1 / timed[len(timed) // 2], 4) if timed else None,
             "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None,
             "step_seconds": [round(s, 5) for s in step_seconds]}
    _write(job, cfg, controlnet, rows, stats)
    return job.out_dir


STALE_AFTER_S = 600  # a folder is renamed into place within seconds of its start; an older one was left by a killed run


def remove_stale_temporaries(out_dir: Path, now: float | None = None) -> int:
    """Delete our own temporary folders (`.controlnet.tmp-*`) beside `out_dir` left by a killed run; returns how many.

    Only those untouched for STALE_AFTER_S seconds: another run writing beside it at this moment keeps its own.
    """
    now = time.time() if now is None else now
    n = 0
    for tmp in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        if tmp.is_dir() and not tmp.is_symlink() and now - tmp.stat().st_mtime >= STALE_AFTER_S:
            shutil.rmtree(tmp, ignore_errors=True)
            n += 1
    return n


def _write(job: Job, cfg, controlnet, rows: list[dict], stats: dict) -> None:
    """Build the ControlNet folder beside its place and rename it in (a killed run leaves no half folder)."""
    remove_stale_temporaries(job.out_dir)
    tmp = temp_dir_beside(job.out_dir, prefix=f".{job.out_dir.name}.tmp-")
    try:
        controlnet.save_pretrained(tmp, safe_serialization=True)
        resolved = {"controlnet": as_dict(cfg), "fold": job.fold, "lora": str(job.lora) if job.lora else None,
                    "pairs": [p.name for p in job.pairs],
                    "condition": "RGB = (foreground, instance boundaries, 0) of the instance mask, 0..1"}
        write_text_atomic(tmp / "config.yaml", dump_yaml(resolved))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["step", "epoch", "loss"])
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(tmp / "loss.csv", buf.getvalue())
        write_text_atomic(tmp / "stats.json", json.dumps(stats, indent=2) + "\n")
        fp.write(tmp / layout.FINGERPRINT_FILE, job.fingerprint)  # last: what determined this ControlNet
        old = None
        if job.out_dir.exists():  # plan() let through only our finished folder, with --overwrite
            old = job.out_dir.with_name(f".{job.out_dir.name}.old-{os.getpid()}")
            os.replace(job.out_dir, old)
        os.replace(tmp, job.out_dir)
        if old is not None:
            shutil.rmtree(old)
        log.info("%s: wrote %s", job.name, job.out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(cfg, data_cfg) -> list[Path]:
    """Train every planned ControlNet in turn (keeping finished ones made from the same inputs); returns the folders."""
    jobs = plan(cfg, data_cfg)
    done = []
    for job in jobs:
        if job.finished:
            log.info("%s: finished already from the same inputs, kept", job.out_dir)
            done.append(job.out_dir)
            continue
        if job.lora is not None and fp.read(job.lora.parent / layout.FINGERPRINT_FILE) is None and job.test:
            log.warning("LoRA %s has no record of its training images: it cannot be checked against the test pairs", job.lora)
        done.append(train_one(job, cfg))
    return done
