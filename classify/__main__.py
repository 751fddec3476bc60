"""`python -m classify split | cv | realism` — see classify/README.md."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from prompts.errors import UserError, run_cli, setup_logging

log = logging.getLogger("classify")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="study YAML; flags override its data and classify sections")
    p.add_argument("--data", help="data folder DATA/<class>/ or DATA/<cell_line>/<class>/ (labels.csv optional)")
    p.add_argument("--output", help="output file (split) or folder (cv, realism)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--skip-bad-images", action="store_true", default=None, help="skip undecodable images with a warning")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true")


def _model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", help="EfficientNetB0..EfficientNetB7 (default EfficientNetB7)")
    p.add_argument("--weights", help="imagenet (default), a weights file, or none")
    p.add_argument("--image-size", type=int, help="input size in pixels (default 600)")
    p.add_argument("--batch-size", type=int, help="batch size (default 16)")
    p.add_argument("--cache-dir", help="feature cache folder (default $XDG_CACHE_HOME/cellsynth/features)")


def _split_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--folds", type=int, help="number of folds (default 5)")
    p.add_argument("--repeats", type=int, help="repeats of the k-fold split (default 1)")
    p.add_argument("--group-by", help="cell_line, group, a labels.csv column, or regex:PATTERN")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m classify", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("split", help="write a stratified (grouped, repeated) k-fold split file")
    _common(p)
    _split_flags(p)

    p = sub.add_parser("cv", help="cross-validate the classifier over real + synthetic mixes and write reports")
    _common(p)
    _model(p)
    _split_flags(p)
    p.add_argument("--split", help="split file from `classify split` (default: make one, saved as OUT/split.json)")
    p.add_argument("--synthetic", help="synthetic folder from `python -m generate`")
    p.add_argument("--mixes", nargs="+", help="real real+10 real+25 real+50 real+75 real+100 synthetic (default); also balance, oversample, classweight, noaug (spaces or commas)")
    p.add_argument("--epochs", type=int, help="training epochs (default 30)")
    p.add_argument("--learning-rate", type=float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None, help="augmentation layers (default on)")
    p.add_argument("--views", type=int, help="augmented views per image in the cache (default: epochs)")
    p.add_argument("--no-feature-cache", dest="feature_cache", action="store_false", default=None,
                   help="run the full model end to end on pixels every epoch (the naive way)")
    p.add_argument("--class-weights", action="store_true", default=None, help="class-weighted loss in every mix")
    p.add_argument("--minority-fraction", type=float, help="subsample the minority class to this fraction of the largest (e.g. 0.1, 0.01)")
    p.add_argument("--minority-class", help="the class to subsample (default: the smallest)")
    p.add_argument("--fine-tune-layers", type=int, help="second phase: unfreeze this many top base layers (default 0: off)")
    p.add_argument("--fine-tune-epochs", type=int, help="second-phase epochs (default 10)")
    p.add_argument("--fine-tune-lr", type=float, help="second-phase learning rate (default 1e-5)")
    p.add_argument("--realism", help="realism.json (or its folder) from `classify realism`, added to the report")

    p = sub.add_parser("realism", help="KID and a two-sample classifier test, real vs synthetic, per class and LoRA weight")
    _common(p)
    _model(p)
    p.add_argument("--synthetic", help="synthetic folder from `python -m generate`")

    p = sub.add_parser(
        "calibrate-weights",
        help="offline smoke stand-in for ImageNet weights: random weights, batch-norm statistics calibrated on DATA",
    )
    _common(p)
    p.add_argument("--backbone", help="EfficientNetB0..EfficientNetB7 (default EfficientNetB7)")
    p.add_argument("--image-size", type=int, help="input size in pixels (default 600)")
    p.add_argument("--max-images", type=int, default=64, help="images used for the statistics (default 64)")
    return ap


def _settings(args):
    """The study config (if any) with flags applied: (data section, classify section)."""
    from prompts.config import apply_overrides, load_study

    study = load_study(args.config)
    data, cls = study.data, study.classify
    apply_overrides(data, args)
    if getattr(args, "mixes", None) is not None:
        args.mixes = [m.strip() for item in args.mixes for m in item.split(",") if m.strip()]
    apply_overrides(cls, args)
    return data, cls


@run_cli
def main(argv=None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # per-run retracing notices are expected here
    data, cls = _settings(args)
    if args.command == "split":
        return cmd_split(data, cls)
    if args.command == "cv":
        return cmd_cv(data, cls, args.progress)
    if args.command == "calibrate-weights":
        return cmd_calibrate(data, cls, args.max_images)
    return cmd_realism(data, cls, args.progress)


def cmd_split(data, cls) -> int:
    from prompts.dataset import read_dataset
    from prompts.splits import write_split

    from .folds import make_split

    if not data.data:
        raise UserError("no data folder: pass --data DIR")
    if not cls.output:
        raise UserError("no output file: pass --output folds.json")
    dataset = read_dataset(data.data, skip_bad_images=data.skip_bad_images)
    split = make_split(dataset, cls.folds, cls.repeats, cls.group_by, cls.seed)
    write_split(cls.output, split)
    sizes = ", ".join(str(len(f.test)) for f in split.folds)
    log.info("wrote %s: %d fold(s) x %d repeat(s), test sizes %s", cls.output, split.n_splits, split.repeats, sizes)
    return 0


def cmd_cv(data, cls, progress: bool) -> int:
    from .cv import run_cv
    from .report import write_reports

    results = run_cv(data, cls, progress)
    paths = write_reports(results, cls.output)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return 0


def cmd_calibrate(data, cls, max_images: int) -> int:
    """Random (seeded) weights whose batch-norm statistics match DATA's images.

    Without ImageNet weights a random EfficientNet's features collapse to ~1e-6 and
    the head learns nothing; calibrating the batch-norm statistics makes the
    features usable for smoke runs. It is no substitute for ImageNet weights.
    """
    import shutil
    from prompts.files import temp_dir_beside
    from pathlib import Path

    import numpy as np

    from prompts.dataset import read_dataset

    from .model import write_calibrated_weights
    from .pixels import load_pixels

    if not data.data:
        raise UserError("no data folder: pass --data DIR")
    out = Path(cls.output or "")
    if not cls.output or not out.name.endswith(".weights.h5"):
        raise UserError(f"--output {cls.output}: give a file name ending in .weights.h5 (Keras' weights format)")
    if out.exists():
        log.info("%s exists; kept", out)
        return 0
    dataset = read_dataset(data.data, skip_bad_images=data.skip_bad_images)
    rng = np.random.default_rng(cls.seed)
    records = dataset.records
    picked = sorted(rng.choice(len(records), size=min(max_images, len(records)), replace=False))
    x = load_pixels([dataset.abspath(records[i]) for i in picked], cls.image_size)
    tmp_dir = temp_dir_beside(out, prefix=".calibrate.")
    try:
        tmp = write_calibrated_weights(cls.backbone, cls.image_size, x, tmp_dir / out.name, seed=cls.seed)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    log.info("wrote %s: %s at %d px, random weights with batch-norm statistics of %d images (a smoke stand-in, "
             "not ImageNet)", out, cls.backbone, cls.image_size, len(picked))
    return 0


def cmd_realism(data, cls, progress: bool) -> int:
    from .realism import run_realism, write_realism

    if not cls.synthetic:
        raise UserError("no synthetic folder: pass --synthetic DIR")
    result = run_realism(data, cls, progress)
    paths = write_realism(result, cls.output)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
