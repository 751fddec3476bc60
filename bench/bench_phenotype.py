"""Cells per second through segmentation -> crops -> features on CPU, and the cost of one more regime.

    .venv/bin/python -m bench.bench_phenotype                 # writes bench/phenotype.md
    .venv/bin/python -m bench.bench_phenotype --cnn --md ''   # also the cnn's features (EfficientNetB0, calibrated)

Scenes: red blood cells of `../shared/data/rbc3` cut by threshold and pasted onto 512 x 512 backgrounds
(`phenotype.scenes`; numpy-drawn cells when the folder is absent). Stages, each timed on its own:
- segmentation: the classical floor (Otsu + watershed) of every co-culture image;
- crops: every cell cut at `crop_size` with its mask and keyed by SHA-256;
- features: the reference method's regionprops + GLCM features (and with --cnn the frozen EfficientNetB0's);
- one more regime: a whole `phenotype cv` with one more retrained-k regime, minus the same run without it, with
  the feature cache warm (the regime adds fits only).
The machine is shared: the figures are medians of `--rounds` rounds, for orientation, not for tests.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

OUT_MD = Path(__file__).with_name("phenotype.md")
RBC = Path(os.environ.get("CELLSYNTH_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data") / "rbc3"


def make_data(root: Path, co_images: int, cells: int) -> None:
    from phenotype.scenes import cells_from_folder, synthetic_cell, write_study_data

    if RBC.is_dir():
        pools = {c: cells_from_folder(RBC / c, c, limit=40) for c in ("normal", "spherocyte", "target_cell")}
    else:
        rng = np.random.default_rng(0)
        pools = {"small": [synthetic_cell(8, 200, "small", rng) for _ in range(20)],
                 "large": [synthetic_cell(16, 100, "large", rng) for _ in range(20)]}
    write_study_data(root, pools, mono_images=3, co_images=co_images, cells_per_image=cells, size=(512, 512), seed=0)


def stage_times(root: Path, crop_size: int, cnn: bool) -> dict[str, float]:
    """Seconds of each stage over every co-culture image, and the number of cells."""
    from phenotype import models as M
    from phenotype.cells import cells_of, classical_labels, image_array
    from phenotype.data import read_data
    from prompts.normalize import DEFAULT

    data = read_data(root)
    t0 = time.perf_counter()
    images = [image_array(im.image, DEFAULT) for im in data.co]  # the default reading rule
    labels = [classical_labels(a, 50, 5) for a in images]
    t1 = time.perf_counter()
    cells = [c for im, a, lab in zip(data.co, images, labels) for c in cells_of(im.name, a, lab, {}, crop_size).cells]
    t2 = time.perf_counter()
    np.stack([M.reference_features(c.pixels, c.mask) for c in cells])
    t3 = time.perf_counter()
    out = {"cells": len(cells), "segmentation": t1 - t0, "crops": t2 - t1, "reference": t3 - t2}
    if cnn:
        base = M.build_cnn_base("EfficientNetB0", "calibrated", 64, 0,
                                M.cnn_inputs(np.stack([c.pixels for c in cells[:64]]), np.stack([c.mask for c in cells[:64]]), 64, True))
        t4 = time.perf_counter()
        M.cnn_features(base, M.cnn_inputs(np.stack([c.pixels for c in cells]), np.stack([c.mask for c in cells]), 64, True), 64)
        out["cnn"] = time.perf_counter() - t4
    return out


def run_seconds(root: Path, out: Path, k: list[int]) -> float:
    from phenotype.cv import run_cv
    from prompts.schema.data import DataSection
    from prompts.schema.phenotype import PhenotypeSection

    ph = PhenotypeSection(output=str(out), models=["reference"], k=k, folds=3, trees=100, crop_size=48, overwrite=True)
    t = time.perf_counter()
    run_cv(DataSection(data=str(root)), ph)
    return time.perf_counter() - t


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--co-images", type=int, default=8)
    ap.add_argument("--cells", type=int, default=60, help="cells pasted per image")
    ap.add_argument("--cnn", action="store_true", help="also time the cnn's features")
    ap.add_argument("--md", default=str(OUT_MD), help="markdown file to write ('' to print only)")
    ap.add_argument("--smoke", action="store_true", help="3 images of few cells, 1 round: checks that the script still runs (writes no .md)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.rounds, args.co_images, args.cells, args.md = 1, 3, 8, ""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        make_data(root, args.co_images, args.cells)
        rounds = [stage_times(root, 48, args.cnn) for _ in range(args.rounds)]
        run_seconds(root, Path(tmp) / "out", [1])  # warm the feature cache
        one = [run_seconds(root, Path(tmp) / "out", [1]) for _ in range(args.rounds)]
        two = [run_seconds(root, Path(tmp) / "out", [1, 2]) for _ in range(args.rounds)]
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    n = med["cells"]
    pipeline = med["segmentation"] + med["crops"] + med["reference"]
    lines = [f"# Phenotyping throughput ({date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})", "",
             f"{args.co_images} co-culture images of 512 x 512 px, {n:.0f} cells found by the classical floor; medians of {args.rounds} rounds.", "",
             "| stage | seconds | cells / s |", "| --- | --- | --- |"]
    for k in ("segmentation", "crops", "reference", *(("cnn",) if args.cnn else ())):
        lines.append(f"| {k} | {med[k]:.2f} | {n / med[k]:.0f} |")
    lines += [f"| segmentation -> crops -> reference features | {pipeline:.2f} | {n / pipeline:.0f} |", "",
              f"One more regime (retrained-k2 added to zero-shot, retrained-k1, co-only; 3 folds, reference, warm cache): "
              f"{statistics.median(two) - statistics.median(one):+.2f} s on a run of {statistics.median(one):.2f} s "
              f"({100 * (statistics.median(two) / statistics.median(one) - 1):+.0f} %).", ""]
    text = "\n".join(lines)
    print(text)
    if args.md:
        Path(args.md).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
