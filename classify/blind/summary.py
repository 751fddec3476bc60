"""What the CV report shows about a blind test: the plain reading, the table and its notes."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from prompts.errors import UserError
from prompts.files import read_json_mapping

from .names import ALPHA, SCORES_FORMAT, SCORES_JSON


@dataclass
class BlindSummary:
    """What the CV report shows about the blind test.

    sentence: the plain reading; columns/rows: the per-rater / class / LoRA-weight table (strings);
    calls_needed: calls for 80 % power against 60 % accuracy; agreement: a sentence or "".
    """

    sentence: str
    columns: list[str]
    rows: list[list[str]]
    calls_needed: int
    agreement: str = ""
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = ["# Blind test: real or synthetic?", "", self.sentence, ""]
        if self.agreement:
            lines += [self.agreement, ""]
        lines += ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        lines += [""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(lines)


COLUMNS = ["rater", "class", "LoRA weight", "calls", "accuracy", "95 % CI", "p (vs 50 %)",
           "sensitivity", "specificity", "d'", "skipped"]


def _pct(x) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.0f} %"


def _p(p) -> str:
    if p is None or not math.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def _num(x, digits: int = 2) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _row(r: dict) -> list[str]:
    ci = "–" if r["calls"] == 0 else f"{100 * r['ci_low']:.0f}-{100 * r['ci_high']:.0f} %"
    return [r["rater"], r["class"], r["lora_weight"], str(r["calls"]), _pct(r["accuracy"]), ci, _p(r["p"]),
            _pct(r["sensitivity"]), _pct(r["specificity"]), _num(r["dprime"]), str(r["skipped"])]


def plain_reading(overall: dict, n_raters: int, needed: int) -> str:
    """"raters told real from synthetic in 54 % of calls (95 % CI 44-64 %, p = 0.24): not distinguishable at this sample size"."""
    who = "raters" if n_raters > 1 else "the rater"
    n, acc, p = overall["calls"], overall["accuracy"], overall["p"]
    if n == 0:
        return f"{who} made no calls (every image skipped): nothing to score"
    ptext = "p < 0.001" if p < 0.001 else f"p = {_p(p)}"
    head = (f"{who} told real from synthetic in {_pct(acc)} of {n} calls "
            f"(95 % CI {100 * overall['ci_low']:.0f}-{100 * overall['ci_high']:.0f} %, {ptext})")
    if p < ALPHA:
        return f"{head}: distinguishable, better than chance"
    if n < needed:
        return (f"{head}: not distinguishable at this sample size "
                f"({needed} calls would detect 60 % accuracy with 80 % power)")
    return f"{head}: not distinguishable; {n} calls detect 60 % accuracy with at least 80 % power"


def summary_from_scores(scores: dict) -> BlindSummary:
    """The BlindSummary of a scores dict (as `score` returns it or blind_scores.json holds it; null = nan)."""
    def fix(r):
        return {k: (float("nan") if v is None else v) for k, v in r.items()}

    overall = fix(scores["overall"])
    needed = int(scores["calls_needed_60"])
    agr = scores.get("agreement")
    agreement_text = ""
    if agr:
        kappa = agr["kappa"]
        agreement_text = (f"Agreement between raters: {agr['statistic']} = {_num(kappa)} "
                          f"on the {agr['images']} images every rater called.")
    notes = [
        "accuracy: correct calls / calls (skips excluded), exact Clopper-Pearson 95 % interval; "
        "p: one-sided exact binomial test against 50 %",
        "sensitivity: synthetic images called synthetic; specificity: real images called real; "
        "d': z(hit rate) - z(false-alarm rate), log-linear corrected (Hautus 1995)",
        f"{needed} calls give the exact test 80 % power against 60 % accuracy (alpha 0.05); "
        f"these {overall['calls']} calls detect {_pct(scores.get('detectable_accuracy'))} accuracy or more",
    ]
    for c in scores.get("coverage", []):
        if not c["complete"]:
            notes.insert(0, f"rater {c['rater']} answered {c['answered']} of {c['images']} images "
                            f"({100 * c['answered'] / max(c['images'], 1):.0f} %): stopped early; their rows count only these")
    key = scores.get("key")
    if key:
        notes.append(f"scored against the key {key['file']} (test id {key['test_id']}, sha256 {key['sha256'][:12]}…)")
    if len(scores.get("raters", [])) > 1:
        notes.append("the 'all raters' rows pool calls on the same images as if independent; the per-rater rows are exact")
    for c in scores.get("by_confidence", []):
        label = "no confidence given" if c["confidence"] is None else f"confidence {c['confidence']}"
        notes.append(f"{label}: {_pct(c['accuracy'])} of {c['calls']} calls correct")
    return BlindSummary(
        sentence=plain_reading(overall, len(scores.get("raters", [])), needed),
        columns=list(COLUMNS),
        rows=[_row(fix(r)) for r in scores["rows"]],
        calls_needed=needed,
        agreement=agreement_text,
        notes=notes,
    )


def load_blind_summary(folder) -> BlindSummary:
    """The BlindSummary of a `blind-score` output folder (or its blind_scores.json)."""
    path = Path(folder)
    if path.is_dir():
        path = path / SCORES_JSON
    obj = read_json_mapping(path, "blind-test scores", "run `python -m classify blind-score` into that folder first")
    if obj.get("format") != SCORES_FORMAT:
        raise UserError(f"{path} is not written by `classify blind-score` (format {obj.get('format')!r})")
    return summary_from_scores(obj)
