"""The realism scores of synthetic against real images, on features of a frozen network: one definition,
used by `classify realism`, `segment realism` and the parameter search.

- KID (kernel inception distance, Binkowski et al. 2018): the unbiased squared
  MMD with the polynomial kernel k(a, b) = (a.b / d + 1)^3, averaged over random
  subsets; 0 means the two feature distributions agree.
- Classifier two-sample test (C2ST, Lopez-Paz & Oquab 2017): a logistic
  regression tells real from synthetic features, stratified k-fold
  cross-validated on equal-sized sets; accuracy near 0.5 means indistinguishable,
  near 1.0 means every synthetic image is recognisable as synthetic.
"""
from __future__ import annotations

import numpy as np


def kid(x: np.ndarray, y: np.ndarray, n_subsets: int = 20, subset_size: int = 100, seed: int = 0) -> tuple[float, float]:
    """KID between feature sets x (n, F) and y (m, F) -> (mean, std) over subsets (unitless)."""
    d = x.shape[1]
    size = min(subset_size, len(x), len(y))
    if size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_subsets):
        a = x[rng.choice(len(x), size, replace=False)].astype(np.float64)
        b = y[rng.choice(len(y), size, replace=False)].astype(np.float64)
        kxx = (a @ a.T / d + 1) ** 3
        kyy = (b @ b.T / d + 1) ** 3
        kxy = (a @ b.T / d + 1) ** 3
        off = size * (size - 1)
        vals.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean())
    return float(np.mean(vals)), float(np.std(vals))


def c2st(x: np.ndarray, y: np.ndarray, keys_x=None, keys_y=None, folds: int = 5, seed: int = 0) -> tuple[float, float]:
    """Cross-validated accuracy of telling x (real, (n, F)) from y (synthetic, (m, F)) -> (mean, std over folds).

    Equal numbers of each are drawn. keys_x/keys_y (pixel content keys) keep pixel-identical
    images in the same CV fold; otherwise a synthetic copy of a real image would be
    predicted from its twin with the opposite label and push the accuracy below 0.5.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    n = min(len(x), len(y))
    k = min(folds, n)
    if k < 2:
        return float("nan"), float("nan")
    ia, ib = rng.choice(len(x), n, replace=False), rng.choice(len(y), n, replace=False)
    feats = np.concatenate([x[ia], y[ib]]).astype(np.float64)
    labels = np.r_[np.zeros(n), np.ones(n)]
    kx = list(keys_x) if keys_x is not None else [f"x{i}" for i in range(len(x))]
    ky = list(keys_y) if keys_y is not None else [f"y{i}" for i in range(len(y))]
    groups = [kx[i] for i in ia] + [ky[i] for i in ib]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    cv = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
    scores = cross_val_score(clf, feats, labels, cv=cv, groups=groups)
    return float(scores.mean()), float(scores.std())


def realism_scores(x: np.ndarray, y: np.ndarray, keys_x: list[str], keys_y: list[str], seed: int = 0) -> dict:
    """The realism of synthetic features y (m, F) against real features x (n, F), as the report measures it.

    keys_x/keys_y: the images' content hashes (copies stay in one C2ST fold, and are counted).
    Returns {"kid", "kid_std", "c2st_accuracy", "c2st_std", "n_copies"}. The one definition of the
    realism scores: `classify realism` and the parameter search (`study.search`) both call it.
    """
    k, ks = kid(x, y, seed=seed)
    acc, accs = c2st(x, y, keys_x, keys_y, seed=seed)
    return {"kid": k, "kid_std": ks, "c2st_accuracy": acc, "c2st_std": accs, "n_copies": len(set(keys_y) & set(keys_x))}
