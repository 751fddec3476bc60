"""Outputs of `study search`: OUT/search.html (one self-contained file), OUT/trials.csv, OUT/best_study.yaml.

The page holds Optuna's plots (matplotlib, embedded as PNG), the table of trials and,
for the best trials, their scored synthetic images beside the fold's real test images.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import warnings
from pathlib import Path

from prompts.files import write_text_atomic

log = logging.getLogger("study.search")
THUMB_PX = 96  # thumbnails in the page
THUMBS_PER_CLASS = 4  # synthetic and real images shown per class and best trial
BEST_SHOWN = 3  # best trials shown with their images


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
    """The user's study with the best parameters (validated by reading it back)."""
    from .search import best_study, write_trial_study

    write_trial_study(best_study(study, params), path)
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

def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def optuna_plots(ostudy) -> list[tuple[str, str]]:
    """(title, base64 PNG) of Optuna's matplotlib plots that apply to this study (others are skipped)."""
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
        plots += [("Parameter importances (fANOVA)", lambda: ovm.plot_param_importances(ostudy, **kw)),
                  ("Slice plots", lambda: ovm.plot_slice(ostudy, **kw))]
    if n_complete >= 3:
        plots.append(("Contour of the two most important parameters", lambda: _contour(ostudy, ovm, kw)))
    out = []
    for title, make in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's "experimental" notices
                ax = make()
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            out.append((title, _png(fig)))
        except Exception as err:  # a plot that does not apply (one parameter, constant values, ...)
            log.info("plot %r skipped: %s", title, err)
    return out


def _contour(ostudy, ovm, kw):
    import optuna

    imp = optuna.importance.get_param_importances(ostudy, **({"target": kw["target"]} if kw else {}))
    names = list(imp)[:2]
    if len(names) < 2:
        raise ValueError("fewer than two parameters vary")
    return ovm.plot_contour(ostudy, params=names, **kw)


def _thumb(path) -> str:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((THUMB_PX, THUMB_PX))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _img(path, title: str) -> str:
    return f'<img src="data:image/png;base64,{_thumb(path)}" title="{html.escape(title)}" width="{THUMB_PX}">'


def images_html(trials, out: Path) -> str:
    """Per best trial and class: its synthetic images, then the fold's real test images they were scored against."""
    from .search import TRIAL_SCORES, TRIALS_DIR

    parts = []
    for t in trials[:BEST_SHOWN]:
        scores_file = out / TRIALS_DIR / str(t.number) / TRIAL_SCORES
        if not scores_file.is_file():
            continue
        scores = json.loads(scores_file.read_text())
        parts.append(f"<h3>Trial {t.number}</h3><p>{html.escape(_params_text(t.params))}</p>")
        parts.append("<table><tr><th>class</th><th>synthetic (scored)</th><th>real test images</th></tr>")
        for row in scores["classes"]:
            syn = "".join(_img(p, Path(p).name) for p in row["synthetic_images"][:THUMBS_PER_CLASS])
            real = "".join(_img(p, Path(p).name) for p in row["real_images"][:THUMBS_PER_CLASS])
            label = (f"{html.escape(row['class'])}<br><small>KID {row['kid']:.3g} / ref {row['kid_ref']:.3g}<br>"
                     f"C2ST {row['c2st_accuracy']:.2f}</small>")
            parts.append(f"<tr><td>{label}</td><td>{syn}</td><td>{real}</td></tr>")
        parts.append("</table>")
    return "\n".join(parts)


def _params_text(params: dict) -> str:
    return ", ".join(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}" for k, v in params.items())


def table_html(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(k, '')))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table class='trials'><tr>{head}</tr>{body}</table>"


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>LoRA parameter search: {name}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 6px;font-size:13px;vertical-align:top}} img{{margin:1px;image-rendering:pixelated}}
figure{{display:inline-block;margin:0 1em 1em 0}}</style></head><body>
<h1>LoRA parameter search: {name}</h1>
<p>{summary}</p>
<p><b>Objective</b> (lower is better, 0 = indistinguishable), per class, averaged over classes:
log(1 + max(KID, 0)) + 2 |C2ST &minus; 0.5|. KID and the two-sample classifier accuracy (C2ST) compare
the trial's synthetic images with fold {fold}'s <i>test</i> images, which no LoRA saw, on the classifier's frozen
features ({backbone}, {weights}, {size} px), centred on the test images and divided by their root-mean-square deviation;
for scale, KID<sub>ref</sub> is the KID between the class's test images and the other classes' test images.</p>
<h2>Best parameters</h2><p>{best}</p><p>Written to <code>{best_file}</code>.</p>
<h2>Plots</h2>{plots}
<h2>Trials</h2>{table}
<h2>Images of the best trials beside real test images</h2>{images}
</body></html>"""


def write_outputs(ostudy, study, search, out: Path, images) -> dict:
    """trials.csv, best_study.yaml (when a trial is complete) and search.html; returns {'files', 'best_params'}."""
    from optuna.trial import TrialState

    from .search import BEST_FILE, HTML_FILE, TABLE_FILE

    rows = trial_rows(ostudy)
    files = [write_table(rows, out / TABLE_FILE)]
    ranked = ranked_trials(ostudy)
    best_params = dict(ranked[0].params) if ranked else None
    if best_params is not None:
        files.append(write_best_study(study, best_params, out / BEST_FILE))
    states = [t.state for t in ostudy.get_trials(deepcopy=False)]
    summary = (f"{states.count(TrialState.COMPLETE)} complete, {states.count(TrialState.PRUNED)} pruned, "
               f"{states.count(TrialState.FAIL)} failed trial(s); study <code>{html.escape(search.study_name)}</code> in "
               f"<code>{html.escape(str(search.storage or out / 'search.journal'))}</code>.")
    best = "none yet"
    if ranked:
        vals = ", ".join(f"{v:.4g}" for v in ranked[0].values)
        best = f"trial {ranked[0].number} (objective {vals}): {html.escape(_params_text(best_params))}"
    plots = "".join(f"<figure><img src='data:image/png;base64,{b64}'><figcaption>{html.escape(t)}</figcaption></figure>"
                    for t, b64 in optuna_plots(ostudy)) if ranked else "<p>No complete trial yet.</p>"
    cls = study.classify
    page = PAGE.format(name=html.escape(search.study_name), summary=summary, fold=search.fold, backbone=html.escape(cls.backbone),
                       weights=html.escape(str(cls.weights)), size=cls.image_size, best=best, best_file=BEST_FILE, plots=plots,
                       table=table_html(rows), images=images_html(ranked, out))
    write_text_atomic(out / HTML_FILE, page)
    files.append(out / HTML_FILE)
    return {"files": files, "best_params": best_params}
