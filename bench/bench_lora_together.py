"""K LoRAs trained together (`lora.together`) against one at a time, side by side in one run.

    .venv/bin/python -m bench.bench_lora_together                     # CPU, tiny model, 3 groups, res 64
    .venv/bin/python -m bench.bench_lora_together --model small --groups 4 --resolution 128
    .venv/bin/python -m bench.bench_lora_together --model sd15 --device cuda --groups 15 --precision bf16   # or fp16
    .venv/bin/python -m bench.bench_lora_together --smoke            # one tiny round, nothing written

Both sides run `lora.train.run` on the same K groups (the same images, settings and seeds); one at a time
is today's default (one `train_group` per group, each loading the model), together is `together=K`.
Figures per side: the wall time of the whole `run()` (model loading, image decoding, the loops, the folders
written), and group-steps per second of the training loops alone (from each folder's stats.json: one
group-step is one group's batch through forward, backward and its optimizer update). Rounds alternate
between the sides; each figure is the best round (other jobs on a shared machine only slow a run down).

Writes bench/lora_together.md (`--md ''` leaves it alone) and, with --json, the raw figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("USE_TF", "0")

import torch  # noqa: E402

import lora  # noqa: E402,F401


def write_groups(folder: Path, k: int, n: int, size: int) -> Path:
    """DATA/<class_i>/<image>: k classes of n grayscale PNGs (size x size) each."""
    import numpy as np

    from prompts.demo import micrograph

    for i in range(k):
        (folder / f"class{i:02d}").mkdir(parents=True, exist_ok=True)
        for j in range(n):
            micrograph("good" if i % 2 else "bad", "A549", size, np.random.default_rng(100 * i + j)).save(folder / f"class{i:02d}" / f"img{j}.png")
    return folder


def build_model(kind: str, out: Path) -> Path:
    """The tiny model (diffusion.tiny), or bench_lora's small / SD 1.5 architecture with random weights."""
    if kind == "tiny":
        from diffusion.tiny import write_tiny_model

        return write_tiny_model(out)
    from bench.bench_lora import build_model as build

    return build(kind, out)


def one_side(model: Path, data: Path, out: Path, args, together: int | None) -> dict:
    """Train every group with `lora.train.run` (one at a time, or together=K); wall time and group-steps per second."""
    from lora.train import run
    from prompts.schema.data import DataSection
    from prompts.schema.lora import LoraSection

    shutil.rmtree(out, ignore_errors=True)
    cfg = LoraSection(model=str(model), output=str(out), epochs=1, repeats=args.repeats, batch_size=args.batch_size,
                      resolution=args.resolution, validation_images=0, mixed_precision=args.precision,
                      cache_latents=args.cache_latents, together=together)
    t0 = time.perf_counter()
    folders = run(cfg, DataSection(data=str(data)))
    wall = time.perf_counter() - t0
    stats = [json.loads((f / "stats.json").read_text()) for f in folders]
    group_steps = sum(s["steps"] for s in stats)
    # one at a time: the loops run one after another; together: one loop, the same figure in every group's stats
    loop = stats[0]["loop_seconds"] if together else sum(s["loop_seconds"] for s in stats)
    peak = max((s["peak_gpu_memory_gib"] or 0) for s in stats) or None
    return {"wall_seconds": round(wall, 3), "loop_seconds": round(loop, 3), "group_steps": group_steps,
            "group_steps_per_second": round(group_steps / loop, 3), "peak_gpu_memory_gib": peak}


def measure(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-lora-together-"))
    try:
        model = build_model(args.model, work / "model")
        data = write_groups(work / "data", args.groups, args.images, args.resolution)
        sides = {"one_at_a_time": [], "together": []}
        for _ in range(args.rounds):
            sides["one_at_a_time"].append(one_side(model, data, work / "alone", args, None))
            sides["together"].append(one_side(model, data, work / "together", args, args.groups))
        best = {k: {"wall_seconds": min(r["wall_seconds"] for r in v),
                    "group_steps_per_second": max(r["group_steps_per_second"] for r in v),
                    "group_steps": v[0]["group_steps"], "peak_gpu_memory_gib": v[0]["peak_gpu_memory_gib"]}
                for k, v in sides.items()}
        return {"settings": {"model": args.model, "device": args.device, "groups": args.groups, "images_per_group": args.images,
                             "repeats": args.repeats, "batch_size": args.batch_size, "resolution": args.resolution,
                             "precision": args.precision, "cache_latents": args.cache_latents, "rounds": args.rounds,
                             "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                             "threads": torch.get_num_threads()},
                "best": best, "rounds": sides,
                "speedup_steps_per_second": round(best["together"]["group_steps_per_second"] / best["one_at_a_time"]["group_steps_per_second"], 3),
                "speedup_wall": round(best["one_at_a_time"]["wall_seconds"] / best["together"]["wall_seconds"], 3)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def markdown(result: dict) -> str:
    s, b = result["settings"], result["best"]
    lines = [f"## {s['groups']} LoRAs together vs one at a time ({s['model']} model, {s['device']}, {s['precision']})", "",
             f"{s['groups']} groups x {s['images_per_group']} images x {s['repeats']} repeats, batch {s['batch_size']} per group, "
             f"{s['resolution']} px, cache_latents {s['cache_latents']}; torch {s['torch']}, {s['threads']} thread(s); "
             f"best of {s['rounds']} alternating rounds.", "",
             "| side | wall of run() (s) | group-steps/s (loops) | group-steps |", "|---|---:|---:|---:|"]
    for name, label in (("one_at_a_time", "one at a time"), ("together", f"together (K = {s['groups']})")):
        lines.append(f"| {label} | {b[name]['wall_seconds']:.2f} | {b[name]['group_steps_per_second']:.2f} | {b[name]['group_steps']} |")
    lines += ["", f"Together: **{result['speedup_steps_per_second']:.2f}x** the group-steps per second of the loops, "
              f"**{result['speedup_wall']:.2f}x** faster wall time (the model is loaded once instead of {s['groups']} times).", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_lora_together", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=["tiny", "small", "sd15"])
    parser.add_argument("--device", default="cpu", help="informational: the trainer uses the GPU when there is one")
    parser.add_argument("--groups", type=int, default=3, help="K: groups (LoRAs) trained")
    parser.add_argument("--images", type=int, default=4, help="images per group")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"], help="fp16 needs a GPU (one loss scaler per group)")
    parser.add_argument("--cache-latents", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="2 groups, 2 images, 1 repeat, 1 round; writes nothing")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--md", default=str(Path(__file__).with_name("lora_together.md")))
    args = parser.parse_args(argv)
    if args.smoke:
        args.groups, args.images, args.repeats, args.rounds, args.md, args.json = 2, 2, 1, 1, "", None
    if args.model == "sd15" and args.resolution == 64:
        args.resolution = 512
    result = measure(args)
    text = markdown(result)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.md:
        Path(args.md).write_text("# lora.together: K LoRAs in one pass\n\nWritten by `python -m bench.bench_lora_together`.\n\n" + text)


if __name__ == "__main__":
    main()
