"""The one image decoder of the project.

Policy (documented in docs/howto/lab-files.md):
- JPEG, PNG, BMP and single-page plain TIFF are decoded by Pillow, EXIF orientation applied.
  8-bit images come out exactly as before: grayscale (L, LA, 1) as mode "L", colour (RGB, RGBA, P,
  CMYK, YCbCr) as "RGB"; alpha is dropped (micrographs carry no transparency).
- OME-TIFF, multi-page or multi-series TIFF and OME-Zarr are read through bioio (`bioio-ome-tiff`,
  `bioio-tifffile`, `bioio-ome-zarr`); Zeiss .czi, Nikon .nd2 and Leica .lif through the bioio plugins
  of the `cellsynth[microscopy]` extra.
- Data of more than 8 bits becomes 8 bits by the `data` section's rule (`prompts/normalize.py`),
  per output channel; channels (`data.channels`), z planes (`data.z`) and time points (`data.t`)
  are chosen first.
- A file with several scenes is several images: `file.czi#scene-2` (1-based); with `data.t: each`,
  `file.tif#t-3` (0-based time index, like `data.t`). `Dataset` records carry these names.
- An RGB image whose three channels are equal is reported as grayscale by `is_grayscale`, so a
  grayscale study stays grayscale downstream.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError
from .normalize import DEFAULT, Reading, fit_levels, to_8bit, with_levels

PILLOW_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
ZARR_SUFFIX = ".zarr"  # a folder (OME-Zarr)
VENDOR_PLUGINS = {".czi": "bioio-czi", ".nd2": "bioio-nd2", ".lif": "bioio-lif"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".czi", ".nd2", ".lif", ZARR_SUFFIX)
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_GRAY_MODES = {"L", "LA", "La", "1", *_HIGH_BIT_MODES}
_FRAGMENT = re.compile(r"^(?P<base>.+?)(?:#scene-(?P<scene>\d+))?(?:#t-(?P<t>\d+))?$")
_READING = [DEFAULT]  # the process's rule: set once by the command from its study file


def set_reading(reading: Reading) -> None:
    """Install the study's reading rule for this process (every `load_image` without one uses it)."""
    _READING[0] = reading


def current_reading() -> Reading:
    return _READING[0]


def is_image_file(path: str | os.PathLike) -> bool:
    name = os.path.basename(str(path).rstrip("/"))
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def split_name(path: str | os.PathLike) -> tuple[str, int | None, int | None]:
    """'a/f.czi#scene-2#t-3' -> ('a/f.czi', 2, 3); a name without a fragment -> (name, None, None)."""
    m = _FRAGMENT.match(str(path))
    scene, t = m.group("scene"), m.group("t")
    return m.group("base"), int(scene) if scene else None, int(t) if t else None


def file_of(path: str | os.PathLike) -> str:
    """The file (or OME-Zarr folder) an image name lives in: its name without '#scene-N' / '#t-N'."""
    return split_name(path)[0]


def image_name(path: str, scene: int | None, t: int | None) -> str:
    return path + (f"#scene-{scene}" if scene is not None else "") + (f"#t-{t}" if t is not None else "")


# --------------------------------------------------------------------------- which reader

def _uses_pillow(path: Path) -> bool:
    """Pillow for JPEG/PNG/BMP and for a TIFF that is one plain page Pillow reads (8-bit, or one sample of
    16/32 bits): bit-identical to the old reader. Other TIFFs (OME, several pages or series, 16-bit RGB,
    2 or more than 4 samples) go through bioio."""
    suffix = path.suffix.lower()
    if suffix in PILLOW_SUFFIXES:
        return True
    if suffix not in TIFF_SUFFIXES:
        return False
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            if tf.is_ome or len(tf.series) != 1 or len(tf.pages) != 1:
                return False
            page = tf.pages[0]
            return page.dtype == np.uint8 and page.samplesperpixel in (1, 3, 4) or page.samplesperpixel == 1
    except Exception:  # not a TIFF tifffile can parse: Pillow names the problem
        return True


def _reader_class(path: Path):
    """The bioio reader class of a lab file; a missing vendor plugin is one line naming the extra."""
    suffix = path.suffix.lower()
    if suffix in VENDOR_PLUGINS:
        package = VENDOR_PLUGINS[suffix]
        module = package.replace("-", "_")
        if importlib.util.find_spec(module) is None:
            raise UserError(f"cannot read {path}: {suffix} files need the {package} plugin; "
                            "install it with: pip install 'cellsynth[microscopy]'")
        return importlib.import_module(module).Reader
    if suffix == ZARR_SUFFIX:
        import bioio_ome_zarr

        return bioio_ome_zarr.Reader
    import tifffile

    with tifffile.TiffFile(path) as tf:
        ome = tf.is_ome
    if ome:
        import bioio_ome_tiff

        return bioio_ome_tiff.Reader
    import bioio_tifffile

    return bioio_tifffile.Reader


@dataclass
class LabFile:
    """One scene and time point of a lab file, its planes not yet normalised.

    channels: names (OME, or 'C0', 'C1'... when the file has none; RGB samples as '<name>/R' ...);
    stack: (channels, z, y, x) raw values of the chosen time point.
    """

    path: Path
    scenes: int
    t_size: int
    channels: list[str]
    stack: np.ndarray

    def describe(self) -> str:
        return (f"channels {', '.join(self.channels)}; z-size {self.stack.shape[1]}; t-size {self.t_size}; "
                f"scenes {self.scenes}")


def _open(path: Path):
    from bioio import BioImage

    logging.getLogger("bioio").setLevel(logging.ERROR)  # plugin probing is not the user's business
    try:
        return BioImage(str(path), reader=_reader_class(path))
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"cannot decode image {path}: {err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}; "
                        "replace or remove the file, or pass --skip-bad-images") from None


def _open_scene(path: Path, scene: int | None):
    img = _open(path)
    scenes = list(img.scenes)
    if not scenes:
        raise UserError(f"{path} holds no scenes (no image inside); remove it from the data folder")
    if scene is not None:
        if not 1 <= scene <= len(scenes):
            raise UserError(f"{path}#scene-{scene}: no such scene; the file has {len(scenes)} scene(s): scene-1..scene-{len(scenes)}")
        img.set_scene(scene - 1)
    return img, len(scenes)


def read_lab_file(path: str | os.PathLike, scene: int | None = None, t: int = 0) -> LabFile:
    """Read one scene's time point `t` of a lab file as raw (channels, z, y, x) values."""
    path = Path(path)
    img, n_scenes = _open_scene(path, scene)
    dims = img.dims
    order = dims.order
    names = [str(c) for c in (img.channel_names or [])] or [f"C{i}" for i in range(dims.C)]
    if t >= dims.T:
        raise UserError(f"{path}: data.t {t} is out of range: the file has t-size {dims.T} "
                        f"(channels {', '.join(names)}; z-size {dims.Z}; scenes {n_scenes}); use 0..{dims.T - 1} or each")
    try:
        if "S" in order and dims.S > 1:
            data = img.get_image_data("CZYXS", T=t)  # RGB samples become channels
            c, z, y, x, s = data.shape
            data = np.moveaxis(data, 4, 1).reshape(c * s, z, y, x)
            rgb = "RGBA"[:s] if s <= 4 else [str(i) for i in range(s)]
            names = [f"{n}/{k}" if c > 1 else k for n in names for k in rgb]
        else:
            data = img.get_image_data("CZYX", T=t)
    except Exception as err:
        raise UserError(f"cannot decode image {path}: {err.__class__.__name__}: {err}; replace or remove the file, "
                        "or pass --skip-bad-images") from None
    return LabFile(path, n_scenes, dims.T, names, np.asarray(data))


def _pick_channels(lab: LabFile, reading: Reading, where: str) -> list[int]:
    """Indices of the output channels: data.channels by name or index, else the file's own (1, 2 or 3; RGBA -> RGB)."""
    if not reading.channels:
        n = len(lab.channels)
        if n <= 3:
            return list(range(n))
        if n == 4 and lab.channels[3].endswith("A"):
            return [0, 1, 2]
        raise UserError(f"{where}: has {n} channels ({lab.describe()}); choose up to three with data.channels, e.g. "
                        f"[{', '.join(lab.channels[:2])}]")
    picked = []
    for c in reading.channels:
        if isinstance(c, int):
            if c >= len(lab.channels):
                raise UserError(f"{where}: data.channels {c} is out of range ({lab.describe()}); use 0..{len(lab.channels) - 1}")
            picked.append(c)
        elif c in lab.channels:
            picked.append(lab.channels.index(c))
        else:
            raise UserError(f"{where}: data.channels has no channel named {c!r} ({lab.describe()})")
    return picked


def _pick_plane(stack: np.ndarray, reading: Reading, lab: LabFile, where: str) -> np.ndarray:
    """(z, y, x) -> (y, x) by data.z: max projection, the middle plane, or an index."""
    z = reading.z
    if z == "max":
        return stack.max(axis=0)
    if z == "middle":
        return stack[stack.shape[0] // 2]
    if z >= stack.shape[0]:
        raise UserError(f"{where}: data.z {z} is out of range ({lab.describe()}); use 0..{stack.shape[0] - 1}, max or middle")
    return stack[z]


def lab_planes(path: str | os.PathLike, reading: Reading | None = None) -> tuple[list[np.ndarray], LabFile]:
    """The raw 2-D planes (one per output channel, file dtype) of an image name, and what was read."""
    reading = reading or current_reading()
    base, scene, t = split_name(path)
    where = str(path)
    if t is None:
        t = 0 if reading.t == "each" else reading.t
    lab = read_lab_file(base, scene, t)
    return [_pick_plane(lab.stack[c], reading, lab, where) for c in _pick_channels(lab, reading, where)], lab


def compose(planes: list[np.ndarray]) -> Image.Image:
    """uint8 planes -> mode L (one) or RGB (two: red and green, blue empty; three: red, green, blue)."""
    if len(planes) == 1:
        return Image.fromarray(planes[0], mode="L")
    rgb = list(planes) + [np.zeros_like(planes[0])] * (3 - len(planes))
    return Image.fromarray(np.stack(rgb, axis=-1), mode="RGB")


# --------------------------------------------------------------------------- the decoder

def _load_pillow(path: Path, reading: Reading) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im) or im
            mode = im.mode
            if mode in _HIGH_BIT_MODES:
                return Image.fromarray(to_8bit(np.asarray(im), reading, 0, f"{path}: "), mode="L")
            if mode in _GRAY_MODES:
                return im.convert("L")
            return im.convert("RGB")
    except Image.DecompressionBombError as err:
        raise UserError(
            f"image {path} is too large to decode safely ({err}); shrink or tile it, or remove it "
            "(or pass --skip-bad-images to skip it)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise UserError(
            f"cannot decode image {path}: {err.__class__.__name__}: {err}; "
            "replace or remove the file, or pass --skip-bad-images"
        ) from None


def load_image(path: str | os.PathLike, reading: Reading | None = None) -> Image.Image:
    """Decode an image name (a file, an OME-Zarr folder, or 'file#scene-N[#t-K]') into mode "L" or "RGB" (8-bit).

    reading: the rule (default: the process's, `set_reading`). Raises `UserError` naming the file when it
    cannot be decoded, or when a channel, plane or scene the rule asks for does not exist.
    """
    reading = reading or current_reading()
    base = Path(file_of(path))
    if base == Path(path) and _uses_pillow(base):
        return _load_pillow(base, reading)
    planes, _ = lab_planes(path, reading)
    return compose([to_8bit(p, reading, c, f"{path}: ") for c, p in enumerate(planes)])


def check_decodes(path: str | os.PathLike) -> None:
    """Decode an image name once under the process's rule (a UserError names what is wrong). percentile-dataset
    levels are fitted later, per fold, so the check reads such images with min-max instead."""
    reading = current_reading()
    if reading.normalize == "percentile-dataset" and reading.levels is None:
        from dataclasses import replace

        reading = replace(reading, normalize="minmax")
    load_image(path, reading)


def fit_reading(paths, reading: Reading | None = None) -> Reading:
    """For percentile-dataset: `reading` with the percentiles over every pixel of `paths` (per output channel).

    Other rules are returned unchanged. 8-bit images take no part (they are taken as is)."""
    reading = reading or current_reading()
    if reading.normalize != "percentile-dataset":
        return reading
    return with_levels(reading, fit_levels((p for p in map(raw_planes, paths) if p and p[0].dtype != np.uint8),
                                           reading.low, reading.high))


def raw_planes(path, reading: Reading | None = None) -> list[np.ndarray]:
    """The planes (one per output channel) of an image name before normalisation."""
    reading = reading or current_reading()
    base = Path(file_of(path))
    if base == Path(path) and _uses_pillow(base):
        with Image.open(base) as im:
            im = ImageOps.exif_transpose(im) or im
            arr = np.asarray(im)
        return [arr] if arr.ndim == 2 else [arr[..., c] for c in range(min(3, arr.shape[-1]))]
    return lab_planes(path, reading)[0]


# --------------------------------------------------------------------------- scenes and time points

def _may_hold_several(path: Path) -> bool:
    return path.suffix.lower() in (*VENDOR_PLUGINS, ZARR_SUFFIX) or (path.suffix.lower() in TIFF_SUFFIXES and not _uses_pillow(path))


@functools.lru_cache(maxsize=4096)
def _scene_sizes(path: str, mtime_ns: int, with_t: bool) -> tuple[int, ...]:
    """The t-size of each scene (1 each unless with_t); () for a file with no scene."""
    img = _open(Path(path))
    sizes = []
    for i in range(len(img.scenes)):
        if with_t:
            img.set_scene(i)
            sizes.append(img.dims.T)
        else:
            sizes.append(1)
    return tuple(sizes)


def image_names(path: str | os.PathLike, name: str, reading: Reading | None = None) -> list[str]:
    """The image names a data file contributes: [name], or one per scene ('name#scene-2'), and with
    data.t each one per time point ('name#t-3'). A file with 0 scenes is an error naming it."""
    reading = reading or current_reading()
    path = Path(path)
    if not _may_hold_several(path):
        return [name]
    each_t = reading.t == "each"
    sizes = _scene_sizes(str(path), os.stat(path).st_mtime_ns, each_t)
    if not sizes:
        raise UserError(f"{path} holds no scenes (no image inside); remove it from the data folder")
    out = []
    for s, t_size in enumerate(sizes, start=1):
        scene = s if len(sizes) > 1 else None
        out += [image_name(name, scene, t if each_t else None) for t in range(t_size)]
    return out


# --------------------------------------------------------------------------- geometry

def is_grayscale(img: Image.Image) -> bool:
    """True for mode L, or RGB whose channels are identical (grayscale saved as RGB)."""
    if img.mode == "L":
        return True
    arr = np.asarray(img.convert("RGB"))
    return bool(np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]))


def resize_shortest_side(img: Image.Image, size: int) -> Image.Image:
    """Scale so that the shorter side equals `size` (bicubic down/up, aspect kept)."""
    w, h = img.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    if new == (w, h):
        return img
    return img.resize(new, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


# --------------------------------------------------------------------------- content keys

# --------------------------------------------------------------------------- what a file holds (`prompts show`)

_MODE_DTYPE = {"1": "bool", "L": "uint8", "LA": "uint8", "P": "uint8", "RGB": "uint8", "RGBA": "uint8", "CMYK": "uint8",
               "YCbCr": "uint8", "I;16": "uint16", "I;16B": "uint16", "I;16L": "uint16", "I;16N": "uint16", "I": "int32", "F": "float32"}


def describe_image(path: str | os.PathLike) -> dict:
    """What an image name holds, from its header: format, dtype, channels (names), shape (str).

    shape: 'HxW' for Pillow files; 'T x C x Z x Y x X' of the scene for lab files."""
    base = Path(file_of(path))
    if base == Path(path) and _uses_pillow(base):
        with Image.open(base) as im:
            return {"format": im.format or base.suffix.lstrip(".").upper(), "dtype": _MODE_DTYPE.get(im.mode, im.mode),
                    "channels": "gray" if im.mode in _GRAY_MODES else "RGB", "shape": f"{im.height}x{im.width}"}
    _, scene, _ = split_name(path)
    img, _ = _open_scene(base, scene)
    d = img.dims
    names = ", ".join(str(c) for c in (img.channel_names or [])) or f"{d.C}"
    fmt = "OME-Zarr" if base.suffix.lower() == ZARR_SUFFIX else ("OME-TIFF" if base.name.lower().endswith((".ome.tif", ".ome.tiff"))
                                                                or img.reader.__class__.__module__.startswith("bioio_ome_tiff")
                                                                else base.suffix.lstrip(".").upper())
    shape = f"T{d.T} C{d.C} Z{d.Z} {d.Y}x{d.X}" + (f" S{d.S}" if "S" in d.order and d.S > 1 else "")
    return {"format": fmt, "dtype": str(img.dtype), "channels": names, "shape": shape}
