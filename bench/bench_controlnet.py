"""ControlNet training steps/s against the LoRA trainer's, on the same model, images, size and batch, side by side.

    .venv/bin/python -m bench.bench_controlnet                        # CPU: the tiny model, 64 px, batch 2
    .venv/bin/python -m bench.bench_controlnet --model small          # CPU: bench_lora's small SD-like model, 128 px
    .venv/bin/python -m bench.bench_controlnet --model sd15 --device cuda --resolution 512 --precision bf16

Both sides are the toolkit's own trainers, called as the CLIs call them: `controlnet.train.run`
(ControlNet copied from the U-Net encoder, U-Net frozen) and `lora.train.run` (kohya LoRA on the
U-Net only, `text_encoder_lr 0`, so neither side trains the text encoder; no latent cache on either
side, since the ControlNet trainer encodes every step). Both train on the same blob images (the
LoRA as one class) with the same resolution, batch size and number of steps. Rounds alternate
between the trainers; each trainer's `stats.json` holds the wall time of every loop iteration (the
first, which warms up, is dropped), so model loading and output writing are not counted. steps/s
= 1 / the lower quartile of the pooled step times (other jobs only ever slow a step down), the
median beside it. The result is a ratio, ControlNet / LoRA; it rewrites its section of
bench/controlnet.md (`<!-- bench:<model> -->`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.bench_lora import build_model, steps_per_second, update_markdown  # noqa: E402


def controlnet_times(model: Path, data: Path, out: Path, args) -> list[float]:
    from controlnet.train import run
    from prompts.schema.controlnet import ControlnetSection
    from prompts.schema.data import DataSection

    shutil.rmtree(out, ignore_errors=True)
    cfg = ControlnetSection(model=str(model), output=str(out), epochs=1, repeats=args.steps * args.batch_size // args.images,
                            batch_size=args.batch_size, resolution=args.resolution, mixed_precision=args.precision)
    (folder,) = run(cfg, DataSection(data=str(data)))
    return json.loads((folder / "stats.json").read_text())["step_seconds"][1:]


def lora_times(model: Path, data: Path, out: Path, args) -> list[float]:
    from lora.train import run
    from prompts.schema.data import DataSection
    from prompts.schema.lora import LoraSection

    shutil.rmtree(out, ignore_errors=True)
    cfg = LoraSection(model=str(model), output=str(out), epochs=1, repeats=args.steps * args.batch_size // args.images,
                      batch_size=args.batch_size, resolution=args.resolution, validation_images=0, text_encoder_lr=0.0,
                      random_flip=True, mixed_precision=args.precision)
    (folder,) = run(cfg, DataSection(data=str(data)))
    return json.loads((folder / "stats.json").read_text())["step_seconds"][1:]


def prepare(tmp: Path, args) -> tuple[Path, Path, Path]:
    """(model folder, pairs folder, class folder of the same images for the LoRA)."""
    from diffusion.tiny import write_tiny_model
    from prompts.blobs import make_blob_pairs

    model = write_tiny_model(tmp / "tiny") if args.model == "tiny" else build_model(args.model, tmp / args.model)
    pairs = make_blob_pairs(tmp / "pairs", n=args.images, size=args.resolution, seed=0)
    cls = tmp / "classes" / "cells"
    cls.mkdir(parents=True)
    for p in sorted((pairs / "images").glob("*.png")):
        shutil.copy(p, cls / p.name)
    return model, pairs, cls.parent


def markdown(rows: dict, args, argv) -> str:
    import datetime
    import sys

    cmd = " ".join(["python -m bench.bench_controlnet", *(argv if argv is not None else sys.argv[1:])]).strip()
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} torch threads{load}"
    out = [f"Command: `{cmd}`. Measured {datetime.date.today()} on {device}; model {args.model}, resolution {args.resolution}, "
           f"batch {args.batch_size}, precision {args.precision}, {args.steps} steps x {args.rounds} rounds per trainer, alternating; "
           "steps/s = 1 / q0.25 of the pooled step times (median beside it).", "",
           "| trainer | steps/s | median steps/s |", "| --- | ---: | ---: |"]
    for name, times in rows.items():
        out.append(f"| {name} | {steps_per_second(times, 0.25):.3f} | {steps_per_second(times, 0.5):.3f} |")
    ratio = steps_per_second(rows["controlnet train"], 0.25) / steps_per_second(rows["lora train"], 0.25)
    out += ["", f"- ControlNet / LoRA steps/s: **{ratio:.2f}** (a ControlNet step runs the ControlNet encoder forward and "
            "backward besides the frozen U-Net, and updates all its weights instead of a LoRA's)."]
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_controlnet")
    p.add_argument("--model", choices=["tiny", "small", "sd15"], default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument("--md", default=str(Path(__file__).with_name("controlnet.md")), help="markdown file to update ('' for none)")
    p.add_argument("--smoke", action="store_true", help="one tiny configuration, one step: checks that the script still runs (writes no .md)")
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.resolution, args.batch_size, args.images, args.steps, args.rounds, args.md = "tiny", 32, 1, 2, 2, 1, ""
    from prompts.threads import limit_threads

    limit_threads()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, pairs, classes = prepare(tmp, args)
        rows: dict[str, list[float]] = {"controlnet train": [], "lora train": []}
        for r in range(args.rounds):
            rows["controlnet train"] += controlnet_times(model, pairs, tmp / "cn", args)
            rows["lora train"] += lora_times(model, classes, tmp / "lora", args)
            print(f"round {r + 1}: " + ", ".join(f"{k} {steps_per_second(v, 0.5):.3f} steps/s" for k, v in rows.items()), flush=True)
    body = markdown(rows, args, argv)
    print(body)
    if args.md:
        update_markdown(Path(args.md), args.model, body)


if __name__ == "__main__":
    main()
