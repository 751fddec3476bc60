"""AUTOMATIC1111's ways of writing values in its `parameters` text, shared by `generate` and `controlnet`."""
from __future__ import annotations

from pathlib import Path


def a1111_number(x: float) -> str:
    """A number as A1111 writes it: 7, 0.8, 1e-05."""
    text = repr(float(x) + 0.0)
    return text.removesuffix(".0") if float(x).is_integer() else text


def model_name(model: str) -> str:
    """A1111's "Model:" value: the checkpoint's file stem, or the folder / hub repo name."""
    path = Path(str(model))
    return path.stem if path.suffix.lower() in (".safetensors", ".ckpt") else path.name
