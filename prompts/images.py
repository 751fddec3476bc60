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

A file is read right or refused with one line naming it (`UserError`), never read as something else:
- the declared size is checked before any pixel is decoded (`max_pixels`, every reader path);
- NaN or infinite pixel values are refused with their count (`check_finite`): they would read as black;
- an OME-Zarr whose chunk files are missing is refused (zarr would fill them with zeros), and so is an
  OME-TIFF whose OME-XML declares planes the file does not hold (tifffile would fill them with zeros);
- whatever else a reader library raises on a file (truncated, 1-pixel, OME-XML that disagrees with the
  data) is one line naming the file and the library's own words (`_decoding`).

What a lab file declares (channels, z-size, t-size, scenes) is read from its header alone by
`read_header`; the decoder and the study check (`check_header`) test the reading rule against it with
the same functions, so both give the same line.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import logging
import math
import os
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import UserError
from .normalize import Reading, fit_levels, to_8bit, with_levels

PILLOW_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
ZARR_SUFFIX = ".zarr"  # a folder (OME-Zarr)
VENDOR_PLUGINS = {".czi": "bioio-czi", ".nd2": "bioio-nd2", ".lif": "bioio-lif"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".czi", ".nd2", ".lif", ZARR_SUFFIX)
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_GRAY_MODES = {"L", "LA", "La", "1", *_HIGH_BIT_MODES}
# base name, then an optional '#scene-N' and '#t-K'. DOTALL: a file name may hold a newline.
_FRAGMENT = re.compile(r"(?P<base>.+?)(?:#scene-(?P<scene>[0-9]+))?(?:#t-(?P<t>[0-9]+))?", re.DOTALL)
SKIP_HINT = "replace or remove the file, or pass --skip-bad-images to skip it"

MAX_PIXELS_ENV = "CELLSYNTH_MAX_PIXELS"
# 2**30 values of one time point (a 2048x2048 stack of 4 channels x 64 planes): 2 GiB at 16 bits. Pillow's own
# guard (89 M pixels) is replaced by this one for every reader, so one limit holds and one variable raises it.
DEFAULT_MAX_PIXELS = 1 << 30
ZARR_MISSING_ENV = "CELLSYNTH_ZARR_MISSING_CHUNKS"  # "zero": read absent chunks as 0 (a writer that skips empty chunks)
_READER_LOGGERS = ("tifffile", "bioio", "bioio_base", "bioio_ome_tiff", "bioio_tifffile", "bioio_ome_zarr", "xarray")
# No process-wide rule: every decoder takes the `Reading` of its command's study file as an argument, so two
# commands run in one process (tests, the search, a Python user) never read with each other's rule.


def is_image_file(path: str | os.PathLike) -> bool:
    name = os.path.basename(str(path).rstrip("/"))
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def split_name(path: str | os.PathLike) -> tuple[str, int | None, int | None]:
    """'a/f.czi#scene-2#t-3' -> ('a/f.czi', 2, 3); a name without a fragment -> (name, None, None).

    Any file name is a name (newlines, emoji, '#' inside): only a trailing '#scene-N' / '#t-K' is a fragment."""
    m = _FRAGMENT.fullmatch(str(path))
    if m is None:  # the empty name
        return str(path), None, None
    scene, t = m.group("scene"), m.group("t")
    return m.group("base"), int(scene) if scene else None, int(t) if t else None


def file_of(path: str | os.PathLike) -> str:
    """The file (or OME-Zarr folder) an image name lives in: its name without '#scene-N' / '#t-N'."""
    return split_name(path)[0]


def image_name(path: str, scene: int | None, t: int | None) -> str:
    return path + (f"#scene-{scene}" if scene is not None else "") + (f"#t-{t}" if t is not None else "")


# --------------------------------------------------------------------------- refusals

def max_pixels() -> int:
    """The largest image decoded, in pixel values of one time point (height x width x channels x z-planes).

    Returns
    -------
    int
        `CELLSYNTH_MAX_PIXELS` when set (a whole number), else `DEFAULT_MAX_PIXELS` (2**30).
    """
    text = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        return DEFAULT_MAX_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{MAX_PIXELS_ENV}={os.environ[MAX_PIXELS_ENV]!r}: give a whole number of pixel values, "
                        f"e.g. {DEFAULT_MAX_PIXELS}")
    return int(text)


def check_pixel_count(path, sizes: dict[str, int]) -> None:
    """Refuse an image whose declared size is above `max_pixels()`, before any pixel is decoded.

    Parameters
    ----------
    path : the image named in the line.
    sizes : {axis name: length} of what one decode would hold, e.g. {"channels": 3, "z-planes": 5, "height": 2048,
        "width": 2048}.
    """
    count = math.prod(int(v) for v in sizes.values())
    limit = max_pixels()
    if count > limit:
        shape = " x ".join(f"{k} {v}" for k, v in sizes.items())
        raise UserError(f"image {path} is too large to decode safely: it declares {shape} = {count:,} pixel values, above "
                        f"the limit of {limit:,} (a decompression bomb, or a stack too big for memory); shrink or tile it, "
                        f"or pass --skip-bad-images to skip it, or raise the limit: {MAX_PIXELS_ENV}={count}")


def non_finite_count(planes) -> tuple[int, int]:
    """(values that are NaN or +-inf, all values) over a list of arrays; integer arrays hold none."""
    bad = sum(int(p.size - np.count_nonzero(np.isfinite(p))) for p in planes if p.dtype.kind in "fc")
    return bad, sum(int(p.size) for p in planes)


def check_finite(planes, where: str) -> None:
    """Refuse planes holding NaN or infinite values, with their count: normalising them would read as black."""
    bad, total = non_finite_count(planes)
    if bad:
        raise UserError(f"{where}: {bad} of {total} pixel values are not finite (NaN or inf); cellsynth refuses them "
                        "rather than read them as black: fix the file (e.g. write 0 where no signal was measured), "
                        "or pass --skip-bad-images to skip it")


def _cannot_decode(path, err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"cannot decode image {path}: {err.__class__.__name__}: {text}; {SKIP_HINT}"


class _Notes(logging.Handler):
    """Collects what reader libraries log while a file is read (kept off the user's screen)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _decoding(path):
    """Reading `path` with a reader library: its log lines and warnings are held back, a note that it filled
    missing data with zeros is a refusal, and any exception it raises becomes one line naming the file."""
    notes = _Notes()
    loggers = [logging.getLogger(name) for name in _READER_LOGGERS]
    saved = [(lg.propagate, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(notes)
        lg.propagate = False
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy, xarray and Pillow warnings: what matters is raised below
            yield
    except UserError:
        raise
    except MemoryError:
        raise UserError(f"image {path} does not fit in memory when decoded; shrink or tile it, "
                        f"or pass --skip-bad-images to skip it") from None
    except Exception as err:
        raise UserError(_cannot_decode(path, err)) from None
    finally:
        for lg, (propagate, level) in zip(loggers, saved):
            lg.removeHandler(notes)
            lg.propagate, lg.level = propagate, level
    zeroed = [m for m in notes.messages if "missing" in m.lower() and "zero" in m.lower()]
    if zeroed:  # tifffile: "OME series is missing N frames. Missing data are zeroed"
        raise UserError(f"{path}: its metadata declares image planes the file does not hold ({zeroed[0].split('>')[-1].strip()}); "
                        f"they would be read as black: re-export the file, or pass --skip-bad-images to skip it")


@contextlib.contextmanager
def _pillow(path: Path):
    """An image opened by Pillow, its size checked against `max_pixels` before any pixel is decoded.

    Pillow's own guard (89 M pixels) is raised to the toolkit's limit when that is larger (never lowered,
    so concurrent readers cannot leave it off): one limit, stated and raised in one place."""
    limit = max_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit
    with _libtiff_messages_held(path), Image.open(path) as im:
        check_pixel_count(path, {"height": im.height, "width": im.width, "bands": len(im.getbands())})
        yield im


@contextlib.contextmanager
def _libtiff_messages_held(path: Path):
    """libtiff, inside Pillow, prints its own errors on the process's stderr (file descriptor 2), beside the one
    line of a refusal. While a TIFF is read, that descriptor goes to a temporary file: given back to stderr when
    the read succeeds, dropped when it is refused (the refusal says what went wrong)."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        yield
        return
    import sys
    import tempfile

    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stderr.flush()
    saved = os.dup(2)
    held = tempfile.TemporaryFile()
    os.dup2(held.fileno(), 2)
    succeeded = False
    try:
        yield
        succeeded = True
    finally:
        with contextlib.suppress(AttributeError, ValueError, OSError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if succeeded:
            held.seek(0)
            if text := held.read():
                os.write(2, text)
        held.close()


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

        with _decoding(path), tifffile.TiffFile(path) as tf:
            if tf.is_ome or len(tf.series) != 1 or len(tf.pages) != 1:
                return False
            page = tf.pages[0]
            return page.dtype == np.uint8 and page.samplesperpixel in (1, 3, 4) or page.samplesperpixel == 1
    except UserError:  # not a TIFF tifffile can parse: Pillow names the problem
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


@dataclass(frozen=True)
class Header:
    """What one scene of a lab file declares, read without decoding a pixel.

    channels: names (OME, or 'C0', 'C1'... when the file has none; RGB samples as '<name>/R' ...);
    z_size, t_size: planes and time points; scenes: how many the file holds; height, width: pixels.
    """

    path: Path
    scenes: int
    t_size: int
    z_size: int
    channels: tuple[str, ...]
    height: int
    width: int
    samples: int = 1

    def describe(self) -> str:
        return f"channels {', '.join(self.channels)}; z-size {self.z_size}; t-size {self.t_size}; scenes {self.scenes}"

    def sizes(self) -> dict[str, int]:
        """The axes one decode (one time point) holds, by name (RGB samples count as channels)."""
        return {"channels": len(self.channels), "z-planes": self.z_size, "height": self.height, "width": self.width}


@dataclass
class LabFile:
    """One scene and time point of a lab file, its planes not yet normalised.

    header: what the file declares; stack: (channels, z, y, x) raw values of the chosen time point.
    """

    header: Header
    stack: np.ndarray

    @property
    def channels(self) -> list[str]:
        return list(self.header.channels)

    def describe(self) -> str:
        return self.header.describe()


def _open(path: Path):
    from bioio import BioImage

    with _decoding(path):
        return BioImage(str(path), reader=_reader_class(path))


def _open_scene(path: Path, scene: int | None):
    img = _open(path)
    with _decoding(path):
        scenes = list(img.scenes)
    if not scenes:
        raise UserError(f"{path} holds no scenes (no image inside); remove it from the data folder")
    if scene is not None:
        if not 1 <= scene <= len(scenes):
            raise UserError(f"{path}#scene-{scene}: no such scene; the file has {len(scenes)} scene(s): scene-1..scene-{len(scenes)}")
        with _decoding(path):
            img.set_scene(scene - 1)
    return img, len(scenes)


def _header_of(path: Path, img, n_scenes: int) -> Header:
    """The Header of the current scene of an opened BioImage (metadata only)."""
    dims = img.dims
    names = [str(c) for c in (img.channel_names or [])] or [f"C{i}" for i in range(dims.C)]
    samples = dims.S if "S" in dims.order else 1
    if samples > 1:  # RGB samples become channels
        rgb = "RGBA"[:samples] if samples <= 4 else [str(i) for i in range(samples)]
        names = [f"{n}/{k}" if dims.C > 1 else k for n in names for k in rgb]
    return Header(path, n_scenes, dims.T, dims.Z, tuple(names), dims.Y, dims.X, samples)


def read_header(path: str | os.PathLike) -> Header:
    """What an image name's lab file declares (channels, z, t, scenes, size), without decoding pixels.

    Parameters
    ----------
    path : a file, an OME-Zarr folder or 'file#scene-N[#t-K]' that goes through bioio (not a Pillow file).

    Returns
    -------
    Header
        Of the named scene (the first one without '#scene-N').
    """
    base, scene, _ = split_name(path)
    base = Path(base)
    img, n_scenes = _open_scene(base, scene)
    with _decoding(base):
        return _header_of(base, img, n_scenes)


def _check_t(header: Header, t: int) -> None:
    if t >= header.t_size:
        raise UserError(f"{header.path}: data.t {t} is out of range: the file has t-size {header.t_size} "
                        f"(channels {', '.join(header.channels)}; z-size {header.z_size}; scenes {header.scenes}); "
                        f"use 0..{header.t_size - 1} or each")


def _time_point(path, reading: Reading) -> int:
    """The time index an image name reads: its '#t-K', else data.t (0 under each)."""
    t = split_name(path)[2]
    if t is None:
        t = 0 if reading.t == "each" else reading.t
    return t


def _pick_channels(header: Header, reading: Reading, where: str) -> list[int]:
    """Indices of the output channels: data.channels by name or index, else the file's own (1, 2 or 3; RGBA -> RGB)."""
    channels = list(header.channels)
    if not reading.channels:
        n = len(channels)
        if n <= 3:
            return list(range(n))
        if n == 4 and channels[3].endswith("A"):
            return [0, 1, 2]
        raise UserError(f"{where}: has {n} channels ({header.describe()}); choose up to three with data.channels, e.g. "
                        f"[{', '.join(channels[:2])}]")
    picked = []
    for c in reading.channels:
        if isinstance(c, int):
            if c >= len(channels):
                raise UserError(f"{where}: data.channels {c} is out of range ({header.describe()}); use 0..{len(channels) - 1}")
            picked.append(c)
        elif c in channels:
            picked.append(channels.index(c))
        else:
            raise UserError(f"{where}: data.channels has no channel named {c!r} ({header.describe()})")
    return picked


def _check_z(header: Header, reading: Reading, where: str) -> None:
    z = reading.z
    if isinstance(z, int) and z >= header.z_size:
        raise UserError(f"{where}: data.z {z} is out of range ({header.describe()}); use 0..{header.z_size - 1}, max or middle")


def check_reading(header: Header, name: str | os.PathLike, reading: Reading) -> None:
    """Test the reading rule against what an image name's lab file declares, decoding no pixel.

    The lines are the decoder's own (a t, channel or z the file does not have; a size above `max_pixels`;
    an OME-Zarr missing chunk files), so a study check and the first job say the same.

    Parameters
    ----------
    header : `read_header(name)`.
    name : the image name (a file, or 'file#scene-N[#t-K]').
    """
    where = str(name)
    _check_t(header, _time_point(name, reading))
    _pick_channels(header, reading, where)
    _check_z(header, reading, where)
    check_pixel_count(where, header.sizes())
    base, scene, _ = split_name(name)
    _check_zarr_chunks(Path(base), (scene or 1) - 1)


def check_header(name: str | os.PathLike, reading: Reading) -> Header:
    """`read_header(name)` tested by `check_reading`; returns the header (a UserError names what is wrong)."""
    header = read_header(name)
    check_reading(header, name, reading)
    return header


def uses_pillow(name: str | os.PathLike) -> bool:
    """Whether an image name is decoded by Pillow (JPEG, PNG, BMP, one plain TIFF page): data.channels, z and t
    do not apply to it."""
    base = Path(file_of(name))
    return base == Path(name) and _uses_pillow(base)


def _check_zarr_chunks(path: Path, scene_index: int) -> None:
    """Refuse an OME-Zarr whose full-resolution array lacks chunk files (zarr would read them as 0).

    A writer that leaves out chunks equal to the fill value (zarr's write_empty_chunks=False) makes such
    arrays on purpose; CELLSYNTH_ZARR_MISSING_CHUNKS=zero reads them as 0."""
    if path.suffix.lower() != ZARR_SUFFIX or os.environ.get(ZARR_MISSING_ENV, "").strip().lower() == "zero":
        return
    import zarr

    with _decoding(path):
        group = zarr.open_group(str(path), mode="r")
        multiscales = dict(group.attrs).get("ome", {}).get("multiscales") or dict(group.attrs).get("multiscales") or []
        if not multiscales:
            return
        array = group[multiscales[scene_index]["datasets"][0]["path"]]
        have, need = array.nchunks_initialized, array.nchunks
    if have < need:
        raise UserError(f"{path}: {need - have} of {need} chunk files of its image data are missing (zarr would read them "
                        "as 0, silently black): copy the folder again completely, or pass --skip-bad-images to skip it; "
                        f"if its writer left out all-zero chunks on purpose, set {ZARR_MISSING_ENV}=zero")


def read_lab_file(path: str | os.PathLike, scene: int | None = None, t: int = 0) -> LabFile:
    """Read one scene's time point `t` of a lab file as raw (channels, z, y, x) values.

    Its header is checked first (t in range, size under `max_pixels`, OME-Zarr chunks present)."""
    path = Path(path)
    img, n_scenes = _open_scene(path, scene)
    with _decoding(path):
        header = _header_of(path, img, n_scenes)
    _check_t(header, t)
    check_pixel_count(path, header.sizes())
    _check_zarr_chunks(path, (scene or 1) - 1)
    with _decoding(path):
        if header.samples > 1:
            data = img.get_image_data("CZYXS", T=t)
            c, z, y, x, s = data.shape
            data = np.moveaxis(data, 4, 1).reshape(c * s, z, y, x)
        else:
            data = img.get_image_data("CZYX", T=t)
        data = np.asarray(data)
    return LabFile(header, data)


def _used_values(lab: LabFile, channels: list[int], reading: Reading) -> list[np.ndarray]:
    """Per chosen channel, the (z', y, x) values the plane rule looks at (every plane for max): views, no copy."""
    if reading.z == "max":
        return [lab.stack[c] for c in channels]
    index = lab.stack.shape[1] // 2 if reading.z == "middle" else reading.z
    return [lab.stack[c, index:index + 1] for c in channels]


def lab_planes(path: str | os.PathLike, reading: Reading) -> tuple[list[np.ndarray], LabFile]:
    """The raw 2-D planes (one per output channel, file dtype) of an image name, and what was read.

    Channels and z are chosen by `reading` (max projection, the middle plane or an index); NaN or infinite
    values among those read are refused with their count."""
    base, scene, _ = split_name(path)
    where = str(path)
    lab = read_lab_file(base, scene, _time_point(path, reading))
    channels = _pick_channels(lab.header, reading, where)
    _check_z(lab.header, reading, where)
    used = _used_values(lab, channels, reading)
    check_finite(used, where)
    return [u.max(axis=0) if reading.z == "max" else u[0] for u in used], lab


def compose(planes: list[np.ndarray]) -> Image.Image:
    """uint8 planes -> mode L (one) or RGB (two: red and green, blue empty; three: red, green, blue)."""
    if len(planes) == 1:
        return Image.fromarray(planes[0], mode="L")
    rgb = list(planes) + [np.zeros_like(planes[0])] * (3 - len(planes))
    return Image.fromarray(np.stack(rgb, axis=-1), mode="RGB")


# --------------------------------------------------------------------------- the decoder

def _load_pillow(path: Path, reading: Reading) -> Image.Image:
    with _decoding(path), _pillow(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im) or im
        mode = im.mode
        if mode in _HIGH_BIT_MODES:
            arr = np.asarray(im)
            check_finite([arr], str(path))
            return Image.fromarray(to_8bit(arr, reading, 0, f"{path}: "), mode="L")
        if mode in _GRAY_MODES:
            return im.convert("L")
        return im.convert("RGB")


def load_image(path: str | os.PathLike, reading: Reading) -> Image.Image:
    """Decode an image name (a file, an OME-Zarr folder, or 'file#scene-N[#t-K]') into mode "L" or "RGB" (8-bit).

    reading: the rule (the `data` section's, `prompts.normalize.from_section`). Raises `UserError` naming the file when it cannot be
    decoded, when a channel, plane or scene the rule asks for does not exist, when it is larger than
    `max_pixels()`, or when the values read hold NaN or infinity.
    """
    base = Path(file_of(path))
    if base == Path(path) and _uses_pillow(base):
        return _load_pillow(base, reading)
    planes, _ = lab_planes(path, reading)
    return compose([to_8bit(p, reading, c, f"{path}: ") for c, p in enumerate(planes)])


def check_decodes(path: str | os.PathLike, reading: Reading) -> None:
    """Decode an image name once under `reading`; a UserError names what is wrong.

    percentile-dataset levels are fitted later, per fold, so the check reads such images with min-max instead."""
    if reading.normalize == "percentile-dataset" and reading.levels is None:
        reading = replace(reading, normalize="minmax")
    load_image(path, reading)


def fit_reading(paths, reading: Reading) -> Reading:
    """For percentile-dataset: `reading` with the percentiles over every pixel of `paths` (per output channel).

    Other rules are returned unchanged. 8-bit images take no part (they are taken as is)."""
    if reading.normalize != "percentile-dataset":
        return reading
    planes = (raw_planes(p, reading) for p in paths)
    return with_levels(reading, fit_levels((p for p in planes if p and p[0].dtype != np.uint8), reading.low, reading.high))


def raw_planes(path, reading: Reading) -> list[np.ndarray]:
    """The planes (one per output channel) of an image name before normalisation (NaN or inf refused)."""
    base = Path(file_of(path))
    if base == Path(path) and _uses_pillow(base):
        with _decoding(base), _pillow(base) as im:
            im = ImageOps.exif_transpose(im) or im
            arr = np.asarray(im)
        check_finite([arr], str(base))
        return [arr] if arr.ndim == 2 else [arr[..., c] for c in range(min(3, arr.shape[-1]))]
    return lab_planes(path, reading)[0]


# --------------------------------------------------------------------------- scenes and time points

def _may_hold_several(path: Path) -> bool:
    return path.suffix.lower() in (*VENDOR_PLUGINS, ZARR_SUFFIX) or (path.suffix.lower() in TIFF_SUFFIXES and not _uses_pillow(path))


@functools.lru_cache(maxsize=4096)
def _scene_sizes(path: str, mtime_ns: int, with_t: bool) -> tuple[int, ...]:
    """The t-size of each scene (1 each unless with_t); () for a file with no scene."""
    if not with_t and Path(path).suffix.lower() in TIFF_SUFFIXES:
        return (1,) * _tiff_scene_count(Path(path))
    img = _open(Path(path))
    sizes = []
    with _decoding(path):
        for i in range(len(img.scenes)):
            if with_t:
                img.set_scene(i)
                sizes.append(img.dims.T)
            else:
                sizes.append(1)
    return tuple(sizes)


def _ome_images(xml: str):
    """The Image elements of an OME-XML text (ElementTree; any OME namespace)."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    return [el for el in root if el.tag.rsplit("}", 1)[-1] == "Image"]


def _tiff_scene_count(path: Path) -> int:
    """How many scenes bioio sees in a TIFF, counted as its readers count them but without building their
    metadata (ome-types makes a bioio open 30-70 ms; this is about 2): OME Image elements for an OME-TIFF
    (bioio-ome-tiff), tifffile series otherwise (bioio-tifffile)."""
    import tifffile

    with _decoding(path), tifffile.TiffFile(path, is_mmstack=False) as tf:
        if tf.is_ome:
            return len(_ome_images(tf.pages[0].description))
        return len(tf.series)


def tiff_signature(path: Path) -> tuple | None:
    """A key read by tifffile alone that is equal for TIFFs bioio reads with equal headers (channels, sizes, dtype):
    the OME-XML's Pixels sizes and channel names per image, or the series' shapes and axes. None: not a TIFF,
    or not one tifffile can parse (bioio names the problem)."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return None
    import tifffile

    try:
        with _decoding(path), tifffile.TiffFile(path, is_mmstack=False) as tf:
            if tf.is_ome:
                images = []
                for image in _ome_images(tf.pages[0].description):
                    pixels = next((el for el in image if el.tag.endswith("Pixels")), None)
                    if pixels is None:
                        return None
                    attrs = tuple(sorted((k, v) for k, v in pixels.attrib.items() if k != "ID"))
                    channels = tuple((c.get("Name"), c.get("SamplesPerPixel")) for c in pixels if c.tag.endswith("Channel"))
                    images.append((attrs, channels))
                return ("ome", tuple(images))
            return ("tiff", tuple((tuple(s.shape), s.axes, str(s.dtype)) for s in tf.series))
    except UserError:
        return None


def image_names(path: str | os.PathLike, name: str, reading: Reading) -> list[str]:
    """The image names a data file contributes: [name], or one per scene ('name#scene-2'), and with
    data.t each one per time point ('name#t-3'). A file with 0 scenes is an error naming it."""
    path = Path(path)
    if not _may_hold_several(path):
        return [name]
    each_t = reading.t == "each"
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError as err:
        raise UserError(_cannot_decode(path, err)) from None
    sizes = _scene_sizes(str(path), mtime, each_t)
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


# --------------------------------------------------------------------------- what a file holds (`prompts show`)

_MODE_DTYPE = {"1": "bool", "L": "uint8", "LA": "uint8", "P": "uint8", "RGB": "uint8", "RGBA": "uint8", "CMYK": "uint8",
               "YCbCr": "uint8", "I;16": "uint16", "I;16B": "uint16", "I;16L": "uint16", "I;16N": "uint16", "I": "int32", "F": "float32"}


def describe_image(path: str | os.PathLike) -> dict:
    """What an image name holds, from its header: format, dtype, channels (names), shape (str).

    shape: 'HxW' for Pillow files; 'T x C x Z x Y x X' of the scene for lab files. An unreadable file, or one
    above `max_pixels()`, is a UserError naming it."""
    base = Path(file_of(path))
    if base == Path(path) and _uses_pillow(base):
        with _decoding(base), _pillow(base) as im:
            return {"format": im.format or base.suffix.lstrip(".").upper(), "dtype": _MODE_DTYPE.get(im.mode, im.mode),
                    "channels": "gray" if im.mode in _GRAY_MODES else "RGB", "shape": f"{im.height}x{im.width}"}
    _, scene, _ = split_name(path)
    img, _ = _open_scene(base, scene)
    with _decoding(base):
        d = img.dims
        names = ", ".join(str(c) for c in (img.channel_names or [])) or f"{d.C}"
        ome_tiff = base.name.lower().endswith((".ome.tif", ".ome.tiff")) or img.reader.__class__.__module__.startswith("bioio_ome_tiff")
        fmt = "OME-Zarr" if base.suffix.lower() == ZARR_SUFFIX else ("OME-TIFF" if ome_tiff else base.suffix.lstrip(".").upper())
        shape = f"T{d.T} C{d.C} Z{d.Z} {d.Y}x{d.X}" + (f" S{d.S}" if "S" in d.order and d.S > 1 else "")
        return {"format": fmt, "dtype": str(img.dtype), "channels": names, "shape": shape}
