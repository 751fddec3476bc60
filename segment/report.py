"""Reports of a segmentation CV run: report.md, report.html (self-contained), results.csv, results.json.

The report opens with its answer: per synthetic tree, whether adding synthetic pairs helps,
hurts, is equivalent to `real` within the margin, or is inconclusive (with the CV repeats that
would settle it), on AP50 (StarDist's accuracy at IoU 0.5), with the mean paired difference, its
95 % interval (Nadeau-Bengio corrected variance), the corrected p and the Holm-adjusted p over
every synthetic mix of every tree. A smoke run (a random `tiny`/`none` encoder, or pairs from the
tiny Stable Diffusion) opens with a banner. Overlays show predicted (magenta) against true
(green) outlines on the first fold's first test pairs.

The document is a list of blocks rendered twice (Markdown and HTML), so both say the same.
TODO(lead): the layout follows classify.report; switch to the shared `analysis` report tables
(classify.tables) once they are below the rooms.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from prompts import layout
from prompts.errors import UserError
from prompts.files import write_json_atomic, write_text_atomic

from .cv import REAL_TREE
from .metrics import LABELS, METRICS
from .verdicts import ALPHA, LEVEL

TITLE = "Segmentation cross-validation report"


@dataclass
class Block:
    kind: str  # h2 | p | banner | answer | warn | table | images
    text: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    images: list[tuple[str, Path]] = field(default_factory=list)  # (caption, file)


# ---------------------------------------------------------------- numbers


def fmt(mean, std=None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def fmt_p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "—"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def fmt_ci(ci) -> str:
    lo, hi = ci
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "—"
    return f"{lo:+.3f}..{hi:+.3f}"


def tree_title(tree: str) -> str:
    return "real pairs only" if tree == REAL_TREE else f"synthetic pairs `{tree}`"


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
    """Why this run's numbers mean little (empty for a real run)."""
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


def family(results: dict) -> list[dict]:
    return [r for rows in results["tables"].values() for r in rows if r.get("verdict")]


def answer(results: dict, tree: str) -> str:
    """One sentence per tree: the best mix's verdict, and any mix that hurts."""
    rows = [r for r in results["tables"][tree] if r.get("verdict")]
    head = f"**{tree_title(tree)}:** adding synthetic pairs"
    if not rows:
        return f"{head}: no answer — the run has no `real` mix to compare with, or no synthetic mix."
    n = len(family(results))
    best = max(rows, key=lambda r: (r["verdict"]["word"] == "helps", r["vs_real"]["ap50"]["diff_mean"]))
    v = best["vs_real"]["ap50"]
    holm = f", Holm-adjusted p {fmt_p(v.get('p_holm'))}" if n > 1 else ""
    effect = (f"{v['diff_mean']:+.3f} AP50, {LEVEL * 100:.0f} % CI {fmt_ci(v['ci'])}, corrected p {fmt_p(v['p'])}{holm}, "
              f"{v['j']} folds")
    words = {"helps": "helps", "hurts": "hurts", "equivalent": "is equivalent to real pairs alone",
             "inconclusive": "is inconclusive", "untested": "cannot be tested (fewer than 2 folds)"}
    text = f"{head} {words[best['verdict']['word']]} (best mix {best['mix']}: {effect})"
    if best["verdict"]["word"] == "inconclusive":
        need = best["verdict"]["repeats_needed"]
        text += (f"; about {need} CV repeats in all ({results['repeats']} run) of {results['n_splits']} folds would settle it "
                 "at this spread" if need
                 else "; more CV repeats would not settle it at this spread (the corrected variance has a floor)")
    text += "."
    hurts = [r for r in rows if r["verdict"]["word"] == "hurts" and r is not best]
    if hurts:
        text += " It hurts in: " + ", ".join(f"{r['mix']} ({r['vs_real']['ap50']['diff_mean']:+.3f})" for r in hurts) + "."
    return text


def statistics_note(results: dict) -> str:
    n = len(family(results))
    return (f"AP50 is StarDist's accuracy at IoU 0.5, tp / (tp + fp + fn), with tp, fp and fn summed over a fold's real test "
            f"pairs (objects matched one-to-one by optimal assignment). Each mix is compared with `real` on the same folds: "
            f"the mean paired difference, its {LEVEL * 100:.0f} % interval from the Nadeau-Bengio corrected variance "
            f"(overlapping training sets), and the corrected t-test's p. "
            + (f"Holm adjusts the {n} p-values of the synthetic mixes as one family (α = {ALPHA:g}). " if n > 1 else "")
            + f"Verdicts: helps / hurts = significant after Holm; equivalent = the whole interval within ±{results['settings']['margin']:g} "
            "AP50; inconclusive otherwise.")


# ---------------------------------------------------------------- tables


def mix_table(results: dict, tree: str) -> Block:
    cols = ["mix", "synthetic %", *(LABELS[m] for m in METRICS), "Δ AP50 vs real", f"{LEVEL * 100:.0f} % CI", "p", "Holm p", "verdict"]
    rows = []
    for r in results["tables"][tree]:
        v = r["vs_real"].get("ap50")
        cells = [r["mix"], f"{100 * r['synthetic_fraction']:.0f}"]
        cells += [fmt(r["metrics"][m]["mean"], r["metrics"][m]["std"]) for m in METRICS]
        if v:
            cells += [f"{v['diff_mean']:+.3f}", fmt_ci(v["ci"]), fmt_p(v["p"]), fmt_p(v.get("p_holm")),
                      r.get("verdict", {}).get("text", "—")]
        else:
            cells += ["—"] * 5
        rows.append(cells)
    return Block("table", f"Mean ± sd over {results['n_folds']} folds, {tree_title(tree)}; tested on real pairs only.", cols, rows)


def fold_table(results: dict) -> Block:
    cols = ["tree", "mix", "fold", "repeat", *(LABELS[m] for m in METRICS), "tp", "fp", "fn", "train pairs", "leaky"]
    rows = []
    for r in sorted(results["runs"], key=lambda r: (r["tree"], r["mix"], r["fold"])):
        m = r["metrics"]
        rows.append([r["tree"], r["mix"], str(r["fold"]), str(r["repeat"]), *(fmt(m[k]) for k in METRICS),
                     str(m["tp"]), str(m["fp"]), str(m["fn"]), str(r["n_train"]), "yes" if r.get("leaky") else ""])
    return Block("table", "Every run.", cols, rows)


def realism_blocks(realism: dict | None) -> list[Block]:
    if not realism:
        return []
    cols = ["tree", "synthetic pairs", "KID ×1e3", "two-sample acc.", "mask IoU", "mask AP50"]
    rows = [[r["tree"], str(r["n_synthetic"]), fmt(1e3 * r["kid"]) if r["kid"] is not None else "—",
             fmt(r["c2st_accuracy"]), fmt(r["mask_iou"]), fmt(r["mask_ap50"])] for r in realism.get("rows", [])]
    return [Block("h2", "Realism of the synthetic pairs"), Block("p", realism.get("note", "")), Block("table", "", cols, rows)]


# ---------------------------------------------------------------- the document


def build_report(results: dict, out: Path, realism: dict | None = None) -> list[Block]:
    blocks = [Block("h1", TITLE)]
    smoke = smoke_reasons(results)
    if smoke:
        blocks.append(Block("banner", "**Smoke run — these numbers mean little:** " + "; ".join(smoke) + "."))
    trees = [t for t in results["tables"] if t != REAL_TREE] or [REAL_TREE]
    for t in trees:
        blocks.append(Block("answer", answer(results, t)))
    leaky = sorted({(t, k) for t in results["tables"] for r in results["tables"][t] for k in r.get("leaky_folds", [])})
    if leaky:
        blocks.append(Block("warn", f"**Leaky:** {len(leaky)} (tree, fold) pair(s) used shared synthetic pairs whose generator "
                            "saw the fold's test pairs (no per-fold tree); their differences are optimistic."))
    short = [(r["tree"], r["mix"], r["shortfall"]) for rows in results["tables"].values() for r in rows if r.get("shortfall")]
    if short:
        blocks.append(Block("warn", "**Too few synthetic pairs:** " + "; ".join(f"{t} {m}: {n} missing over all folds"
                                                                            for t, m, n in short) + "."))
    blocks.append(Block("p", statistics_note(results)))
    s = results["settings"]
    blocks.append(Block("p", f"{results['n_pairs']} real pairs in `{results['data']}`, {results['n_splits']} folds × "
                        f"{results['repeats']} repeat(s) (mean {results['n_train_mean']:.0f} training / {results['n_test_mean']:.0f} "
                        f"test pairs){', grouped by ' + results['group_by'] if results.get('group_by') else ''}. U-Net: "
                        f"{s['backbone']} encoder ({s['weights']}), {s['image_size']} px, {s['epochs']} epochs, batch {s['batch_size']}, "
                        f"3 classes (background, interior, boundary), instances by a watershed from the interior's components."))
    for t in trees:
        blocks.append(Block("h2", f"Mixes — {tree_title(t)}"))
        blocks.append(mix_table(results, t))
    blocks.append(Block("h2", "Predicted (magenta) against true (green) outlines, first fold"))
    seen = set()
    for t in trees:
        for r in results["tables"][t]:
            if r["overlays"] and (r["tree"], r["mix"]) not in seen:
                seen.add((r["tree"], r["mix"]))
                blocks.append(Block("images", f"{r['mix']} ({tree_title(r['tree'])})",
                                    images=[(f"test pair {i + 1}", out / p) for i, p in enumerate(r["overlays"])]))
    blocks += realism_blocks(realism)
    blocks.append(Block("h2", "Every run"))
    blocks.append(fold_table(results))
    return blocks


def _inline_html(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def render_markdown(blocks: list[Block], out: Path) -> str:
    parts = []
    for b in blocks:
        if b.kind == "h1":
            parts.append(f"# {b.text}")
        elif b.kind == "h2":
            parts.append(f"## {b.text}")
        elif b.kind in ("banner", "warn"):
            parts.append(f"> {b.text}")
        elif b.kind == "table":
            lines = ([b.text, ""] if b.text else []) + ["| " + " | ".join(b.columns) + " |", "|" + "---|" * len(b.columns)]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in b.rows]
            parts.append("\n".join(lines))
        elif b.kind == "images":
            links = " ".join(f"![{cap}]({p.relative_to(out).as_posix()})" for cap, p in b.images)
            parts.append(f"**{b.text}:** {links}")
        else:
            parts.append(b.text)
    return "\n\n".join(parts) + "\n"


_CSS = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .5em}"
        "th{background:#f3f3f3}.banner{background:#fde2e2;border:2px solid #c00;padding:.75em}"
        ".answer{background:#eef6ee;padding:.75em;border-left:4px solid #393}.warn{background:#fff5d6;padding:.5em}"
        "figure{display:inline-block;margin:.25em}figcaption{font-size:.8em;text-align:center}img{image-rendering:pixelated}")


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def render_html(blocks: list[Block]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{TITLE}</title><style>{_CSS}</style></head><body>"]
    for b in blocks:
        if b.kind in ("h1", "h2"):
            parts.append(f"<{b.kind}>{_inline_html(b.text)}</{b.kind}>")
        elif b.kind in ("banner", "answer", "warn"):
            parts.append(f"<p class='{b.kind}'>{_inline_html(b.text)}</p>")
        elif b.kind == "table":
            head = "".join(f"<th>{html.escape(c)}</th>" for c in b.columns)
            body = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            cap = f"<p>{_inline_html(b.text)}</p>" if b.text else ""
            parts.append(f"{cap}<table><tr>{head}</tr>{body}</table>")
        elif b.kind == "images":
            figs = "".join(f"<figure><img src='{_data_uri(p)}' alt='{html.escape(cap)}'><figcaption>{html.escape(cap)}</figcaption>"
                           "</figure>" for cap, p in b.images if p.is_file())
            parts.append(f"<div><p>{_inline_html(b.text)}</p>{figs}</div>")
        else:
            parts.append(f"<p>{_inline_html(b.text)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


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
    realism = load_realism(results["settings"].get("realism"))
    blocks = build_report(results, out, realism)
    paths = [out / layout.REPORT_MD, out / layout.REPORT_HTML, out / layout.RESULTS_CSV, out / layout.RESULTS_JSON]
    write_text_atomic(paths[0], render_markdown(blocks, out))
    write_text_atomic(paths[1], render_html(blocks))
    write_text_atomic(paths[2], results_csv(results))
    write_json_atomic(paths[3], results)
    return paths
