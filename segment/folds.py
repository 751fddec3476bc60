"""Folds over image-mask pairs: the core's one rule (`prompts.splits.make_split`) over `prompts.dataset.pairs_dataset`.

Kept as the names the workflow (`study.segmentation`) and older scripts import; nothing is defined here.
"""
from __future__ import annotations

from prompts.dataset import NO_CLASS, pairs_dataset
from prompts.splits import make_split

__all__ = ["NO_CLASS", "make_split", "pairs_dataset"]
