"""Reports of a CV run: report.md, report.html (one self-contained file), results.csv, results.json, folds.csv.

The report opens with its answer: per LoRA weight, one sentence saying whether adding synthetic
images improved macro F1 over `real`, with the best mix's mean paired difference, its 95 %
interval from the Nadeau-Bengio corrected variance (the same as the test's), the corrected p and
the Holm-adjusted p (family: every synthetic mix of every LoRA weight against `real`), and the
realism (and blind-test) summary beside it. A smoke run (random or stand-in classifier weights,
synthetic images from the tiny model) opens with a banner saying its numbers mean nothing.

`build_report` makes the document once (figures included) as blocks of `classify.tables`;
Markdown and HTML are two renderings of the same blocks.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis import stats
from analysis.stats import LABELS, METRICS
from prompts import layout
from prompts.errors import UserError
from prompts.files import write_json_atomic, write_text_atomic

from .cv import REAL_TREE
from .tables import Cell, Figure, Heading, Row, Table, Text, attempt, render_html, render_markdown

TITLE = "Cross-validation report"
PRIMARY = "f1"  # the metric the answer is about: macro F1 (each class counts equally)
ALPHA = 0.05
LEVEL = 0.95
TABLE_METRICS = ["accuracy", "precision", "recall", "f1", "balanced_accuracy"]
# The published organ-on-chip study (examples/organ_on_chip/): EfficientNet-B7, ImageNet, 600 px, 30 epochs, 5 folds.
PUBLISHED = {
    "w1.0": {"real": {"accuracy": 0.729, "precision": 0.731, "recall": 0.715}, "synthetic": {"accuracy": 0.614}},
}
PUBLISHED_MIX_RANGE = "real+10 ... real+100: accuracy 0.696 to 0.721 (weight 0.8 similar)"
STUDY_CONFIG = {"backbone": "EfficientNetB7", "weights": "imagenet", "image_size": 600, "epochs": 30, "augment": True}


# ---------------------------------------------------------------- numbers


def fmt(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean:.3f} ± {std:.3f}"


def fmt_p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "—"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def p_is(p) -> str:
    """'= 0.41' or '< 0.001', to follow 'p ' in a sentence."""
    text = fmt_p(p)
    return text.replace("<", "< ") if text.startswith("<") else f"= {text}"


def fmt_ci(lo: float, hi: float) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "—"
    return f"{lo:+.3f}..{hi:+.3f}"


def tree_title(tree: str) -> str:
    return f"LoRA weight {tree[1:]}" if tree.startswith("w") else "real data only"


@dataclass
class Comparison:
    """One mix against `real` on the primary metric, over the J folds both ran on."""

    tree: str
    mix: str
    diff: float  # mean paired difference mix - real
    lo: float  # 95 % interval of the mean difference (corrected variance, t with J-1 df)
    hi: float
    p: float  # Nadeau-Bengio corrected two-sided p
    j: int
    p_holm: float = float("nan")  # Holm-adjusted over the family (every synthetic mix of every tree)


def comparisons(results: dict, metric: str = PRIMARY, synthetic: bool = True) -> list[Comparison]:
    """Every synthetic mix of every tree (synthetic=False: every baseline) against `real` on `metric`, with
    intervals and Holm-adjusted p-values over the list."""
    out = []
    for tree, rows in results["tables"].items():
        real = next((r for r in rows if r["mix"] == "real"), None)
        for r in rows:
            vr = r["vs_real"].get(metric)
            if not (r["uses_synthetic"] == synthetic and vr and real) or (not synthetic and tree != REAL_TREE):
                continue
            j = len(set(r["folds"]) & set(real["folds"]))
            lo, hi = stats.corrected_interval(vr["diff_mean"], vr["diff_std"], j, results["n_train_mean"],
                                              results["n_test_mean"], LEVEL)
            out.append(Comparison(tree, r["mix"], vr["diff_mean"], lo, hi, vr["p"], j))
    for c, ph in zip(out, stats.holm([c.p for c in out])):
        c.p_holm = ph
    return out


def _effect(c: Comparison, family: int) -> str:
    holm = f", Holm-adjusted p {p_is(c.p_holm)}" if family > 1 else ""
    return f"{c.diff:+.3f}, {LEVEL * 100:.0f} % CI {fmt_ci(c.lo, c.hi)}, corrected p {p_is(c.p)}{holm}, {c.j} folds"


def answer_sentence(tree: str, comps: list[Comparison], family: int) -> str:
    """The plain-words answer for one LoRA weight (comps: that tree's comparisons)."""
    name = LABELS[PRIMARY] if PRIMARY != "f1" else "macro F1"
    head = f"**{tree_title(tree)}:** adding synthetic images"
    if not comps:
        return f"{head}: no answer — the run has no `real` mix to compare with, or no synthetic mix."
    if all(not np.isfinite(c.p) for c in comps):
        best = max(comps, key=lambda c: c.diff)
        return (f"{head} cannot be tested with {best.j} fold(s) (best mix {best.mix}: {best.diff:+.3f} {name}); "
                "run at least 2 folds.")
    better = [c for c in comps if c.diff > 0 and c.p_holm < ALPHA]
    worse = [c for c in comps if c.diff < 0 and c.p_holm < ALPHA]
    if better:
        best = max(better, key=lambda c: c.diff)
        text = f"{head} improved {name} (best mix {best.mix}: {_effect(best, family)})."
    else:
        best = max(comps, key=lambda c: c.diff)
        text = f"{head} did not improve {name} (best mix {best.mix}: {_effect(best, family)})."
    if worse:
        text += " Significantly worse: " + "; ".join(f"{c.mix} ({c.diff:+.3f}, p {p_is(c.p_holm if family > 1 else c.p)})"
                                                     for c in sorted(worse, key=lambda c: c.diff)) + "."
    return text


def baseline_answer(comps: list[Comparison]) -> str:
    """The answer of a run without synthetic mixes: the best baseline against `real`."""
    if not comps:
        return "This run has no synthetic mixes and no baseline to compare with `real`."
    best = max(comps, key=lambda c: c.diff)
    verdict = "improved" if best.diff > 0 and best.p_holm < ALPHA else "did not improve"
    return (f"**No synthetic mixes in this run.** The best baseline against `real`, {best.mix}, {verdict} macro F1 "
            f"({_effect(best, len(comps))}).")


def correction_note(comps: list[Comparison], what: str = "synthetic mixes") -> str:
    """Which correction the answer's p-values carry, stated once."""
    m = len(comps)
    if m == 0:
        return "Nothing was compared with `real`."
    if m == 1:
        return "The answer rests on one comparison: its p-value needs no correction for multiple comparisons."
    trees = sorted({c.tree for c in comps if c.tree != REAL_TREE})
    weights = f" ({len(trees)} LoRA weight{'s' if len(trees) > 1 else ''})" if trees else ""
    return (f"The answer tests {m} {what} against `real`{weights}; \"improved\" means a positive difference with "
            f"Holm-adjusted p < {ALPHA:g} over all {m}, which keeps the chance of any false \"improved\" at most 5 %. "
            "Intervals are per comparison. p-values in the tables below are per comparison, not adjusted.")


def realism_summary(realism: dict | None, tree: str) -> str | None:
    """One sentence on the realism of a LoRA weight's images, over its classes (None without realism rows)."""
    if not realism or not tree.startswith("w"):
        return None
    rows = [r for r in realism.get("rows", []) if str(r["weight"]) == tree[1:]]
    if not rows:
        return None
    acc = [r["c2st_accuracy"] for r in rows if np.isfinite(r["c2st_accuracy"])]
    kid = [1e3 * r["kid"] for r in rows if np.isfinite(r["kid"])]
    copies = sum(r.get("n_copies", 0) for r in rows)

    def span(v, f):
        lo, hi = (f"{min(v):{f}}", f"{max(v):{f}}") if v else ("—", "—")
        return lo if lo == hi else f"{lo} to {hi}"

    return (f"**Realism, {tree_title(tree)}** ({len(rows)} classes): a two-sample classifier told synthetic from real "
            f"with accuracy {span(acc, '.2f')} (0.5 = indistinguishable, 1.0 = always told apart); KID ×1e3 "
            f"{span(kid, '.3g')} (0 = same distribution); {copies} byte-identical copies of real images.")


# ---------------------------------------------------------------- what the reader must be warned about


def _stand_in_weights(weights: str | None) -> bool:
    """True for a weights file that `classify calibrate-weights` wrote (random weights, calibrated BatchNorm)."""
    from .model import is_stand_in_weights

    return bool(weights) and weights not in ("imagenet", "none") and is_stand_in_weights(weights)


def _smoke_models(synthetic: str | None) -> list[str]:
    """Base models named in the synthetic folder's manifest whose folder holds the tiny-model marker."""
    if not synthetic:
        return []
    manifest = Path(synthetic) / layout.MANIFEST_FILE
    try:
        lines = manifest.read_text().splitlines()
    except OSError:
        return []
    models = set()
    for line in lines:
        try:
            models.add(json.loads(line).get("model"))
        except (json.JSONDecodeError, AttributeError):
            continue
    # a relative model path was relative to where `generate` ran: try here and beside the synthetic folder
    return sorted(m for m in models if m and any((base / m / layout.TINY_MODEL_MARKER).is_file()
                                                for base in (Path.cwd(), Path(synthetic).resolve().parent)))


def smoke_reasons(results: dict) -> list[str]:
    """Why this run's numbers mean nothing (empty for a real run)."""
    s = results["settings"]
    out = []
    if str(s.get("weights")).lower() == "none":
        out.append("the classifier's base has random weights (`weights: none`), so its features carry nothing")
    elif _stand_in_weights(s.get("weights")):
        out.append(f"the classifier's base has calibrated random stand-in weights (`{s['weights']}`), not ImageNet's")
    tiny = _smoke_models(results.get("synthetic"))
    if tiny:
        out.append(f"the synthetic images come from the tiny random Stable Diffusion (`{tiny[0]}`): noise, not micrographs")
    return out


def constant_predictions(results: dict) -> dict[tuple[str, str], list[str]]:
    """(tree, mix) -> the class predicted in each fold, for runs whose predictions were one class in every fold."""
    by: dict[tuple[str, str], list] = {}
    for r in results["runs"]:
        by.setdefault((r["tree"], r["mix"]), []).append(r)
    out = {}
    for key, runs in by.items():
        constant = []
        for r in sorted(runs, key=lambda r: r["fold"]):
            predicted = np.asarray(r["metrics"]["confusion"]).sum(axis=0)  # columns: predicted class
            if np.count_nonzero(predicted) != 1:
                break
            constant.append(results["classes"][int(np.flatnonzero(predicted)[0])])
        else:
            if constant:
                out[key] = constant
    return out


def absent_classes(results: dict) -> dict[int, list[str]]:
    """Fold index -> classes with no test image in that fold (the same for every run of the fold)."""
    out: dict[int, list[str]] = {}
    for r in results["runs"]:
        pc = r["metrics"]["per_class"]
        missing = [c for c in results["classes"] if pc.get(c, {}).get("support", 1) == 0]
        if missing:
            out[r["fold"]] = missing
    return dict(sorted(out.items()))


def study_mismatch(results: dict) -> list[str]:
    """Settings in which this run differs from the published study (empty: the figures are comparable)."""
    s = results["settings"]
    diffs = [f"{k} {s.get(k)} (study: {v})" for k, v in STUDY_CONFIG.items() if s.get(k) != v]
    if results["n_splits"] != 5:
        diffs.append(f"{results['n_splits']} folds (study: 5)")
    return diffs


def leak_warnings(results: dict) -> list[str]:
    out = []
    for tree, rows in results["tables"].items():
        leaky = sorted({k for r in rows for k in r.get("leaky_folds", [])})
        if leaky:
            out.append(
                f"**Warning — the generator saw the test images ({tree_title(tree)}).** Fold(s) "
                f"{', '.join(layout.fold_name(k) for k in leaky)} used the shared synthetic tree `{tree}/` because no "
                f"`fold_<k>/{tree}/` exists; its LoRA was trained on images that are in those test folds, so synthetic "
                "mixes may score too high there. Train LoRAs per fold (`python -m lora train --split ...`) to remove the leak."
            )
    return out


def statistics_note(results: dict) -> str:
    j = results["n_folds"]
    ratio = results["n_test_mean"] / results["n_train_mean"]
    from scipy import stats as sps

    tcrit = sps.t.ppf(0.975, df=max(1, j - 1))
    text = (
        f"Each mix is compared with `real` on the same {j} folds (paired). p is the two-sided p-value of the "
        f"Nadeau-Bengio corrected resampled t-test (variance factor 1/J + n_test/n_train = 1/{j} + {ratio:.2f}, "
        f"{j - 1} degrees of freedom; |t| must exceed {tcrit:.2f} for p < 0.05); the 95 % interval of a difference is "
        "mean ± that t quantile × the same corrected standard error, so it excludes 0 exactly when p < 0.05. The "
        "correction accounts for the overlap of training sets between folds, which makes the plain paired t-test far too "
        f"optimistic. A Wilcoxon signed-rank test over {j} folds cannot go below p = {results['wilcoxon_min_p']:.4g}. "
        "Macro precision, recall and F1 of a fold average over the classes present in that fold's test images."
    )
    if results["repeats"] == 1:
        text += (
            f" With a single {results['n_splits']}-fold run the corrected test has very little power: only a difference "
            "that is large and consistent in every fold reaches significance, so a non-significant p here is not evidence "
            "of no effect. Repeat the CV (`classify split --repeats 5` or `cv --repeats 5`) for a test that can detect "
            "differences of a few points."
        )
    return text


def setup_text(results: dict) -> str:
    s = results["settings"]
    return (
        f"Data `{results['data']}`: {', '.join(f'{c} {n}' for c, n in results['class_counts'].items())}. "
        f"{results['n_splits']}-fold CV × {results['repeats']} repeat(s) ({results['n_folds']} folds"
        + (f", grouped by `{results['group_by']}`" if results["group_by"] else "")
        + f"). Classifier: {s['backbone']} ({s['weights']}) at {s['image_size']} px, frozen base, head trained {s['epochs']} "
        f"epochs (Adam {s['learning_rate']:g}, batch {s['batch_size']}), augmentation {'on' if s['augment'] else 'off'}"
        + (", class-weighted loss" if s["class_weights"] else "")
        + (f", minority class subsampled to {s['minority_fraction']:g} of the largest" if s["minority_fraction"] else "")
        + f", feature cache {'on' if s['feature_cache'] else 'off'}. Seed {s['seed']}."
    )


# ---------------------------------------------------------------- tables


def metrics_table(results: dict, tree: str, flagged: dict) -> Table:
    """The study's table shape for one LoRA-weight tree: one row per mix, mean ± std over folds, best bold."""
    rows = results["tables"][tree]
    best = {m: max((r["metrics"][m]["mean"] for r in rows if r["folds"]), default=None) for m in TABLE_METRICS}
    published = PUBLISHED.get(tree) if not study_mismatch(results) else None
    columns = ["mix"] + [LABELS[m] for m in TABLE_METRICS] + ["synthetic share"]
    if published:
        columns.append("published acc. / prec. / rec.")
    out = []
    for r in rows:
        name = r["mix"] + (" (one class predicted)" if (r["tree"], r["mix"]) in flagged else "")
        cells = [Cell(name)]
        for m in TABLE_METRICS:
            v = r["metrics"][m]
            cells.append(Cell(fmt(v["mean"], v["std"]), bold=bool(r["folds"]) and best[m] is not None and v["mean"] == best[m]))
        cells.append(Cell(f"{r['synthetic_fraction']:.0%}"))
        if published:
            pub = published.get(r["mix"], {})
            cells.append(Cell(" / ".join(f"{pub[m]:.3f}" if m in pub else "—" for m in ("accuracy", "precision", "recall"))))
        out.append(cells)
    return Table(columns, out, caption="Mean ± standard deviation over folds; precision, recall and F1 are macro "
                                       "averages; the best mean per column is bold.")


def comparison_table(results: dict, tree: str, holm_p: dict) -> Table:
    """Each mix minus `real` on the same folds: macro F1 and accuracy, 95 % interval, corrected p (and Holm p for F1)."""
    columns = ["mix", "Δ F1", "95 % CI", "p", "p Holm", "Δ accuracy", "95 % CI", "p", "smallest significant Δ F1"]
    real = next((r for r in results["tables"][tree] if r["mix"] == "real"), None)
    out = []
    for r in results["tables"][tree]:
        if r["mix"] == "real" or not r["vs_real"]:
            continue
        j = len(set(r["folds"]) & set(real["folds"])) if real else 0
        cells = [Cell(r["mix"])]
        for m in ("f1", "accuracy"):
            vr = r["vs_real"][m]
            lo, hi = stats.corrected_interval(vr["diff_mean"], vr["diff_std"], j, results["n_train_mean"],
                                              results["n_test_mean"], LEVEL)
            cells += [Cell(f"{vr['diff_mean']:+.3f}"), Cell(fmt_ci(lo, hi)), Cell(fmt_p(vr["p"]), bold=vr["p"] < ALPHA)]
            if m == "f1":
                cells.append(Cell(fmt_p(holm_p.get((tree, r["mix"]))) if (tree, r["mix"]) in holm_p else "—"))
        cd = r["vs_real"]["f1"].get("min_significant_diff", float("nan"))
        cells.append(Cell(f"±{cd:.3f}" if np.isfinite(cd) else "—"))
        out.append(cells)
    return Table(columns, out, caption="Against `real` (paired, same folds): mean difference, its 95 % interval and the "
                                       "corrected p; \"p Holm\" adjusts F1 over every synthetic mix of every LoRA weight "
                                       "(baselines are not in that family); the last column is the difference this run "
                                       "could have detected at p < 0.05, given its spread.")


def per_class_table(results: dict, tree: str) -> Table:
    """One row per class, one column per mix: mean F1 over the folds where the class has test images; best bold.

    Classes run down the page, so many classes never make the table wider than the page."""
    rows_by_mix = [r for r in results["tables"][tree] if r["per_class"]]

    def f1(r, c):
        v = r["per_class"][c]["f1"]
        return v if v is not None and np.isfinite(v) else None

    out = []
    for c in results["classes"]:
        vals = [f1(r, c) for r in rows_by_mix]
        best = max((v for v in vals if v is not None), default=None)
        out.append([Cell(c), *(Cell("—") if v is None else Cell(f"{v:.3f}", bold=v == best) for v in vals)])
    return Table(["class", *(r["mix"] for r in rows_by_mix)], out,
                 caption="Per-class F1 (mean over folds; rows: classes, columns: mixes; best per class bold):")


def confusion_tables(results: dict, tree: str) -> list[Table]:
    """One small table per mix: counts summed over folds, rows true class, columns predicted; shaded by row share."""
    classes = results["classes"]
    out = []
    for r in results["tables"][tree]:
        if not r["folds"]:
            continue
        cm = np.asarray(r["confusion"])
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        rows = [[Cell(c), *(Cell(str(cm[i, j]), shade=float(share[i, j]), title=f"true {c}, predicted {classes[j]}")
                           for j in range(len(classes)))] for i, c in enumerate(classes)]
        out.append(Table(["true ↓ predicted →", *classes], rows, caption=f"**{r['mix']}**", compact=True))
    return out


def realism_table(realism: dict) -> Table:
    columns = ["LoRA weight", "class", "n real", "n synthetic", "copies", "KID (×1e3)", "two-sample classifier accuracy"]
    rows = [[str(r["weight"]), r["class"], str(r["n_real"]), str(r["n_synthetic"]), str(r.get("n_copies", 0)), _kid(r),
             f"{r['c2st_accuracy']:.3f} ± {r['c2st_std']:.3f}"] for r in realism["rows"]]
    return Table(columns, rows)


def realism_markdown(realism: dict) -> str:
    """The realism table alone, as Markdown (realism.md)."""
    return render_markdown([realism_table(realism)]).rstrip("\n")


def _kid(r: dict) -> str:
    """KID x 1e3 with its std; large values (unscaled features) in scientific notation."""
    kid, std = 1e3 * r["kid"], 1e3 * r["kid_std"]
    if max(abs(kid), abs(std)) >= 1e4:
        return f"{kid:.3g} ± {std:.2g}"
    return f"{kid:.2f} ± {std:.2f}"


def blind_blocks(blind) -> list:
    """The "Blind test by experts" section from a `classify.blind.BlindSummary`."""
    sentence = blind.sentence[:1].upper() + blind.sentence[1:]
    blocks = [Heading("Blind test by experts"), Text(sentence + ".")]
    if blind.agreement:
        blocks.append(Text(blind.agreement))
    blocks.append(Table(list(blind.columns), [[str(c) for c in row] for row in blind.rows]))
    notes = list(blind.notes)
    if not any(str(blind.calls_needed) in n for n in notes):
        notes.insert(0, f"{blind.calls_needed} calls give the exact binomial test 80 % power against 60 % accuracy (alpha 0.05).")
    blocks += [Text(n[:1].upper() + n[1:] + ("" if n.endswith(".") else "."), "note") for n in notes]
    return blocks


# ---------------------------------------------------------------- figures (HTML)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


BASELINE_STYLE = {"oversample": ":", "classweight": "--", "noaug": "-."}


def plot_series(results: dict) -> dict:
    """What the metrics plot draws: {"lines": {tree: rows of real, real+P and synthetic by synthetic share},
    "balance": {tree: the balance row}, "baselines": rows of the baselines without synthetic images}."""
    lines, balance = {}, {}
    for tree, rows in results["tables"].items():
        done = [r for r in rows if r["folds"]]
        lines[tree] = sorted((r for r in done if (r["uses_synthetic"] or r["mix"] == "real") and r["mix"] != "balance"),
                             key=lambda r: r["synthetic_fraction"])
        balance.update({tree: r for r in done if r["mix"] == "balance"})
    first = next(iter(results["tables"].values()), [])
    return {"lines": lines, "balance": balance, "baselines": [r for r in first if r["folds"] and r["mix"] in BASELINE_STYLE]}


def plot_metrics(results: dict) -> Figure:
    """Each metric against the synthetic share of the training set: one line per LoRA weight through `real`, the
    real+P mixes and `synthetic`; `balance` as a star at its share; baselines as horizontal lines. Error bars: std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = plot_series(results)
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.6), sharey=True)
    axes = axes.ravel()
    for k, (tree, line) in enumerate(series["lines"].items()):
        color = f"C{k}"
        for ax, m in zip(axes, TABLE_METRICS):
            ax.errorbar([r["synthetic_fraction"] for r in line], [r["metrics"][m]["mean"] for r in line],
                        yerr=[r["metrics"][m]["std"] for r in line], marker="o", capsize=3, color=color,
                        label=tree_title(tree))
            if tree in series["balance"]:
                r = series["balance"][tree]
                ax.errorbar([r["synthetic_fraction"]], [r["metrics"][m]["mean"]], yerr=[r["metrics"][m]["std"]], marker="*",
                            markersize=12, capsize=3, color=color, linestyle="none", label=f"balance ({tree_title(tree)})")
    for r in series["baselines"]:
        for ax, m in zip(axes, TABLE_METRICS):
            ax.axhline(r["metrics"][m]["mean"], color="gray", linestyle=BASELINE_STYLE[r["mix"]], label=f"{r['mix']} (baseline)")
    for ax, m in zip(axes, TABLE_METRICS):
        ax.set_title(LABELS[m])
        ax.set_xlabel("synthetic share of training set")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean over folds ± std")
    axes[3].set_ylabel("mean over folds ± std")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[-1].axis("off")
    axes[-1].legend(handles, labels, loc="center", fontsize=9)
    fig.tight_layout()
    return Figure("each metric against the synthetic share of the training set (mean ± std over folds; stars: `balance`; "
                  "gray lines: baselines without synthetic images)", _png(fig))


def _thumb(path, size: int = 96) -> str:
    """A PNG data URI of the image as the classifier sees it (shorter side resized, centre crop)."""
    from PIL import Image

    from .pixels import image_to_array

    buf = io.BytesIO()
    Image.fromarray(image_to_array(path, size)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_grid(results: dict, per_side: int = 4) -> Table:
    """Per class, a few real images beside a few synthetic images of each LoRA weight."""
    from prompts.dataset import read_dataset

    real = read_dataset(results["data"])
    trees = {}
    if results.get("synthetic"):
        from .synthetic import read_synthetic

        syn = read_synthetic(results["synthetic"], real.classes)
        for w in syn.weights:
            trees[w] = syn.shared.get(w) or next(t[w] for t in syn.per_fold.values() if w in t)
    rows = []
    for c in real.classes:
        cells = [Cell(c)]
        for ds in [real, *trees.values()]:
            recs = [r for r in ds.records if r.label == c][:per_side]
            cells.append(Cell(images=[_thumb(ds.root / r.path) for r in recs]))
        rows.append(cells)
    return Table(["class", "real", *(f"synthetic {w}" for w in trees)], rows,
                 caption="As the classifier sees them (shorter side resized, centre crop):")


# ---------------------------------------------------------------- the document


def build_report(results: dict, realism: dict | None = None, blind=None, figures: bool = True) -> list:
    """The report as blocks: banner, answer, set-up, warnings, tables per LoRA weight, figures, statistics, realism."""
    blocks: list = [Heading(TITLE, 1)]
    smoke = smoke_reasons(results)
    if smoke:
        reasons = "; ".join(smoke)
        blocks.append(Text("**Smoke run — these numbers mean nothing.** " + reasons[0].upper() + reasons[1:]
                           + ". It shows that every stage runs and what the report looks like; for results use real "
                           "weights (README, \"Real weights\").", "banner"))
    comps = comparisons(results)
    answers = [Text(answer_sentence(t, [c for c in comps if c.tree == t], len(comps)), "answer")
               for t in results["tables"] if t != REAL_TREE]
    note = correction_note(comps)
    if not answers:
        baselines = comparisons(results, synthetic=False)
        answers, note = [Text(baseline_answer(baselines), "answer")], correction_note(baselines, "baselines")
    beside = [Text(s, "note") for s in (realism_summary(realism, t) for t in results["tables"]) if s]
    if blind is not None:
        beside.append(Text(f"**Blind test by experts:** {blind.sentence}.", "note"))
    blocks.append(Row([answers, beside], columns=True) if beside else Row([answers]))
    blocks.append(Text(note, "note"))
    flagged = constant_predictions(results)
    if flagged:
        blocks.append(Text("**Warning — classifiers that predicted a single class in every fold:** " + "; ".join(
            f"`{mix}` ({tree_title(tree)}: {', '.join(sorted(set(predicted)))})" for (tree, mix), predicted in flagged.items())
            + ". They learned nothing from the images; their metrics only reflect the class balance.", "warn"))
    absent = absent_classes(results)
    if absent:
        blocks.append(Text("**Folds without test images of some class:** " + "; ".join(
            f"{layout.fold_name(k)} (no {', '.join(v)})" for k, v in absent.items())
            + ". Macro precision, recall and F1 of those folds average over the classes present; the absent class's own "
              "metrics leave those folds out.", "warn"))
    blocks += [Text(w, "warn") for w in leak_warnings(results)]
    blocks += [Heading("Set-up"), Text(setup_text(results))]
    holm_p = {(c.tree, c.mix): c.p_holm for c in comps}
    for tree in results["tables"]:
        blocks += [Heading(tree_title(tree)), metrics_table(results, tree, flagged), comparison_table(results, tree, holm_p),
                   per_class_table(results, tree)]
        short = {r["mix"]: r["shortfall"] for r in results["tables"][tree] if r.get("shortfall")}
        if short:
            blocks.append(Text("Not enough synthetic images (missing, summed over folds): " + "; ".join(
                f"{m}: " + ", ".join(f"{c} {n}" for c, n in v.items()) for m, v in short.items()) + ".", "warn"))
    if figures:
        blocks.append(Heading("Metrics against synthetic share"))
        blocks += attempt("The metrics plot", lambda: plot_metrics(results))
    blocks.append(Heading("Confusion matrices"))
    blocks.append(Text("Counts summed over folds; rows: true class, columns: predicted; shade: share of the row.", "note"))
    for tree in results["tables"]:
        blocks.append(Row(confusion_tables(results, tree), caption=f"**{tree_title(tree)}**"))
    blocks += [Heading("Published figures")]
    mismatch = study_mismatch(results)
    if mismatch:
        blocks.append(Text("The published study (weight 1.0: real 0.729 / 0.731 / 0.715 acc./prec./rec., synthetic only 0.614 "
                           f"acc.; {PUBLISHED_MIX_RANGE}) is not set beside these tables because this run differs: "
                           f"{'; '.join(mismatch)}."))
    else:
        blocks.append(Text(f"Shown in the weight-1.0 table where the mix matches; {PUBLISHED_MIX_RANGE}."))
    blocks += [Heading("Statistics"), Text(statistics_note(results))]
    if realism:
        blocks += [Heading("Realism"), Text(realism.get("note", "")), realism_table(realism)]
    if blind is not None:
        blocks += blind_blocks(blind)
    if figures:
        blocks.append(Heading("Real and synthetic images per class"))
        blocks += attempt("The image grid", lambda: image_grid(results))
    blocks += [Heading("Files"), Text(
        f"`{layout.RESULTS_CSV}` (one row per table row), `{layout.RESULTS_JSON}` (everything), `folds.csv` and "
        f"`{layout.RUNS_DIR}/<tree>/<mix>/fold_<k>.json` (per fold: metrics, confusion matrix, counts, predictions), "
        f"`{layout.REPORT_MD}` and `{layout.REPORT_HTML}` (the same report; the HTML adds the figures).")]
    return blocks


def report_markdown(results: dict, realism: dict | None = None, blind=None) -> str:
    return render_markdown(build_report(results, realism, blind))


def report_html(results: dict, realism: dict | None = None, blind=None) -> str:
    return render_html(build_report(results, realism, blind), TITLE)


# ---------------------------------------------------------------- CSV


def results_csv(results: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["table", "mix", "n_folds", "synthetic_fraction"]
    for m in METRICS:
        head += [f"{m}_mean", f"{m}_std"]
    for m in METRICS:
        head += [f"{m}_diff_vs_real", f"{m}_p_corrected"]
    w.writerow(head)
    for tree, rows in results["tables"].items():
        for r in rows:
            line = [tree, r["mix"], len(r["folds"]), f"{r['synthetic_fraction']:.4f}"]
            for m in METRICS:
                line += [f"{r['metrics'][m]['mean']:.6f}", f"{r['metrics'][m]['std']:.6f}"]
            for m in METRICS:
                vr = r["vs_real"].get(m)
                line += [f"{vr['diff_mean']:.6f}", f"{vr['p']:.6f}"] if vr else ["", ""]
            w.writerow(line)
    return buf.getvalue()


def _num(v) -> str:
    return "" if v is None else f"{v:.6f}"


def folds_csv(results: dict, classes: list[str]) -> str:
    """One row per run; per-class F1 is empty for a class with no test image in that fold."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["tree", "mix", "fold", "repeat", "n_train", "n_test", "synthetic_fraction", "leaky", *METRICS,
                *[f"f1_{c}" for c in classes]])
    for r in sorted(results["runs"], key=lambda r: (r["tree"], r["mix"], r["fold"])):
        m = r["metrics"]
        w.writerow([r["tree"], r["mix"], r["fold"], r["repeat"], r["n_train"], r["n_test"], f"{r['synthetic_fraction']:.4f}",
                    r["leaky"], *[_num(m[k]) for k in METRICS], *[_num(m["per_class"][c]["f1"]) for c in classes]])
    return buf.getvalue()


# ---------------------------------------------------------------- inputs and writing


def load_realism(path) -> dict | None:
    if not path:
        return None
    p = Path(path)
    if p.is_dir():
        p = p / layout.REALISM_JSON
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"--realism {path}: cannot read {p} ({err.__class__.__name__}); pass the "
                        f"{layout.REALISM_JSON} written by `classify realism`") from None


def load_blind(folder):
    """The blind-test summary of `classify blind-score`'s output folder (None without one)."""
    if not folder:
        return None
    from .blind import load_blind_summary

    return load_blind_summary(folder)


def report_inputs(realism_path, blind_folder) -> tuple[dict | None, object | None]:
    """(realism results, blind-test summary) the report adds; `cv` calls this first, so that a bad --realism or
    --blind stops before the CV runs, not after it."""
    return load_realism(realism_path), load_blind(blind_folder)


def write_reports(results: dict, out) -> list[Path]:
    """Write every report file into OUT atomically; returns their paths. Inputs are read before anything is written."""
    out = Path(out)
    realism, blind = report_inputs(results["settings"].get("realism"), results["settings"].get("blind"))
    blocks = build_report(results, realism, blind)
    texts = {
        layout.RESULTS_CSV: results_csv(results),
        "folds.csv": folds_csv(results, results["classes"]),
        layout.REPORT_MD: render_markdown(blocks),
        layout.REPORT_HTML: render_html(blocks, TITLE),
    }
    write_json_atomic(out / layout.RESULTS_JSON, {**results, "realism": realism})
    paths = [out / layout.RESULTS_JSON]
    for name, text in texts.items():
        write_text_atomic(out / name, text)
        paths.append(out / name)
    return paths
