"""Outputs of `study search`: OUT/search.html (one self-contained file), OUT/trials.csv, OUT/best/study.yaml.

The page (Jinja2 template study/templates/search.html.j2, autoescaped) holds Optuna's plots
(matplotlib, embedded as PNG), the per-class scores, the table of trials and, for the best
trials, their scored synthetic images beside the fold's real test images. It says what it
cannot claim: a smoke banner for stand-in weights, importances only from MIN_TRIALS_FOR_IMPORTANCE
complete trials, a warning for a class scored on fewer than FEW_TEST_IMAGES test images.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import warnings
from pathlib import Path

from analysis.encode import figure_uri, thumbnail_uri
from prompts.files import write_text_atomic

log = logging.getLogger("study.search")
THUMB_PX = 96  # thumbnails in the page
THUMBS_PER_CLASS = 4  # synthetic and real images shown per class and best trial
BEST_SHOWN = 3  # best trials shown with their images
MIN_TRIALS_FOR_IMPORTANCE = 10  # fewer complete trials: fANOVA importances and contours are noise
FEW_TEST_IMAGES = 20  # a class scored on fewer test images than this gets a warning (KID and C2ST are noisy)


# --------------------------------------------------------------------------- the best trials

def ranked_trials(ostudy) -> list:
    """COMPLETE trials, best first: by value; with two objectives the Pareto front first, each by realism."""
    from optuna.trial import TrialState

    done = [t for t in ostudy.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(ostudy.directions) == 1:
        return sorted(done, key=lambda t: (t.value, t.number))
    front = {t.number for t in ostudy.best_trials}
    return sorted(done, key=lambda t: (t.number not in front, t.values[0], t.number))


def write_best_study(study, params: dict, path: Path) -> Path:
    """The user's study with the best parameters, its outputs in path's folder (validated by reading it back).

    Raises UserError (one line, nothing written) when `path` is a file the toolkit did not write (the user's own).
    """
    from prompts.fingerprint import claim
    from prompts.guard import refuse_foreign

    from .trials import best_study, write_trial_study

    refuse_foreign(path, flag="search best study")
    best = best_study(study, params, path.parent)
    claim(path.parent, [path.name], "study search")
    write_trial_study(best, path)
    return path


# --------------------------------------------------------------------------- the table

def trial_rows(ostudy) -> list[dict]:
    """One row per trial: number, state, value(s), seconds, parameters, per-class KID and C2ST."""
    two = len(ostudy.directions) == 2
    rows = []
    for t in ostudy.get_trials(deepcopy=False):
        row = {"trial": t.number, "state": t.state.name}
        vals = t.values or []
        row["objective"] = _num(vals[0]) if vals else ""
        if two:
            row["macro_f1"] = _num(vals[1]) if len(vals) > 1 else ""
        row["seconds"] = t.user_attrs.get("seconds", "")
        row.update({k: _num(v) for k, v in t.params.items()})
        for name in ("kid", "c2st"):
            for c, v in (t.user_attrs.get(name) or {}).items():
                row[f"{name}_{c}"] = _num(v)
        rows.append(row)
    return rows


def _num(v):
    return "" if v is None else (f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else v)


def write_table(rows: list[dict], path: Path) -> Path:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, restval="")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())
    return path


# --------------------------------------------------------------------------- the page

def optuna_plots(ostudy) -> list[tuple[str, str]]:
    """(title, PNG data URI) of Optuna's matplotlib plots that apply to this study (others are skipped).

    Importances, slices' ranking and contours need MIN_TRIALS_FOR_IMPORTANCE complete trials.
    """
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)  # "categorical units" notices of slice plots
    from optuna.visualization import matplotlib as ovm

    two = len(ostudy.directions) == 2
    kw = {"target": (lambda t: t.values[0]), "target_name": "realism objective"} if two else {}
    n_complete = len(ranked_trials(ostudy))
    plots = [("Optimisation history", lambda: ovm.plot_optimization_history(ostudy, **kw))]
    if two:
        plots.append(("Pareto front (realism objective, macro F1)", lambda: ovm.plot_pareto_front(ostudy, target_names=["realism objective", "macro F1"])))
    else:
        plots.append(("Intermediate values (running objective per class; pruned trials stop early)",
                      lambda: ovm.plot_intermediate_values(ostudy)))
    if n_complete >= 2:
        plots.append(("Slice plots", lambda: _slice(ostudy, ovm, kw)))
    if n_complete >= MIN_TRIALS_FOR_IMPORTANCE:
        plots += [("Parameter importances (fANOVA)", lambda: ovm.plot_param_importances(ostudy, **kw)),
                  ("Contour of the two most important parameters", lambda: _contour(ostudy, ovm, kw))]
    out = []
    for title, make in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's "experimental" notices
                ax = make()
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            out.append((title, figure_uri(fig)))
        except Exception as err:  # a plot that does not apply (one parameter, constant values, ...)
            log.info("plot %r skipped: %s", title, err)
    return out


def _slice(ostudy, ovm, kw):
    """Slice plots at most 3 per row (Optuna draws all in one row, far wider than a page)."""
    ax = ovm.plot_slice(ostudy, **kw)
    axes = list(ax.flat) if hasattr(ax, "flat") else [ax]
    fig = axes[0].figure
    if len(axes) > 3:
        cols, rows = 3, -(-len(axes) // 3)
        grid = fig.add_gridspec(rows, cols + 1, width_ratios=[1] * cols + [0.06], wspace=0.35, hspace=0.45)
        for i, a in enumerate(axes):
            a.set_subplotspec(grid[i // cols, i % cols])
        for bar in [a for a in fig.axes if a not in axes]:  # the trial-number colour bar: its own column
            bar.set_subplotspec(grid[:, cols])
        fig.set_size_inches(12, 3.2 * rows)
    return ax


def _contour(ostudy, ovm, kw):
    import optuna

    imp = optuna.importance.get_param_importances(ostudy, **({"target": kw["target"]} if kw else {}))
    names = list(imp)[:2]
    if len(names) < 2:
        raise ValueError("fewer than two parameters vary")
    return ovm.plot_contour(ostudy, params=names, **kw)


def image_trials(trials, out: Path) -> list[dict]:
    """Per best trial and class: its synthetic images and the fold's real test images they were scored against."""
    from .trials import TRIAL_SCORES, TRIALS_DIR

    shown = []
    for t in trials[:BEST_SHOWN]:
        scores_file = out / TRIALS_DIR / str(t.number) / TRIAL_SCORES
        if not scores_file.is_file():
            continue
        classes = [{"label": row["class"], "kid": _num(row["kid"]), "kid_ref": _num(row["kid_ref"]),
                    "c2st": _num(row["c2st_accuracy"]),
                    "synthetic": [(thumbnail_uri(p, THUMB_PX), Path(p).name) for p in row["synthetic_images"][:THUMBS_PER_CLASS]],
                    "real": [(thumbnail_uri(p, THUMB_PX), Path(p).name) for p in row["real_images"][:THUMBS_PER_CLASS]]}
                   for row in json.loads(scores_file.read_text())["classes"]]
        shown.append({"number": t.number, "params": _params_text(t.params), "classes": classes})
    return shown


def _params_text(params: dict) -> str:
    return ", ".join(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}" for k, v in params.items())


def class_rows(ranked, images, kid_ref: dict) -> list[dict]:
    """One row per (complete trial, class), best trial first: test images, KID, KID_ref, C2ST, the class's objective."""
    from .trials import class_objective

    rows = []
    for t in ranked:
        kids, accs = t.user_attrs.get("kid") or {}, t.user_attrs.get("c2st") or {}
        for label, k in kids.items():
            acc = accs.get(label, float("nan"))
            rows.append({"trial": t.number, "label": label, "n_test": len(images.test.get(label, [])), "kid": _num(k),
                         "kid_ref": _num(kid_ref.get(label)), "c2st": _num(acc), "objective": _num(class_objective(k, acc))})
    return rows


def smoke_reason(study) -> str | None:
    """Why the scores are a smoke test (tiny model, stand-in or random classifier weights), or None."""
    from classify.model import is_stand_in_weights

    reasons = []
    if "tiny" in (study.lora.model, study.generate.model) or Path(str(study.lora.model)).name == "tiny-sd":
        reasons.append("the tiny random Stable Diffusion (lora.model: tiny)")
    w = str(study.classify.weights)
    if w in ("calibrated", "none") or (w != "imagenet" and Path(w).is_file() and is_stand_in_weights(w)):
        reasons.append(f"classifier weights {w if w in ('calibrated', 'none') else 'calibrated (a stand-in file)'}, "
                       "not ImageNet")
    return " and ".join(reasons) or None


def few_images_warnings(images) -> list[str]:
    """A line per class whose score rests on fewer than FEW_TEST_IMAGES test images."""
    return [f"Class {label}: its scores rest on {len(paths)} test image(s) of fold {images.fold} (fewer than "
            f"{FEW_TEST_IMAGES}); its KID and C2ST are noisy, and so is the ranking of trials by it."
            for label, paths in images.test.items() if len(paths) < FEW_TEST_IMAGES]


TRIAL_KEYS_FIRST = ("trial", "state", "objective", "macro_f1", "seconds")


def _render(template: str, **values) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("study", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template(template).render(**values)


def write_outputs(ostudy, study, search, out: Path, images, kid_ref: dict | None = None) -> dict:
    """trials.csv, best/study.yaml (when a trial is complete) and search.html; returns {'files', 'best_params'}."""
    from optuna.trial import TrialState

    from .trials import BEST_FILE, HTML_FILE, TABLE_FILE

    rows = trial_rows(ostudy)
    files = [write_table(rows, out / TABLE_FILE)]
    ranked = ranked_trials(ostudy)
    best_params = dict(ranked[0].params) if ranked else None
    if best_params is not None:
        files.append(write_best_study(study, best_params, out / BEST_FILE))
    states = [t.state for t in ostudy.get_trials(deepcopy=False)]
    n_complete = states.count(TrialState.COMPLETE)
    summary = (f"{n_complete} complete, {states.count(TrialState.PRUNED)} pruned, "
               f"{states.count(TrialState.FAIL)} failed trial(s).")
    best = "none yet"
    if ranked:
        vals = ", ".join(f"{v:.4g}" for v in ranked[0].values)
        best = f"trial {ranked[0].number} (objective {vals}): {_params_text(best_params)}"
    importance_note = None
    if ranked and n_complete < MIN_TRIALS_FOR_IMPORTANCE:
        importance_note = (f"Parameter importances and contours need at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials "
                           f"(there are {n_complete}); with fewer they rank noise, so they are not shown.")
    param_keys = sorted({k for t in ostudy.get_trials(deepcopy=False) for k in t.params})
    trial_keys = [k for k in TRIAL_KEYS_FIRST if any(k in r for r in rows)] + param_keys
    cls = study.classify
    page = _render(
        "search.html.j2", name=search.study_name, summary=summary, storage=str(search.storage or out / "search.journal"),
        fold=search.fold, backbone=cls.backbone, weights=str(cls.weights), size=cls.image_size, best=best,
        best_file=str(out / BEST_FILE) if best_params is not None else None, smoke=smoke_reason(study),
        warnings=few_images_warnings(images), plots=optuna_plots(ostudy) if ranked else [], importance_note=importance_note,
        class_rows=class_rows(ranked, images, kid_ref or {}), trial_keys=trial_keys, trial_rows=rows, table_file=TABLE_FILE,
        image_trials=image_trials(ranked, out), thumb=THUMB_PX)
    write_text_atomic(out / HTML_FILE, page)
    files.append(out / HTML_FILE)
    return {"files": files, "best_params": best_params}
