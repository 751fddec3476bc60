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

from analysis.realism import c2st, kid, realism_scores  # noqa: F401  (the one realism score; read from here too)
from prompts import fingerprint
from prompts.dataset import read_dataset
from prompts.errors import UserError
from prompts.files import write_json_atomic, write_text_atomic
from prompts.guard import check_output_dir
from prompts.layout import REALISM_JSON, REALISM_MD

from .features import PLAIN, Extractor, FeatureCache, ImageTable, compute_features, default_cache_dir, image_key
from .synthetic import read_synthetic

log = logging.getLogger(__name__)


def realism_identity(data_section, cls, synthetic_root) -> dict:
    """The top-level fields of a realism record: what its scores were computed from and how.

    Parameters
    ----------
    data_section : prompts.schema.DataSection
        The study's `data` section; its reading rule (`from_section`) is recorded as "reading".
    cls : prompts.schema.ClassifySection
        The classifier's settings (backbone, weights, image size).
    synthetic_root : path
        The synthetic folder read.

    Returns
    -------
    dict
        version, data, synthetic, backbone, weights, image_size, reading (`Reading.record()`): changing the
        reading rule (e.g. `data.normalize`) changes the record.
    """
    from prompts.normalize import from_section

    return {"version": 1, "data": str(Path(data_section.data)), "synthetic": str(synthetic_root), "backbone": cls.backbone,
            "weights": cls.weights, "image_size": cls.image_size, "reading": fingerprint.reading_part(from_section(data_section))}


def run_realism(data_section, cls, progress: bool = True) -> dict:
    """KID and C2ST per (LoRA weight, class) on frozen-base features (shared with the CV feature cache)."""
    from .model import build_base, check_backbone, import_keras, model_key, normalize_weights

    if not data_section.data:
        raise UserError("no data folder: pass --data DIR")
    check_output_dir(cls.output, data=data_section.data)
    check_backbone(cls.backbone)
    weights = normalize_weights(cls.weights)
    from prompts.normalize import from_section

    reading = from_section(data_section)  # the study's rule, for every image scored here
    real = read_dataset(data_section.data, skip_bad_images=data_section.skip_bad_images, reading=reading)
    syn = read_synthetic(cls.synthetic, real.classes)
    if weights is None:  # after the input checks: a bad input stays one line
        log.warning("classify.weights is none: random EfficientNet features carry (almost) nothing; these realism "
                    "scores are meaningless (a smoke test); use --weights imagenet or a weights file")
    sets = {("real", c): [real.root / r.path for r in real.records if r.label == c] for c in real.classes}
    for w in syn.weights:
        trees = ([syn.shared[w]] if w in syn.shared else []) + [t[w] for _, t in sorted(syn.per_fold.items()) if w in t]
        for c in real.classes:
            sets[(w, c)] = [t.root / r.path for t in trees for r in t.records if r.label == c]
    table = ImageTable.from_paths(sorted({p for ps in sets.values() for p in ps}), reading)
    import_keras()  # after every input check: a user error is not preceded by TensorFlow's start-up lines
    key = model_key(cls.backbone, cls.weights, cls.image_size, cls.seed)
    cache = FeatureCache(cls.cache_dir or default_cache_dir(), key)
    extractor = Extractor(lambda: build_base(cls.backbone, cls.weights, cls.image_size, seed=cls.seed),
                          cls.image_size, cls.batch_size, cls.seed)
    feats = compute_features(table, [PLAIN], cache, extractor, progress)[PLAIN]
    row = table.row()

    def keys(paths):
        return [image_key(p, reading) for p in paths]  # pixels, not file bytes: results do not depend on where files lie

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
    return {**realism_identity(data_section, cls, syn.root), "note": note, "rows": rows}


def write_realism(result: dict, out) -> list[Path]:
    from .report import realism_markdown

    out = Path(out)
    fingerprint.claim(out, (REALISM_JSON, REALISM_MD), "classify realism")  # before the writes: a kill leaves no file that looks foreign
    write_json_atomic(out / REALISM_JSON, result)
    write_text_atomic(out / REALISM_MD, "# Realism of synthetic images\n\n" + result["note"] + "\n\n" + realism_markdown(result) + "\n")
    return [out / REALISM_JSON, out / REALISM_MD]
