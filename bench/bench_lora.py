"""Trainer overhead: steps/s of `lora.train` against a bare loop of the same passes, side by side.

    .venv/bin/python -m bench.bench_lora                      # CPU, a small SD-like model, res 128, batch 2
    .venv/bin/python -m bench.bench_lora --sd15 --device cuda # SD 1.5 architecture (random weights), 512, fp16 + bf16
    .venv/bin/python -m bench.bench_lora --smoke              # one short round: the script still runs
    .venv/bin/python -m bench.bench_lora --compile            # the bare step eager / channels_last / torch.compile

The bare loop is the floor: the same model with the same LoRA adapters (U-Net and
text encoder, fp32 LoRA parameters), the same batch and resolution; per step a VAE
encode (or a pre-encoded latent), noise, a text-encoder and U-Net forward, the MSE
loss, the backward pass, and what any valid training loop has: a GradScaler in fp16,
gradient clipping at the trainer's default norm, the AdamW step and the trainer's
default learning-rate schedule; nothing else. The trainer's figures come from
its own `stats.json` (the wall time of every whole loop iteration after the first,
which warms up), so model loading, image decoding and output writing are not
counted on either side. Rounds alternate between the loops; step times are pooled
over rounds and steps/s is 1 / their lower quartile (other jobs on a shared machine
only ever slow a step down), with the median beside it.

Each run rewrites its own section of bench/lora.md (`<!-- bench:cpu -->` or
`<!-- bench:sd15 -->`; `--md ''` leaves the file alone).

`--sd15` builds Stable Diffusion 1.5's U-Net, VAE and CLIP text encoder from their
published configs with random weights (no download; the cost of a step does not
depend on the weights) and reports peak GPU memory too.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("USE_TF", "0")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import lora  # noqa: E402,F401
from diffusion.model import SD15_UNET_CONFIG, SD15_VAE_CONFIG, build_sd15  # noqa: E402

# A small SD-like model (SD 1.5's layout at a quarter of its width, one layer per block): enough compute
# per step on a CPU for the overhead to mean something, with the VAE a similar share of the step as in SD.
SMALL_UNET = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(64, 128, 256, 256),
                  down_block_types=SD15_UNET_CONFIG["down_block_types"], up_block_types=SD15_UNET_CONFIG["up_block_types"],
                  cross_attention_dim=192, attention_head_dim=8, norm_num_groups=32)
SMALL_VAE = dict(SD15_VAE_CONFIG, block_out_channels=(32, 64, 128, 128), layers_per_block=1, sample_size=128)
SMALL_TEXT = dict(hidden_size=192, intermediate_size=768, num_attention_heads=4, num_hidden_layers=4,
                  max_position_embeddings=77, projection_dim=192)  # vocabulary: the tiny model's tokenizer


def build_model(kind: str, out: Path) -> Path:
    """Write a diffusers folder with random weights: 'small' (CPU) or 'sd15' (SD 1.5 architecture)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffusion.tiny import build_tiny_pipeline

    tiny = build_tiny_pipeline(0)  # its tokenizer and (SD 1.5's) scheduler config
    torch.manual_seed(0)
    tok = tiny.tokenizer
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if kind == "sd15":
        unet, text, vae = build_sd15("cpu", vae=True, **ids)  # SD 1.5's vocabulary size; the tiny tokenizer's ids fit
    else:
        unet, vae = UNet2DConditionModel(**SMALL_UNET), AutoencoderKL(**SMALL_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SMALL_TEXT, vocab_size=len(tok), **ids))
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tiny.tokenizer, scheduler=tiny.scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def trainer_step_times(model: Path, data: Path, out: Path, args, cache: bool, precision: str) -> dict:
    """Run `lora.train.run` on one group; its stats.json holds the wall time of every loop iteration."""
    from lora.train import run
    from prompts.schema.data import DataSection
    from prompts.schema.lora import LoraSection

    shutil.rmtree(out, ignore_errors=True)
    cfg = LoraSection(model=str(model), output=str(out), epochs=1, repeats=args.steps * args.batch_size // args.images,
                      batch_size=args.batch_size, resolution=args.resolution, validation_images=0, cache_latents=cache,
                      random_flip=False, mixed_precision=precision, gradient_checkpointing=args.gradient_checkpointing,
                      network=args.network)
    (folder,) = run(cfg, DataSection(data=str(data)))
    stats = json.loads((folder / "stats.json").read_text())
    return {"step_seconds": stats["step_seconds"][1:], "peak_gpu_memory_gib": stats["peak_gpu_memory_gib"]}


def bare_step_times(model: Path, data: Path, args, cache: bool, precision: str) -> dict:
    """The floor: the same passes with nothing around them, as a valid training loop has them.

    Per step: a VAE encode (or the cached latent), noise, timesteps, the text-encoder and U-Net forward under
    autocast, the MSE loss, the backward pass (through a GradScaler in fp16, so small gradients do not
    underflow), gradient clipping at the trainer's default norm, the AdamW step and the learning-rate
    schedule's step (the trainer's default schedule); the LoRA parameters stay fp32, as the trainer's.
    Returns the wall time of each step after the first.
    """
    step, peak = bare_step(model, data, args, cache, precision)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"step_seconds": times[1:], "peak_gpu_memory_gib": peak()}


def bare_step(model: Path, data: Path, args, cache: bool, precision: str, channels_last: bool = False,
              compile_unet: bool = False):
    """The bare loop's step as a function (see `bare_step_times`), and a function giving peak GPU GiB (None on a CPU).

    channels_last: the U-Net's weights and its input in channels-last memory format. compile_unet: the U-Net wrapped
    by `torch.compile` (default inductor backend; forward and backward compiled on the first step).
    """
    from types import SimpleNamespace

    from diffusers.optimization import get_scheduler

    from diffusion.model import load_pipeline
    from lora.data import load_images, pixel_batch
    from lora.train import add_lora
    from prompts.config import field_default
    from prompts.dataset import read_dataset
    from prompts.normalize import DEFAULT
    from prompts.schema.lora import LoraSection

    device = torch.device(args.device)
    dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    pipe = load_pipeline(model)
    unet, vae, text = pipe.unet.to(device, dtype), pipe.vae.to(device, dtype), pipe.text_encoder.to(device, dtype)
    for m in (unet, vae, text):
        m.requires_grad_(False)
    groups = add_lora(unet, text, SimpleNamespace(seed=0, rank=8, alpha=8.0, unet_lr=1e-4, text_encoder_lr=1e-4,
                                                  network=args.network, conv_dim=0, conv_alpha=None))  # the trainer's modules
    params = [p for g in groups for p in g["params"]]
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        text.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW([{"params": params, "lr": 1e-4}], fused=device.type in ("cpu", "cuda"))  # as the trainer
    default = {f.name: field_default(f) for f in dataclasses.fields(LoraSection)}
    schedule = get_scheduler(default["lr_scheduler"], opt, num_warmup_steps=default["lr_warmup_steps"],
                             num_training_steps=args.steps)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # fp16 needs loss scaling; bf16 does not
    max_norm = default["max_grad_norm"]
    images = load_images(read_dataset(data), args.resolution, DEFAULT)  # the default reading rule
    pixels = pixel_batch(images, list(range(args.batch_size)), False, None).to(device, dtype)
    ids = pipe.tokenizer(["a micrograph"] * args.batch_size, padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        cached = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
    sched = pipe.scheduler
    autocast = torch.autocast(device.type, dtype=dtype, enabled=precision != "no")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    net = torch.compile(unet) if compile_unet else unet

    def step() -> None:
        with torch.no_grad():
            latents = cached if cache else vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        latents = latents.float()
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (args.batch_size,), device=device)
        with autocast:
            noisy = sched.add_noise(latents, noise, t).to(dtype).contiguous(memory_format=memory_format)
            pred = net(noisy, t, text(ids)[0]).sample
        loss = F.mse_loss(pred.float(), noise)
        scaler.scale(loss).backward()
        if max_norm > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        scaler.step(opt)
        scaler.update()
        schedule.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # wait for the device, as the trainer's loss log does

    return step, lambda: torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def steps_per_second(step_seconds: list[float], q: float) -> float:
    """1 / the q-quantile of the step times: on a shared machine, other jobs only ever make steps slower,
    so a low quantile (pooled over rounds) estimates the undisturbed speed; q = 0.5 is the median."""
    times = sorted(step_seconds)
    return 1.0 / times[min(len(times) - 1, int(q * len(times)))]


def markdown_section(rows: list[dict], args, argv) -> str:
    """This run's figures as markdown: the command, the setting, the table and the two target ratios."""
    import datetime
    import sys

    cmd = " ".join(["python -m bench.bench_lora", *(argv if argv is not None else sys.argv[1:])]).strip()
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} torch threads{load}"
    out = [f"Command: `{cmd}`. Measured {datetime.date.today()} on {device}; "
           f"{'SD 1.5 architecture' if args.sd15 else 'small SD-like model'}, resolution {args.resolution}, batch {args.batch_size}, "
           f"{args.steps} steps x {args.rounds} rounds per loop; steps/s = 1 / q{args.quantile:g} of the pooled step times.", "",
           "| precision | loop | steps/s | median steps/s | vs its floor | vs bare loop encoding every step | peak GPU GiB |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        mem = f"{r['peak_gpu_memory_gib']:.2f}" if r["peak_gpu_memory_gib"] else "-"
        out.append(f"| {r['precision']} | {r['loop']} | {r['steps_per_second']:.3f} | {r['median_steps_per_second']:.3f} | "
                   f"{r['vs_its_floor']:.3f} | {r['vs_bare_encode']:.3f} | {mem} |")
    out.append("")
    for precision in dict.fromkeys(r["precision"] for r in rows):
        by = {r["loop"]: r for r in rows if r["precision"] == precision}
        out.append(f"- {precision}: trainer overhead over the bare loop {100 * (1 / by['trainer']['vs_its_floor'] - 1):+.1f} %; "
                   f"with `--cache-latents` {by['trainer, cache_latents']['vs_bare_encode']:.2f}x the speed of the bare loop "
                   "that encodes every step.")
    return "\n".join(out)


def update_markdown(path: Path, name: str, body: str) -> None:
    """Replace the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in `path` (appended if absent)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
    print(f"updated {path} ({name})")


# --------------------------------------------------------------------------- vs diffusers' example trainer

def example_step_times(model: Path, data: Path, args) -> dict:
    """diffusers' `examples/text_to_image/train_text_to_image_lora.py` training loop, transcribed.

    The example's settings for a U-Net LoRA: peft LoraConfig(r=rank, lora_alpha=rank, gaussian init,
    to_q/k/v/out.0), AdamW(lr, weight decay 1e-2) over `filter(requires_grad)`, constant schedule,
    accelerate with TensorBoard logging when available, a shuffling DataLoader whose items are transformed
    per access (RGB, resize, centre crop, to tensor, normalize; the caption tokenized), a VAE encode,
    the text encoder run every step, `avg_loss.item()`, clip_grad_norm_ and the step. Only the HF
    `datasets` and torchvision plumbing is replaced by equivalent PIL/numpy code (neither is installed
    here). As in the example, the gradient clipping receives the `filter` the optimizer has already
    consumed, so it clips nothing. Returns the wall time of every loop iteration after the first.
    """
    import io
    import random

    import numpy as np
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig
    from PIL import Image
    from tqdm.auto import tqdm

    from diffusion.model import load_pipeline

    accelerator = Accelerator(mixed_precision="no", cpu=args.device == "cpu")
    pipe = load_pipeline(model)
    tokenizer, text_encoder, vae, unet = pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False)
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=args.example_rank, lora_alpha=args.example_rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    unet.to(accelerator.device)
    vae.to(accelerator.device)
    text_encoder.to(accelerator.device)
    lora_layers = filter(lambda p: p.requires_grad, unet.parameters())
    optimizer = torch.optim.AdamW(lora_layers, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-08)

    files = sorted(p for p in data.rglob("*.png"))
    res = args.resolution

    class ImageCaptions(torch.utils.data.Dataset):  # the example's dataset.with_transform(preprocess_train)
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            image = Image.open(files[i]).convert("RGB")
            scale = res / min(image.size)  # transforms.Resize(res, BILINEAR) + CenterCrop(res)
            image = image.resize((max(res, round(image.width * scale)), max(res, round(image.height * scale))), Image.BILINEAR)
            left, top = (image.width - res) // 2, (image.height - res) // 2
            image = image.crop((left, top, left + res, top + res))
            x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # ToTensor
            x = (x - 0.5) / 0.5  # Normalize([0.5], [0.5])
            ids = tokenizer(["a micrograph"], max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                            return_tensors="pt").input_ids[0]
            return {"pixel_values": x, "input_ids": ids}

    def collate_fn(examples):
        pixel_values = torch.stack([e["pixel_values"] for e in examples]).to(memory_format=torch.contiguous_format).float()
        return {"pixel_values": pixel_values, "input_ids": torch.stack([e["input_ids"] for e in examples])}

    train_dataloader = torch.utils.data.DataLoader(ImageCaptions(), shuffle=True, collate_fn=collate_fn,
                                                   batch_size=args.batch_size, num_workers=0)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=args.steps)
    unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, train_dataloader, lr_scheduler)
    progress_bar = tqdm(range(args.steps), file=io.StringIO())  # the example's bar, drawn nowhere
    random.seed(0)
    times, global_step, t_prev = [], 0, None
    unet.train()
    while global_step < args.steps:
        train_loss = 0.0
        for batch in train_dataloader:
            t_now = time.perf_counter()
            if t_prev is not None:
                times.append(t_now - t_prev)
            t_prev = t_now
            with accelerator.accumulate(unet):
                latents = vae.encode(batch["pixel_values"]).latent_dist.sample()
                latents = latents * vae.config.scaling_factor
                noise = torch.randn_like(latents)
                bsz = latents.shape[0]
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device).long()
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
                encoder_hidden_states = text_encoder(batch["input_ids"], return_dict=False)[0]
                target = noise
                model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
                loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
                avg_loss = accelerator.gather(loss.repeat(args.batch_size)).mean()
                train_loss += avg_loss.item()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(lora_layers, 1.0)  # the consumed filter, as in the example
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                progress_bar.update(1)
                global_step += 1
                accelerator.log({"train_loss": train_loss}, step=global_step)
                train_loss = 0.0
            progress_bar.set_postfix(step_loss=loss.detach().item(), lr=lr_scheduler.get_last_lr()[0])
            if global_step >= args.steps:
                break
    times.append(time.perf_counter() - t_prev)
    accelerator.end_training()
    return {"step_seconds": times[1:], "peak_gpu_memory_gib": None}


def example_trainer_step_times(model: Path, data: Path, out: Path, args) -> dict:
    """`lora train` at the example's settings: U-Net only, attention modules, rank = alpha, no flips, clipping on."""
    from lora.train import run
    from prompts.schema.data import DataSection
    from prompts.schema.lora import LoraSection

    shutil.rmtree(out, ignore_errors=True)
    cfg = LoraSection(model=str(model), output=str(out), epochs=1, repeats=max(1, args.steps * args.batch_size // args.images),
                      batch_size=args.batch_size, resolution=args.resolution, validation_images=0, random_flip=False,
                      text_encoder_lr=0.0, unet_lr=1e-4, rank=args.example_rank, alpha=float(args.example_rank),
                      network="attention")
    (folder,) = run(cfg, DataSection(data=str(data)))
    stats = json.loads((folder / "stats.json").read_text())
    return {"step_seconds": stats["step_seconds"][1:], "peak_gpu_memory_gib": stats["peak_gpu_memory_gib"]}


def compare_with_example(args, tmp: Path, argv) -> str:
    """Alternating rounds of the example loop and `lora train` on the tiny model; markdown of both figures and ratios.

    Two figures per loop and round: CPU milliseconds per step, from the process CPU time of a long
    and a short run (their difference divided by the difference in steps: start-up and model loading
    cancel out; other programs on a shared machine barely move it), and the median wall time of a step.
    """
    import datetime
    import statistics
    from types import SimpleNamespace

    from accelerate.state import AcceleratorState

    from diffusion.tiny import write_tiny_model
    from prompts.demo import write_demo_dataset

    model = write_tiny_model(tmp / "tiny")
    data = write_demo_dataset(tmp / "edata", per_class={"good": args.images}, cell_lines=["A549"], size=args.resolution)
    short = max(4, args.steps // 6)

    def measure(fn, steps):
        AcceleratorState._reset_state(True)
        t = time.process_time()
        walls = fn(SimpleNamespace(**{**vars(args), "steps": steps}))["step_seconds"]
        return time.process_time() - t, walls

    loops = {"diffusers example loop": lambda a: example_step_times(model, data, a),
             "lora train": lambda a: example_trainer_step_times(model, data, tmp / "eout", a)}
    cpu: dict[str, list[float]] = {name: [] for name in loops}
    wall: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, fn in loops.items():  # alternate, so that slow phases of the machine hit both loops
            c_short, _ = measure(fn, short)
            c_long, walls = measure(fn, args.steps)
            cpu[name].append((c_long - c_short) / (args.steps - short))
            wall[name].append(statistics.median(walls))
    ex, ours = "diffusers example loop", "lora train"
    cpu_ratio = statistics.median(e / o for e, o in zip(cpu[ex], cpu[ours]))
    wall_ratio = statistics.median(e / o for e, o in zip(wall[ex], wall[ours]))
    cmd = " ".join(["python -m bench.bench_lora", *(argv if argv is not None else sys.argv[1:])]).strip()
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    lines = [f"Command: `{cmd}`. Measured {datetime.date.today()} on CPU, {torch.get_num_threads()} torch threads{load}; "
             f"tiny model, {args.resolution} px, batch {args.batch_size}, U-Net-only LoRA rank {args.example_rank} "
             f"(to_q/k/v/out.0), {args.steps} and {short} steps x {args.rounds} alternating rounds.", "",
             "| loop | CPU ms per step (median of rounds) | wall ms per step (median of rounds) |", "| --- | ---: | ---: |"]
    for name in loops:
        lines.append(f"| {name} | {1000 * statistics.median(cpu[name]):.1f} | {1000 * statistics.median(wall[name]):.1f} |")
    lines += ["", f"- `lora train` steps/s over the example's, median of the per-round ratios: **{cpu_ratio:.3f}** by CPU time, "
              f"{wall_ratio:.3f} by wall time (rounds, CPU: {', '.join(f'{e / o:.2f}' for e, o in zip(cpu[ex], cpu[ours]))})."]
    return "\n".join(lines)


def compare_presets(args, tmp: Path, argv) -> str:
    """Trainer steps/s and file sizes of the network presets, side by side (alternating rounds)."""
    import datetime
    import statistics

    from accelerate.state import AcceleratorState

    from lora.train import run
    from prompts.demo import write_demo_dataset
    from prompts.schema.data import DataSection
    from prompts.schema.lora import LoraSection

    model = build_model("sd15" if args.sd15 else "small", tmp / "pmodel")
    data = write_demo_dataset(tmp / "pdata", per_class={"good": args.images}, cell_lines=["A549"], size=args.resolution)
    presets = {"attention": ("attention", 0), "kohya": ("kohya", 0), "kohya + LoCon conv_dim 4": ("kohya", 4)}
    times: dict[str, list[float]] = {name: [] for name in presets}
    sizes: dict[str, tuple[int, int, int]] = {}
    for _ in range(args.rounds):
        for name, (network, conv_dim) in presets.items():
            AcceleratorState._reset_state(True)
            out = tmp / "pout"
            shutil.rmtree(out, ignore_errors=True)
            cfg = LoraSection(model=str(model), output=str(out), epochs=1, repeats=max(1, args.steps * args.batch_size // args.images),
                              batch_size=args.batch_size, resolution=args.resolution, validation_images=0, random_flip=False,
                              network=network, conv_dim=conv_dim, mixed_precision=args.precision[0] if args.precision else ("fp16" if args.device == "cuda" else "no"))
            (folder,) = run(cfg, DataSection(data=str(data)))
            stats = json.loads((folder / "stats.json").read_text())
            times[name].append(statistics.median(stats["step_seconds"][1:]))
            from diffusion.formats import read_lora

            kohya = folder / "good.safetensors"
            sizes[name] = (len(read_lora(kohya).modules), kohya.stat().st_size, (folder / "pytorch_lora_weights.safetensors").stat().st_size)
    cmd = " ".join(["python -m bench.bench_lora", *(argv if argv is not None else sys.argv[1:])]).strip()
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} torch threads"
    base = 1.0 / statistics.median(times["attention"])
    lines = [f"Command: `{cmd}`. Measured {datetime.date.today()} on {device}; "
             f"{'SD 1.5 architecture' if args.sd15 else 'small SD-like model'}, {args.resolution} px, batch {args.batch_size}, "
             f"rank 8 on U-Net and text encoder, {args.steps} steps x {args.rounds} alternating rounds.", "",
             "| preset | modules | steps/s | vs attention | kohya file | diffusers file |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in presets:
        sps = 1.0 / statistics.median(times[name])
        n, k, d = sizes[name]
        lines.append(f"| {name} | {n} | {sps:.3f} | {sps / base:.2f} | {k / 2**20:.2f} MiB | {d / 2**20:.2f} MiB |")
    return "\n".join(lines)

# --------------------------------------------------------------------------- torch.compile and channels_last

COMPILE_VARIANTS = {"eager": (False, False), "channels_last": (True, False), "torch.compile": (False, True),
                    "torch.compile + channels_last": (True, True)}


def compare_compile(args, tmp: Path, argv) -> str:
    """The bare training step (latents pre-encoded) eager, channels_last, compiled and both, side by side.

    Each variant is built once; its first step (the compilation, for compiled ones) is timed on its own; then rounds
    alternate between the variants, `args.steps` steps each, and the step times are pooled per variant. A variant
    that fails (a compiler error) is reported with its error line. Returns the markdown section.
    """
    import datetime

    from diffusion.tiny import write_tiny_model
    from prompts.demo import write_demo_dataset

    data = write_demo_dataset(tmp / "data", per_class={"good": args.images}, cell_lines=["A549"], size=args.resolution)
    model = write_tiny_model(tmp / "model") if args.compile_model == "tiny" else build_model(args.compile_model, tmp / "model")
    steps, first, errors = {}, {}, {}
    for name, (channels_last, compiled) in COMPILE_VARIANTS.items():
        try:
            step, _ = bare_step(model, data, args, True, args.precision[0], channels_last, compiled)
            t0 = time.perf_counter()
            step()
            first[name], steps[name] = time.perf_counter() - t0, step
        except Exception as err:  # inductor raises many types (a missing compiler, a lowering error)
            errors[name] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}"
        print(f"{name}: first step {first.get(name, float('nan')):.1f} s {errors.get(name, '')}", file=sys.stderr, flush=True)
    pooled: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds):
        for name, step in steps.items():
            step()  # one untimed step after the switch: caches of the other variant's run
            for _ in range(args.steps):
                t0 = time.perf_counter()
                step()
                pooled[name].append(time.perf_counter() - t0)
        print(f"round {r}: " + ", ".join(f"{n} {1000 * statistics.median(v):.1f} ms" for n, v in pooled.items()),
              file=sys.stderr, flush=True)
    cmd = " ".join(["python -m bench.bench_lora", *(argv if argv is not None else sys.argv[1:])]).strip()
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} torch threads{load}"
    out = [f"Command: `{cmd}`. Measured {datetime.date.today()} on {device}, torch {torch.__version__}; "
           f"{args.compile_model} model, resolution {args.resolution}, batch {args.batch_size}, precision {args.precision[0]}, "
           f"the bare loop's step with pre-encoded latents (U-Net and text-encoder LoRA); {args.steps} steps x {args.rounds} rounds "
           f"per variant, alternating; steps/s = 1 / q{args.quantile:g} of the pooled step times.", "",
           "| variant | first step s (compile) | steps/s | median steps/s | vs eager |", "| --- | ---: | ---: | ---: | ---: |"]
    eager = steps_per_second(pooled["eager"], args.quantile) if pooled.get("eager") else None
    for name in COMPILE_VARIANTS:
        if name in errors:
            out.append(f"| {name} | failed: `{errors[name]}` | - | - | - |")
            continue
        sps = steps_per_second(pooled[name], args.quantile)
        ratio = f"{sps / eager:.2f}" if eager else "-"
        out.append(f"| {name} | {first[name]:.1f} | {sps:.3f} | {steps_per_second(pooled[name], 0.5):.3f} | {ratio} |")
    return "\n".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd15", action="store_true", help="SD 1.5 architecture at 512 (needs a GPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=None, help="default 128 (small) or 512 (--sd15)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="steps per measurement (the first is a warm-up)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds; step times are pooled over them")
    parser.add_argument("--quantile", type=float, default=0.25, help="steps/s = 1 / this quantile of the pooled step times")
    parser.add_argument("--precision", nargs="+", default=None, help="default: no (CPU), fp16 bf16 (--sd15)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--network", default="kohya", choices=["kohya", "attention"], help="network preset of both loops")
    parser.add_argument("--vs-example", action="store_true",
                        help="instead: lora train vs diffusers' example trainer loop (tiny model, 64 px, U-Net-only rank 4)")
    parser.add_argument("--presets", action="store_true", help="instead: steps/s and file size of the network presets")
    parser.add_argument("--compile", action="store_true",
                        help="instead: the bare step eager vs channels_last vs torch.compile vs both (side by side)")
    parser.add_argument("--compile-model", default="tiny", choices=["tiny", "small", "sd15"],
                        help="--compile: the model (default tiny; sd15: SD 1.5 architecture, for a GPU)")
    parser.add_argument("--example-rank", type=int, default=4, help="--vs-example: LoRA rank (= alpha, as the example)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--md", default=str(Path(__file__).with_name("lora.md")),
                        help="update this run's section of this markdown file ('' to skip; default bench/lora.md)")
    parser.add_argument("--smoke", action="store_true", help="one tiny configuration, one step: checks that the script still runs (writes no .md)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.resolution, args.steps, args.rounds, args.md, args.json, args.batch_size = 64, 4, 1, "", None, 1
    if args.compile:
        args.images, args.precision = 4, args.precision or ["no"]
        args.resolution = args.resolution or {"tiny": 64, "small": 128, "sd15": 512}[args.compile_model]
        tmp = Path(tempfile.mkdtemp(prefix="bench_lora."))
        try:
            body = compare_compile(args, tmp, argv)
            print(body)
            if args.md:
                update_markdown(Path(args.md), f"compile-{args.compile_model}-{args.device}", body)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    if args.vs_example or args.presets:
        args.images = 4
        args.resolution = args.resolution or (64 if args.vs_example else 512 if args.sd15 else 128)
        tmp = Path(tempfile.mkdtemp(prefix="bench_lora."))
        try:
            name = "example" if args.vs_example else "presets-sd15" if args.sd15 else "presets"
            body = compare_with_example(args, tmp, argv) if args.vs_example else compare_presets(args, tmp, argv)
            print(body)
            if args.md:
                update_markdown(Path(args.md), name, body)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    args.resolution = args.resolution or (512 if args.sd15 else 128)
    precisions = args.precision or (["fp16", "bf16"] if args.sd15 else ["no"])
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA GPU is visible")
    if args.sd15 and args.device == "cpu":
        print("note: --sd15 on a CPU is very slow; use --device cuda")
    from prompts.demo import write_demo_dataset

    tmp = Path(tempfile.mkdtemp(prefix="bench_lora."))
    try:
        args.images = 4
        data = write_demo_dataset(tmp / "data", per_class={"good": args.images}, cell_lines=["A549"], size=args.resolution)
        model = build_model("sd15" if args.sd15 else "small", tmp / "model")
        rows = []
        for precision in precisions:
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state(True)  # one Accelerator per precision in this process
            loops = {
                "bare, VAE encode every step": lambda: bare_step_times(model, data, args, False, precision),
                "trainer": lambda: trainer_step_times(model, data, tmp / "out", args, False, precision),
                "bare, latents pre-encoded": lambda: bare_step_times(model, data, args, True, precision),
                "trainer, cache_latents": lambda: trainer_step_times(model, data, tmp / "out", args, True, precision),
            }
            pooled: dict[str, dict] = {name: {"step_seconds": [], "peak_gpu_memory_gib": None} for name in loops}
            for _ in range(args.rounds):
                for name, fn in loops.items():  # alternate, so that slow phases of the machine hit every loop
                    if torch.cuda.is_available():
                        torch.cuda.reset_peak_memory_stats()
                    r = fn()
                    mem = f", peak GPU {r['peak_gpu_memory_gib']:.2f} GiB" if r["peak_gpu_memory_gib"] else ""
                    print(f"{precision} {name}: median step {1000 * statistics.median(r['step_seconds']):.1f} ms{mem}",
                          file=sys.stderr, flush=True)  # progress, and a figure even if the run is cut short
                    pooled[name]["step_seconds"] += r["step_seconds"]
                    pooled[name]["peak_gpu_memory_gib"] = r["peak_gpu_memory_gib"]
            sps = {name: steps_per_second(r["step_seconds"], args.quantile) for name, r in pooled.items()}
            med = {name: steps_per_second(r["step_seconds"], 0.5) for name, r in pooled.items()}
            enc, pre = sps["bare, VAE encode every step"], sps["bare, latents pre-encoded"]
            for name, r in pooled.items():
                floor = pre if "pre-encoded" in name or "cache" in name else enc
                rows.append({"precision": precision, "loop": name, "steps_per_second": sps[name], "median_steps_per_second": med[name],
                             "vs_its_floor": sps[name] / floor, "vs_bare_encode": sps[name] / enc,
                             "steps_timed": len(r["step_seconds"]), "peak_gpu_memory_gib": r["peak_gpu_memory_gib"]})
        print(f"model: {'SD 1.5 architecture' if args.sd15 else 'small SD-like'}, device {args.device}, "
              f"resolution {args.resolution}, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds, "
              f"steps/s = 1 / q{args.quantile:g} of step times, torch threads {torch.get_num_threads()}")
        print("| precision | loop | steps/s | median steps/s | vs its floor | vs bare loop encoding every step | peak GPU GiB |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            mem = f"{r['peak_gpu_memory_gib']:.2f}" if r["peak_gpu_memory_gib"] else "-"
            print(f"| {r['precision']} | {r['loop']} | {r['steps_per_second']:.3f} | {r['median_steps_per_second']:.3f} | "
                  f"{r['vs_its_floor']:.3f} | {r['vs_bare_encode']:.3f} | {mem} |")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        if args.md:
            update_markdown(Path(args.md), "sd15" if args.sd15 else "cpu", markdown_section(rows, args, argv))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
