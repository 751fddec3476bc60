"""The `generate` section of the study file: one field per key (type, default, range, help, whether it changes the result)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._field import opt

GEN = ("generate",)


@dataclass
class GenerateSection:
    model: str | None = opt(None, "base model: diffusers folder, single-file .safetensors, or hub id (default: lora.model)", path=True, hub=True, required=GEN)
    model_config: str | None = opt(None, "for a single-file checkpoint offline: a diffusers folder of the same architecture", path=True)
    lora: str | None = opt(None, "LoRA folder written by `lora train` (or a kohya/A1111 .safetensors)", path=True)
    output: str | None = opt(None, "synthetic folder: OUT/[fold_<k>/]w<weight>/[<cell_line>/]<class>/", path=True, required=GEN)
    fold: int | str | None = opt(None, "with data.split: a fold index K or 'all' (default with a split: all)", result=False)
    per: Literal["auto", "class", "cell_line_class"] = opt("auto", "groups: per class or per (cell line, class); auto follows the LoRA folder")
    classes: list[str] = opt([], "generate only these classes (default: all)", result=False)
    cell_lines: list[str] = opt([], "with per cell_line_class: only these cell lines (default: all)", result=False)
    count: int | None = opt(None, "images per group (and per LoRA weight)", ge=0)
    fraction: list[float] = opt([], "images per group as fractions of its real (training) image count; the largest is made", gt=0)
    balance: bool = opt(False, "top every class up to the largest class's real (training) count")
    lora_weights: list[float] = opt([1.0, 0.8], "LoRA weights; one output tree each")
    fuse: bool = opt(False, "fuse the LoRA into the weights at each weight (faster)")
    sampler: str = opt("Euler a", "Euler a, Euler, DDIM, DPM++ 2M, DPM++ 2M Karras")
    steps: int = opt(20, "sampling steps", ge=1)
    cfg: float = opt(7.0, "classifier-free guidance scale (1: no guidance)", ge=0)
    size: list[int] = opt([512, 512], "width height in pixels (multiples of 8)", ge=8, multiple_of=8)
    batch_size: int = opt(1, "images per pipeline call", ge=1, result=False)
    seed: int | None = opt(0, "seed of the whole run (per-image seeds derive from it): the same study makes the same images; null: a random seed, recorded")
    prompt: str | None = opt(None, "free-text prompt instead of the templates; {class} {cell_line} {group} {trigger}, A1111 (word:1.2) and <lora:NAME:W> allowed")
    prompts_file: str | None = opt(None, "one prompt per line, used in turn per image (same fields and tags as prompt)", path=True)
    negative_prompt: str | None = opt(None, "negative prompt (default: the templates')")
    init_images: Literal["none", "real"] = opt("none", "img2img from the group's real training images")
    strength: list[float] = opt([0.5], "img2img strength(s), one drawn per image", gt=0, le=1)
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = opt("auto", "weights precision (auto: fp16 on GPU, fp32 on CPU)")
    allow_pickle: bool = opt(False, "allow pickle checkpoints (.ckpt/.bin/.pt)", result=False)
    overwrite: bool = opt(False, "replace existing images", result=False)
