"""Reports of a CV run: report.md, report.html (one self-contained file), results.csv, results.json, folds.csv.

A small package over the typed results (`classify.results.CVResults`):

    document   the report as blocks (answer, warnings, sections, figures) and its two renderings
    answer     the opening: a verdict per LoRA weight with its evidence; statistics and set-up prose
    cautions   smoke banner, degenerate classifiers, chance-level baselines, absent classes, leaks
    sections   metrics, comparison, verdict, per-class, confusion, realism and blind-test tables
    figures    the metrics plot and the image grid (PNG data URIs from `analysis.encode`)
    published  the published organ-on-chip figures, shown only beside the matching configuration
    files      results.csv / results.json / folds.csv, the realism, blind and dropped-outputs inputs
    text       shared names and phrases

The document model, the HTML template (Jinja2, autoescape on), the verdict table and the banner live in
`analysis` so other rooms' reports reuse them.
"""
from .answer import answer_sentence, baseline_answer, correction_note, realism_summary, statistics_note
from .cautions import absent_classes, constant_predictions, near_constant, smoke_reasons
from .document import build_report, report_html, report_markdown
from .figures import plot_metrics, plot_series
from .files import (
    DROPPED_JSON,
    as_results,
    dropped_record,
    folds_csv,
    load_blind,
    load_realism,
    read_dropped,
    report_inputs,
    results_csv,
    write_reports,
)
from .published import study_mismatch
from .sections import realism_markdown, realism_table
from .text import TITLE

__all__ = [
    "DROPPED_JSON", "TITLE", "absent_classes", "answer_sentence", "as_results", "baseline_answer", "build_report",
    "constant_predictions", "correction_note", "dropped_record", "folds_csv", "load_blind", "load_realism", "near_constant",
    "plot_metrics", "plot_series", "read_dropped", "realism_markdown", "realism_summary", "realism_table", "report_html",
    "report_inputs", "report_markdown", "results_csv", "smoke_reasons", "statistics_note", "study_mismatch", "write_reports",
]
