"""Realism of synthetic image-mask pairs: are the images like real ones, and do they show their masks?

Per synthetic tree (pooled over folds):
- KID (Binkowski et al. 2018) and a classifier two-sample test (Lopez-Paz & Oquab 2017) between
  real and synthetic images, as `classify realism` does, on globally pooled features of the
  U-Net's frozen encoder (`segment.backbone`, `segment.weights`);
- mask consistency: a U-Net trained on all real pairs segments each synthetic image, scored
  against the mask it was generated from (pixel IoU, AP50). A generator that ignores its
  condition scores near 0; one that draws cells where the mask says scores like real test pairs.

KID and the two-sample test are `analysis.realism`'s, the one definition classify and the search use.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from analysis.realism import c2st, kid
from prompts.errors import UserError
from prompts.files import write_json_atomic, write_text_atomic
from prompts.guard import check_output_dir
from prompts.layout import REALISM_JSON, REALISM_MD

from . import metrics

log = logging.getLogger(__name__)


def encoder_features(seg, x: np.ndarray) -> np.ndarray:
    """(n, S, S, 3) float 0..255 -> (n, F) globally average-pooled features of the frozen encoder."""
    from .model import build_feature_model

    model = build_feature_model(seg.backbone, seg.weights, seg.image_size, seg.seed)
    return model.predict(x, batch_size=seg.batch_size, verbose=0)


def realism_identity(data_section, seg, synthetic_root) -> dict:
    """The top-level fields of a segmentation realism record: what its scores were computed from and how.

    Parameters
    ----------
    data_section : prompts.schema.DataSection
        The study's `data` section; its reading rule (`from_section`) is recorded as "reading".
    seg : prompts.schema.SegmentSection
        The encoder's and U-Net's settings (backbone, weights, image size).
    synthetic_root : path
        The synthetic folder read.

    Returns
    -------
    dict
        version, task, data, synthetic, backbone, weights, image_size, reading (`Reading.record()`): changing the
        reading rule (e.g. `data.normalize`) changes the record.
    """
    from prompts.fingerprint import reading_part
    from prompts.normalize import from_section

    return {"version": 1, "task": "segmentation", "data": str(data_section.data), "synthetic": str(synthetic_root),
            "backbone": seg.backbone, "weights": seg.weights, "image_size": seg.image_size,
            "reading": reading_part(from_section(data_section))}


def run_realism(data_section, seg, progress: bool = True) -> dict:
    """KID, C2ST and mask consistency per synthetic tree; returns the realism record (also what write_realism writes)."""
    from prompts.pair_layouts import layout_of
    from prompts.pairs import read_pairs

    from .cv import _item
    from .model import Trainer, check_backbone, check_image_size, import_keras, instances, normalize_weights, targets
    from .pixels import PairCache
    from .synthetic import read_synthetic

    if not data_section.data:
        raise UserError("no data folder: pass --data DIR")
    check_output_dir(seg.output, data=data_section.data)
    check_backbone(seg.backbone)
    check_image_size(seg.image_size)
    w = normalize_weights(seg.weights)
    real = [_item(p) for p in read_pairs(data_section.data, layout_of(data_section))]
    syn = read_synthetic(seg.synthetic)
    sets = {name: [_item(p, "synthetic") for t in syn.trees() if t.name == name for p in t.pairs] for name in syn.names}
    if w in ("tiny", "none"):
        log.warning("segment.weights is %s: random encoder features and a U-Net trained from scratch; these realism scores "
                    "are a smoke test", w)
    import_keras()  # after every input check: a user error is not preceded by TensorFlow's start-up lines
    from prompts.normalize import from_section

    cache = PairCache(seg.image_size, data_section.masks, from_section(data_section))  # the study's reading rule
    cache.load([*real, *(it for items in sets.values() for it in items)], progress)
    x_real, y_real = cache.arrays(real)
    f_real = encoder_features(seg, x_real)  # built before training: the same seeded encoder for real and synthetic
    trainer = Trainer(seg.backbone, seg.weights, seg.image_size, seg.seed, seg.learning_rate)
    trainer.train(x_real, np.stack([targets(m) for m in y_real]), seg.epochs, seg.batch_size, seg.seed, seg.augment)
    rows = []
    for name, items in sets.items():
        x, y = cache.arrays(items)
        f = encoder_features(seg, x)
        k, ks = kid(f_real, f, seed=seg.seed)
        acc, accs = c2st(f_real, f, [it.image_sha for it in real], [it.image_sha for it in items], seed=seg.seed)
        pred = [instances(p, seg.min_size) for p in trainer.predict(x, seg.batch_size)]
        s = metrics.score_set(zip(y, pred))
        rows.append({"tree": name, "n_real": len(real), "n_synthetic": len(items), "kid": _num(k), "kid_std": _num(ks),
                     "c2st_accuracy": _num(acc), "c2st_std": _num(accs), "mask_iou": s["iou"], "mask_dice": s["dice"],
                     "mask_ap50": s["ap50"], "mask_f1": s["f1"]})
    note = (f"Images: KID (×1e3, 0 = same distribution) and a two-sample classifier (logistic regression, 5-fold CV; 0.5 = "
            f"indistinguishable, 1.0 = always told apart) on pooled features of the frozen {seg.backbone} encoder "
            f"({seg.weights}) at {seg.image_size} px. Masks: a U-Net trained on all {len(real)} real pairs "
            f"({seg.epochs} epochs) segments each synthetic image; pixel IoU and AP50 against the mask it was generated "
            "from (1 = the image shows exactly its mask's cells).")
    return {**realism_identity(data_section, seg, syn.root), "note": note, "rows": rows}


def _num(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def realism_markdown(result: dict) -> str:
    lines = ["| tree | synthetic pairs | KID ×1e3 | two-sample acc. | mask IoU | mask AP50 |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        kid_text = "—" if r["kid"] is None else f"{1e3 * r['kid']:.3g} ± {1e3 * r['kid_std']:.2g}"
        acc = "—" if r["c2st_accuracy"] is None else f"{r['c2st_accuracy']:.2f}"
        lines.append(f"| {r['tree']} | {r['n_synthetic']} | {kid_text} | {acc} | {r['mask_iou']:.3f} | {r['mask_ap50']:.3f} |")
    return "\n".join(lines)


def write_realism(result: dict, out) -> list[Path]:
    out = Path(out)
    write_json_atomic(out / REALISM_JSON, result)
    write_text_atomic(out / REALISM_MD, "# Realism of synthetic image-mask pairs\n\n" + result["note"] + "\n\n"
                      + realism_markdown(result) + "\n")
    return [out / REALISM_JSON, out / REALISM_MD]
