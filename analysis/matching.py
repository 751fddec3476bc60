"""Instance matching of two label images, as `stardist.matching.matching` does it.

Shared below the rooms: segmentation scores its predictions with it, and per-cell phenotyping
uses it for detection F1 (a counting error split into "missed the cell" and "wrong type").

Object matching follows `stardist.matching.matching` (Schmidt et al. 2018; Weigert et al.
2020) exactly:
- the IoU of every (true instance, predicted instance) pair from the label overlap table,
  background (label 0) left out;
- an optimal one-to-one assignment (`scipy.optimize.linear_sum_assignment`) on the costs
  `-(iou >= thresh) - iou / (2 * n_matched)`: as many pairs at or above the threshold as
  possible, the IoU only breaking ties; a pair counts as a true positive when its IoU >= thresh;
- fp = n_pred - tp, fn = n_true - tp; precision tp/(tp+fp), recall tp/(tp+fn),
  f1 2tp/(2tp+fp+fn) and StarDist's "accuracy" tp/(tp+fp+fn), each 0 when tp = 0.
  "accuracy" is the average precision at IoU 0.5 of the Data Science Bowl 2018 and StarDist
  papers; the reports call it AP50.

A test set is scored like `stardist.matching.matching_dataset(by_image=False)`: tp, fp and fn
are summed over its images, then the ratios are taken. Pixel IoU and Dice are pooled the same
way (intersections and unions summed over the images), so an image without cells neither
divides by zero nor counts as a perfect score.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

THRESH = 0.5  # StarDist's default; above 0.5 a one-to-one matching is unique anyway


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels 1..N in order of first value (0 stays background) -> (relabelled int array, N)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iub":
        raise ValueError(f"label images must be integer, got {labels.dtype}")
    values, inverse = np.unique(labels, return_inverse=True)
    if values.size and values[0] < 0:
        raise ValueError("label images must not hold negative labels")
    offset = 0 if values.size and values[0] == 0 else 1  # background keeps 0
    return (inverse.reshape(labels.shape) + offset).astype(np.int64), int(values.size - (1 - offset))


def label_overlap(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """(1 + N_true, 1 + N_pred) pixel counts of each label pair; labels must be 0..N consecutive."""
    if y_true.shape != y_pred.shape:
        raise ValueError(f"label images differ in shape: {y_true.shape} vs {y_pred.shape}")
    nt, np_ = int(y_true.max(initial=0)) + 1, int(y_pred.max(initial=0)) + 1
    counts = np.bincount(y_true.ravel() * np_ + y_pred.ravel(), minlength=nt * np_)
    return counts.reshape(nt, np_)


def iou_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """(N_true, N_pred) IoU of every pair of instances (background left out)."""
    a, _ = _relabel(y_true)
    b, _ = _relabel(y_pred)
    overlap = label_overlap(a, b).astype(np.float64)
    n_true = overlap.sum(axis=1, keepdims=True)
    n_pred = overlap.sum(axis=0, keepdims=True)
    union = n_true + n_pred - overlap
    iou = np.divide(overlap, union, out=np.zeros_like(overlap), where=union > 0)
    return iou[1:, 1:]


@dataclass
class Match:
    """Object counts of one image (or, summed, of a test set)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: "Match") -> "Match":
        return Match(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp > 0 else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp > 0 else 0.0

    @property
    def f1(self) -> float:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp > 0 else 0.0

    @property
    def accuracy(self) -> float:
        """StarDist's accuracy tp / (tp + fp + fn): the average precision at the threshold (AP50 at 0.5)."""
        return self.tp / (self.tp + self.fp + self.fn) if self.tp > 0 else 0.0


def matching(y_true: np.ndarray, y_pred: np.ndarray, thresh: float = THRESH) -> Match:
    """StarDist's `matching` of two (H, W) instance label images (0 = background) -> tp, fp, fn."""
    scores = iou_matrix(y_true, y_pred)
    n_true, n_pred = scores.shape
    n_matched = min(n_true, n_pred)
    tp = 0
    if n_matched > 0:
        from scipy.optimize import linear_sum_assignment

        costs = -(scores >= thresh).astype(float) - scores / (2 * n_matched)
        rows, cols = linear_sum_assignment(costs)
        tp = int(np.count_nonzero(scores[rows, cols] >= thresh))
    return Match(tp, n_pred - tp, n_true - tp)


@dataclass
class PixelCounts:
    """Foreground pixel counts of one image (or, summed, of a test set)."""

    intersection: int = 0
    true: int = 0
    pred: int = 0

    def __add__(self, other: "PixelCounts") -> "PixelCounts":
        return PixelCounts(self.intersection + other.intersection, self.true + other.true, self.pred + other.pred)

    @property
    def iou(self) -> float:
        """Foreground IoU; 1.0 when neither side has foreground (nothing to find, nothing found)."""
        union = self.true + self.pred - self.intersection
        return self.intersection / union if union else 1.0

    @property
    def dice(self) -> float:
        total = self.true + self.pred
        return 2 * self.intersection / total if total else 1.0


def pixel_counts(y_true: np.ndarray, y_pred: np.ndarray) -> PixelCounts:
    """Foreground (label > 0) overlap of two (H, W) label or binary images."""
    t, p = np.asarray(y_true) > 0, np.asarray(y_pred) > 0
    if t.shape != p.shape:
        raise ValueError(f"masks differ in shape: {t.shape} vs {p.shape}")
    return PixelCounts(int(np.count_nonzero(t & p)), int(np.count_nonzero(t)), int(np.count_nonzero(p)))
