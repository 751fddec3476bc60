"""How a lab image becomes 8 bits: the `data` section's reading rule (normalisation, channels, planes).

One rule for every command (lora, generate's init images, classify, `prompts show`):

- **8-bit data is taken as it is, under every rule.** It is already display-ready, and today's
  8-bit inputs stay bit-identical (the default rule is a no-op on them).
- Data of more than 8 bits (12-bit-in-16, 16-bit, 32-bit, float) is mapped to 0..255 by
  `normalize`, **per output channel**:
  - `percentile` (default): the low and high percentiles (`data.percentiles`, 1 and 99.8) of each
    image, then `(x - lo) / (hi - lo + 1e-20)` clipped to 0..1: CSBDeep's `normalize` formula
    (StarDist and Cellpose use the same), times 255, rounded.
  - `percentile-dataset`: the same formula with the percentiles over *every* pixel of the fold's
    training images (`fit_levels`), so intensity differences between images survive.
  - `minmax`: the image's own minimum and maximum.
  - `none`: the dtype's full range, linearly (0..65535 for integers, 0..1 for floats): the
    behaviour before this rule existed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np

from .errors import UserError

RULES = ("percentile", "percentile-dataset", "minmax", "none")
Z_MODES = ("max", "middle")
EPS = 1e-20  # CSBDeep's eps: keeps a flat image finite (it becomes 0)


@dataclass(frozen=True)
class Reading:
    """The reading rule of the `data` section, ready to apply.

    channels: names (OME) or 0-based indices; empty: the file's own (1 -> gray, 2 or 3 -> RGB).
    z: "max" (projection), "middle", or a 0-based index. t: a 0-based index, or "each" (one image
    per time point). levels: per output channel (lo, hi), fitted by `fit_levels` for percentile-dataset.
    """

    normalize: str = "percentile"
    low: float = 1.0
    high: float = 99.8
    channels: tuple = ()
    z: str | int = "max"
    t: str | int = 0
    levels: tuple | None = field(default=None, compare=True)

    def record(self) -> dict:
        """The rule as recorded in fingerprints and manifests (JSON-ready)."""
        out = {"normalize": self.normalize, "percentiles": [self.low, self.high], "channels": list(self.channels),
               "z": self.z, "t": self.t}
        if self.levels is not None:
            out["levels"] = [[float(a), float(b)] for a, b in self.levels]
        return out

    def describe(self) -> str:
        """One line for `prompts show`: 'percentile 1-99.8 per image (8-bit data as is); z max; t 0'."""
        rule = {"percentile": f"percentile {self.low:g}-{self.high:g} per image, clipped",
                "percentile-dataset": f"percentile {self.low:g}-{self.high:g} over the fold's training images, clipped",
                "minmax": "min-max per image", "none": "linear from the dtype's full range"}[self.normalize]
        ch = ", ".join(map(str, self.channels)) or "as stored"
        return f"{rule} (8-bit data as is); channels {ch}; z {self.z}; t {self.t}"

    @classmethod
    def from_record(cls, record: dict) -> "Reading":
        """The rule a `record()` describes (as read back from a results record or fingerprint)."""
        low, high = record.get("percentiles", (cls.low, cls.high))
        levels = record.get("levels")
        return cls(record.get("normalize", cls.normalize), float(low), float(high), tuple(record.get("channels", ())),
                   record.get("z", cls.z), record.get("t", cls.t), tuple(tuple(lv) for lv in levels) if levels else None)


DEFAULT = Reading()


def reading_line(record: dict | None) -> str:
    """The one line a report states its reading rule with: 'Images read with: percentile 1-99.8 per image, ...'.

    Parameters
    ----------
    record : dict or None
        `Reading.record()` as a results record keeps it (its "reading"); None (a record written before the rule
        was recorded): the empty string.

    Returns
    -------
    str
        The line, ending with a full stop (no trailing newline), or "".
    """
    if not record:
        return ""
    return f"Images read with (`data` section): {Reading.from_record(record).describe()}."


def _index_or_name(value, where: str):
    """An int, a digit string (-> int), or a name; anything else is an error."""
    if isinstance(value, bool):
        raise UserError(f"{where}: expected a name or an index, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise UserError(f"{where}: {value} must be at least 0")
        return value
    text = str(value).strip()
    return int(text) if re.fullmatch(r"\d+", text) else text


def from_section(data) -> Reading:
    """The `Reading` of a `DataSection` (keys checked: a bad z, t or percentile pair is one line)."""
    low, high = (list(data.percentiles) + [None, None])[:2]
    if len(data.percentiles) != 2 or not (0 <= low < high <= 100):
        raise UserError(f"data.percentiles: {data.percentiles!r}: give two numbers LOW HIGH with 0 <= LOW < HIGH <= 100, e.g. [1, 99.8]")
    z = _index_or_name(data.z, "data.z")
    if isinstance(z, str) and z not in Z_MODES:
        raise UserError(f"data.z: {data.z!r}: use max, middle or a plane index (0-based)")
    t = _index_or_name(data.t, "data.t")
    if isinstance(t, str) and t != "each":
        raise UserError(f"data.t: {data.t!r}: use a time index (0-based) or each")
    if len(data.channels) > 3:
        raise UserError(f"data.channels: {data.channels!r}: at most 3 channels (one: grayscale; two or three: red, green, blue)")
    channels = tuple(_index_or_name(c, "data.channels") for c in data.channels)
    return Reading(data.normalize, float(low), float(high), channels, z, t)


# --------------------------------------------------------------------------- the arithmetic

def is_8bit(arr: np.ndarray) -> bool:
    return arr.dtype in (np.uint8, np.bool_)


def _small_ints(arr: np.ndarray) -> bool:
    """Unsigned integers of up to 16 bits: a histogram and a lookup table are exact and several times faster."""
    return arr.dtype.kind in "ub" and arr.dtype.itemsize <= 2


def percentile_levels(arr: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """(lo, hi): numpy's (linear) percentiles of every value of `arr` (from a histogram for 8/16-bit data: the same values)."""
    if _small_ints(arr):
        hist = np.bincount(arr.ravel().astype(np.intp), minlength=2)  # bincount casts uint16 slowly itself
        return _hist_percentile(hist, low), _hist_percentile(hist, high)
    lo, hi = np.percentile(arr, [low, high])
    return float(lo), float(hi)


def _scale_values(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    x = (x.astype(np.float64) - lo) / (hi - lo + EPS)
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def scale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """CSBDeep's formula: (x - lo) / (hi - lo + eps), clipped to 0..1, as uint8 0..255 (rounded).

    8/16-bit data goes through a lookup table of the same formula (every value 0..max computed once)."""
    if _small_ints(arr) and arr.size > 4096:
        lut = _scale_values(np.arange(int(arr.max()) + 1), lo, hi)
        return lut[arr]
    return _scale_values(arr, lo, hi)


def full_range(arr: np.ndarray) -> np.ndarray:
    """Rule `none`: floats from 0..1, integers from 0..65535 (the project's rule before `normalize`)."""
    if arr.dtype.kind == "f":
        x = np.clip(arr, 0.0, 1.0) * 255.0
    else:
        x = np.clip(arr.astype(np.float64) * (255.0 / 65535.0), 0, 255)
    return np.rint(x).astype(np.uint8)


def to_8bit(plane: np.ndarray, reading: Reading, channel: int = 0, where: str = "") -> np.ndarray:
    """One 2-D plane (H, W) of any dtype -> uint8 (H, W) under `reading`. 8-bit input is returned as is.

    channel: the output channel's index, for the fitted levels of percentile-dataset.
    """
    if is_8bit(plane):
        return plane.astype(np.uint8, copy=False)
    rule = reading.normalize
    if rule == "none":
        return full_range(plane)
    if rule == "minmax":
        return scale(plane, float(plane.min()), float(plane.max()))
    if rule == "percentile":
        return scale(plane, *percentile_levels(plane, reading.low, reading.high))
    if reading.levels is None:
        raise UserError(f"{where}data.normalize percentile-dataset: this command has no training images to take the "
                        "percentiles from; use percentile (per image) here")
    lo, hi = reading.levels[min(channel, len(reading.levels) - 1)]
    return scale(plane, lo, hi)


# --------------------------------------------------------------------------- dataset percentiles

def _hist_percentile(hist: np.ndarray, q: float) -> float:
    """numpy's linear percentile of the values a histogram of non-negative integers counts, computed the way
    `np.percentile` does (its virtual index and its two-sided interpolation), so the result is the same float."""
    cum = np.cumsum(hist)
    n = int(cum[-1])
    virtual = (n - 1) * (np.float64(q) / 100)  # numpy's virtual index of method linear
    k = int(np.clip(np.floor(virtual), 0, n - 1))
    gamma = np.float64(virtual - np.floor(virtual))
    a = np.float64(np.searchsorted(cum, k, side="right"))  # the value of the k-th order statistic
    b = np.float64(np.searchsorted(cum, min(k + 1, n - 1), side="right"))
    diff = b - a
    return float(a + diff * gamma if gamma < 0.5 else b - diff * (1 - gamma))  # numpy's _lerp


def fit_levels(planes_per_image, low: float, high: float) -> tuple:
    """Per output channel (lo, hi) over every pixel of all images: numpy's percentiles of the pooled values.

    planes_per_image: an iterable over images, each a list of 2-D planes (one per output channel, any dtype).
    Integer data of up to 16 bits is pooled as histograms (exact, constant memory); other data by concatenation.
    """
    hists: dict[int, np.ndarray] = {}
    pooled: dict[int, list[np.ndarray]] = {}
    for planes in planes_per_image:
        for c, p in enumerate(planes):
            if p.dtype.kind in "ub" and p.dtype.itemsize <= 2:
                h = np.bincount(p.ravel().astype(np.intp), minlength=65536)
                hists[c] = hists[c] + h if c in hists else h
            else:
                pooled.setdefault(c, []).append(p.ravel().astype(np.float64))
    levels = []
    for c in range(max([*hists, *pooled], default=-1) + 1):
        if c in pooled:
            values = np.concatenate(pooled[c] + ([np.repeat(np.arange(65536), hists[c])] if c in hists else []))
            levels.append(percentile_levels(values, low, high))
        else:
            levels.append((_hist_percentile(hists[c], low), _hist_percentile(hists[c], high)))
    if not levels:
        raise UserError("data.normalize percentile-dataset: no training images to take the percentiles from")
    return tuple(levels)


# The commands that decode real images without knowing a fold's training set (yet): percentile-dataset
# would have no levels there, so they refuse it before anything is written.
_NO_FOLD_LEVELS = ("classify cv", "classify realism", "classify calibrate-weights", "classify blind-test",
                   "controlnet train", "segment cv", "segment realism")


def check_supported(reading: Reading, command: str, init_images: str = "none") -> None:
    """One line, before anything is written, when `command` cannot apply `reading` (percentile-dataset)."""
    if reading.normalize != "percentile-dataset":
        return
    if command in _NO_FOLD_LEVELS or (command == "generate" and init_images == "real"):
        raise UserError(f"data.normalize percentile-dataset is applied by lora train only so far; `{command}` needs "
                        "percentile (per image), minmax or none")


def with_levels(reading: Reading, levels) -> Reading:
    return replace(reading, levels=tuple(tuple(map(float, lv)) for lv in levels))
