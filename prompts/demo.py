"""A small demo data set that the toolkit makes itself: brightfield-like grayscale
micrographs of 5 cell lines x good / acceptable / bad, in the study's proportions.

The classes differ in visible ways: `good` is a dense, even monolayer; `acceptable`
has gaps; `bad` is sparse with dark debris. Cell lines differ in cell size and
elongation. It stands in for the organ-on-chip images (which are not public) in
the offline demo and the tests; it is not real data.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from .files import atomic_path

STUDY_PROPORTIONS = {"good": 500, "acceptable": 212, "bad": 110}
CELL_LINES = {  # cell radius (px at 128), elongation
    "HUVEC": (5.0, 2.2),
    "HSAEC": (6.0, 1.3),
    "A549": (4.5, 1.1),
    "CACO": (5.5, 1.0),
    "HPMEC": (4.0, 1.8),
}
_CLASS_LOOK = {  # (cell coverage, gap count, debris count)
    "good": (0.95, 0, 0),
    "acceptable": (0.7, 3, 4),
    "bad": (0.3, 0, 30),
}


def micrograph(label: str, cell_line: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One grayscale 8-bit image of `size` x `size` pixels."""
    radius, elong = CELL_LINES.get(cell_line, (5.0, 1.3))
    coverage, gaps, debris = _CLASS_LOOK.get(label, (0.6, 2, 10))
    scale = size / 128
    r = radius * scale
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.full((size, size), 150.0, np.float32)
    n_cells = int(coverage * size * size / (np.pi * r * r * elong) * 1.6)
    for _ in range(n_cells):
        cy, cx = rng.uniform(0, size, 2)
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / (r * elong)
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / r
        d = u * u + v * v
        img += np.where(d < 1.0, 28.0 * (1 - d), 0.0) - np.where(np.abs(d - 1.0) < 0.15, 18.0, 0.0)
        img -= np.where(d < 0.08, 25.0, 0.0)  # nucleus
    for _ in range(gaps):  # empty areas
        cy, cx = rng.uniform(0, size, 2)
        gr = rng.uniform(0.1, 0.2) * size
        img = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < gr * gr, 150.0, img)
    for _ in range(debris):  # small dark fragments
        cy, cx = rng.uniform(0, size, 2)
        dr = rng.uniform(0.5, 1.5) * scale
        img = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < dr * dr, 60.0, img)
    img += rng.normal(0, 6.0, img.shape)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L")
    return out.filter(ImageFilter.GaussianBlur(0.6 * scale))


def class_counts(total: int) -> dict[str, int]:
    """The study's class proportions scaled to about `total` images (at least 2 each)."""
    whole = sum(STUDY_PROPORTIONS.values())
    return {k: max(2, round(total * v / whole)) for k, v in STUDY_PROPORTIONS.items()}


def write_demo_dataset(
    out: str | os.PathLike,
    per_class: dict[str, int] | None = None,
    cell_lines: list[str] | None = None,
    size: int = 128,
    seed: int = 0,
) -> Path:
    """Write `OUT/<cell_line>/<class>/<date>_<cell_line>_<class>_<i>.png`.

    per_class: images per class in total, spread over the cell lines round-robin
    (default: 60 images in the study's proportions). File names start with an
    acquisition-date-like prefix (one per 2 images) so that `--group-by regex:^\\d+`
    can keep near-duplicates together. Existing files are kept (re-runs are free).
    """
    out = Path(out)
    per_class = per_class or class_counts(60)
    cell_lines = cell_lines or list(CELL_LINES)
    for label, n in per_class.items():
        for i in range(n):
            cell_line = cell_lines[i % len(cell_lines)]
            date = 20240101 + (i // 2)
            path = out / cell_line / label / f"{date}_{cell_line}_{label}_{i:03d}.png"
            img_rng = np.random.default_rng([seed, zlib.crc32(label.encode()), i])
            if path.exists():
                continue
            with atomic_path(path) as tmp:
                micrograph(label, cell_line, size, img_rng).save(tmp, format="PNG")
    return out
