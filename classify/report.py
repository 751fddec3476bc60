"""Reports of a CV run: report.md, report.html (one self-contained file), results.csv, results.json, folds.csv."""
from __future__ import annotations

import base64
import csv
import html
import io
import re
import json
import math
from pathlib import Path

import numpy as np

from prompts.files import write_json_atomic, write_text_atomic

from .stats import LABELS, METRICS

TABLE_METRICS = ["accuracy", "precision", "recall", "f1", "balanced_accuracy"]
# The published study (DESIGN.md): EfficientNet-B7, ImageNet, 600 px, 30 epochs, 5 folds, LoRA weight 1.0.
PUBLISHED = {
    "w1.0": {"real": {"accuracy": 0.729, "precision": 0.731, "recall": 0.715}, "synthetic": {"accuracy": 0.614}},
}
PUBLISHED_MIX_RANGE = "real+10 ... real+100: accuracy 0.696 to 0.721 (weight 0.8 similar)"
STUDY_CONFIG = {"backbone": "EfficientNetB7", "weights": "imagenet", "image_size": 600, "epochs": 30, "augment": True}


def fmt(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean:.3f} ± {std:.3f}"


def fmt_p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "—"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def study_mismatch(results: dict) -> list[str]:
    """Settings in which this run differs from the published study (empty: the figures are comparable)."""
    s = results["settings"]
    diffs = [f"{k} {s.get(k)} (study: {v})" for k, v in STUDY_CONFIG.items() if s.get(k) != v]
    if results["n_splits"] != 5:
        diffs.append(f"{results['n_splits']} folds (study: 5)")
    return diffs


def table_rows(results: dict, tree: str) -> list[list[str]]:
    """The study's table shape for one LoRA-weight tree: header + one row per mix (strings, best bold)."""
    rows = results["tables"][tree]
    best = {m: max((r["metrics"][m]["mean"] for r in rows if r["folds"]), default=None) for m in TABLE_METRICS}
    published = PUBLISHED.get(tree) if not study_mismatch(results) else None
    header = ["mix"] + [LABELS[m] for m in TABLE_METRICS] + ["Δ acc. vs real", "p (corrected t)", "Δ F1 vs real", "p (F1)", "synthetic share"]
    if published:
        header.append("published acc. / prec. / rec.")
    out = [header]
    for r in rows:
        cells = [r["mix"]]
        for m in TABLE_METRICS:
            v = r["metrics"][m]
            s = fmt(v["mean"], v["std"])
            if r["folds"] and best[m] is not None and v["mean"] == best[m]:
                s = f"**{s}**"
            cells.append(s)
        for m in ("accuracy", "f1"):
            vr = r["vs_real"].get(m)
            cells += [f"{vr['diff_mean']:+.3f}" if vr else "—", fmt_p(vr["p"]) if vr else "—"]
        cells.append(f"{r['synthetic_fraction']:.0%}")
        if published:
            pub = published.get(r["mix"], {})
            cells.append(" / ".join(f"{pub[m]:.3f}" if m in pub else "—" for m in ("accuracy", "precision", "recall")))
        out.append(cells)
    return out


def per_class_rows(results: dict, tree: str) -> list[list[str]]:
    """Header + one row per mix: mean F1 of each class over folds."""
    classes = results["classes"]
    out = [["mix", *classes]]
    for r in results["tables"][tree]:
        out.append([r["mix"], *(f"{r['per_class'][c]['f1']:.3f}" if r["per_class"] else "—" for c in classes)])
    return out


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def tree_title(tree: str) -> str:
    return f"LoRA weight {tree[1:]}" if tree.startswith("w") else "real data only"


def statistics_note(results: dict) -> str:
    j = results["n_folds"]
    ratio = results["n_test_mean"] / results["n_train_mean"]
    from scipy import stats as sps

    tcrit = sps.t.ppf(0.975, df=max(1, j - 1))
    text = (
        f"Each mix is compared with `real` on the same {j} folds (paired). p is the two-sided p-value of the "
        f"Nadeau-Bengio corrected resampled t-test (variance factor 1/J + n_test/n_train = 1/{j} + {ratio:.2f}, "
        f"{j - 1} degrees of freedom; |t| must exceed {tcrit:.2f} for p < 0.05). The correction accounts for the "
        "overlap of training sets between folds, which makes the plain paired t-test far too optimistic. "
        f"A Wilcoxon signed-rank test over {j} folds cannot go below p = {results['wilcoxon_min_p']:.4g}."
    )
    if results["repeats"] == 1:
        text += (
            f" With a single {results['n_splits']}-fold run the corrected test has very little power: only a difference "
            "that is large and consistent in every fold reaches significance, so a non-significant p here is not evidence "
            "of no effect. Repeat the CV (`classify split --repeats 5` or `cv --repeats 5`) for a test that can detect "
            "differences of a few points."
        )
    return text


def leak_warnings(results: dict) -> list[str]:
    out = []
    for tree, rows in results["tables"].items():
        leaky = sorted({k for r in rows for k in r.get("leaky_folds", [])})
        if leaky:
            out.append(
                f"**Warning — the generator saw the test images ({tree_title(tree)}).** Fold(s) "
                f"{', '.join(f'fold_{k}' for k in leaky)} used the shared synthetic tree `{tree}/` because no "
                f"`fold_<k>/{tree}/` exists; its LoRA was trained on images that are in those test folds, so synthetic "
                "mixes may score too high there. Train LoRAs per fold (`python -m lora train --split ...`) to remove the leak."
            )
    return out


def realism_markdown(realism: dict) -> str:
    lines = ["| LoRA weight | class | n real | n synthetic | copies | KID (×1e3) | two-sample classifier accuracy |", "|---|---|---|---|---|---|---|"]
    for r in realism["rows"]:
        lines.append(
            f"| {r['weight']} | {r['class']} | {r['n_real']} | {r['n_synthetic']} | {r.get('n_copies', 0)} | {_kid(r)} | "
            f"{r['c2st_accuracy']:.3f} ± {r['c2st_std']:.3f} |"
        )
    return "\n".join(lines)


def report_markdown(results: dict, realism: dict | None = None) -> str:
    s = results["settings"]
    parts = [
        "# Cross-validation report",
        "",
        f"Data `{results['data']}`: {', '.join(f'{c} {n}' for c, n in results['class_counts'].items())}. "
        f"{results['n_splits']}-fold CV × {results['repeats']} repeat(s) ({results['n_folds']} folds"
        + (f", grouped by `{results['group_by']}`" if results["group_by"] else "")
        + f"). Classifier: {s['backbone']} ({s['weights']}) at {s['image_size']} px, frozen base, head trained {s['epochs']} epochs "
        f"(Adam {s['learning_rate']:g}, batch {s['batch_size']}), augmentation {'on' if s['augment'] else 'off'}"
        + (", class-weighted loss" if s["class_weights"] else "")
        + (f", minority class subsampled to {s['minority_fraction']:g} of the largest" if s["minority_fraction"] else "")
        + f", feature cache {'on' if s['feature_cache'] else 'off'}. Seed {s['seed']}.",
        "",
        "Columns: mean ± standard deviation over folds; precision, recall and F1 are macro averages; the best mean per column is bold.",
        "",
    ]
    parts += [w + "\n" for w in leak_warnings(results)]
    mismatch = study_mismatch(results)
    for tree in results["tables"]:
        parts += [f"## {tree_title(tree)}", "", markdown_table(table_rows(results, tree)), ""]
        parts += ["Per-class F1 (mean over folds):", "", markdown_table(per_class_rows(results, tree)), ""]
        short = {r["mix"]: r["shortfall"] for r in results["tables"][tree] if r.get("shortfall")}
        if short:
            parts.append("Not enough synthetic images (missing, summed over folds): "
                         + "; ".join(f"{m}: " + ", ".join(f"{c} {n}" for c, n in v.items()) for m, v in short.items()) + "\n")
    parts += ["## Published figures", ""]
    if mismatch:
        parts.append("The published study (weight 1.0: real 0.729 / 0.731 / 0.715 acc./prec./rec., synthetic only 0.614 acc.; "
                     f"{PUBLISHED_MIX_RANGE}) is not set beside these tables because this run differs: {'; '.join(mismatch)}.\n")
    else:
        parts.append(f"Shown in the weight-1.0 table where the mix matches; {PUBLISHED_MIX_RANGE}.\n")
    parts += ["## Statistics", "", statistics_note(results), ""]
    if realism:
        parts += ["## Realism", "", realism.get("note", ""), "", realism_markdown(realism), ""]
    parts += ["## Files", "", "`results.csv` (one row per table row), `results.json` (everything), `folds.csv` and "
              "`runs/<tree>/<mix>/fold_<k>.json` (per fold: metrics, confusion matrix, counts, predictions), `report.html`.", ""]
    return "\n".join(parts)


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


def folds_csv(results: dict, classes: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["tree", "mix", "fold", "repeat", "n_train", "n_test", "synthetic_fraction", "leaky", *METRICS,
                *[f"f1_{c}" for c in classes]])
    for r in sorted(results["runs"], key=lambda r: (r["tree"], r["mix"], r["fold"])):
        m = r["metrics"]
        w.writerow([r["tree"], r["mix"], r["fold"], r["repeat"], r["n_train"], r["n_test"], f"{r['synthetic_fraction']:.4f}",
                    r["leaky"], *[f"{m[k]:.6f}" for k in METRICS], *[f"{m['per_class'][c]['f1']:.6f}" for c in classes]])
    return buf.getvalue()


# ---------------------------------------------------------------- HTML


def _kid(r: dict) -> str:
    """KID x 1e3 with its std; large values (unscaled features) in scientific notation."""
    kid, std = 1e3 * r["kid"], 1e3 * r["kid_std"]
    if max(abs(kid), abs(std)) >= 1e4:
        return f"{kid:.3g} ± {std:.2g}"
    return f"{kid:.2f} ± {std:.2f}"


def _prose(text: str) -> str:
    """Markdown-ish prose to HTML: escaped, `code` and **bold** kept as markup."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plot_metrics(results: dict) -> str:
    """Each metric against the synthetic share of the training set, one line per LoRA weight, error bars = std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TABLE_METRICS), figsize=(3.2 * len(TABLE_METRICS), 3.0), sharey=True)
    for tree, rows in results["tables"].items():
        pts = sorted((r["synthetic_fraction"], r["metrics"], r["mix"]) for r in rows
                     if r["folds"] and (r["uses_synthetic"] or r["mix"] == "real") and r["mix"] != "balance")
        for ax, m in zip(axes, TABLE_METRICS):
            xs = [p[0] for p in pts]
            ax.errorbar(xs, [p[1][m]["mean"] for p in pts], yerr=[p[1][m]["std"] for p in pts], marker="o", capsize=3,
                        label=tree_title(tree))
    for ax, m in zip(axes, TABLE_METRICS):
        ax.set_title(LABELS[m])
        ax.set_xlabel("synthetic share of training set")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean over folds ± std")
    axes[-1].legend(fontsize=7)
    return _png(fig)


def plot_confusions(results: dict, tree: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["tables"][tree] if r["folds"]]
    classes = results["classes"]
    n = len(rows)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.8), squeeze=False)
    for k, (ax, r) in enumerate(zip(axes[0], rows)):
        cm = np.array(r["confusion"])
        ax.imshow(cm, cmap="Blues")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
        ax.set_title(r["mix"], fontsize=8)
        ax.set_xticks(range(len(classes)), classes, rotation=60, fontsize=6)
        ax.set_yticks(range(len(classes)), classes if k == 0 else [], fontsize=6)
        ax.set_xlabel("predicted", fontsize=7)
    axes[0][0].set_ylabel("true")
    fig.tight_layout()
    return _png(fig)


def _thumb(path, size: int = 96) -> str:
    from .pixels import image_to_array

    try:
        arr = image_to_array(path, size)
    except Exception:
        return ""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_grid(results: dict, per_side: int = 4) -> str:
    """HTML table: per class, a few real images beside a few synthetic images of each LoRA weight."""
    from prompts.dataset import read_dataset

    try:
        real = read_dataset(results["data"])
    except Exception:
        return ""
    trees = {}
    if results.get("synthetic"):
        from .synthetic import read_synthetic

        try:
            syn = read_synthetic(results["synthetic"], real.classes)
            for w in syn.weights:
                trees[w] = syn.shared.get(w) or next(t[w] for t in syn.per_fold.values() if w in t)
        except Exception:
            trees = {}
    head = "<tr><th>class</th><th>real</th>" + "".join(f"<th>synthetic {html.escape(w)}</th>" for w in trees) + "</tr>"
    body = []
    for c in real.classes:
        cells = [f"<td>{html.escape(c)}</td>"]
        for ds in [real, *trees.values()]:
            recs = [r for r in ds.records if r.label == c][:per_side]
            imgs = "".join(f'<img src="{_thumb(ds.root / r.path)}" width="96" title="{html.escape(r.path)}">' for r in recs)
            cells.append(f"<td>{imgs}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="grid">{head}{"".join(body)}</table>'


def _html_table(rows: list[list[str]]) -> str:
    def cell(s, tag):
        s = html.escape(s)
        if s.startswith("**") and s.endswith("**"):
            s = f"<b>{s[2:-2]}</b>"
        return f"<{tag}>{s}</{tag}>"

    head = "<tr>" + "".join(cell(c, "th") for c in rows[0]) + "</tr>"
    body = "".join("<tr>" + "".join(cell(c, "td") for c in r) + "</tr>" for r in rows[1:])
    return f"<table>{head}{body}</table>"


def report_html(results: dict, realism: dict | None = None) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Cross-validation report</title><style>",
             "body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}"
             "th{background:#f3f3f3}.warn{background:#fff3cd;padding:.5em 1em;border-left:4px solid #e0a800}"
             "table.grid td{vertical-align:top}img{margin:1px}",
             "</style></head><body><h1>Cross-validation report</h1>"]
    md = report_markdown(results, realism)
    intro = md.split("\n\n")[1]
    parts.append(f"<p>{_prose(intro)}</p>")
    for w in leak_warnings(results):
        parts.append(f"<p class='warn'>{_prose(w)}</p>")
    for tree in results["tables"]:
        parts.append(f"<h2>{html.escape(tree_title(tree))}</h2>")
        parts.append(_html_table(table_rows(results, tree)))
        parts.append("<p>Per-class F1 (mean over folds):</p>" + _html_table(per_class_rows(results, tree)))
    parts.append("<h2>Metrics against synthetic share</h2>")
    parts.append(f"<img src='{plot_metrics(results)}'>")
    parts.append("<h2>Confusion matrices (summed over folds; rows true, columns predicted)</h2>")
    for tree in results["tables"]:
        parts.append(f"<h3>{html.escape(tree_title(tree))}</h3><img src='{plot_confusions(results, tree)}'>")
    parts.append(f"<h2>Statistics</h2><p>{_prose(statistics_note(results))}</p>")
    if realism:
        rows = [["LoRA weight", "class", "n real", "n synthetic", "KID ×1e3", "two-sample classifier accuracy"]]
        rows += [[r["weight"], r["class"], str(r["n_real"]), str(r["n_synthetic"]), f"{_kid(r)}",
                  f"{r['c2st_accuracy']:.3f} ± {r['c2st_std']:.3f}"] for r in realism["rows"]]
        parts.append(f"<h2>Realism</h2><p>{_prose(realism.get('note', ''))}</p>{_html_table(rows)}")
    parts.append("<h2>Real and synthetic images per class</h2>")
    parts.append(image_grid(results))
    parts.append("</body></html>")
    return "\n".join(parts)


def load_realism(path) -> dict | None:
    if not path:
        return None
    from prompts.errors import UserError

    p = Path(path)
    if p.is_dir():
        p = p / "realism.json"
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"--realism {path}: cannot read {p} ({err.__class__.__name__}); pass the realism.json written by `classify realism`") from None


def write_reports(results: dict, out) -> list[Path]:
    """Write every report file into OUT atomically; returns their paths."""
    out = Path(out)
    realism = load_realism(results["settings"].get("realism"))
    files = {
        "results.json": None,
        "results.csv": results_csv(results),
        "folds.csv": folds_csv(results, results["classes"]),
        "report.md": report_markdown(results, realism),
        "report.html": report_html(results, realism),
    }
    paths = []
    for name, text in files.items():
        if name == "results.json":
            write_json_atomic(out / name, {**results, "realism": realism})
        else:
            write_text_atomic(out / name, text)
        paths.append(out / name)
    return paths
