"""Decode cost of a lab file: a 16-bit 2048x2048 3-channel OME-TIFF against a PNG of the same size, side by side.

    .venv/bin/python -m bench.bench_decode               # 8 alternating rounds, writes bench/decode.md
    .venv/bin/python -m bench.bench_decode --rounds 3 --md ''

Three readers, alternating within every round so machine load hits them alike:
- `png`: `prompts.images.load_image` of an 8-bit RGB PNG 2048x2048 (Pillow; what the toolkit read before);
- `ome-tiff`: `load_image` of a 16-bit OME-TIFF, 3 channels (DAPI, GFP, RFP) x 2048x2048, uncompressed,
  through bioio-ome-tiff, the percentile rule (1-99.8 per channel) and the RGB composite;
- `tifffile`: `tifffile.imread` of the same OME-TIFF (the raw read, no normalisation): the floor of the
  OME-TIFF path, so the reader's own overhead is visible.
The figure is the ratio of medians (ome-tiff / png); the first round of each reader is a warm-up and
is dropped (imports, file cache). The files are written to a temporary folder, never to the data.
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

OUT_MD = Path(__file__).with_name("decode.md")


def write_inputs(folder: Path, size: int, seed: int = 0) -> dict[str, Path]:
    """A 16-bit 3-channel OME-TIFF and an 8-bit RGB PNG of the same pixel size, with micrograph-like content."""
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    stack = np.empty((3, size, size), np.uint16)
    for c in range(3):
        img = rng.normal(400, 40, (size, size)).astype(np.float32)
        for _ in range(40):
            cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(10, 40)]
            img += 3000 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        stack[c] = np.clip(img, 0, 65535).astype(np.uint16)
    ome = folder / "cells.ome.tif"
    tifffile.imwrite(ome, stack, metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "GFP", "RFP"]}}, ome=True)
    png = folder / "cells.png"
    Image.fromarray(np.stack([(stack[c] >> 4).clip(0, 255).astype(np.uint8) for c in range(3)], -1)).save(png)
    return {"png": png, "ome-tiff": ome}


def readers(paths: dict[str, Path]) -> dict[str, callable]:
    import tifffile

    from prompts.images import load_image
    from prompts.normalize import DEFAULT

    return {
        "png": lambda: load_image(paths["png"], DEFAULT),
        "ome-tiff": lambda: load_image(paths["ome-tiff"], DEFAULT),
        "tifffile": lambda: tifffile.imread(paths["ome-tiff"]),
    }


def measure(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each reader, alternating within each round; round 0 (warm-up) dropped."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds + 1):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - t)
    return times


def report(times: dict[str, list[float]], paths: dict[str, Path], size: int, rounds: int) -> str:
    med = {k: statistics.median(v) for k, v in times.items()}
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    rows = ["| reader | file | size on disk | median s per image | min s | ratio to png |", "|---|---|---|---|---|---|"]
    for name, v in times.items():
        f = paths["png" if name == "png" else "ome-tiff"]
        rows.append(f"| {name} | {f.name} | {f.stat().st_size / 2**20:.1f} MiB | {med[name]:.3f} | {min(v):.3f} | "
                    f"{med[name] / med['png']:.2f}x |")
    return "\n".join([
        "# decode: a 16-bit 3-channel OME-TIFF against a PNG of the same size",
        "",
        f"Run: `.venv/bin/python -m bench.bench_decode --rounds {rounds} --size {size}`, {date.today()}, "
        f"{os.cpu_count()} CPU cores shared with other jobs{load}, {platform.machine()}.",
        "",
        f"{size}x{size} pixels each; {rounds} rounds after a warm-up, the readers alternating within each round.",
        "",
        *rows,
        "",
        f"**OME-TIFF / PNG: {med['ome-tiff'] / med['png']:.2f}x** the decode time per image "
        f"(the raw tifffile read is {med['tifffile'] / med['png']:.2f}x; bioio, the percentile rule and the composite "
        f"add {med['ome-tiff'] - med['tifffile']:.3f} s per image).",
        "",
    ])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--md", default=str(OUT_MD), help="markdown file to write ('' to print only)")
    ap.add_argument("--smoke", action="store_true", help="one tiny configuration, one step: checks that the script still runs (writes no .md)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.rounds, args.size, args.md = 2, 64, ""
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        paths = write_inputs(Path(tmp), args.size)
        times = measure(readers(paths), args.rounds)
        text = report(times, paths, args.size, args.rounds)
    print(text)
    if args.md:
        Path(args.md).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
