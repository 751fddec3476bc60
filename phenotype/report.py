"""Reports of a phenotyping run: report.md, report.html (self-contained), results.csv, results.json, overlays/.

The report opens with the answer: per classifier, how close the baseline regime (zero-shot from
monocultures by default) counts each type's proportion, and what every other regime changes, with its
verdict (helps / hurts / equivalent within ±delta / inconclusive; one Holm family). Then the verdict table,
the metrics of every classifier and regime side by side (the reference method's row beside the cnn's),
count-vs-truth scatters per type, overlays of the first fold's test images with each cell outlined in its
predicted type's colour (a red cross on every cell whose type is wrong), the per-image count table, and
every run. Blocks of `analysis.tables`, so Markdown and HTML say the same.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from analysis.crossval import write_results
from analysis.encode import data_uri, figure_uri
from analysis.report import fmt, fmt_p, smoke_banner, verdict_method, verdict_table, verdict_word
from analysis.tables import Cell, Figure, Heading, Row, Table, Text, attempt, render_html, render_markdown
from analysis.verdicts import Verdict
from prompts.files import atomic_path, write_text_atomic
from prompts.layout import REPORT_HTML, REPORT_MD
from prompts.normalize import Reading, reading_line

from .cv import OVERLAYS_DIR
from .metrics import LABELS, LOWER_IS_BETTER, METRICS

TITLE = "Phenotyping and counting report"
MODEL_TITLES = {"reference": "reference (regionprops + random forest)", "cnn": "cnn (frozen EfficientNet + head)"}
MISTAKE_RGB = (255, 0, 0)


def _verdict(c: dict) -> Verdict:
    return Verdict(**c["verdict"])


def _mean(results: dict, model: str, regime: str, metric: str) -> tuple[float, float]:
    s = results["summary"][model][regime][metric]
    return s["mean"], s["std"]


def _interval(results: dict, model: str, regime: str, metric: str) -> tuple[float, float]:
    """95 % t interval of the mean over folds (plain: one regime alone, not a paired difference)."""
    from scipy import stats as sps

    v = [r["metrics"][metric] for r in results["runs"] if r["model"] == model and r["regime"] == regime]
    v = np.asarray([x for x in v if x is not None and np.isfinite(x)], dtype=float)
    if v.size < 2:
        return float("nan"), float("nan")
    half = sps.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    floor = 0.0 if metric in LOWER_IS_BETTER else -np.inf  # an error is never below 0
    return float(max(v.mean() - half, floor)), float(v.mean() + half)


def smoke_reasons(results: dict) -> list[str]:
    return _segmenter_smoke(results) + _cnn_smoke(results)


def _segmenter_smoke(results: dict) -> list[str]:
    """The segmenter (unet) started from a random encoder: its cells, and so every count, are a smoke test."""
    seg = results.get("segmenter") or {}
    w = str(seg.get("weights", "")).lower()
    if seg.get("model") == "unet" and w in ("tiny", "none"):
        return [f"the segmenter's U-Net encoder has random weights (`segment.weights: {w}`), trained {seg.get('epochs')} epoch(s)"]
    return []


def segmenter_line(seg: dict) -> str:
    """How the test cells were found with predicted segmentation (from each fold's `segmenter.json`)."""
    pairs = ", ".join(f"fold {k}: {v['train_pairs']}" for k, v in sorted(seg["folds"].items(), key=lambda kv: int(kv[0])))
    return (f"Test cells found by {seg['model']} (`segment predict`), trained per fold on that fold's training image–mask "
            f"pairs only ({pairs} pairs; {seg.get('epochs')} epochs, weights {seg.get('weights')}); no segmenter saw a "
            "test image of its fold (checked by sha256).")


def _cnn_smoke(results: dict) -> list[str]:
    if "cnn" not in results["models"]:
        return []
    w = str(results["settings"].get("weights")).lower()
    if w == "calibrated":
        return ["the cnn's base has random weights with calibrated BatchNorm (`weights: calibrated`), not ImageNet's"]
    if w == "none":
        return ["the cnn's base has random weights (`weights: none`)"]
    return []


# ---------------------------------------------------------------- the answer


def answer(results: dict, model: str) -> str:
    """One sentence per classifier: the baseline's primary metric, then every other regime's change and verdict."""
    primary, base = results["primary"], results["baseline"]
    unit = " pp" if primary == "proportion_error" else ""
    mean, _ = _mean(results, model, base, primary)
    lo, hi = _interval(results, model, base, primary)
    ci = f"95 % CI {lo:.2f} to {hi:.2f} over {results['n_splits'] * results['repeats']} folds"
    if primary == "proportion_error":
        text = f"{base} counts the cell types' proportions within {mean:.2f} pp of the truth on average ({ci})"
    else:
        text = f"{base} reaches a mean {LABELS[primary]} of {mean:.2f} ({ci})"
    text = f"**{MODEL_TITLES.get(model, model)}:** {text}"
    parts = []
    for c in results["comparisons"]:
        if c["model"] != model:
            continue
        v = _verdict(c)
        m, _ = _mean(results, model, c["regime"], primary)
        parts.append(f"{c['regime']}: {m:.2f}{unit} ({verdict_word(v)}, Holm p {fmt_p(v.p_holm)})")
    synthetic = any("+" in r for r in results["regimes"])
    n_syn = [r.get("n_synthetic_cells", 0) for r in results["runs"] if r["model"] == model and "+" in r["regime"]]
    checked = "traced to training images only" if results.get("crops") else "not traced (no phenotype.crops)"
    tail = (f" +synthetic regimes add {np.mean(n_syn):.0f} generated crops per fold on average, from one LoRA per type "
            f"trained on the fold's training crops ({checked})." if synthetic and n_syn else "") if synthetic else " Synthetic cells (a LoRA per type) are not among this study's regimes (add `synthetic` to phenotype.regimes)."
    return text + ("; " + "; ".join(parts) if parts else "") + "." + tail


def holm_families(results: dict) -> str:
    """How the comparisons are grouped for Holm: one family, or the regimes without and with generated crops."""
    n_syn = sum("+" in c["regime"] for c in results["comparisons"])
    n = len(results["comparisons"])
    if not n_syn or n_syn == n:
        return f"with Holm over all {n} comparisons"
    return (f"with Holm within two families (the protocol's rule): the {n - n_syn} regimes without generated crops and "
            f"the {n_syn} +synthetic regimes")


def statistics_note(results: dict) -> str:
    primary = results["primary"]
    sign = "the baseline's value minus the regime's" if primary in LOWER_IS_BETTER else "the regime's value minus the baseline's"
    return (f"Verdicts compare each regime with `{results['baseline']}` on {LABELS[primary]} in the same folds over the co-culture "
            f"images; Δ is the improvement ({sign}: positive is better). The Nadeau-Bengio corrected resampled t-test "
            f"(training sets overlap) {holm_families(results)}. "
            + verdict_method(results["settings"]["delta"], LABELS[primary]))


# ---------------------------------------------------------------- tables


def metrics_table(results: dict) -> Table:
    keys = METRICS + (["detection_f1"] if results["segmentation"] != "given" and _has_detection(results) else [])
    cols = ["classifier", "regime", *(LABELS[k] for k in keys), "training cells (mean)"]
    rows = []
    for regime in results["regimes"]:
        for model in results["models"]:
            runs = [r for r in results["runs"] if r["model"] == model and r["regime"] == regime]
            cells = [Cell(fmt(*_mean(results, model, regime, k)), bold=k == results["primary"]) for k in keys]
            rows.append([Cell(model), Cell(regime), *cells, Cell(f"{np.mean([r['n_train_cells'] for r in runs]):.0f}")])
    return Table(cols, rows, caption=f"Mean ± sd over folds; each regime's classifiers side by side. Tested on co-culture images only "
                                     f"({results['truth']} truth, {results['segmentation']} segmentation).")


def _has_detection(results: dict) -> bool:
    return any("detection_f1" in r["metrics"] for r in results["runs"])


def detection_table(results: dict) -> Table | None:
    """With predicted segmentation: where the count error comes from, per classifier and regime, summed over folds."""
    if results["segmentation"] == "given" or not _has_detection(results):
        return None
    rows = []
    for regime in results["regimes"]:
        for model in results["models"]:
            runs = [r["metrics"] for r in results["runs"] if r["model"] == model and r["regime"] == regime and "tp" in r["metrics"]]
            tp, fp, fn = (sum(int(m[k]) for m in runs) for k in ("tp", "fp", "fn"))
            wrong = sum(int(m.get("wrong_type", 0)) for m in runs)
            rows.append([model, regime, fmt(*_mean(results, model, regime, "detection_f1")), str(tp + fn), str(fn),
                         f"{100 * fn / max(tp + fn, 1):.1f}", str(fp), str(tp), str(wrong), f"{100 * wrong / max(tp, 1):.1f}"])
    return Table(["classifier", "regime", "detection F1", "true cells", "missed", "missed %", "false cells", "matched",
                  "wrong type", "wrong type % of matched"], rows,
                 caption=f"{results['segmentation']} segmentation against the true masks at IoU 0.5, summed over folds: a count "
                         "error is a missed cell (the segmenter), a false cell, or a matched cell given the wrong type (the classifier).")


def count_table(results: dict) -> Table:
    """Per test image and type: true count and each (classifier, regime)'s predicted count (first repeat)."""
    types, combos = results["types"], [(m, r) for m in results["models"] for r in results["regimes"]]
    pred = {(row["model"], row["regime"], row["image"]): row["pred"] for row in results["images"] if row["repeat"] == 0}
    truth = {row["image"]: (row["fold"], row["true"]) for row in results["images"] if row["repeat"] == 0}
    rows = []
    for image in sorted(truth):
        fold, true = truth[image]
        for t, name in enumerate(types):
            rows.append([image, str(fold), name, str(true[t]), *(str(pred[(m, r, image)][t]) for m, r in combos)])
    return Table(["image", "fold", "type", "true", *(f"{m} {r}" for m, r in combos)], rows,
                 caption="Cells of each type per co-culture image, true and predicted (each image predicted by the fold that tests it).")


def verdicts_block(results: dict) -> Table | None:
    if not results["comparisons"]:
        return None
    verdicts = {f"{c['model']}: {c['regime']} vs {results['baseline']}": _verdict(c) for c in results["comparisons"]}
    return verdict_table(verdicts, f"{LABELS[results['primary']]} improvement", "phenotype.repeats",
                         "Every regime against the baseline, per classifier (Holm: one family, the +synthetic regimes a second).", results["repeats"])


def runs_table(results: dict) -> Table:
    cols = ["classifier", "regime", "fold", *(LABELS[k] for k in METRICS), "training cells", "annotated images", "test cells", "s"]
    rows = [[r["model"], r["regime"], str(r["fold"]), *(f"{r['metrics'][k]:.3f}" for k in METRICS), str(r["n_train_cells"]),
             str(len(r["train_images"])), str(r["n_test_cells"]), f"{r['seconds']:.2f}"]
            for r in sorted(results["runs"], key=lambda r: (r["fold"], r["model"], r["regime"]))]
    return Table(cols, rows)


# ---------------------------------------------------------------- figures


def scatter_figure(results: dict, model: str) -> Figure:
    """Predicted against true count per image, one panel per type, one colour per regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = results["types"]
    fig, axes = plt.subplots(1, len(types), figsize=(3.2 * len(types), 3.2), squeeze=False)
    for t, (ax, name) in enumerate(zip(axes[0], types)):
        top = 1
        for regime in results["regimes"]:
            rows = [r for r in results["images"] if r["model"] == model and r["regime"] == regime]
            x, y = [r["true"][t] for r in rows], [r["pred"][t] for r in rows]
            top = max([top, *x, *y])
            ax.scatter(x, y, s=14, alpha=0.7, label=regime)
        ax.plot([0, top], [0, top], color="grey", lw=1, ls="--")
        ax.set(title=name, xlabel="true count", ylabel="predicted count")
    axes[0][-1].legend(fontsize=7)
    return Figure(f"Predicted against true counts per type — {model}", figure_uri(fig), alt="count scatter")


def type_colours(types: list[str]) -> dict[str, tuple[int, int, int]]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {t: tuple(int(255 * v) for v in cmap(i % 10)[:3]) for i, t in enumerate(types)}


def overlay_array(image: np.ndarray, labels: np.ndarray, cells, preds: list[str], colours: dict) -> np.ndarray:
    """(H, W, 3) uint8: each cell outlined in its predicted type's colour; a red cross on every wrongly typed cell."""
    from skimage.segmentation import find_boundaries

    out = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image.copy()
    by_label = {c.label: p for c, p in zip(cells, preds)}
    edges = find_boundaries(labels, mode="inner") & (labels > 0)
    for label, pred in by_label.items():
        out[edges & (labels == label)] = colours.get(pred, (255, 255, 255))
    h, w = labels.shape
    for c, p in zip(cells, preds):
        if c.true_type is not None and c.true_type != p:
            y, x = int(round(c.y)), int(round(c.x))
            for d in range(-3, 4):
                for yy, xx in ((y + d, x + d), (y + d, x - d)):
                    if 0 <= yy < h and 0 <= xx < w:
                        out[yy, xx] = MISTAKE_RGB
    return out


def write_overlays(results: dict, out: Path, n: int) -> list[dict]:
    """PNG overlays of the first fold's first n test images, per classifier and regime; [{model, regime, path}]."""
    from PIL import Image

    from .cells import image_array

    cells, keep = results.get("_cells"), results.get("_overlay_predictions") or {}
    if cells is None or not keep or n == 0:
        return []
    colours = type_colours(results["types"])
    reading = Reading.from_record(results["reading"])  # the rule the run read its images with
    first = results["folds"][0]["test"][:n]
    data = Path(results["data"])
    written = []
    for (model, regime), preds in keep.items():
        for name in first:
            arr = overlay_array(image_array(data / name, reading), cells.test[name].labels, cells.test[name].cells, preds[name], colours)
            path = out / OVERLAYS_DIR / f"{model}_{regime}_{Path(name).stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                Image.fromarray(arr).save(tmp, format="PNG")
            written.append({"model": model, "regime": regime, "image": name, "path": path.relative_to(out).as_posix()})
    return written


def overlay_blocks(results: dict, out: Path) -> list:
    if not results.get("overlays"):
        return []
    colours = type_colours(results["types"])
    legend = ", ".join(f"{t}: rgb{colours[t]}" for t in results["types"])
    items = []
    for model in results["models"]:
        for regime in results["regimes"]:
            images = [data_uri((out / o["path"]).read_bytes()) for o in results["overlays"] if o["model"] == model and o["regime"] == regime]
            if images:
                items.append(Table([f"{model}, {regime}"], [[Cell("", images=images)]], compact=True))
    return [Heading("Cells outlined by predicted type, first fold"),
            Text(f"Outline colour = predicted type ({legend}); a red cross marks a cell whose predicted type is wrong."), Row(items)]


# ---------------------------------------------------------------- the document


def build_report(results: dict, out: Path) -> list:
    blocks = []
    hints = (["Use `segment.weights: imagenet` and more `segment.epochs` for the segmenter."] if _segmenter_smoke(results) else []) + \
        (["Use `phenotype.weights: imagenet` for the cnn."] if _cnn_smoke(results) else [])
    banner = smoke_banner(smoke_reasons(results), " ".join(hints))
    if banner:
        blocks.append(banner)
    blocks += [Text(answer(results, m), "answer") for m in results["models"]]
    if results.get("segmenter"):
        blocks.append(Text(segmenter_line(results["segmenter"]), "note"))
    blocks.append(Text(f"{results['n_mono_images']} monoculture images ({results['n_mono_cells']} cells) and {results['n_co_images']} "
                       f"co-culture images ({results['n_co_cells']} cells) in `{results['data']}`; types: {', '.join(results['types'])}. "
                       f"{results['n_splits']} folds × {results['repeats']} repeat(s) over the co-culture images"
                       f"{', grouped' if results['grouped'] else ''}; crops of {results['settings']['crop_size']} px."))
    if results.get("reading"):
        blocks.append(Text(reading_line(results["reading"]), "note"))
    for note in results.get("notes", []):
        blocks.append(Text(f"**Note:** {note}.", "warn"))
    table = verdicts_block(results)
    if table is not None:
        blocks += [Heading("Verdicts"), table]
    blocks.append(Text(statistics_note(results), "note"))
    blocks += [Heading("Classifiers and regimes"), metrics_table(results)]
    det = detection_table(results)
    if det is not None:
        blocks += [Heading("Missed cells or wrong types"), det]
    for model in results["models"]:
        blocks += attempt(f"count scatter ({model})", lambda m=model: scatter_figure(results, m))
    blocks += overlay_blocks(results, out)
    blocks += [Heading("Counts per image"), count_table(results), Heading("Every run"), runs_table(results)]
    return blocks


def results_csv(results: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "regime", "fold", "repeat", *METRICS, "detection_f1", "n_train_cells", "n_annotated_images", "n_test_cells", "seconds"])
    for r in sorted(results["runs"], key=lambda r: (r["model"], r["regime"], r["fold"])):
        m = r["metrics"]
        w.writerow([r["model"], r["regime"], r["fold"], r["repeat"], *(f"{m[k]:.6f}" for k in METRICS),
                    f"{m['detection_f1']:.6f}" if "detection_f1" in m else "", r["n_train_cells"], len(r["train_images"]),
                    r["n_test_cells"], r["seconds"]])
    return buf.getvalue()


def write_reports(results: dict, out) -> list[Path]:
    """overlays/, report.md, report.html, results.csv, results.json into OUT (each atomically)."""
    out = Path(out)
    results["overlays"] = write_overlays(results, out, int(results["settings"]["overlays"]))
    public = {k: v for k, v in results.items() if not k.startswith("_")}
    blocks = build_report(public, out)
    paths = [out / REPORT_MD, out / REPORT_HTML]
    write_text_atomic(paths[0], f"# {TITLE}\n\n" + render_markdown(blocks))
    write_text_atomic(paths[1], render_html(blocks, TITLE))
    return paths + write_results(out, public, results_csv(public))  # results.json and .csv: the protocol's writer
