"""Segmentation metrics of a test set, at each image's own resolution.

Object matching is StarDist's (`analysis.matching`, equal to `stardist.matching.matching`) at IoU
thresholds 0.5, 0.6, 0.7, 0.8, 0.9: precision, recall, F1, AP (StarDist's "accuracy"
tp / (tp + fp + fn)), mean matched IoU (mean IoU of the true positives) and panoptic quality
(sum of matched IoUs / (tp + fp/2 + fn/2)), with object counts true vs predicted.

A test set is pooled like `stardist.matching.matching_dataset(by_image=False)`: tp, fp, fn and the
sum of matched IoUs are summed over its images, then the ratios are taken. Foreground pixel IoU
and Dice are pooled the same way. `score_image` gives one image's row (the per-image table), and
`score_set` pools any list of images (a fold, or one set of a fold).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.matching import Match, PixelCounts, iou_matrix, matching, pixel_counts

__all__ = ["LABELS", "METRICS", "METRICS_VERSION", "THRESHOLDS", "Counts", "Match", "PixelCounts", "count_matches",
           "matching", "pixel_counts", "score_image", "score_set"]

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
METRICS = ["ap50", "ap75", "ap50_90", "f1", "precision", "recall", "mean_iou", "pq", "iou", "dice"]
LABELS = {"ap50": "AP50", "ap75": "AP75", "ap50_90": "AP 0.5:0.9", "f1": "object F1", "precision": "precision",
          "recall": "recall", "mean_iou": "mean matched IoU", "pq": "panoptic quality", "iou": "pixel IoU", "dice": "Dice"}
# Version of how fold metrics are computed; part of every segmentation CV fingerprint.
# 2: native resolution, thresholds 0.5..0.9, mean matched IoU, panoptic quality, counts.
METRICS_VERSION = 2
THRESHOLDS_SCORED = tuple(sorted({*THRESHOLDS, 0.75}))  # AP75 is reported too (COCO's second threshold)


@dataclass
class Counts:
    """Matching counts at one IoU threshold, summable over images."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    matched_iou: float = 0.0  # sum of the IoUs of the true positives

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.matched_iou + other.matched_iou)

    def ratios(self) -> dict:
        """precision, recall, f1, ap (tp / (tp + fp + fn)), mean_iou, pq; each 0 when tp = 0 (as StarDist)."""
        tp, fp, fn = self.tp, self.fp, self.fn
        if tp == 0:
            return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "ap": 0.0, "mean_iou": 0.0, "pq": 0.0}
        return {"precision": tp / (tp + fp), "recall": tp / (tp + fn), "f1": 2 * tp / (2 * tp + fp + fn),
                "ap": tp / (tp + fp + fn), "mean_iou": self.matched_iou / tp, "pq": self.matched_iou / (tp + fp / 2 + fn / 2)}


def count_matches(y_true: np.ndarray, y_pred: np.ndarray, thresholds=THRESHOLDS) -> dict[float, Counts]:
    """StarDist's matching of two (H, W) label images at every threshold -> {threshold: Counts}.

    The IoU table is computed once; each threshold gets its own optimal assignment (as
    `stardist.matching.matching` with that `thresh`).
    """
    from scipy.optimize import linear_sum_assignment

    scores = iou_matrix(y_true, y_pred)
    n_true, n_pred = scores.shape
    n_matched = min(n_true, n_pred)
    out = {}
    for t in thresholds:
        tp, s = 0, 0.0
        if n_matched > 0:
            costs = -(scores >= t).astype(float) - scores / (2 * n_matched)
            rows, cols = linear_sum_assignment(costs)
            hit = scores[rows, cols] >= t
            tp, s = int(np.count_nonzero(hit)), float(scores[rows, cols][hit].sum())
        out[t] = Counts(tp, n_pred - tp, n_true - tp, s)
    return out


def _n_objects(labels: np.ndarray) -> int:
    return int(np.unique(labels[labels > 0]).size)


def _summary(counts: dict[float, Counts], px: PixelCounts, n_true: int, n_pred: int, n_images: int) -> dict:
    """The flat metrics (at IoU 0.5 unless named) and the table per threshold of pooled counts."""
    by_t = {f"{t:g}": c.ratios() for t, c in counts.items()}
    at50 = counts[0.5]
    r50 = by_t["0.5"]
    return {
        "ap50": r50["ap"], "ap75": by_t["0.75"]["ap"],
        "ap50_90": float(np.mean([by_t[f"{t:g}"]["ap"] for t in THRESHOLDS])),
        "f1": r50["f1"], "precision": r50["precision"], "recall": r50["recall"], "mean_iou": r50["mean_iou"], "pq": r50["pq"],
        "iou": px.iou, "dice": px.dice, "tp": at50.tp, "fp": at50.fp, "fn": at50.fn,
        "n_true": n_true, "n_pred": n_pred, "n_images": n_images, "by_threshold": by_t,
    }




def score_image(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """One image's metrics (the per-image table): the keys of `score_set` for a set of one image."""
    return score_set([(y_true, y_pred)])


def score_set(pairs) -> dict:
    """Metrics of a set of images: pairs is an iterable of (true labels, predicted labels), each (H, W) at native size.

    Returns {ap50, ap75, ap50_90, f1, precision, recall, mean_iou, pq, iou, dice, tp, fp, fn (at IoU 0.5),
    n_true, n_pred (objects), n_images, by_threshold {"0.5".."0.9": {precision, recall, f1, ap, mean_iou, pq}}};
    counts are summed over the images first (StarDist's `matching_dataset(by_image=False)`).
    """
    counts = {t: Counts() for t in THRESHOLDS_SCORED}
    px, n, n_true, n_pred = PixelCounts(), 0, 0, 0
    for y_true, y_pred in pairs:
        for t, c in count_matches(y_true, y_pred, THRESHOLDS_SCORED).items():
            counts[t] = counts[t] + c
        px = px + pixel_counts(y_true, y_pred)
        n_true += _n_objects(np.asarray(y_true))
        n_pred += _n_objects(np.asarray(y_pred))
        n += 1
    out = _summary(counts, px, n_true, n_pred, n)
    return out
