"""The `blind` section: the blind real-or-synthetic test for experts (`classify blind-test`, `blind-score`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._field import opt


@dataclass
class BlindSection:
    synthetic: str | None = opt(None, "synthetic folder written by `generate`: [fold_<k>/]w<weight>/[<cell_line>/]<class>/",
                                path=True, required=("classify blind-test",))
    per_class: int = opt(20, "images drawn per class and LoRA weight: this many synthetic, and as many real", ge=1)
    lora_weights: list[float] = opt([], "LoRA weights whose trees are drawn from (default: every w<weight>/ tree found)")
    seed: int = opt(0, "random seed of the draw, the opaque ids and the page order")
    size: int = opt(512, "pixels of the square every image is shown at (shorter side resized, centre-cropped)", ge=32, le=2048)
    image_format: Literal["jpeg", "png"] = opt(
        "jpeg", "encoding of every embedded image; jpeg at one quality also masks the JPEG artefacts of real photos")
    jpeg_quality: int = opt(92, "JPEG quality of every embedded image", ge=50, le=100)
    output: str | None = opt(None, "output folder: blind_test.html and key.json (blind-test); scores (blind-score)",
                             path=True, required=("classify blind-test", "classify blind-score"))
    key: str | None = opt(None, "key.json written by `classify blind-test` (blind-score)", path=True,
                          required=("classify blind-score",))
    answers: list[str] = opt([], "answers.json files downloaded from the page, one per rater (blind-score)", path=True,
                             required=("classify blind-score",))
