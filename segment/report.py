"""Reports of a segmentation CV run: report.md, report.html (self-contained), results.csv, results.json.

The report opens with its answer: per synthetic tree, the verdict of its best mix against `real`
on AP50 (StarDist's accuracy at IoU 0.5) — helps, hurts, equivalent within ±delta, or
inconclusive with the CV repeats that would settle it (`analysis.verdicts`, one Holm family over
every synthetic mix of every tree). A smoke run (the `tiny`/`none` U-Net, or pairs from the tiny
Stable Diffusion) opens with the banner. Then the verdict table, the metrics per mix, outline
overlays of predicted (magenta) against true (green) instances on the first fold's test pairs,
the realism of the pairs and every run.

Blocks of `analysis.tables` (the layout of `classify cv`), rendered to Markdown and HTML.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from analysis.encode import data_uri
from analysis.report import (
    dropped_note,
    dropped_record,
    fmt,
    fmt_ci,
    fmt_p,
    repeats_text,
    smoke_banner,
    verdict_method,
    verdict_table,
    verdict_word,
)
from analysis.tables import Cell, Heading, Row, Table, Text, render_html, render_markdown
from analysis.verdicts import HELPS, Verdict
from prompts import layout
from prompts.errors import UserError
from prompts.files import write_json_atomic, write_text_atomic
from prompts.normalize import reading_line

from .cv import PRIMARY, REAL_TREE
from .metrics import LABELS, METRICS

TITLE = "Segmentation cross-validation report"


def tree_title(tree: str) -> str:
    return "real pairs only" if tree == REAL_TREE else f"synthetic pairs `{tree}`"


def _verdict(row: dict) -> Verdict | None:
    return Verdict(**row["verdict"]) if row.get("verdict") else None


# ---------------------------------------------------------------- what the reader must be warned about


def _tiny_models(synthetic: str | None) -> list[str]:
    """Base models named in the synthetic folder's manifests that are the tiny model (`tiny`, or a folder with its marker)."""
    if not synthetic:
        return []
    models = set()
    for manifest in Path(synthetic).rglob(layout.MANIFEST_FILE):
        try:
            lines = manifest.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                models.add(json.loads(line).get("model"))
            except (json.JSONDecodeError, AttributeError):
                continue
    return sorted(m for m in models if isinstance(m, str) and m and (m == "tiny" or any(
        (base / m / layout.TINY_MODEL_MARKER).is_file() for base in (Path.cwd(), Path(synthetic).resolve().parent))))


def smoke_reasons(results: dict) -> list[str]:
    """Why this run's numbers mean nothing (empty for a real run)."""
    w = str(results["settings"].get("weights")).lower()
    out = []
    if w == "tiny":
        out.append("the U-Net is the `tiny` smoke model (random, narrow encoder)")
    elif w == "none":
        out.append("the U-Net's encoder starts from random weights (`weights: none`), not ImageNet's")
    tiny = _tiny_models(results.get("synthetic"))
    if tiny:
        out.append(f"the synthetic pairs come from the tiny random Stable Diffusion (`{tiny[0]}`): noise, not micrographs")
    return out


# ---------------------------------------------------------------- the answer


def answer(results: dict, tree: str) -> str:
    """One sentence per tree: the verdict of its best mix (a helping one first), and the mixes that hurt."""
    rows = [r for r in results["tables"][tree] if r.get("verdict")]
    head = f"**{tree_title(tree)}:** adding synthetic pairs"
    if results.get("not_learned"):
        return f"{head}: **No verdict** — {results['not_learned']}."
    if not rows:
        return f"{head}: no answer — the run has no `real` mix to compare with, or no synthetic mix."
    best = max(rows, key=lambda r: (r["verdict"]["word"] == HELPS, r["verdict"]["mean_diff"]))
    v = _verdict(best)
    text = (f"{head}, best mix {best['mix']}: {verdict_word(v)} — {LABELS[PRIMARY]} {v.mean_diff:+.3f} "
            f"(95 % CI {fmt_ci(v.ci_low, v.ci_high)}, corrected p {fmt_p(v.p)}, Holm p {fmt_p(v.p_holm)}, {v.pairs} folds)")
    settle = repeats_text(v, "segment.repeats", results["repeats"])
    text += f"; to settle it: {settle}." if settle else "."
    hurts = [r for r in rows if r["verdict"]["word"] == "hurts" and r is not best]
    if hurts:
        text += " It hurts in: " + ", ".join(f"{r['mix']} ({r['verdict']['mean_diff']:+.3f})" for r in hurts) + "."
    return text


def statistics_note(results: dict) -> str:
    n = sum(1 for rows in results["tables"].values() for r in rows if r.get("verdict"))
    return (f"AP50 is StarDist's accuracy at IoU 0.5, tp / (tp + fp + fn), with tp, fp and fn summed over a fold's real test "
            "pairs (objects matched one-to-one by optimal assignment); pixel IoU and Dice are of the foreground, pooled the "
            "same way. Each mix is compared with `real` on the same folds by the Nadeau-Bengio corrected resampled t-test "
            f"(overlapping training sets); Holm adjusts the {n} synthetic mixes as one family. "
            + verdict_method(results["settings"]["delta"], LABELS[PRIMARY]))


# ---------------------------------------------------------------- tables and figures


def verdicts_block(results: dict) -> Table | None:
    verdicts = {f"{tree_title(r['tree'])}, {r['mix']}": _verdict(r) for rows in results["tables"].values() for r in rows
                if r.get("verdict")}
    if not verdicts:
        return None
    return verdict_table(verdicts, LABELS[PRIMARY], "segment.repeats", "Every synthetic mix against `real` (one Holm family).",
                         results["repeats"])


SHOWN = ["ap50", "ap75", "ap50_90", "f1", "mean_iou", "pq", "iou"]  # the report's columns (results.csv has every metric)


def mix_table(results: dict, tree: str) -> Table:
    cols = ["mix", "synthetic %", *(LABELS[m] for m in SHOWN), "verdict"]
    rows = []
    for r in results["tables"][tree]:
        v = _verdict(r)
        rows.append([Cell(r["mix"]), Cell(f"{100 * r['synthetic_fraction']:.0f}"),
                     *(Cell(fmt(r["metrics"][m]["mean"], r["metrics"][m]["std"]), bold=m == PRIMARY) for m in SHOWN),
                     Cell(verdict_word(v) if v else "—", bold=bool(v) and v.word in ("helps", "hurts"))])
    return Table(cols, rows, caption=f"Mean ± sd over {results['n_folds']} folds, {tree_title(tree)}; tested on real pairs only.")


def overlay_blocks(results: dict, out: Path) -> list:
    """Outline overlays per (tree, mix) and per set (the first fold's first test pairs of every set), with a legend."""
    blocks, seen = [], set()
    for rows in results["tables"].values():
        for r in rows:
            if not r.get("overlays") or (r["tree"], r["mix"]) in seen:
                continue
            seen.add((r["tree"], r["mix"]))
            by_set: dict[str, list[str]] = {}
            for p in r["overlays"]:
                if (out / p).is_file():
                    by_set.setdefault(_overlay_set(p), []).append(data_uri((out / p).read_bytes()))
            for name, images in by_set.items():
                blocks.append(Table([f"{r['mix']} ({tree_title(r['tree'])}) — set {name}"], [[Cell("", images=images)]], compact=True))
    if not blocks:
        return []
    return [Heading("Predicted against true outlines, first fold, every set"),
            Text("Legend: **green** = true outline, **magenta** = predicted outline, **white** = both agree. Each image is "
                 "shown at its own size, contrast-stretched for display (1st–99.8th percentile of its pixels after the "
                 "study's reading rule); the first fold's first test pairs of every set."),
            Row(blocks)]


def _overlay_set(path: str) -> str:
    """The set an overlay was drawn for: its folder below overlays/<tree>/<mix>/<fold>/."""
    parts = Path(path).parts
    return "/".join(parts[4:-1]) if len(parts) > 5 else "all"


def models_table(results: dict) -> Table | None:
    """The model against the classical floor on the same `real` test pairs (mean ± sd over folds)."""
    floor = results.get("floor")
    real = next((r for rows in results["tables"].values() for r in rows if r["mix"] == "real" and r["folds"]), None)
    if real is None:
        return None
    rows = [[Cell(f"{results.get('model', 'unet')} (mix real)"),
             *(Cell(fmt(real["metrics"][m]["mean"], real["metrics"][m]["std"]), bold=m == PRIMARY) for m in SHOWN)]]
    if floor:
        rows.append([Cell("otsu-watershed (classical floor, no training)"),
                     *(Cell(fmt(floor["metrics"][m]["mean"], floor["metrics"][m]["std"])) for m in SHOWN)])
    return Table(["model", *(LABELS[m] for m in SHOWN)], rows,
                 caption="Models side by side on the same real test pairs; verdicts compare mixes within one model.")


def set_table(results: dict) -> Table:
    """Per (mix, set): images, objects true / predicted (summed over folds), AP50, F1, mean matched IoU (mean ± sd over folds)."""
    cols = ["tree", "mix", "set", "images", "objects true", "objects predicted", "AP50", "object F1", "mean matched IoU"]
    rows = []
    for rows_t in results["tables"].values():
        for r in rows_t:
            for name, v in r.get("per_set", {}).items():
                rows.append([r["tree"], r["mix"], name, str(v["n_images"]), str(v["n_true"]), str(v["n_pred"]),
                             fmt(v["ap50"]["mean"], v["ap50"]["std"]), fmt(v["f1"]["mean"], v["f1"]["std"]),
                             fmt(v["mean_iou"]["mean"], v["mean_iou"]["std"])])
    floor = results.get("floor") or {}
    for name, v in floor.get("per_set", {}).items():
        rows.append(["real", "otsu-watershed (floor)", name, str(v["n_images"]), str(v["n_true"]), str(v["n_pred"]),
                     fmt(v["ap50"]["mean"], v["ap50"]["std"]), fmt(v["f1"]["mean"], v["f1"]["std"]),
                     fmt(v["mean_iou"]["mean"], v["mean_iou"]["std"])])
    return Table(cols, rows, caption="Each set is the class or sub-folder its pairs were filed under; objects summed over folds.")


def image_table(results: dict) -> Table:
    """Per test image of the `real` mix: counts, AP50, F1, mean matched IoU at the image's own size."""
    cols = ["fold", "image", "set", "mask", "size", "objects true", "objects predicted", "AP50", "object F1", "mean matched IoU"]
    rows = []
    for r in sorted(results["runs"], key=lambda r: (r["tree"], r["mix"], r["fold"])):
        if r["mix"] != "real":
            continue
        for i in r.get("per_image", []):
            rows.append([str(r["fold"]), i["name"], i["set"], i["mask_kind"], f"{i['width']}x{i['height']}", str(i["n_true"]),
                         str(i["n_pred"]), f"{i['ap50']:.3f}", f"{i['f1']:.3f}", f"{i['mean_iou']:.3f}"])
    return Table(cols, rows, caption="Mix `real`; every test image of every fold, scored at its own resolution. "
                 "Predicted masks: predictions/<mix>/fold_K/<image path>.tif (16-bit labels).")


def fold_table(results: dict) -> Table:
    cols = ["tree", "mix", "fold", "repeat", *(LABELS[m] for m in SHOWN), "tp", "fp", "fn", "train pairs", "leaky"]
    rows = []
    for r in sorted(results["runs"], key=lambda r: (r["tree"], r["mix"], r["fold"])):
        m = r["metrics"]
        rows.append([r["tree"], r["mix"], str(r["fold"]), str(r["repeat"]), *(f"{m[k]:.3f}" for k in SHOWN),
                     str(m["tp"]), str(m["fp"]), str(m["fn"]), str(r["n_train"]), "yes" if r.get("leaky") else ""])
    return Table(cols, rows)


def realism_blocks(realism: dict | None) -> list:
    if not realism:
        return []
    cols = ["tree", "synthetic pairs", "KID ×1e3", "two-sample acc.", "mask IoU", "mask AP50"]
    rows = [[r["tree"], str(r["n_synthetic"]), "—" if r["kid"] is None else f"{1e3 * r['kid']:.3g}",
             "—" if r["c2st_accuracy"] is None else f"{r['c2st_accuracy']:.2f}", f"{r['mask_iou']:.3f}", f"{r['mask_ap50']:.3f}"]
            for r in realism.get("rows", [])]
    return [Heading("Realism of the synthetic pairs"), Text(realism.get("note", ""), "note"), Table(cols, rows)]


# ---------------------------------------------------------------- the document


def model_line(results: dict) -> str:
    """The sentence that says how the model of these results was built, with its own settings only."""
    s, model = results["settings"], results.get("model", "unet")
    if model == "otsu-watershed":
        return "Classical floor: an Otsu threshold and a watershed on each test image; no training, so no settings apply."
    if model == "stardist":
        return (f"StarDist 2D ({s['weights']} weights): trained on {s['image_size']} px patches at native resolution, {s['epochs']} "
                f"epochs, batch {s['batch_size']}; each test image predicted whole at its own size.")
    return (f"U-Net: {s['backbone']} encoder ({s['weights']}), {s['image_size']} px, {s['epochs']} epochs, batch {s['batch_size']}, "
            "3 classes (background, interior, boundary), instances by a watershed from the interior's components.")


def build_report(results: dict, out: Path, realism: dict | None = None) -> list:
    blocks = []
    banner = smoke_banner(smoke_reasons(results), "Use `segment.weights: imagenet` and pairs from a real Stable Diffusion.")
    if banner:
        blocks.append(banner)
    trees = [t for t in results["tables"] if t != REAL_TREE] or [REAL_TREE]
    blocks += [Text(answer(results, t), "answer") for t in trees]
    note = dropped_note(*dropped_record(out, None, results.get("synthetic")))
    blocks += [note] if note else []
    leaky = sorted({(t, k) for t in results["tables"] for r in results["tables"][t] for k in r.get("leaky_folds", [])})
    if leaky:
        blocks.append(Text(f"**Leaky:** {len(leaky)} (tree, fold) pair(s) used shared synthetic pairs whose generator may have "
                           "seen the fold's test pairs (no per-fold tree); their differences are optimistic.", "warn"))
    short = [(r["tree"], r["mix"], r["shortfall"]) for rows in results["tables"].values() for r in rows if r.get("shortfall")]
    if short:
        blocks.append(Text("**Too few synthetic pairs:** " + "; ".join(f"{t} {m}: {n} missing over all folds"
                                                                       for t, m, n in short) + ".", "warn"))
    blocks.append(Text(f"{results['n_pairs']} real pairs in `{results['data']}`, {results['n_splits']} folds × {results['repeats']} "
                       f"repeat(s) (mean {results['n_train_mean']:.0f} training / {results['n_test_mean']:.0f} test pairs)"
                       f"{', grouped by ' + results['group_by'] if results.get('group_by') else ''}. {model_line(results)}"))
    if results.get("reading"):
        blocks.append(Text(reading_line(results["reading"]), "note"))
    if results.get("training"):
        blocks.append(Text(f"Training and scoring: {results['training']['note']}.", "note"))
    table = verdicts_block(results)
    if table is not None:
        blocks += [Heading("Verdicts"), table]
    models = models_table(results)
    if models is not None:
        blocks += [Heading("Models"), models]
    if not results.get("not_learned"):  # the verdict method is explained only where verdicts are given
        blocks.append(Text(statistics_note(results), "note"))
    for t in trees:
        blocks += [Heading(f"Mixes — {tree_title(t)}"), mix_table(results, t)]
    blocks += [Heading("Per set"), set_table(results)]
    blocks += overlay_blocks(results, out)
    blocks += [Heading("Per image"), image_table(results)]
    blocks += realism_blocks(realism)
    blocks += [Heading("Every run"), fold_table(results)]
    return blocks


def results_csv(results: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["tree", "mix", "fold", "repeat", *METRICS, "tp", "fp", "fn", "n_train", "n_train_real", "n_test",
                "synthetic_fraction", "leaky", "seconds"])
    for r in sorted(results["runs"], key=lambda r: (r["tree"], r["mix"], r["fold"])):
        m = r["metrics"]
        w.writerow([r["tree"], r["mix"], r["fold"], r["repeat"], *(f"{m[k]:.6f}" for k in METRICS), m["tp"], m["fp"], m["fn"],
                    r["n_train"], r["n_train_real"], r["n_test"], f"{r['synthetic_fraction']:.4f}", int(bool(r.get("leaky"))),
                    r.get("seconds", "")])
    return buf.getvalue()


def load_realism(path) -> dict | None:
    """realism.json of `segment realism` (a file or its folder), or None; a bad path is a UserError."""
    if not path:
        return None
    p = Path(path)
    if p.is_dir():
        p = p / layout.REALISM_JSON
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"--realism {path}: cannot read {p} ({err.__class__.__name__}); pass the realism.json of "
                        "`python -m segment realism` or its folder") from None
    if not isinstance(data, dict) or data.get("task") != "segmentation":
        raise UserError(f"--realism {path}: {p} is not a realism report of `python -m segment realism`")
    return data


def write_reports(results: dict, out) -> list[Path]:
    """report.md, report.html, results.csv, results.json into OUT (each atomically)."""
    out = Path(out)
    blocks = build_report(results, out, load_realism(results["settings"].get("realism")))
    paths = [out / layout.REPORT_MD, out / layout.REPORT_HTML, out / layout.RESULTS_CSV, out / layout.RESULTS_JSON]
    write_text_atomic(paths[0], f"# {TITLE}\n\n" + render_markdown(blocks))
    write_text_atomic(paths[1], render_html(blocks, TITLE))
    write_text_atomic(paths[2], results_csv(results))
    write_json_atomic(paths[3], results)
    return paths
