"""The blind test's file formats, calls and design constants (file names: prompts.layout)."""
from prompts.layout import (
    BLIND_ANSWERS_FILE as ANSWERS_FILE,
)
from prompts.layout import (
    BLIND_KEY_FILE as KEY_FILE,
)
from prompts.layout import (
    BLIND_PAGE_HTML as BLIND_HTML,
)
from prompts.layout import (
    BLIND_SCORES_CSV as SCORES_CSV,
)
from prompts.layout import (
    BLIND_SCORES_JSON as SCORES_JSON,
)
from prompts.layout import (
    BLIND_SUMMARY_MD as SUMMARY_MD,
)

KEY_FORMAT = "cellsynth-blind-key"
ANSWERS_FORMAT = "cellsynth-blind-answers"
SCORES_FORMAT = "cellsynth-blind-scores"
VERSION = 1

REAL, SYNTHETIC, SKIP = "real", "synthetic", "skip"
CONFIDENCES = (1, 2, 3)  # the page's optional confidence keys; null when not given
ALPHA, POWER, TARGET_ACCURACY = 0.05, 0.8, 0.6
ALL = "all"
POOLED = "all raters"

__all__ = ["ANSWERS_FILE", "KEY_FILE", "BLIND_HTML", "SCORES_CSV", "SCORES_JSON", "SUMMARY_MD", "KEY_FORMAT",
           "ANSWERS_FORMAT", "SCORES_FORMAT", "VERSION", "REAL", "SYNTHETIC", "SKIP", "CONFIDENCES", "ALPHA", "POWER",
           "TARGET_ACCURACY", "ALL", "POOLED"]
