"""The published organ-on-chip study (examples/organ_on_chip/): its figures, shown only beside a run of the
same configuration (same classes, backbone, weights, input size, epochs, augmentation, 5 folds).

Data of another kind, or another set-up, never sees these numbers: they would invite a comparison that
means nothing.
"""
from __future__ import annotations

from analysis.tables import Heading, Text

from ..results import CVResults

# EfficientNet-B7, ImageNet, 600 px, 30 epochs, augmentation, 5 folds; good / acceptable / bad organ-on-chip images.
PUBLISHED = {
    "w1.0": {"real": {"accuracy": 0.729, "precision": 0.731, "recall": 0.715}, "synthetic": {"accuracy": 0.614}},
}
PUBLISHED_MIX_RANGE = "real+10 ... real+100: accuracy 0.696 to 0.721 (weight 0.8 similar)"
STUDY_CONFIG = {"backbone": "EfficientNetB7", "weights": "imagenet", "image_size": 600, "epochs": 30, "augment": True}
STUDY_CLASSES = ["acceptable", "bad", "good"]
STUDY_FOLDS = 5


def study_mismatch(res: CVResults | dict) -> list[str]:
    """Where this run differs from the published study (empty: the figures are comparable)."""
    res = CVResults.of(res)
    diffs = [f"{k} {getattr(res.settings, k)} (study: {v})" for k, v in STUDY_CONFIG.items() if getattr(res.settings, k) != v]
    if res.n_splits != STUDY_FOLDS:
        diffs.append(f"{res.n_splits} folds (study: {STUDY_FOLDS})")
    if sorted(res.classes) != STUDY_CLASSES:
        diffs.append(f"classes {', '.join(res.classes)} (study: {', '.join(STUDY_CLASSES)})")
    return diffs


def published_for(res: CVResults, tree: str) -> dict | None:
    """The published figures of a LoRA-weight table, only for the matching configuration."""
    return PUBLISHED.get(tree) if not study_mismatch(res) else None


def published_blocks(res: CVResults) -> list:
    """The "Published figures" section, or nothing when this run is not the published configuration."""
    if study_mismatch(res):
        return []
    return [Heading("Published figures"),
            Text(f"Shown in the weight-1.0 table where the mix matches; {PUBLISHED_MIX_RANGE}.")]
