"""Composed scenes with exactly known cells: for trying the room, for its tests and for the example study.

Cells are cut out of single-cell crops by threshold (the crop's Otsu foreground component at its centre,
holes filled: a blood-smear crop of `../shared/data/rbc3` gives one red cell), or drawn with numpy
(`synthetic_cell`: a disk of a given radius and brightness with texture), and pasted without overlap onto
a noisy background, so every scene's instance mask, types and counts are known exactly. `write_study_data`
writes them in the room's layout: DATA/mono/<type>/images + masks, DATA/co/images + masks + cell_types.csv.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from prompts.images import is_image_file, load_image
from prompts.normalize import DEFAULT


@dataclass
class CutCell:
    """One cell to paste: (h, w, 3) uint8 pixels, (h, w) bool mask, its type."""

    pixels: np.ndarray
    mask: np.ndarray
    type: str


def cut_cell(rgb: np.ndarray, cell_type: str) -> CutCell | None:
    """The Otsu foreground component at the centre of a single-cell crop (darker or brighter than its
    background, whichever the border is not), holes filled, cropped to its box; None when there is none."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    gray = rgb.astype(np.float64).mean(axis=-1)
    if gray.max() == gray.min():
        return None
    t = threshold_otsu(gray)
    h, w = gray.shape
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]]).mean()
    fg = gray < t if border > t else gray > t
    fg = ndi.binary_fill_holes(ndi.binary_opening(fg, iterations=1))
    labels, n = ndi.label(fg)
    if n == 0:
        return None
    label = labels[h // 2, w // 2]
    if label == 0:  # the centre fell in a hole or a gap: take the component nearest to it
        dist = ndi.distance_transform_edt(labels == 0, return_indices=True)[1]
        label = labels[dist[0][h // 2, w // 2], dist[1][h // 2, w // 2]]
    mask = labels == label
    ys, xs = np.nonzero(mask)
    if ys.min() == 0 or xs.min() == 0 or ys.max() == h - 1 or xs.max() == w - 1:
        return None  # cut by the crop's edge: not a whole cell
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return CutCell(rgb[box].copy(), mask[box].copy(), cell_type)


def cells_from_folder(folder, cell_type: str, limit: int | None = None, reading=DEFAULT) -> list[CutCell]:
    """Cut cells of every single-cell crop image in `folder` (sorted by name; at most `limit`), read under `reading`
    (the default rule: a data maker for examples, not a study step)."""
    out = []
    for path in sorted(p for p in Path(folder).iterdir() if is_image_file(p)):
        cell = cut_cell(np.asarray(load_image(path, reading).convert("RGB")), cell_type)
        if cell is not None:
            out.append(cell)
        if limit is not None and len(out) >= limit:
            break
    return out


def synthetic_cell(radius: int, brightness: float, cell_type: str, rng: np.random.Generator) -> CutCell:
    """A numpy-drawn cell: a slightly elliptic disk of `radius` px, grey level `brightness` (0..255) with texture."""
    size = 2 * radius + 3
    yy, xx = np.mgrid[:size, :size] - size // 2
    a, b = radius * rng.uniform(0.9, 1.1), radius * rng.uniform(0.8, 1.0)
    mask = (yy / b) ** 2 + (xx / a) ** 2 <= 1
    level = brightness + rng.normal(0, 6, (size, size))
    pixels = np.repeat(np.clip(level, 0, 255)[..., None], 3, axis=-1).astype(np.uint8)
    return CutCell(pixels, mask, cell_type)


@dataclass
class Scene:
    """A composed image: (H, W, 3) uint8 pixels, (H, W) int32 instance labels, {label: type}."""

    pixels: np.ndarray
    labels: np.ndarray
    types: dict[int, str]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.types.values():
            out[t] = out.get(t, 0) + 1
        return out


def compose(cells: list[CutCell], size: tuple[int, int], background: float, rng: np.random.Generator,
            noise: float = 4.0, gap: int = 3, tries: int = 200) -> Scene:
    """Paste `cells` at random places without overlap (at least `gap` px apart); a cell with no free place is left out.

    Parameters
    ----------
    cells : list of CutCell
    size : (H, W) in pixels
    background : float
        Grey level of the background (0..255), with Gaussian noise of sd `noise`.
    rng : numpy Generator (the scene's seed)
    """
    from scipy import ndimage as ndi

    h, w = size
    pixels = np.clip(rng.normal(background, noise, (h, w, 3)), 0, 255).astype(np.uint8)
    labels = np.zeros((h, w), dtype=np.int32)
    taken = np.zeros((h, w), dtype=bool)  # placed cells grown by `gap`: no new cell may touch them
    types: dict[int, str] = {}
    for cell in cells:
        ch, cw = cell.mask.shape
        if ch + 2 * gap >= h or cw + 2 * gap >= w:
            continue
        grown = ndi.binary_dilation(np.pad(cell.mask, gap), iterations=gap) if gap else cell.mask
        for _ in range(tries):
            y, x = int(rng.integers(gap, h - ch - gap + 1)), int(rng.integers(gap, w - cw - gap + 1))
            if taken[y:y + ch, x:x + cw][cell.mask].any():
                continue
            label = len(types) + 1
            pixels[y:y + ch, x:x + cw][cell.mask] = cell.pixels[cell.mask]
            labels[y:y + ch, x:x + cw][cell.mask] = label
            taken[y - gap:y + ch + gap, x - gap:x + cw + gap] |= grown
            types[label] = cell.type
            break
    return Scene(pixels, labels, types)


def _save(scene: Scene, image_path: Path, mask_path: Path) -> None:
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene.pixels).save(image_path)
    Image.fromarray(scene.labels.astype(np.uint16)).save(mask_path)


def write_study_data(root, pools: dict[str, list[CutCell]], *, mono_images: int = 2, co_images: int = 6,
                     cells_per_image: int = 12, size: tuple[int, int] = (192, 192), background: float = 140.0,
                     seed: int = 0) -> dict[str, dict[str, int]]:
    """Write DATA/mono/<type>/ and DATA/co/ (images/ + masks/ + cell_types.csv) from pools of cells per type.

    Every co-culture image mixes the types in a proportion of its own (seeded). Returns {co image name: counts}.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    types = sorted(pools)
    for t in types:
        for i in range(mono_images):
            chosen = [pools[t][j] for j in rng.integers(0, len(pools[t]), cells_per_image)]
            _save(compose(chosen, size, background, rng), root / "mono" / t / "images" / f"{t}_{i}.png",
                  root / "mono" / t / "masks" / f"{t}_{i}.png")
    truth, rows = {}, []
    for i in range(co_images):
        share = rng.dirichlet(np.ones(len(types)))
        picks = rng.choice(len(types), cells_per_image, p=share)
        chosen = [pools[types[k]][int(rng.integers(0, len(pools[types[k]])))] for k in picks]
        scene = compose(chosen, size, background, rng)
        name = f"co_{i}.png"
        _save(scene, root / "co" / "images" / name, root / "co" / "masks" / name)
        rows += [(f"images/{name}", label, t) for label, t in sorted(scene.types.items())]
        truth[f"co/images/{name}"] = scene.counts()
    with open(root / "co" / "cell_types.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "type"])
        w.writerows(rows)
    return truth
