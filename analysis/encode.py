"""Images as `data:` URIs, so every report page is one self-contained file.

One encoder for every page (CV report, realism, blind test, search): PIL and matplotlib only, no
TensorFlow or torch, so any room may import it.

- `data_uri(data, mime)`: bytes -> "data:<mime>;base64,...".
- `png_uri(image)`: a PIL image or an (H, W[, C]) uint8 array -> PNG data URI.
- `thumbnail_uri(path, px)`: an image file shrunk to fit px x px (aspect kept) -> PNG data URI.
- `figure_uri(fig, dpi)`: a matplotlib figure -> PNG data URI; the figure is closed.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

PNG = "image/png"


def data_uri(data: bytes, mime: str = PNG) -> str:
    """`data:<mime>;base64,<data>`."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def png_bytes(image) -> bytes:
    """PNG bytes of a PIL image or an (H, W) / (H, W, 3|4) uint8 array."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_uri(image) -> str:
    """PNG data URI of a PIL image or a uint8 array (see `png_bytes`)."""
    return data_uri(png_bytes(image))


def thumbnail_uri(path: str | Path, px: int) -> str:
    """PNG data URI of the image at `path`, converted to RGB and shrunk to fit px x px (never enlarged)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((px, px))
        return png_uri(im)


def figure_uri(fig, dpi: int = 80) -> str:
    """PNG data URI of a matplotlib figure (tight bounding box); closes the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return data_uri(buf.getvalue())
