"""The one mask reader: a mask file -> instance labels int32 (H, W), 0 background, 1..N cells.

Every room reads masks here (segmentation CV, ControlNet conditions, `prompts show`), so a mask
means the same thing everywhere. `data.masks` says how to read them:

- `instance`: the values are cell ids (0 background); 16-bit ids are kept as stored.
- `binary`: any non-zero pixel is foreground (0/255 from Fiji, ilastik, an Otsu script; 0/1;
  True/False). Cells are the connected components of the foreground, and touching cells are
  split by a watershed on the distance transform, seeded at its h-maxima (a neck at least
  `SPLIT_DEPTH` px narrower than both cells splits them; an elongated cell is not cut in pieces).
- `auto` (default): decided per file. A mask with a single non-zero value is binary (an instance
  image with one cell reads the same either way); a mask with several non-zero values is an
  instance image. The decision is returned (`MaskRead.kind`) and recorded with the pair.

Lossy formats (JPEG) are refused: compression invents values along every edge, i.e. cells.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError

KINDS = ("auto", "instance", "binary")
_TIFF = (".tif", ".tiff")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
SPLIT_DEPTH = 2  # px: how much deeper than the neck between them two distance maxima must be to seed two cells


@dataclass(frozen=True)
class MaskRead:
    """A mask as read: labels int32 (H, W); kind 'instance' or 'binary' (the decision); bits of the file's dtype."""

    labels: np.ndarray
    kind: str
    bits: int

    @property
    def objects(self) -> int:
        """Number of cells (distinct non-zero labels)."""
        return int(np.unique(self.labels[self.labels > 0]).size)


def check_kind(kind: str) -> str:
    """`kind` if it is one of KINDS, else a UserError naming the key."""
    if kind not in KINDS:
        raise UserError(f"data.masks is {kind!r}; use one of {', '.join(KINDS)}")
    return kind


def lossy_problem(path: str | os.PathLike) -> str | None:
    """One line when `path` is in a lossy format that cannot hold labels, else None."""
    suffix = Path(path).suffix.lower()
    if suffix in LOSSY_SUFFIXES:
        return (f"mask is a {suffix} file: JPEG compression changes pixel values along every edge, which reads as "
                "invented cells; export the mask as PNG or TIFF")
    return None


def decide_kind(values: np.ndarray, kind: str = "auto") -> str:
    """'instance' or 'binary' for a mask whose distinct non-zero values are `values` (1-D)."""
    check_kind(kind)
    if kind != "auto":
        return kind
    return "binary" if np.asarray(values).size == 1 else "instance"


def binary_to_instances(foreground: np.ndarray, depth: float = SPLIT_DEPTH) -> np.ndarray:
    """Instances of a binary mask: connected components, touching cells split by a distance-transform watershed.

    Parameters
    ----------
    foreground : ndarray of bool, shape (H, W)
    depth : float
        In px: a maximum of the distance transform seeds its own cell when it stands at least this
        much above the saddle joining it to another (scikit-image `h_maxima`).

    Returns
    -------
    ndarray of int32, shape (H, W)
        0 background, 1..N cells; every connected component keeps at least one cell.
    """
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    fg = np.asarray(foreground, dtype=bool)
    components, n = ndi.label(fg)
    if n == 0:
        return np.zeros(fg.shape, np.int32)
    distance = ndi.distance_transform_edt(fg)
    peaks = h_maxima(distance, depth).astype(bool) & fg
    markers, n_markers = ndi.label(peaks)
    seeded = np.unique(components[markers > 0])
    lonely = np.setdiff1d(np.arange(1, n + 1), seeded)  # components with no deep maximum keep one cell
    if lonely.size:
        markers = np.where(np.isin(components, lonely) & (markers == 0), components + n_markers, markers)
    labels = watershed(-distance, markers, mask=fg)
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels.astype(np.int32))[0].astype(np.int32)


def read_mask_array(path: Path) -> np.ndarray:
    """The raw mask array as stored (any dtype, any dims); UserError when it cannot be decoded."""
    try:
        if path.suffix.lower() in _TIFF:
            import tifffile

            return np.asarray(tifffile.imread(path))
        with Image.open(path) as im:
            return np.asarray(im)  # colour masks keep their channels: the caller refuses them, naming the file
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise UserError(f"cannot decode mask {path}: {err.__class__.__name__}: {err}; replace or remove it") from None


def mask_problem(arr: np.ndarray) -> str | None:
    """Why `arr` is not an instance label image (H, W), or None."""
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        return (f"mask has shape {arr.shape}, not one plane (H, W); save instance labels as one 8/16-bit grayscale "
                "plane (0 background, 1..N cells)")
    if arr.dtype == bool:
        return None
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            return "mask is not integer (it holds fractional values); save instance labels 0..N as an 8/16-bit integer image"
    elif arr.dtype.kind not in "iu":
        return f"mask has dtype {arr.dtype}, not integer; save instance labels 0..N as an 8/16-bit integer image"
    if arr.size and arr.min() < 0:
        return "mask has negative values; instance labels are 0 (background) and 1..N"
    if arr.size and arr.max() > np.iinfo(np.int32).max:
        return "mask has labels above 2^31-1; relabel the instances 1..N"
    return None


def _bits(dtype: np.dtype) -> int:
    return 1 if np.dtype(dtype).kind == "b" else np.dtype(dtype).itemsize * 8


def read_mask(path: str | os.PathLike, kind: str = "auto") -> MaskRead:
    """A mask file read as instance labels (see the module docstring for `kind`).

    Parameters
    ----------
    path : path of a PNG or TIFF mask, one plane (H, W)
    kind : 'auto', 'instance' or 'binary'

    Returns
    -------
    MaskRead
        labels int32 (H, W), the kind decided, the file's bits per pixel.

    Raises
    ------
    UserError
        One line naming the file: lossy format, not decodable, not an integer plane.
    """
    path = Path(path)
    problem = lossy_problem(path)
    if problem:
        raise UserError(f"{path}: {problem}")
    arr = read_mask_array(path)
    problem = mask_problem(arr)
    if problem:
        raise UserError(f"{path}: {problem}")
    if arr.ndim == 3:
        arr = arr[..., 0]
    bits = _bits(arr.dtype)
    values = np.unique(arr[arr != 0])
    decided = decide_kind(values, kind)
    if decided == "binary":
        return MaskRead(binary_to_instances(arr != 0), "binary", bits)
    return MaskRead(arr.astype(np.int32), "instance", bits)
