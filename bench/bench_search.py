"""`study search`: trials per hour, and what the median pruner saves, measured side by side in one process.

    .venv/bin/python -m bench.bench_search                           # CPU: tiny model, pbc3 (or demo) images at 32 px
    .venv/bin/python -m bench.bench_search --sd15 --resolution 512   # GPU: SD 1.5 architecture (random weights) at 512
    .venv/bin/python -m bench.bench_search --workers 2               # complete trials per hour with 1 and with 2 workers

`--workers K`: the same search (pruner none, N complete trials) run twice, side by side in one
run: by 1 worker process, then by K worker processes sharing one journal storage, exactly as the
workflow's `search_worker` jobs run (`python -m study search`, one thread each). Reported: wall
time (process start to the last exit, imports and model loading included), complete trials per
hour, and the speed-up K workers / 1 worker (section `<!-- bench:workers -->`).

Two searches of the same space, the same data and the same seeds run one after the
other in this process (so the TPE sampler draws the same startup trials): one with
`pruner: none`, one with `pruner: median`. Each runs until N trials are COMPLETE.
Reported per search: wall time, trials started / complete / pruned, complete trials per
hour, the best objective, and the time until it first reached a common target (the worse
of the two bests, which both reach): the pruner's saving is the ratio of those times.

Trials per hour depend on everything a trial does (per class: train one LoRA, generate
M images, compute features); the figures say which settings they were measured at.
Each run rewrites its own section of bench/search.md (`<!-- bench:cpu -->` or
`<!-- bench:sd15 -->`; `--md ''` leaves the file alone).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
PBC3 = ROOT.parent / "shared" / "data" / "pbc3"


def small_data(out: Path, per_class: int, size: int) -> Path:
    """`per_class` images of each pbc3 class resized to `size` px (demo images when pbc3 is absent), and a 2-fold split."""
    from PIL import Image

    from classify.folds import make_split
    from prompts.dataset import read_dataset
    from prompts.demo import write_demo_dataset
    from prompts.splits import write_split

    data = out / "data"
    if PBC3.is_dir():
        for cls_dir in sorted(p for p in PBC3.iterdir() if p.is_dir()):
            (data / cls_dir.name).mkdir(parents=True)
            for path in sorted(cls_dir.iterdir())[:per_class]:
                with Image.open(path) as im:
                    im.convert("RGB").resize((size, size)).save(data / cls_dir.name / f"{path.stem}.png")
    else:
        write_demo_dataset(data, per_class={"good": per_class, "acceptable": per_class, "bad": per_class}, size=size)
    write_split(out / "folds.json", make_split(read_dataset(data), n_splits=2, seed=0))
    return data


def study_text(data: Path, model: Path, weights: str, args, out: Path, pruner: str, name: str | None = None) -> str:
    return f"""
data: {{data: {data}, split: {data.parent / 'folds.json'}}}
lora: {{model: {model}, repeats: {args.repeats}, epochs: 1, batch_size: 2, resolution: {args.resolution}, validation_images: 0}}
generate: {{steps: {args.steps}, size: [{args.resolution}, {args.resolution}], batch_size: {args.images}}}
classify: {{backbone: EfficientNetB0, weights: {weights}, image_size: {args.image_size}, batch_size: 16, cache_dir: {out / 'cache'}}}
search:
  output: {out / (name or pruner)}
  trials: {args.trials}
  images_per_class: {args.images}
  pruner: {pruner}
  pruner_startup_trials: 2
  rank: [2, 4, 8]
  alpha_ratio: [0.5, 1.0]
  unet_lr: "1.0e-5..1.0e-1 log"
  text_encoder_lr: [0.0, 1.0e-4]
  epochs: "1..{args.max_epochs}"
  network: [attention, kohya]
  lora_weight: [0.6, 1.0]
"""


def run_one(study: Path) -> dict:
    """One search; its trials' timing from the storage."""
    import optuna
    from optuna.trial import TrialState

    from prompts.config import load_study
    from study.search import open_storage, run_search

    t0 = time.time()
    result = run_search(study)
    wall = time.time() - t0
    s = load_study(study).search
    trials = optuna.load_study(study_name=s.study_name, storage=open_storage(str(Path(s.output) / "search.journal"))).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    return {"wall": wall, "started": len(trials), "complete": len(done), "pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "best": min(t.value for t in done), "trials": trials, "t0": min(t.datetime_start for t in trials).timestamp(),
            "seconds_pruned": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials if t.state == TrialState.PRUNED),
            "result": result}


def time_to(run: dict, target: float) -> float:
    """Seconds from the search's first trial until a COMPLETE trial first had an objective <= target."""
    from optuna.trial import TrialState

    ends = [t.datetime_complete.timestamp() for t in run["trials"] if t.state == TrialState.COMPLETE and t.value <= target + 1e-12]
    return min(ends) - run["t0"]


def run_workers(study: Path, k: int) -> dict:
    """k `python -m study search` processes on one storage (one thread each); wall time until the last exits."""
    import subprocess
    import sys

    import optuna
    from optuna.trial import TrialState

    from prompts.config import load_study
    from study.search import open_storage

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "study", "search", "--config", str(study), "--no-progress"]
    t0 = time.time()
    import torch

    gpus = torch.cuda.device_count()  # with GPUs each worker gets its own (round robin), as prompts.slots pins them
    procs = [subprocess.Popen(cmd, cwd=ROOT, env={**env, **({"CUDA_VISIBLE_DEVICES": str(i % gpus)} if gpus else {})},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(k)]
    errors = [p.communicate()[1] for p in procs]
    wall = time.time() - t0
    for p, err in zip(procs, errors):
        if p.returncode != 0:
            raise RuntimeError(f"a worker failed (exit {p.returncode}): {err[-2000:]}")
    s = load_study(study).search
    trials = optuna.load_study(study_name=s.study_name, storage=open_storage(str(Path(s.output) / "search.journal"))).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    return {"wall": wall, "complete": len(done), "pids": len({t.user_attrs.get("pid") for t in done}),
            "trial_s": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done) / len(done)}


def workers_report(args, runs: dict[int, dict], model: Path) -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})"
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {device}, {platform.python_version()}; "
        f"{'the random-weight SD 1.5 architecture' if args.sd15 else ('the tiny model' if not args.model else model)}, 3 classes x {args.per_class} images, {args.resolution} px, "
        f"{args.images} images per class per trial, pruner none; {args.trials} complete trials per search; each worker one "
        "process with one thread (OMP_NUM_THREADS=1), as the workflow's `search_worker` jobs.",
        "",
        "| workers | wall s | complete | workers that completed trials | mean s per trial | complete trials / h |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for k, r in runs.items():
        lines.append(f"| {k} | {r['wall']:.0f} | {r['complete']} | {r['pids']} | {r['trial_s']:.0f} | {3600 * r['complete'] / r['wall']:.0f} |")
    ks = sorted(runs)
    lines += ["", f"Speed-up, {ks[-1]} workers / 1 worker: {(runs[ks[-1]]['complete'] / runs[ks[-1]]['wall']) / (runs[1]['complete'] / runs[1]['wall']):.2f}x "
              "(complete trials per hour)."]
    return "\n".join(lines)


def main_workers(args) -> int:
    from classify.model import write_calibrated_weights
    from classify.pixels import load_pixels
    from diffusion.tiny import write_tiny_model
    from prompts.normalize import DEFAULT

    tmp = Path(tempfile.mkdtemp(prefix="bench_search_workers."))
    try:
        data = small_data(tmp, args.per_class, args.resolution)
        if args.model:
            model = Path(args.model)
        elif args.sd15:
            from bench.bench_lora import build_model

            model = build_model("sd15", tmp / "sd15")
        else:
            model = write_tiny_model(tmp / "tiny")
        weights = write_calibrated_weights("EfficientNetB0", args.image_size,
                                           load_pixels(sorted(data.rglob("*.png")), args.image_size, DEFAULT), tmp / "b0.weights.h5")
        runs = {}
        for k in (1, args.workers):
            study = tmp / f"workers{k}.yaml"
            study.write_text(study_text(data, model, str(weights), args, tmp, "none", name=f"workers{k}"))
            runs[k] = run_workers(study, k)
        text = workers_report(args, runs, model)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(text)
    if args.md:
        write_section(Path(args.md), "workers", text)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8, help="complete trials per search (default 8)")
    ap.add_argument("--per-class", type=int, default=6, help="real images per class (half train, half test; default 6)")
    ap.add_argument("--images", type=int, default=4, help="images generated per class per trial (default 4)")
    ap.add_argument("--resolution", type=int, default=32, help="training and sampling size (default 32; 512 with --sd15)")
    ap.add_argument("--image-size", type=int, default=32, help="classifier input size (default 32)")
    ap.add_argument("--steps", type=int, default=4, help="sampling steps (default 4)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--max-epochs", type=int, default=3)
    ap.add_argument("--sd15", action="store_true", help="SD 1.5's architecture with random weights instead of the tiny model")
    ap.add_argument("--model", help="a diffusers folder to use instead (e.g. real SD 1.5)")
    ap.add_argument("--md", default=str(ROOT / "bench" / "search.md"), help="markdown file to update ('' = none)")
    ap.add_argument("--workers", type=int, default=0, help="measure 1 worker against this many (processes on one storage)")
    ap.add_argument("--smoke", action="store_true", help="one tiny configuration, one step: checks that the script still runs (writes no .md)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.trials, args.per_class, args.images, args.steps, args.max_epochs, args.md, args.workers = 1, 4, 2, 1, 2, "", 0
    if args.workers:
        if args.workers < 2:
            ap.error("--workers: give 2 or more (it is compared with 1)")
        return main_workers(args)

    from classify.model import write_calibrated_weights
    from classify.pixels import load_pixels
    from diffusion.tiny import write_tiny_model
    from prompts.errors import setup_logging
    from prompts.normalize import DEFAULT

    setup_logging()
    tmp = Path(tempfile.mkdtemp(prefix="bench_search."))
    try:
        data = small_data(tmp, args.per_class, args.resolution)
        if args.model:
            model = Path(args.model)
        elif args.sd15:
            from bench.bench_lora import build_model

            model = build_model("sd15", tmp / "sd15")
        else:
            model = write_tiny_model(tmp / "tiny")
        weights = write_calibrated_weights("EfficientNetB0", args.image_size,
                                           load_pixels(sorted(data.rglob("*.png")), args.image_size, DEFAULT), tmp / "b0.weights.h5")
        runs = {}
        for pruner in ("none", "median"):
            study = tmp / f"{pruner}.yaml"
            study.write_text(study_text(data, model, str(weights), args, tmp, pruner))
            runs[pruner] = run_one(study)
        target = max(r["best"] for r in runs.values())
        for r in runs.values():
            r["to_target"] = time_to(r, target)
        text = report(args, runs, target, model)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(text)
    if args.md:
        write_section(Path(args.md), "sd15" if (args.sd15 or args.model) else "cpu", text)
    return 0


def report(args, runs: dict, target: float, model: Path) -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})"
    kind = "random-weight SD 1.5 architecture" if args.sd15 else ("the model " + str(model) if args.model else "the tiny model")
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {device}, {platform.python_version()}; {kind}, "
        f"3 classes x {args.per_class} images (2 folds: half train, half test), {args.resolution} px, {args.images} images "
        f"per class per trial, {args.steps} sampling steps, EfficientNetB0 at {args.image_size} px (calibrated stand-in weights); "
        f"{args.trials} complete trials per search.",
        "",
        "| pruner | wall s | started | complete | pruned | s in pruned trials | complete trials / h | best objective | s to reach "
        f"{target:.4g} |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in runs.items():
        lines.append(f"| {name} | {r['wall']:.0f} | {r['started']} | {r['complete']} | {r['pruned']} | {r['seconds_pruned']:.0f} | "
                     f"{3600 * r['complete'] / r['wall']:.0f} | {r['best']:.4g} | {r['to_target']:.0f} |")
    none, median = runs["none"], runs["median"]
    lines += ["", f"Time to the common target, none / median: {none['to_target'] / median['to_target']:.2f}x; "
              f"wall time per complete trial, none / median: "
              f"{(none['wall'] / none['complete']) / (median['wall'] / median['complete']):.2f}x."]
    return "\n".join(lines)


def write_section(path: Path, key: str, text: str) -> None:
    from prompts.files import write_text_atomic

    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    old = path.read_text() if path.is_file() else "# `study search` benchmark\n\nWritten by `python -m bench.bench_search`.\n"
    block = f"{start}\n{text}\n{end}"
    if start in old and end in old:
        head, rest = old.split(start, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    write_text_atomic(path, new)


if __name__ == "__main__":
    raise SystemExit(main())
