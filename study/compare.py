"""`python -m study compare`: the default study beside the best study of the search, on one page.

Reads what each study's workflow wrote (OUT/report/folds.csv: one row per CV run; OUT/realism/
realism.json) and the two study files, and writes OUT/comparison.html and OUT/comparison.md:

- per study, LoRA-weight tree and mix: macro F1 (mean ± sd over folds) and its verdict against
  `real` (`analysis.verdicts.decide_family`: helps / hurts / equivalent / inconclusive), on every
  fold and on the held-out folds only (every fold but the search's);
- realism by both measures (KID and the two-sample classifier accuracy), per LoRA weight;
- the settings that differ.

Why "held-out": the search chose its setting by the realism of images scored on fold F's test
images (search.fold). On fold F the best study's numbers are therefore optimistic (the winner's
curse); on the other folds the setting was never looked at, so their verdict is the honest one.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from prompts.config import Study, as_dict, load_study
from prompts.errors import UserError
from prompts.files import write_text_atomic
from prompts.layout import REALISM_JSON

METRIC = "f1"  # the verdicts' metric: macro F1, the study's headline
DELTA = 0.02  # equivalence margin in macro F1 when the classify section names none (analysis.verdicts' default)
REAL = "real"
FOLDS_CSV = "folds.csv"  # OUT/report/folds.csv (classify cv)


@dataclass
class StudyResult:
    """One study's CV runs and realism rows, with where they came from."""

    name: str
    study: Study
    out: Path
    runs: list[dict]  # folds.csv rows: tree, mix, fold, n_train, n_test, metrics (floats)
    realism: list[dict]


def read_study(name: str, study_file: Path) -> StudyResult:
    """A finished study's results; UserError naming the missing file and the command that writes it."""
    import json

    study = load_study(study_file)
    if not study.study.output:
        raise UserError(f"{study_file}: study.output is missing")
    out = Path(study.study.output).resolve()
    folds = out / "report" / FOLDS_CSV
    realism = out / "realism" / REALISM_JSON
    for path in (folds, realism):
        if not path.is_file():
            raise UserError(f"{path} is missing: run the {name} study first "
                            f"(snakemake --configfile {study_file}); the comparison reads its results")
    with folds.open(newline="") as f:
        runs = [_run_row(r) for r in csv.DictReader(f)]
    return StudyResult(name, study, out, runs, json.loads(realism.read_text()).get("rows", []))


def _run_row(r: dict) -> dict:
    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return float("nan")

    return {"tree": r["tree"], "mix": r["mix"], "fold": int(r["fold"]), "repeat": int(r.get("repeat") or 0), "n_train": num(r.get("n_train")),
            "n_test": num(r.get("n_test")), METRIC: num(r.get(METRIC))}


def held_out(runs: list[dict], search_fold: int | None) -> list[dict]:
    """The runs on folds the search never looked at: the search fold's repeat, every fold but the search fold.

    Other CV repeats re-partition the same images, so their test sets hold the search fold's test images.
    """
    if search_fold is None:
        return runs
    repeat = next((r["repeat"] for r in runs if r["fold"] == search_fold), None)
    return [r for r in runs if r["fold"] != search_fold and (repeat is None or r["repeat"] == repeat)]


def verdict_rows(res: StudyResult, search_fold: int | None) -> list[dict]:
    """Per (tree, mix): mean/sd of the metric and the verdict vs real (paired by fold); held-out folds only when
    search_fold is given (`held_out`), every fold when None."""
    import numpy as np

    from analysis.verdicts import decide_family

    runs = held_out(res.runs, search_fold)
    real = {r["fold"]: r[METRIC] for r in runs if r["mix"] == REAL}
    if not real:
        return []
    n_train = float(np.mean([r["n_train"] for r in runs]))
    n_test = float(np.mean([r["n_test"] for r in runs]))
    delta = float(getattr(res.study.classify, "delta", DELTA) or DELTA)
    groups: dict[tuple[str, str], dict[int, float]] = {}
    for r in runs:
        groups.setdefault((r["tree"], r["mix"]), {})[r["fold"]] = r[METRIC]
    rows = []
    for tree in sorted({t for t, m in groups if m != REAL}):
        family = {m: [v - real[k] for k, v in sorted(by.items()) if k in real] for (t, m), by in groups.items()
                  if t == tree and m != REAL}
        verdicts = decide_family(family, n_train, n_test, delta=delta, folds=len(real))
        for mix, v in verdicts.items():
            vals = list(groups[(tree, mix)].values())
            rows.append({"study": res.name, "tree": tree, "mix": mix, "folds": len(vals), "mean": float(np.mean(vals)),
                         "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan"), "verdict": v.word,
                         "sentence": v.sentence("macro F1")})
    real_vals = list(real.values())
    rows.insert(0, {"study": res.name, "tree": REAL, "mix": REAL, "folds": len(real_vals), "mean": float(np.mean(real_vals)),
                    "sd": float(np.std(real_vals, ddof=1)) if len(real_vals) > 1 else float("nan"), "verdict": "",
                    "sentence": "the reference"})
    return rows


def realism_rows(res: StudyResult) -> list[dict]:
    """Per LoRA weight: mean KID and mean two-sample accuracy over classes, and the classes' count."""
    by: dict[str, list[dict]] = {}
    for r in res.realism:
        by.setdefault(str(r["weight"]), []).append(r)
    out = []
    for w, rows in sorted(by.items()):
        kids = [r["kid"] for r in rows if _finite(r.get("kid"))]
        accs = [r["c2st_accuracy"] for r in rows if _finite(r.get("c2st_accuracy"))]
        out.append({"study": res.name, "weight": w, "classes": len(rows), "kid": sum(kids) / len(kids) if kids else float("nan"),
                    "c2st": sum(accs) / len(accs) if accs else float("nan")})
    return out


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def differing_settings(a: Study, b: Study) -> list[dict]:
    """(section.key, default value, best value) for the lora and generate keys that differ."""
    rows = []
    for section in ("lora", "generate"):
        da, db = _effective(a, section), _effective(b, section)
        for key in sorted(set(da) | set(db)):
            if key in ("output",):  # each study's own folder, by design
                continue
            if da.get(key) != db.get(key):
                rows.append({"key": f"{section}.{key}", "default": da.get(key), "best": db.get(key)})
    return rows


def _effective(study: Study, section: str) -> dict:
    """A section's values as the commands use them (generate.model unset = lora.model)."""
    values = as_dict(getattr(study, section))
    if section == "generate" and not values.get("model"):
        values["model"] = study.lora.model
    return values


def _fmt(v, digits: int = 3) -> str:
    """Fixed digits for scores in [0, 1]; 4 significant digits for anything else (KID has no fixed scale)."""
    if not _finite(v):
        return "–"
    return f"{v:.{digits}f}" if abs(v) <= 10 else f"{v:.4g}"


def markdown(ctx: dict) -> str:
    lines = ["# Default study vs best study of the search", ""]
    if ctx["smoke"]:
        lines += [f"**Smoke run, not a result:** {ctx['smoke']}.", ""]
    lines += [ctx["lead"], "", "## Settings that differ", "", "| setting | default | best |", "|---|---|---|"]
    lines += [f"| {r['key']} | {r['default']} | {r['best']} |" for r in ctx["settings"]]
    for title, rows in (("held-out folds (every fold but the search's)", ctx["heldout"]), ("every fold", ctx["all"])):
        lines += ["", f"## Macro F1 and verdicts vs real: {title}", "", "| study | tree | mix | folds | macro F1 | verdict |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['study']} | {r['tree']} | {r['mix']} | {r['folds']} | {_fmt(r['mean'])} ± {_fmt(r['sd'])} | {r['sentence']} |"
                  for r in rows]
    lines += ["", "## Realism (mean over classes)", "", "| study | LoRA weight | classes | KID | two-sample accuracy |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['study']} | {r['weight']} | {r['classes']} | {_fmt(r['kid'], 4)} | {_fmt(r['c2st'])} |" for r in ctx["realism"]]
    return "\n".join(lines) + "\n"


def build(default_file: Path, best_file: Path, search_dir: Path | None) -> dict:
    """Everything the page shows, from the two finished studies."""
    from .search_report import smoke_reason

    default, best = read_study("default", default_file), read_study("best", best_file)
    fold = int(best.study.search.fold)
    heldout = verdict_rows(default, fold) + verdict_rows(best, fold)
    every = verdict_rows(default, None) + verdict_rows(best, None)
    head = [r for r in heldout if r["study"] == "best" and r["mix"] != REAL]
    lead = (f"The search chose its setting on fold {fold}'s test images; on that fold the best study is optimistic, so the "
            "verdicts on the held-out folds (that fold's CV repeat, every other fold) are the answer. ")
    n_held = max((r["folds"] for r in head), default=0)
    if head and n_held < 2:
        lead += (f"Only {n_held} held-out fold: a difference without a spread, so no held-out verdict can be more than "
                 "inconclusive; run more folds (classify.folds). ")
    lead += ("Best study, held-out folds: " + "; ".join(f"{r['mix']} ({r['tree']}) {r['verdict']}" for r in head) + "."
             if head else "No held-out fold is left (a study of one fold): only the optimistic numbers exist.")
    return {"smoke": smoke_reason(default.study) or smoke_reason(best.study), "lead": lead, "fold": fold,
            "settings": differing_settings(default.study, best.study), "heldout": heldout, "all": every,
            "realism": realism_rows(default) + realism_rows(best), "default_out": str(default.out), "best_out": str(best.out),
            "search_page": str(Path(search_dir) / "search.html") if search_dir else None}


def check_targets(output, data_folders) -> list[Path]:
    """[OUTPUT.md, OUTPUT.html] if both may be written: never inside a study's data folder (also through `..` or a
    symlink), never through a symlink, never over a file the toolkit did not write; its own are replaced."""
    from prompts.guard import check_file_target, refuse_foreign

    output = Path(output)
    if not output.name or output.name in (".", ".."):
        raise UserError(f"--output {output}: give a path without suffix (OUTPUT.html and OUTPUT.md are written)")
    targets = [output.with_suffix(".md"), output.with_suffix(".html")]
    for target in targets:
        for data in data_folders:
            check_file_target(target, data=data)
        refuse_foreign(target)
    return targets


def write_comparison(default_file, best_file, search_dir, output) -> list[Path]:
    """OUTPUT.html and OUTPUT.md (output: a path without suffix); UserError (one line, nothing written) for an output
    inside either study's data folder or over a file the toolkit did not write."""
    from prompts.fingerprint import claim

    from .search_report import _render

    data = [load_study(f).data.data for f in (default_file, best_file)]
    md, page = check_targets(output, [d for d in data if d])
    ctx = build(Path(default_file), Path(best_file), Path(search_dir) if search_dir else None)
    claim(md.parent, [md.name, page.name], "study compare")
    write_text_atomic(md, markdown(ctx))
    write_text_atomic(page, _render("compare.html.j2", fmt=_fmt, **ctx))
    return [page, md]
