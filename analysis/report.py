"""Report parts every room's report shares: number formats, the smoke banner, the verdict table, the
"dropped from this study" note. Blocks of `analysis.tables`, so Markdown and HTML say the same.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from prompts import layout
from prompts.errors import UserError

from .tables import Cell, Table, Text
from .verdicts import EQUIVALENT, HELPS, HURTS, INCONCLUSIVE, Verdict

VERDICT_METHOD = ("two one-sided tests (TOST) on the Nadeau-Bengio corrected interval for \"equivalent\", the "
                  "Holm-adjusted corrected t-test for \"helps\" / \"hurts\"")


# ---------------------------------------------------------------- numbers


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt(mean: float, std: float) -> str:
    """'0.812 ± 0.034', or '—' without a mean."""
    return "—" if _missing(mean) else f"{mean:.3f} ± {std:.3f}"


def fmt_p(p) -> str:
    """'0.041', '<0.001', or '—'."""
    if _missing(p):
        return "—"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def p_is(p) -> str:
    """'= 0.41' or '< 0.001', to follow 'p ' in a sentence."""
    text = fmt_p(p)
    return text.replace("<", "< ") if text.startswith("<") else f"= {text}"


def fmt_ci(lo: float, hi: float) -> str:
    """'-0.012..+0.034', or '—' when either end is undefined."""
    if _missing(lo) or _missing(hi) or not (np.isfinite(lo) and np.isfinite(hi)):
        return "—"
    return f"{lo:+.3f}..{hi:+.3f}"


def scaled_span(values, scale: float = 1e3, limit: float = 1e4) -> tuple[str, str]:
    """(unit prefix, 'lo to hi') of values shown x `scale` (e.g. KID x 1e3), or unscaled in scientific notation
    when the scaled values reach `limit` (unstandardised features give KIDs of 1e11): never "x1e3 1.48e+14"."""
    v = [float(x) for x in values if x is not None and np.isfinite(x)]
    if not v:
        return f"×{scale:.0e}".replace("e+0", "e"), "—"
    if max(abs(x) * scale for x in v) < limit:
        lo, hi = f"{min(v) * scale:.3g}", f"{max(v) * scale:.3g}"
        prefix = f"×{scale:.0e}".replace("e+0", "e")
    else:
        lo, hi, prefix = f"{min(v):.2e}", f"{max(v):.2e}", ""
    return prefix, lo if lo == hi else f"{lo} to {hi}"


# ---------------------------------------------------------------- blocks


def smoke_banner(reasons: list[str], advice: str) -> Text | None:
    """The red banner of a run whose numbers mean nothing (None for a real run)."""
    if not reasons:
        return None
    text = "; ".join(reasons)
    return Text("**Smoke run — these numbers mean nothing.** " + text[0].upper() + text[1:] + ". " + advice, "banner")


VERDICT_WORDS = {HELPS: "helps", HURTS: "hurts", EQUIVALENT: "equivalent within ±{delta:g}", INCONCLUSIVE: "inconclusive"}


def verdict_word(v: Verdict) -> str:
    """'helps', 'hurts', 'equivalent within ±0.02' or 'inconclusive'."""
    return VERDICT_WORDS[v.word].format(delta=v.delta)


def repeats_text(v: Verdict, key: str, current: int = 1) -> str:
    """What would settle an inconclusive verdict: 'about 4 CV repeats (`classify.repeats: 4`)', or why none would.

    current: the repeats this run had; `repeats_needed` ignores the Holm adjustment, so a comparison it says
    `current` repeats would settle is one that is significant only before the adjustment."""
    if v.word != INCONCLUSIVE:
        return ""
    if v.pairs < 2:
        return "needs at least 2 folds"
    if v.repeats_needed is None:
        return "not by more repeats at this spread"
    if v.repeats_needed <= current:
        return f"p < {v.alpha:g} only before the Holm adjustment: more repeats (`{key}`) or fewer mixes"
    return f"about {v.repeats_needed} CV repeats (`{key}: {v.repeats_needed}`)"


def verdict_table(verdicts: dict[str, Verdict], metric: str, repeats_key: str, caption: str = "", current_repeats: int = 1) -> Table:
    """One row per comparison: verdict, mean difference, (1 - alpha) and TOST intervals, corrected and Holm p,
    and for an inconclusive one the CV repeats that would settle it."""
    columns = ["comparison", "verdict", f"Δ {metric}", "95 % CI", "90 % CI (TOST)", "p", "p Holm", "to settle it"]
    rows = []
    for name, v in verdicts.items():
        rows.append([Cell(name), Cell(verdict_word(v), bold=v.word in (HELPS, HURTS)), Cell(f"{v.mean_diff:+.3f}"),
                     Cell(fmt_ci(v.ci_low, v.ci_high)), Cell(fmt_ci(v.tost_low, v.tost_high)), Cell(fmt_p(v.p)),
                     Cell(fmt_p(v.p_holm)), Cell(repeats_text(v, repeats_key, current_repeats) or "—", wrap=True)])
    return Table(columns, rows, caption=caption)


def verdict_method(delta: float, metric: str) -> str:
    """How the verdicts were reached, stated once."""
    return (f"Verdicts on {metric} (δ = {delta:g}, the study key's margin of practical equivalence): {VERDICT_METHOD}; "
            "\"equivalent within ±δ\" means the 90 % corrected interval lies inside (−δ, +δ), and is checked first; "
            "\"inconclusive\" means neither, and the last column says how many CV repeats would settle it if the mean "
            "and spread stayed as observed (ignoring the Holm adjustment, so a lower bound).")


def dropped_note(entries: list[str], source: str) -> Text | None:
    """The "Dropped from this study" note: outputs of earlier settings that this report leaves out."""
    if not entries:
        return None
    shown = entries[:12]
    more = f"; and {len(entries) - len(shown)} more" if len(entries) > len(shown) else ""
    return Text(f"**Dropped from this study:** {'; '.join(shown)}{more}. They were made by earlier settings of the "
                f"study file and are not in these tables, figures or the Holm family (record: `{source}`).", "warn")


# ---------------------------------------------------------------- the dropped-outputs record (every task's report)

log = logging.getLogger(__name__)


def shown_path(path: str | Path | None) -> str:
    """A path as the reader should see it: `..` collapsed, relative to the working folder when inside it."""
    if not path:
        return "—"
    absolute = Path(os.path.normpath(os.path.abspath(path)))
    try:
        return absolute.relative_to(Path.cwd()).as_posix() or "."
    except ValueError:
        return absolute.as_posix()


def _dropped_entry(e) -> str:
    if isinstance(e, str):
        return f"`{e}`"
    if isinstance(e, dict):
        name = e.get("path") or e.get("name") or e.get("what") or json.dumps(e, sort_keys=True)
        reason = e.get("reason") or e.get("why")
        return f"`{name}`" + (f" ({reason})" if reason else "")
    raise ValueError(f"entry {e!r} is neither a path nor an object")


def read_dropped(path) -> list[str]:
    """The entries of a dropped-outputs record: a JSON list, or an object with a "dropped" list; each entry a path or
    an object with "path" (and "reason"). UserError naming the file when it cannot be read."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text())
        entries = obj.get("dropped", []) if isinstance(obj, dict) else obj
        if not isinstance(entries, list):
            raise ValueError("\"dropped\" is not a list")
        return [_dropped_entry(e) for e in entries]
    except (OSError, ValueError) as err:
        raise UserError(f"--dropped {path}: cannot read the dropped-outputs record ({err}); pass the "
                        f"{layout.DROPPED_FILE} the workflow wrote, or leave the flag out") from None


def dropped_record(out, given=None, synthetic=None) -> tuple[list[str], str | None]:
    """(entries, the file they came from): the file given (--dropped), else the record the workflow left in the
    synthetic folder (`prompts.layout.dropped_file`; an unreadable one is skipped with a warning), else nothing."""
    if given:
        return read_dropped(given), shown_path(given)
    if not synthetic:
        return [], None
    found = layout.dropped_file(synthetic)
    if not found.is_file():
        return [], None
    try:
        return read_dropped(found), shown_path(found)
    except UserError as err:
        log.warning("%s", err)
        return [], None
