"""The report's tables: per LoRA weight the metrics, the comparison with `real`, the verdicts, per-class F1 and
confusion matrices; the realism table; the blind-test section."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from analysis import stats
from analysis.report import fmt, fmt_ci, fmt_p, scaled_span, verdict_table
from analysis.stats import LABELS
from analysis.tables import Cell, Heading, Table, Text, render_markdown
from prompts import layout

from ..results import NEAR_CONSTANT_FLAG, SINGLE_CLASS, CVResults
from .published import published_for
from .text import ALPHA, LEVEL, REPEATS_KEY, TABLE_METRICS, shown_path

FLAG_LABELS = {SINGLE_CLASS: "one class predicted", NEAR_CONSTANT_FLAG: "nearly one class predicted"}


def metrics_table(res: CVResults, tree: str) -> Table:
    """The study's table shape for one LoRA-weight tree: one row per mix, mean ± std over folds, best bold."""
    rows = res.tables[tree]
    best = {m: max((r.metrics[m].mean for r in rows if r.folds), default=None) for m in TABLE_METRICS}
    published = published_for(res, tree)
    columns = ["mix"] + [LABELS[m] for m in TABLE_METRICS] + ["synthetic share"]
    if published:
        columns.append("published acc. / prec. / rec.")
    flagged = any(f in FLAG_LABELS for r in rows for f in r.flags)
    if flagged:  # its own column: the mix cell stays the mix's name
        columns.append("warning")
    out = []
    for r in rows:
        cells = [Cell(r.mix)]
        for m in TABLE_METRICS:
            v = r.metrics[m]
            cells.append(Cell(fmt(v.mean, v.std), bold=bool(r.folds) and best[m] is not None and v.mean == best[m]))
        cells.append(Cell(f"{r.synthetic_fraction:.0%}"))
        if published:
            pub = published.get(r.mix, {})
            cells.append(Cell(" / ".join(f"{pub[m]:.3f}" if m in pub else "—" for m in ("accuracy", "precision", "recall"))))
        if flagged:
            cells.append(Cell("; ".join(FLAG_LABELS[f] for f in r.flags if f in FLAG_LABELS), wrap=True))
        out.append(cells)
    return Table(columns, out, caption="Mean ± standard deviation over folds; precision, recall and F1 are macro "
                                       "averages; the best mean per column is bold.")


def comparison_table(res: CVResults, tree: str) -> Table:
    """Each mix minus `real` on the same folds: macro F1 and accuracy, 95 % interval, corrected p (and Holm p for F1)."""
    columns = ["mix", "Δ F1", "95 % CI", "p", "p Holm", "Δ accuracy", "95 % CI", "p", "smallest significant Δ F1"]
    real = res.real_row(tree)
    out = []
    for r in res.tables[tree]:
        if r.mix == "real" or not r.vs_real:
            continue
        j = len(set(r.folds) & set(real.folds)) if real else 0
        cells = [Cell(r.mix)]
        for m in ("f1", "accuracy"):
            vr = r.vs_real[m]
            lo, hi = stats.corrected_interval(vr.diff_mean, vr.diff_std, j, res.n_train_mean, res.n_test_mean, LEVEL)
            cells += [Cell(f"{vr.diff_mean:+.3f}"), Cell(fmt_ci(lo, hi)), Cell(fmt_p(vr.p), bold=vr.p < ALPHA)]
            if m == "f1":
                cells.append(Cell(fmt_p(r.verdict.p_holm) if r.verdict and r.uses_synthetic else "—"))
        cd = r.vs_real["f1"].min_significant_diff
        cells.append(Cell(f"±{cd:.3f}" if np.isfinite(cd) else "—"))
        out.append(cells)
    return Table(columns, out, caption="Against `real` (paired, same folds): mean difference, its 95 % interval and the "
                                       "corrected p; \"p Holm\" adjusts F1 over every synthetic mix of every LoRA weight "
                                       "(baselines are not in that family); the last column is the difference this run "
                                       "could have detected at p < 0.05, given its spread.")


def verdicts_table(res: CVResults, tree: str) -> Table | None:
    """Each mix's verdict against `real` on macro F1 (None when nothing was compared)."""
    verdicts = {r.mix: r.verdict for r in res.tables[tree] if r.verdict is not None}
    if not verdicts:
        return None
    return verdict_table(verdicts, "F1", REPEATS_KEY, caption=f"Verdict of each mix against `real` on macro F1 "
                         f"(δ = {res.settings.delta:g}); baselines are Holm-adjusted in their own family:",
                         current_repeats=res.repeats)


def per_class_table(res: CVResults, tree: str) -> Table:
    """One row per class, one column per mix: mean F1 over the folds where the class has test images; best bold.

    Classes run down the page, so many classes never make the table wider than the page."""
    rows_by_mix = [r for r in res.tables[tree] if r.per_class]

    def f1(r, c):
        v = r.per_class[c]["f1"]
        return v if v is not None and np.isfinite(v) else None

    out = []
    for c in res.classes:
        vals = [f1(r, c) for r in rows_by_mix]
        best = max((v for v in vals if v is not None), default=None)
        out.append([Cell(c), *(Cell("—") if v is None else Cell(f"{v:.3f}", bold=v == best) for v in vals)])
    return Table(["class", *(r.mix for r in rows_by_mix)], out,
                 caption="Per-class F1 (mean over folds; rows: classes, columns: mixes; best per class bold):")


def confusion_tables(res: CVResults, tree: str) -> list[Table]:
    """One small table per mix: counts summed over folds, rows true class, columns predicted; shaded by row share."""
    classes = res.classes
    out = []
    for r in res.tables[tree]:
        if not r.folds:
            continue
        cm = np.asarray(r.confusion)
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        rows = [[Cell(c), *(Cell(str(cm[i, j]), shade=float(share[i, j]), title=f"true {c}, predicted {classes[j]}")
                           for j in range(len(classes)))] for i, c in enumerate(classes)]
        out.append(Table(["true ↓ predicted →", *classes], rows, caption=f"**{r.mix}**", compact=True))
    return out


def realism_table(realism: dict) -> Table:
    """One row per (LoRA weight, class). KID is shown ×1e3 when small, in scientific notation otherwise (one scale
    for the whole column)."""
    prefix, _ = scaled_span([r["kid"] for r in realism["rows"]])
    scale = 1e3 if prefix else 1.0
    columns = ["LoRA weight", "class", "n real", "n synthetic", "copies", f"KID ({prefix})" if prefix else "KID",
               "two-sample classifier accuracy"]
    rows = [[str(r["weight"]), r["class"], str(r["n_real"]), str(r["n_synthetic"]), str(r.get("n_copies", 0)),
             _kid(r, scale), f"{r['c2st_accuracy']:.3f} ± {r['c2st_std']:.3f}"] for r in realism["rows"]]
    return Table(columns, rows)


def realism_markdown(realism: dict) -> str:
    """The realism table alone, as Markdown (realism.md)."""
    return render_markdown([realism_table(realism)]).rstrip("\n")


def _kid(r: dict, scale: float) -> str:
    kid, std = scale * r["kid"], scale * r["kid_std"]
    return f"{kid:.2f} ± {std:.2f}" if scale != 1.0 else f"{kid:.2e} ± {std:.1e}"


def blind_source(folder) -> str:
    """Which blind test the report adds: its scores file and, unless the scores' own notes name it (`blind-score`
    records the key it scored against), the key beside them and the test id."""
    path = Path(folder)
    scores = path if path.is_file() else path / layout.BLIND_SCORES_JSON
    try:
        obj = json.loads(scores.read_text())
    except (OSError, json.JSONDecodeError):
        obj = {}
    text = f"Blind-test scores: `{shown_path(scores)}`"
    if isinstance(obj.get("key"), dict):  # the summary's notes name the key, its test id and hash
        return text + "."
    key = scores.parent / layout.BLIND_KEY_FILE
    parts = [f"key `{shown_path(key)}`" if key.is_file() else "key: not recorded with the scores"]
    if obj.get("test_id"):
        parts.append(f"test id `{obj['test_id']}`")
    return f"{text}; {', '.join(parts)}."


def blind_blocks(blind, folder=None) -> list:
    """The "Blind test by experts" section from a `classify.blind.BlindSummary`, naming the key it used."""
    sentence = blind.sentence[:1].upper() + blind.sentence[1:]
    blocks = [Heading("Blind test by experts"), Text(sentence + ".")]
    if folder:
        blocks.append(Text(blind_source(folder), "note"))
    if blind.agreement:
        blocks.append(Text(blind.agreement))
    blocks.append(Table(list(blind.columns), [[str(c) for c in row] for row in blind.rows]))
    notes = list(blind.notes)
    if not any(str(blind.calls_needed) in n for n in notes):
        notes.insert(0, f"{blind.calls_needed} calls give the exact binomial test 80 % power against 60 % accuracy (alpha 0.05).")
    blocks += [Text(n[:1].upper() + n[1:] + ("" if n.endswith(".") else "."), "note") for n in notes]
    return blocks
