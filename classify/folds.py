"""Stratified (and optionally grouped) repeated k-fold splits: the core's one rule, `prompts.splits.make_split`.

Kept as the name `classify split`, tests and scripts import; nothing is defined here.
"""
from __future__ import annotations

from prompts.splits import make_split

__all__ = ["make_split"]
