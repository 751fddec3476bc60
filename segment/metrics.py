"""Segmentation metrics of a test set: StarDist's object matching (`analysis.matching`) pooled over its images,
and foreground pixel IoU and Dice pooled the same way (intersections and unions summed over the images)."""
from __future__ import annotations

from analysis.matching import Match, PixelCounts, matching, pixel_counts

__all__ = ["LABELS", "METRICS", "METRICS_VERSION", "Match", "PixelCounts", "matching", "pixel_counts", "score_set"]

METRICS = ["ap50", "f1", "precision", "recall", "iou", "dice"]
LABELS = {"ap50": "AP50", "f1": "object F1", "precision": "precision", "recall": "recall", "iou": "pixel IoU", "dice": "Dice"}
# Version of how fold metrics are computed; part of every segmentation CV fingerprint.
METRICS_VERSION = 1


def score_set(pairs) -> dict:
    """Metrics of a test set: pairs is an iterable of (true labels, predicted labels), each (H, W).

    Returns {ap50, f1, precision, recall, iou, dice, tp, fp, fn, n_images}; sums over images first.
    """
    m, px, n = Match(), PixelCounts(), 0
    for y_true, y_pred in pairs:
        m = m + matching(y_true, y_pred)
        px = px + pixel_counts(y_true, y_pred)
        n += 1
    return {"ap50": m.accuracy, "f1": m.f1, "precision": m.precision, "recall": m.recall, "iou": px.iou, "dice": px.dice,
            "tp": m.tp, "fp": m.fp, "fn": m.fn, "n_images": n}
