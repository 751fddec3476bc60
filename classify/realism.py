"""Realism of synthetic images, measured on the classifier's own frozen features.

Per class and LoRA weight:
- KID (kernel inception distance, Binkowski et al. 2018): the unbiased squared
  MMD with the polynomial kernel k(a, b) = (a.b / d + 1)^3, averaged over random
  subsets; 0 means the two feature distributions agree.
- Classifier two-sample test (C2ST, Lopez-Paz & Oquab 2017): a logistic
  regression tells real from synthetic features, stratified k-fold
  cross-validated on equal-sized sets; accuracy near 0.5 means indistinguishable,
  near 1.0 means every synthetic image is recognisable as synthetic.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from prompts import fingerprint
from prompts.dataset import read_dataset
from prompts.errors import UserError
from prompts.files import write_json_atomic, write_text_atomic
from prompts.guard import check_output_dir
from prompts.layout import REALISM_JSON, REALISM_MD

from .features import PLAIN, Extractor, FeatureCache, ImageTable, compute_features, default_cache_dir, image_key
from .synthetic import read_synthetic

log = logging.getLogger(__name__)


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


def run_realism(data_section, cls, progress: bool = True) -> dict:
    """KID and C2ST per (LoRA weight, class) on frozen-base features (shared with the CV feature cache)."""
    from .model import build_base, check_backbone, import_keras, model_key, normalize_weights

    if not data_section.data:
        raise UserError("no data folder: pass --data DIR")
    check_output_dir(cls.output, data=data_section.data)
    check_backbone(cls.backbone)
    weights = normalize_weights(cls.weights)
    real = read_dataset(data_section.data, skip_bad_images=data_section.skip_bad_images)
    syn = read_synthetic(cls.synthetic, real.classes)
    if weights is None:  # after the input checks: a bad input stays one line
        log.warning("classify.weights is none: random EfficientNet features carry (almost) nothing; these realism "
                    "scores are meaningless (a smoke test); use --weights imagenet or a weights file")
    sets = {("real", c): [real.root / r.path for r in real.records if r.label == c] for c in real.classes}
    for w in syn.weights:
        trees = ([syn.shared[w]] if w in syn.shared else []) + [t[w] for _, t in sorted(syn.per_fold.items()) if w in t]
        for c in real.classes:
            sets[(w, c)] = [t.root / r.path for t in trees for r in t.records if r.label == c]
    table = ImageTable.from_paths(sorted({p for ps in sets.values() for p in ps}))
    import_keras()  # after every input check: a user error is not preceded by TensorFlow's start-up lines
    key = model_key(cls.backbone, cls.weights, cls.image_size, cls.seed)
    cache = FeatureCache(cls.cache_dir or default_cache_dir(), key)
    extractor = Extractor(lambda: build_base(cls.backbone, cls.weights, cls.image_size, seed=cls.seed),
                          cls.image_size, cls.batch_size, cls.seed)
    feats = compute_features(table, [PLAIN], cache, extractor, progress)[PLAIN]
    row = table.row()

    def keys(paths):
        return [image_key(p) for p in paths]  # pixels, not file bytes: results do not depend on where files lie

    rows = []
    for w in syn.weights:
        for c in real.classes:
            if not sets[(w, c)]:
                continue
            kx, ky = keys(sets[("real", c)]), keys(sets[(w, c)])
            x, y = feats[[row[k] for k in kx]], feats[[row[k] for k in ky]]
            rows.append({"weight": w[1:], "class": c, "n_real": len(x), "n_synthetic": len(y),
                         **realism_scores(x, y, kx, ky, seed=cls.seed)})
    note = (f"Features: {cls.backbone} ({cls.weights}) at {cls.image_size} px, frozen, global average pooling — the "
            "classifier's own view of the images. KID: 0 = same distribution (×1e3 shown). Two-sample classifier: "
            "logistic regression, 5-fold CV on equal numbers of real and synthetic images; 0.5 = indistinguishable, 1.0 = "
            "always told apart. Copies: synthetic images pixel-identical to a real image of the class (memorised); KID is "
            "unbiased and can dip below 0, strongly so when synthetic images copy real ones.")
    return {"version": 1, "data": str(real.root), "synthetic": str(syn.root), "backbone": cls.backbone,
            "weights": cls.weights, "image_size": cls.image_size, "note": note, "rows": rows}


def write_realism(result: dict, out) -> list[Path]:
    from .report import realism_markdown

    out = Path(out)
    fingerprint.claim(out, (REALISM_JSON, REALISM_MD), "classify realism")  # before the writes: a kill leaves no file that looks foreign
    write_json_atomic(out / REALISM_JSON, result)
    write_text_atomic(out / REALISM_MD, "# Realism of synthetic images\n\n" + result["note"] + "\n\n" + realism_markdown(result) + "\n")
    return [out / REALISM_JSON, out / REALISM_MD]
