"""The report's files and inputs: results.csv, results.json, folds.csv, report.md, report.html; the realism,
blind-test and dropped-outputs records it adds.

results.csv and results.json carry every verdict and flag the report shows, so a script that reads them loses
no warning: per row the 95 % interval of Δ macro F1, the Holm p, the verdict, the CV repeats that would settle
an inconclusive one, the row's flags (single_class, near_constant) and the study's (smoke, chance_level).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from pathlib import Path

from analysis.crossval import write_results
from analysis.report import dropped_record, read_dropped  # noqa: F401  (read from here too)
from analysis.stats import METRICS
from prompts import layout
from prompts.errors import UserError
from prompts.files import write_text_atomic

from ..results import SMOKE, CVResults
from .cautions import smoke_reasons

log = logging.getLogger(__name__)
FOLDS_CSV = layout.FOLDS_CSV
DROPPED_JSON = layout.DROPPED_FILE  # the workflow's record of outputs dropped from the study: SYN/dropped.json


# ---------------------------------------------------------------- CSV


def study_flags(res: CVResults, smoke: list[str]) -> list[str]:
    return sorted(set(res.flags) | ({SMOKE} if smoke else set()))


def results_csv(results, smoke: list[str] | None = None) -> str:
    """One row per table row: metrics (mean, std), differences against `real` with corrected p, and the verdict
    columns (macro F1): 95 % CI, Holm p, verdict, delta, repeats to settle it, flags, study flags.

    smoke: the smoke-run reasons (None: found now)."""
    res = as_results(results)
    smoke = smoke_reasons(res) if smoke is None else smoke
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["table", "mix", "n_folds", "synthetic_fraction"]
    for m in METRICS:
        head += [f"{m}_mean", f"{m}_std"]
    for m in METRICS:
        head += [f"{m}_diff_vs_real", f"{m}_p_corrected"]
    head += ["f1_ci_low", "f1_ci_high", "f1_p_holm", "verdict", "delta", "repeats_needed", "flags", "study_flags"]
    w.writerow(head)
    study = ";".join(study_flags(res, smoke or []))
    for tree, rows in res.tables.items():
        for r in rows:
            line = [tree, r.mix, len(r.folds), f"{r.synthetic_fraction:.4f}"]
            for m in METRICS:
                line += [f"{r.metrics[m].mean:.6f}", f"{r.metrics[m].std:.6f}"]
            for m in METRICS:
                vr = r.vs_real.get(m)
                line += [f"{vr.diff_mean:.6f}", f"{vr.p:.6f}"] if vr else ["", ""]
            v = r.verdict
            line += ([f"{v.ci_low:.6f}", f"{v.ci_high:.6f}", f"{v.p_holm:.6f}", v.word, f"{v.delta:g}",
                      "" if v.repeats_needed is None else v.repeats_needed] if v else ["", "", "", "", "", ""])
            line += [";".join(r.flags), study]
            w.writerow(line)
    return buf.getvalue()


def _num(v) -> str:
    return "" if v is None else f"{v:.6f}"


def folds_csv(results, classes: list[str]) -> str:
    """One row per run; per-class F1 is empty for a class with no test image in that fold."""
    res = as_results(results)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["tree", "mix", "fold", "repeat", "n_train", "n_test", "synthetic_fraction", "leaky", *METRICS,
                *[f"f1_{c}" for c in classes]])
    for r in sorted(res.runs, key=lambda r: (r.tree, r.mix, r.fold)):
        m = r.metrics
        w.writerow([r.tree, r.mix, r.fold, r.repeat, r.n_train, r.n_test, f"{r.synthetic_fraction:.4f}",
                    r.leaky, *[_num(m[k]) for k in METRICS], *[_num(m["per_class"][c]["f1"]) for c in classes]])
    return buf.getvalue()


def as_results(results) -> CVResults:
    """The typed results of a results dict (or the typed results themselves)."""
    return CVResults.of(results)


# ---------------------------------------------------------------- inputs


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
    from ..blind import load_blind_summary

    return load_blind_summary(folder)


def report_inputs(realism_path, blind_folder, dropped=None) -> tuple[dict | None, object | None]:
    """(realism results, blind-test summary) the report adds; `cv` calls this first, so that a bad --realism,
    --blind or --dropped stops before the CV runs, not after it."""
    if dropped:
        read_dropped(dropped)
    return load_realism(realism_path), load_blind(blind_folder)


# ---------------------------------------------------------------- writing


def write_reports(results, out, dropped=None) -> list[Path]:
    """Write every report file into OUT atomically; returns their paths. Inputs are read before anything is written.

    dropped: a dropped-outputs record (`classify cv --dropped FILE`); without it, the workflow's record in the
    synthetic folder (SYN/dropped.json) is used when present."""
    from .document import build_report, report_html_of, report_markdown_of

    out = Path(out)
    res = as_results(results)
    raw = results if isinstance(results, dict) else None
    realism, blind = report_inputs(res.settings.realism, res.settings.blind)
    entries, source = dropped_record(out, dropped, getattr(res.settings, "synthetic", None))
    smoke = smoke_reasons(res)
    blocks = build_report(res, realism, blind, dropped=(entries, source))
    texts = {
        FOLDS_CSV: folds_csv(res, res.classes),
        layout.REPORT_MD: report_markdown_of(blocks),
        layout.REPORT_HTML: report_html_of(blocks),
    }
    record = dict(raw) if raw is not None else dataclasses.asdict(res)
    record["flags"] = {**res.flags, **({SMOKE: smoke} if smoke else {})}
    record["dropped"] = {"source": source, "entries": entries} if entries else None
    paths = write_results(out, {**record, "realism": realism}, results_csv(res, smoke))
    for name, text in texts.items():
        write_text_atomic(out / name, text)
        paths.append(out / name)
    return paths
