"""Names and phrases the report's parts share."""
from __future__ import annotations

from analysis.report import shown_path  # noqa: F401  (one rule for every report; read from here too)

TITLE = "Cross-validation report"
METRIC_NAME = "macro F1"  # the metric of the answer and the verdicts (classify.results.PRIMARY)
ALPHA = 0.05
LEVEL = 0.95
TABLE_METRICS = ["accuracy", "precision", "recall", "f1", "balanced_accuracy"]
REPEATS_KEY = "classify.repeats"


def tree_title(tree: str) -> str:
    """'LoRA weight 1.0' for a synthetic tree w1.0, 'real data only' for the real tree."""
    return f"LoRA weight {tree[1:]}" if tree.startswith("w") else "real data only"


def repeats_advice(n: int) -> str:
    """How to ask for n CV repeats, for workflow and command-line users alike."""
    return f"`{REPEATS_KEY}: {n}` in the study file (workflow), or `--repeats {n}` on `classify split` / `classify cv`"
