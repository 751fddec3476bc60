"""`classify blind-test`: encode the drawn images, pad them to one byte length, render the page, write page and key.

The page is one self-contained HTML file rendered from templates/blind_test.html.j2 (Jinja2,
autoescape on), no server, no network, works offline. It holds a random test id and, per image,
an opaque random id and a data URI; nothing else about an image (class, file name, real or
synthetic) is in the page. Every embedded image has the same byte length (`equal_lengths`), so
the size of a data URI, which differs between real and generated images of one size (2.2-2.6 KB
against 2.9-3.0 KB with the tiny model), is no cue. Each rater gets their own random order (kept
with their answers in the browser's localStorage, so a closed tab resumes). Keys: R real,
S synthetic, 1-3 confidence (optional, before R/S), K skip, U back. The last answer downloads
`answers.json`:

    {"format": "cellsynth-blind-answers", "version": 1, "test_id", "rater", "started", "finished",
     "user_agent", "n_images", "answers": [{"id", "position", "call": "real"|"synthetic"|"skip",
     "confidence": 1|2|3|null, "answered", "ms"}]}
"""
from __future__ import annotations

import io
import json
import secrets
import struct
import zlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from markupsafe import Markup

from analysis.encode import data_uri
from prompts.errors import UserError
from prompts.files import sha256_bytes, write_bytes_atomic, write_json_atomic

from .names import BLIND_HTML, KEY_FILE, KEY_FORMAT, VERSION

_JPEG_SOI = b"\xff\xd8"
_JPEG_COM = b"\xff\xfe"
_JPEG_SEGMENT_MAX = 65533  # payload bytes of one COM segment (its length field counts itself: 2 + 65533)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_PAD_CHUNK = b"paDd"  # ancillary, private, safe-to-copy: every decoder skips it


def encode_image(path, size: int, image_format: str = "jpeg", quality: int = 92, *, reading) -> tuple[str, bytes]:
    """(mime type, bytes) of one image as shown: read under `reading` (the data section's rule), shorter side
    resized to `size`, centre square, fresh pixels.

    Grayscale content (mode L, or RGB with equal channels) is encoded as 8-bit gray and colour as RGB, by
    content alone, so real and synthetic images differ in nothing but their pixels. The image is rebuilt
    from its pixel array, so no EXIF, text chunk (generation parameters), ICC profile or file name survives.
    """
    from PIL import Image

    from prompts.images import center_crop, is_grayscale, load_image, resize_shortest_side

    img = center_crop(resize_shortest_side(load_image(path, reading), size), size)
    img = img.convert("L") if is_grayscale(img) else img.convert("RGB")
    fresh = Image.fromarray(np.asarray(img))
    buf = io.BytesIO()
    if image_format == "png":
        fresh.save(buf, format="PNG")
        return "image/png", buf.getvalue()
    fresh.save(buf, format="JPEG", quality=int(quality))
    return "image/jpeg", buf.getvalue()


def _jpeg_pad(data: bytes, extra: int) -> bytes:
    """`data` with `extra` more bytes: zero-filled COM (comment) segments right after SOI, which decoders skip."""
    if extra == 0:
        return data
    segments = []
    while extra > 0:
        size = min(extra, _JPEG_SEGMENT_MAX + 4)
        if 0 < extra - size < 4:  # leave room for one more whole segment (4 bytes of marker and length at least)
            size = extra - 4
        payload = size - 4
        segments.append(_JPEG_COM + struct.pack(">H", payload + 2) + bytes(payload))
        extra -= size
    return data[:2] + b"".join(segments) + data[2:]


def _png_pad(data: bytes, extra: int) -> bytes:
    """`data` with `extra` more bytes: one zero-filled private ancillary chunk before IEND, which decoders skip."""
    if extra == 0:
        return data
    payload = bytes(extra - 12)  # length, type and CRC take 12 bytes
    chunk = struct.pack(">I", len(payload)) + _PNG_PAD_CHUNK + payload + struct.pack(">I", zlib.crc32(_PNG_PAD_CHUNK + payload))
    iend = data.rindex(b"IEND") - 4
    return data[:iend] + chunk + data[iend:]


def equal_lengths(encoded: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Pad every encoded image to the byte length of the longest (+ room for one pad header), format by format.

    encoded: [(mime type, bytes)] as `encode_image` returns them, all of one format. Padding is
    zeros in a segment the decoder skips, so the pixels shown are unchanged.
    """
    if not encoded:
        return []
    target = max(len(data) for _, data in encoded) + 16  # every image gets a pad, so none is "the unpadded one"
    out = []
    for mime, data in encoded:
        pad = _jpeg_pad if mime == "image/jpeg" else _png_pad
        out.append((mime, pad(data, target - len(data))))
    return out


def render_page(test_id: str, images: list[dict], size: int) -> str:
    """The page's HTML. images: [{"id": opaque id, "src": data URI}] in the page's default order; size: pixels."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    for im in images:
        if set(im) != {"id", "src"}:  # the page carries nothing else about an image
            raise ValueError(f"page image entries hold only id and src, got {sorted(im)}")
    data = json.dumps({"test_id": test_id, "images": images}, separators=(",", ":"))
    data = data.replace("</", "<\\/")  # cannot close the script element early
    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(["html", "j2"]))
    # The JSON sits in a <script type="application/json"> element, whose text is not entity-decoded: it goes in
    # as it is (made safe above), not HTML-escaped.
    return env.get_template("blind_test.html.j2").render(size=int(size), total=len(images), data=Markup(data))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def blind_test(data_section, blind_section) -> list[Path]:
    """Draw the images, write OUT/blind_test.html and OUT/key.json; returns the two paths.

    Every input is checked and every image encoded before anything is written. An existing
    key or page is never replaced: raters' answers are only worth their key.
    """
    from classify.synthetic import read_synthetic
    from prompts.dataset import read_dataset
    from prompts.guard import check_new_file, check_output_dir

    from .sampling import choose_weights, draw_items

    b = blind_section
    if not data_section.data:
        raise UserError("no data folder: pass --data DIR (the real images)")
    if not b.synthetic:
        raise UserError("no synthetic folder: pass --synthetic DIR (the --output folder of `python -m generate`)")
    if b.per_class < 1:
        raise UserError(f"--per-class {b.per_class}: must be at least 1")
    out = check_output_dir(b.output, data=data_section.data)
    check_output_dir(out, data=b.synthetic)
    for name in (KEY_FILE, BLIND_HTML):
        if (out / name).exists():
            raise UserError(f"--output {out} already holds {name}; a blind test is never replaced "
                            "(its key scores the answers raters send back): choose a new output folder")
        check_new_file(out / name, data=data_section.data)

    from prompts.normalize import from_section

    reading = from_section(data_section)  # real and synthetic images are shown as the study reads them
    dataset = read_dataset(data_section.data, skip_bad_images=data_section.skip_bad_images, reading=reading)
    syn = read_synthetic(b.synthetic, dataset.classes)
    weights = choose_weights(syn, b.lora_weights)
    items = draw_items(dataset, syn, weights, b.per_class, b.seed)
    encoded = [encode_image(it.path, b.size, b.image_format, b.jpeg_quality, reading=reading) for it in items]
    images = [{"id": it.id, "src": data_uri(data, mime)} for it, (mime, data) in zip(items, equal_lengths(encoded))]

    test_id = secrets.token_hex(8)  # unique per page, so two tests never share a browser's saved progress
    page = render_page(test_id, images, b.size).encode("utf-8")
    key = {
        "format": KEY_FORMAT, "version": VERSION, "test_id": test_id, "created": _now(),
        "page": BLIND_HTML, "page_sha256": sha256_bytes(page),
        "data": str(Path(data_section.data).resolve()), "synthetic": str(Path(b.synthetic).resolve()),
        "settings": {"per_class": b.per_class, "lora_weights": weights, "seed": b.seed, "size": b.size,
                     "image_format": b.image_format, "jpeg_quality": b.jpeg_quality},
        "classes": dataset.classes,
        "images": [{"id": it.id, "truth": it.truth, "class": it.label, "cell_line": it.cell_line,
                    "lora_weight": it.lora_weight, "file": it.file} for it in items],
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / KEY_FILE, key)
    write_bytes_atomic(out / BLIND_HTML, page)
    return [out / BLIND_HTML, out / KEY_FILE]
