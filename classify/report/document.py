"""The CV report as one document: blocks of `analysis.tables`, rendered to Markdown and to HTML.

It opens with its answer: per LoRA weight, a verdict (helps, hurts, equivalent within ±δ, inconclusive)
with the best mix's mean paired difference, its 95 % interval from the Nadeau-Bengio corrected variance,
the corrected p and the Holm-adjusted p (family: every synthetic mix of every LoRA weight against `real`),
and the realism (and blind-test) summary beside it. A smoke run opens with a banner saying its numbers
mean nothing; degenerate classifiers, chance-level baselines, leaks and dropped outputs are warned about.
"""
from __future__ import annotations

from analysis.report import dropped_note
from analysis.tables import Heading, Row, Text, attempt, render_html, render_markdown
from prompts import layout

from ..results import REAL_TREE, CVResults
from .answer import answer_sentence, baseline_answer, correction_note, realism_summary, setup_text, statistics_note, verdicts_of
from .cautions import absent_blocks, degenerate_blocks, leak_blocks, smoke_block
from .figures import image_grid, plot_metrics
from .published import published_blocks
from .sections import blind_blocks, comparison_table, confusion_tables, metrics_table, per_class_table, realism_table, verdicts_table
from .text import TITLE, tree_title


def answer_blocks(res: CVResults, realism: dict | None, blind) -> list:
    """The answers (one per LoRA weight, or the best baseline's), the realism and blind-test summary beside them,
    and the note on corrections and verdicts."""
    family = verdicts_of(res)
    answers = [Text(answer_sentence(t, verdicts_of(res, t), len(family), res.repeats), "answer") for t in res.tables if t != REAL_TREE]
    note = correction_note(family)
    if not answers:
        baselines = verdicts_of(res, synthetic=False)
        answers, note = [Text(baseline_answer(baselines), "answer")], correction_note(baselines, "baselines")
    beside = [Text(s, "note") for s in (realism_summary(realism, t) for t in res.tables) if s]
    if blind is not None:
        beside.append(Text(f"**Blind test by experts:** {blind.sentence}.", "note"))
    return [Row([answers, beside], columns=True) if beside else Row([answers]), Text(note, "note")]


def tree_blocks(res: CVResults, tree: str) -> list:
    """One LoRA weight's section: metrics, comparison with `real`, verdicts, per-class F1, shortfalls."""
    blocks = [Heading(tree_title(tree)), metrics_table(res, tree), comparison_table(res, tree)]
    verdicts = verdicts_table(res, tree)
    blocks += [verdicts] if verdicts else []
    blocks.append(per_class_table(res, tree))
    short = {r.mix: r.shortfall for r in res.tables[tree] if r.shortfall}
    if short:
        blocks.append(Text("Not enough synthetic images (missing, summed over folds): " + "; ".join(
            f"{m}: " + ", ".join(f"{c} {n}" for c, n in v.items()) for m, v in short.items()) + ".", "warn"))
    return blocks


def files_text() -> str:
    return (f"`{layout.RESULTS_CSV}` (one row per table row, with each verdict and flag), `{layout.RESULTS_JSON}` "
            f"(everything), `{layout.FOLDS_CSV}` and `{layout.RUNS_DIR}/<tree>/<mix>/fold_<k>.json` (per fold: metrics, confusion "
            f"matrix, counts, predictions), `{layout.REPORT_MD}` and `{layout.REPORT_HTML}` (the same report; the HTML adds "
            "the figures).")


def build_report(results, realism: dict | None = None, blind=None, figures: bool = True,
                 dropped: tuple[list[str], str | None] = ([], None)) -> list:
    """The report as blocks: banner, answer, warnings, set-up, tables per LoRA weight, figures, statistics, realism,
    blind test. results: a results dict or `CVResults`; dropped: (entries, record file) of outputs left out."""
    res = CVResults.of(results)
    blocks: list = [Heading(TITLE, 1), *smoke_block(res), *answer_blocks(res, realism, blind)]
    note = dropped_note(*dropped) if dropped[0] else None
    blocks += [note] if note else []
    blocks += degenerate_blocks(res) + absent_blocks(res) + leak_blocks(res)
    blocks += [Heading("Set-up"), Text(setup_text(res))]
    for tree in res.tables:
        blocks += tree_blocks(res, tree)
    if figures:
        blocks.append(Heading("Metrics against synthetic share"))
        blocks += attempt("The metrics plot", lambda: plot_metrics(res))
    blocks.append(Heading("Confusion matrices"))
    blocks.append(Text("Counts summed over folds; rows: true class, columns: predicted; shade: share of the row.", "note"))
    for tree in res.tables:
        blocks.append(Row(confusion_tables(res, tree), caption=f"**{tree_title(tree)}**"))
    blocks += published_blocks(res)
    blocks += [Heading("Statistics"), Text(statistics_note(res))]
    if realism:
        blocks += [Heading("Realism"), Text(realism.get("note", "")), realism_table(realism)]
    if blind is not None:
        blocks += blind_blocks(blind, res.settings.blind)
    if figures:
        blocks.append(Heading("Real and synthetic images per class"))
        blocks += attempt("The image grid", lambda: image_grid(res))
    blocks += [Heading("Files"), Text(files_text())]
    return blocks


def report_markdown_of(blocks: list) -> str:
    return render_markdown(blocks)


def report_html_of(blocks: list) -> str:
    return render_html(blocks, TITLE)


def report_markdown(results, realism: dict | None = None, blind=None) -> str:
    return render_markdown(build_report(results, realism, blind))


def report_html(results, realism: dict | None = None, blind=None) -> str:
    return render_html(build_report(results, realism, blind), TITLE)
