"""What a phenotyping run measures: per cell, per image (counts and proportions), and detection.

Per image, with T types, true counts n_t and predicted counts m_t (the cells predicted as type t):

- count MAE: mean over images and types of |m_t - n_t| (cells);
- relative count error: mean over images and types with n_t > 0 of |m_t - n_t| / n_t, in %;
- proportion error: mean over images and types of |m_t / M - n_t / N| in percentage points (pp), with
  N = sum n_t, M = sum m_t, and a proportion of 0 for an image with no cell. The pharmacologist's number:
  "hepatocytes are 62 % of the cells, give or take 3 pp". The default primary metric.

Per cell (cells whose true type is known): balanced accuracy and macro F1 over the types present in the
fold's truth, and the confusion matrix (`analysis.stats.fold_metrics`). With predicted segmentation,
detection F1 at IoU 0.5 (`analysis.matching`, tp/fp/fn summed over the fold's test images) splits a
counting error into "missed the cell" and "wrong type".
"""
from __future__ import annotations

import numpy as np

from analysis.stats import fold_metrics

COUNT_METRICS = ["proportion_error", "count_mae", "relative_count_error"]
CELL_METRICS = ["balanced_accuracy", "f1"]
METRICS = COUNT_METRICS + CELL_METRICS
LOWER_IS_BETTER = set(COUNT_METRICS)
LABELS = {"proportion_error": "proportion error (pp)", "count_mae": "count MAE (cells)",
          "relative_count_error": "relative count error (%)", "balanced_accuracy": "balanced acc.", "f1": "macro F1",
          "detection_f1": "detection F1"}


def counts(cell_types, types: list[str]) -> np.ndarray:
    """(T,) int counts of each of `types` among `cell_types` (names; others, e.g. None, are not counted)."""
    index = {t: i for i, t in enumerate(types)}
    out = np.zeros(len(types), dtype=np.int64)
    for t in cell_types:
        if t in index:
            out[index[t]] += 1
    return out


def proportions(count_matrix: np.ndarray) -> np.ndarray:
    """(n, T) counts -> (n, T) proportions per image (rows of zeros stay zeros)."""
    c = np.asarray(count_matrix, dtype=np.float64)
    total = c.sum(axis=1, keepdims=True)
    return np.divide(c, total, out=np.zeros_like(c), where=total > 0)


def count_metrics(true_counts: np.ndarray, pred_counts: np.ndarray) -> dict[str, float]:
    """Count MAE, relative count error (%) and proportion error (pp) of (n_images, T) true and predicted counts."""
    t = np.asarray(true_counts, dtype=np.float64)
    p = np.asarray(pred_counts, dtype=np.float64)
    if t.shape != p.shape or t.ndim != 2:
        raise ValueError(f"count matrices differ in shape: {t.shape} vs {p.shape}")
    err = np.abs(p - t)
    present = t > 0
    return {
        "count_mae": float(err.mean()) if err.size else float("nan"),
        "relative_count_error": float(100 * (err[present] / t[present]).mean()) if present.any() else float("nan"),
        "proportion_error": float(100 * np.abs(proportions(p) - proportions(t)).mean()) if err.size else float("nan"),
    }


def cell_metrics(true_types: list[str], pred_types: list[str], types: list[str]) -> dict:
    """Balanced accuracy, macro F1 and the confusion matrix (rows true, columns predicted) of typed cells."""
    index = {t: i for i, t in enumerate(types)}
    pairs = [(index[a], index[b]) for a, b in zip(true_types, pred_types) if a in index and b in index]
    if not pairs:
        return {"balanced_accuracy": float("nan"), "f1": float("nan"), "confusion": [], "n_cells": 0}
    y_true, y_pred = (np.asarray(v) for v in zip(*pairs))
    m = fold_metrics(y_true, y_pred, types)
    return {"balanced_accuracy": m["balanced_accuracy"], "f1": m["f1"], "confusion": m["confusion"], "n_cells": len(pairs)}


def improvement(metric: str, value: float, baseline: float) -> float:
    """How much better `value` is than `baseline` (positive = better), in the metric's units."""
    return baseline - value if metric in LOWER_IS_BETTER else value - baseline
