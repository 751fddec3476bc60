"""The CV report: its answer sentence, one table model in Markdown and HTML, visible figure errors, smoke banners,
absent classes, constant classifiers, the blind-test hook.

The results fed to the report come from the real `classify.cv.summarize` over hand-made runs: real data, a
real split and real synthetic trees, with predictions chosen per fold (so the numbers are known), and
`analysis.stats.fold_metrics` computing each fold's metrics. No Keras training: these tests are fast.
"""
from __future__ import annotations

import html as htmllib
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from prompts.normalize import DEFAULT

pytest.importorskip("sklearn")

CLASSES_N = {"acceptable": 10, "bad": 10, "good": 10}
MIXES = "real,real+25,real+50,synthetic,balance,oversample"
# errors per fold (5 folds, 6 test images each) per (tree, mix); "real"-tree mixes are shared by both weights
ERRORS = {
    ("real", "real"): [3, 2, 3, 2, 3],
    ("real", "oversample"): [3, 3, 2, 2, 3],
    ("w1.0", "real+25"): [2, 2, 3, 2, 2],
    ("w1.0", "real+50"): [0, 0, 1, 0, 0],  # clearly better in every fold
    ("w1.0", "synthetic"): [4, 3, 5, 4, 4],
    ("w1.0", "balance"): [3, 3, 2, 2, 3],
    ("w0.8", "real+25"): [3, 2, 2, 3, 3],
    ("w0.8", "real+50"): [2, 3, 3, 2, 3],
    ("w0.8", "synthetic"): [3, 2, 4, 2, 3],
    ("w0.8", "balance"): [3, 2, 3, 3, 2],
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Real data (3 classes x 10 at 32 px), its 5-fold split, and a synthetic folder with trees w1.0 and w0.8."""
    from classify.folds import make_split
    from classify.synthetic import read_synthetic
    from prompts.dataset import read_dataset
    from prompts.demo import write_demo_dataset

    base = tmp_path_factory.mktemp("report")
    data = write_demo_dataset(base / "data", per_class=CLASSES_N, cell_lines=["A549"], size=32, seed=0)
    for w, seed in (("w1.0", 1), ("w0.8", 2)):
        write_demo_dataset(base / "SYN" / w, per_class={c: 3 for c in CLASSES_N}, cell_lines=["A549"], size=32, seed=seed)
    dataset = read_dataset(data)
    split = make_split(dataset, 5, 1, None, seed=0)
    syn = read_synthetic(base / "SYN", dataset.classes)
    return dataset, split, syn, base


def make_results(inputs, errors=ERRORS, mixes=MIXES, drop_test=None, settings=None, constant=None, synthetic=True, near=None):
    """summarize() over runs whose fold k predicts errors[(tree, mix)][k] test images wrong.

    drop_test: (fold, class) whose test images the runs leave out (a class absent from that fold's truth);
    constant: (tree, mix) whose classifier predicts class 0 for every image;
    near: (tree, mix) whose classifier predicts class 0 for every image but one (in fold 0): 29 of 30."""
    from analysis.stats import fold_metrics
    from classify.cv import summarize
    from classify.mixes import parse_mixes
    from prompts.schema.classify import ClassifySection

    dataset, split, syn, _ = inputs
    syn = syn if synthetic else None
    classes = dataset.classes
    label = {r.path: classes.index(r.label) for r in dataset.records}
    cls = ClassifySection()
    for k, v in {"backbone": "EfficientNetB0", "image_size": 32, "epochs": 2, "weights": "imagenet", **(settings or {})}.items():
        setattr(cls, k, v)
    runs = []
    for (tree, mix), errs in errors.items():
        if mix not in mixes.split(","):
            continue
        for fold in split.folds:
            test = [p for p in fold.test if drop_test is None or (fold.index, classes[label[p]]) != drop_test]
            y_true = np.array([label[p] for p in test])
            y_pred = y_true.copy()
            y_pred[: errs[fold.index]] = (y_true[: errs[fold.index]] + 1) % len(classes)
            if (tree, mix) == constant:
                y_pred[:] = 0
            if (tree, mix) == near:
                y_pred[:] = 0
                y_pred[0] = 1 if fold.index == 0 else 0
            share = 0.0 if tree == "real" else {"real+25": 0.2, "real+50": 1 / 3, "synthetic": 1.0, "balance": 0.1}[mix]
            runs.append({"fold": fold.index, "repeat": fold.repeat, "mix": mix, "tree": tree, "leaky": False,
                         "metrics": fold_metrics(y_true, y_pred, classes), "n_train": len(fold.train), "n_test": len(test),
                         "synthetic_fraction": share, "shortfall": {}, "counts": {}})
    return summarize(runs, dataset, split, parse_mixes(mixes), syn, cls, DEFAULT)


def md_of(res) -> str:
    """report.md without the figures (they take seconds and these tests read text)."""
    from classify.report import build_report
    from classify.tables import render_markdown

    return render_markdown(build_report(res, figures=False))


def fold_f1(res, tree, mix):
    return np.array([r["metrics"]["f1"] for r in sorted(res["runs"], key=lambda r: r["fold"]) if (r["tree"], r["mix"]) == (tree, mix)])


def p_is(p):
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def holm_by_hand(p):
    order = np.argsort(p)
    adj, running = np.empty(len(p)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adj[i] = running
    return adj


# ---------------------------------------------------------------- the answer


def test_answer_sentence_on_hand_computed_numbers(inputs):
    from classify.report import report_markdown

    res = make_results(inputs)
    real = fold_f1(res, "real", "real")
    j, ratio = len(real), res["n_test_mean"] / res["n_train_mean"]
    family = [(t, m) for t in ("w1.0", "w0.8") for m in ("real+25", "real+50", "synthetic", "balance")]
    direct = {}
    for t, m in family:
        d = fold_f1(res, t, m) - real
        se = np.sqrt((1 / j + ratio) * d.var(ddof=1))
        tval = d.mean() / se
        half = sps.t.ppf(0.975, j - 1) * se
        direct[t, m] = (d.mean(), d.mean() - half, d.mean() + half, 2 * sps.t.sf(abs(tval), j - 1))
    holm = dict(zip(family, holm_by_hand(np.array([direct[k][3] for k in family]))))

    md = report_markdown(res)
    paragraphs = md.split("\n\n")
    assert paragraphs[0] == "# Cross-validation report"
    answers = {t: next(p for p in paragraphs if p.startswith(f"**LoRA weight {t[1:]}:**")) for t in ("w1.0", "w0.8")}
    assert paragraphs[1] == answers["w1.0"] and paragraphs[2] == answers["w0.8"]  # the report opens with its answer
    # w1.0: real+50 helps; w0.8: nothing is significant nor equivalent within ±0.02, so the report refuses to say
    # "did not improve" (the seed study's claim) and says the comparison is inconclusive
    for t, verdict in (("w1.0", "**helps**: it improved macro F1 (best mix"),
                       ("w0.8", "is **inconclusive**: this run cannot say whether it improved macro F1 or not (best inconclusive mix")):
        best = max((m for tt, m in family if tt == t), key=lambda m: direct[t, m][0])
        diff, lo, hi, p = direct[t, best]
        assert (holm[t, best] < 0.05) == (t == "w1.0")
        assert answers[t].startswith(
            f"**LoRA weight {t[1:]}:** adding synthetic images {verdict} {best}: {diff:+.3f}, "
            f"95 % CI {lo:+.3f}..{hi:+.3f}, corrected p {p_is(p)}, Holm-adjusted p {p_is(holm[t, best])}, 5 folds)"
        ), answers[t]
    assert "did not improve" not in md and "did not help" not in md
    assert "Holm-adjusted p < 0.05 over all 8" in md
    assert direct["w1.0", "real+50"][0] > 0.3  # the scenario does what its comment says


def test_answer_of_a_run_without_synthetic_mixes(inputs):
    errors = {("real", "real"): [3, 2, 3, 2, 3], ("real", "oversample"): [3, 3, 2, 2, 3], ("real", "classweight"): [1, 0, 1, 1, 0]}
    md = md_of(make_results(inputs, errors=errors, mixes="real,oversample,classweight", synthetic=False))
    paragraphs = md.split("\n\n")
    assert paragraphs[1].startswith("**No synthetic mixes in this run.** The best baseline against `real`, classweight, "
                                    "improved macro F1 (+0.") and paragraphs[1].endswith("; verdict: helps).")
    assert paragraphs[2].startswith("The answer tests 2 baselines against `real`; \"improved\" means")


def test_interval_and_test_agree_and_holm_matches_hand_values():
    from analysis import stats

    rng = np.random.default_rng(0)
    for _ in range(50):
        d = rng.normal(0.02, 0.03, size=5)
        t, p = stats.corrected_ttest(d, 80, 20)
        lo, hi = stats.corrected_interval(d.mean(), d.std(ddof=1), 5, 80, 20)
        assert (lo > 0 or hi < 0) == (p < 0.05)
        assert (hi - lo) / 2 == pytest.approx(stats.critical_difference(d.std(ddof=1), 5, 80, 20))
    assert stats.holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(stats.holm([0.01, float("nan")])[1])


# ---------------------------------------------------------------- one table model, two renderings


class _Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts, and all visible text."""

    def __init__(self):
        super().__init__()
        self.tables, self.text, self._cell, self._skip = [], [], None, 0

    def handle_starttag(self, tag, attrs):
        if tag in ("style", "title"):
            self._skip += 1
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("style", "title"):
            self._skip -= 1
        elif tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._skip:
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _plain(md: str) -> str:
    """Markdown inline text as the reader sees it."""
    text = md.replace("\\|", "|").replace("**", "").replace("`", "")
    return re.sub(r"\s*\(\d+ images in report.html\)", "", text).strip()


def _md_tables(md: str) -> list[list[list[str]]]:
    tables, current = [], None
    for line in md.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                tables.append(current)
            if not line.startswith("|---"):
                cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
                current.append([_plain(c) for c in cells])
        else:
            current = None
    return tables


def test_html_holds_every_table_and_sentence_of_the_markdown(inputs):
    from classify.report import build_report
    from classify.tables import render_html, render_markdown

    realism = {"note": "Features: test.", "rows": [
        {"weight": w, "class": c, "n_real": 10, "n_synthetic": 3, "kid": 0.002, "kid_std": 0.001, "c2st_accuracy": 0.8,
         "c2st_std": 0.1, "n_copies": 1} for w in ("1.0", "0.8") for c in CLASSES_N]}
    res = make_results(inputs)
    blocks = build_report(res, realism)
    md, page = render_markdown(blocks), render_html(blocks, "t")
    parsed = _Tables()
    parsed.feed(page)
    md_tables = _md_tables(md)
    assert len(md_tables) == len(parsed.tables) >= 2 * 4 + 1 + 1  # per weight: metrics, vs real, per class, confusions
    for mt, ht in zip(md_tables, parsed.tables):
        assert mt == ht
    assert any(t[0][-1] == "two-sample classifier accuracy" and "copies" in t[0] for t in parsed.tables)
    text = re.sub(r"\s+", " ", htmllib.unescape("".join(parsed.text)))
    for para in md.split("\n\n"):
        if not para.startswith("|") and not para.startswith("*Figure"):
            assert re.sub(r"\s+", " ", _plain(para.lstrip("#> "))) in text, para[:80]
    assert "**Realism, LoRA weight 1.0** (3 classes): a two-sample classifier told synthetic from real with accuracy 0.80" in md
    assert 'class="row"' in page and "<figure><img src=\"data:image/png;base64," in page  # figures made, wrapping rows


def test_plot_shows_balance_and_baselines(inputs):
    from classify.report import plot_series

    series = plot_series(make_results(inputs))
    assert {t: [r.mix for r in rows] for t, rows in series["lines"].items()} == {
        t: ["real", "real+25", "real+50", "synthetic"] for t in ("w1.0", "w0.8")}
    assert {t: r.mix for t, r in series["balance"].items()} == {"w1.0": "balance", "w0.8": "balance"}
    assert [r.mix for r in series["baselines"]] == ["oversample"]


def test_a_figure_that_fails_shows_its_error(inputs, tmp_path):
    from classify.report import build_report
    from classify.tables import render_html, render_markdown

    res = make_results(inputs)
    res["data"] = str(tmp_path / "moved-away")  # the data folder is gone by the time the report is made
    blocks = build_report(res)
    md, page = render_markdown(blocks), render_html(blocks, "t")
    assert "**The image grid could not be made:** UserError:" in md and "moved-away" in md
    assert '<p class="error" role="alert"><b>The image grid could not be made:</b> UserError:' in page


# ---------------------------------------------------------------- what the reader must be warned about


def test_banner_for_weights_none_and_none_for_imagenet(inputs):
    from classify.report import report_html

    smoke = make_results(inputs, settings={"weights": "none"})
    md = md_of(smoke)
    assert md.split("\n\n")[1].startswith("> **Smoke run — these numbers mean nothing.** The classifier's base has random "
                                          "weights (`weights: none`)")
    assert '<p class="banner" role="alert"><b>Smoke run' in report_html(smoke)
    assert "Smoke run" not in md_of(make_results(inputs))


def test_banner_for_synthetic_images_of_the_tiny_model(inputs, tiny_model):
    from classify.report import smoke_reasons

    res = make_results(inputs)
    syn = Path(res["synthetic"])
    manifest = syn / "manifest.jsonl"
    manifest.write_text(json.dumps({"file": "w1.0/x.png", "model": str(tiny_model)}) + "\n")
    try:
        assert smoke_reasons(res) == [f"the synthetic images come from the tiny random Stable Diffusion (`{tiny_model}`): "
                                      "noise, not micrographs"]
        manifest.write_text(json.dumps({"file": "w1.0/x.png", "model": str(syn)}) + "\n")  # any other model folder
        assert smoke_reasons(res) == []
    finally:
        manifest.unlink()


def test_banner_for_calibrated_stand_in_weights(inputs, tmp_path):
    pytest.importorskip("keras")
    from classify.model import write_calibrated_weights
    from classify.pixels import load_pixels
    from classify.report import smoke_reasons

    dataset = inputs[0]
    x = load_pixels([dataset.root / r.path for r in dataset.records[:8]], 32, DEFAULT)
    path = write_calibrated_weights("EfficientNetB0", 32, x, tmp_path / "b0.weights.h5")
    assert smoke_reasons(make_results(inputs, settings={"weights": str(path)})) == [
        f"the classifier's base has calibrated random stand-in weights (`{path}`), not ImageNet's"]
    other = tmp_path / "other.weights.h5"
    other.write_bytes(b"not a stand-in")
    assert smoke_reasons(make_results(inputs, settings={"weights": str(other)})) == []


def test_class_absent_from_a_fold_is_flagged_and_left_out_of_macro_metrics(inputs):
    from classify.report import folds_csv

    res = make_results(inputs, drop_test=(2, "bad"))
    run = next(r for r in res["runs"] if (r["tree"], r["mix"], r["fold"]) == ("real", "real", 2))
    m = run["metrics"]
    assert m["absent"] == ["bad"] and m["per_class"]["bad"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert m["f1"] == pytest.approx(np.mean([m["per_class"][c]["f1"] for c in ("acceptable", "good")]))
    real_row = next(r for r in res["tables"]["w1.0"] if r["mix"] == "real")
    others = [r["metrics"]["per_class"]["bad"]["f1"] for r in res["runs"] if (r["tree"], r["mix"]) == ("real", "real") and r["fold"] != 2]
    assert real_row["per_class"]["bad"]["f1"] == pytest.approx(np.mean(others))  # over the folds that have the class
    md = md_of(res)
    assert "**Folds without test images of some class:** fold_2 (no bad)." in md
    assert "fold_2" not in md_of(make_results(inputs))
    rows = folds_csv(res, res["classes"]).splitlines()
    row = dict(zip(rows[0].split(","), next(l for l in rows if l.startswith("real,real,2,")).split(",")))
    assert row["f1_bad"] == "" and row["f1_good"] != ""  # the absent class has no F1 there, not 0


def test_constant_classifier_is_flagged(inputs):
    md = md_of(make_results(inputs, constant=("w1.0", "synthetic")))
    assert ("**Warning — classifiers that predicted a single class in every fold:** `synthetic` (LoRA weight 1.0: "
            "acceptable). They learned nothing") in md
    assert re.search(r"\| synthetic \|.*\| one class predicted \|", md)
    assert "single class" not in md_of(make_results(inputs))


# ---------------------------------------------------------------- the blind test by experts


def test_blind_test_section_beside_realism(inputs):
    from classify import blind
    from classify.report import build_report, load_blind
    from classify.tables import render_html, render_markdown
    from prompts.schema.blind import BlindSection
    from prompts.schema.data import DataSection

    dataset, _, syn, base = inputs
    out = base / "blind"
    if not (out / blind.KEY_FILE).exists():
        blind.blind_test(DataSection(data=str(dataset.root)), BlindSection(synthetic=str(syn.root), output=str(out),
                                                                           per_class=2, size=32))
    key = json.loads((out / blind.KEY_FILE).read_text())
    answers = out / "ada.json"
    answers.write_text(json.dumps({"format": blind.ANSWERS_FORMAT, "version": 1, "test_id": key["test_id"], "rater": "Ada",
                                   "answers": [{"id": im["id"], "position": i, "call": "real", "confidence": None}
                                               for i, im in enumerate(key["images"])]}))
    blind.blind_score(out / blind.KEY_FILE, [answers], out)
    summary = load_blind(out)
    assert load_blind(None) is None
    blocks = build_report(make_results(inputs, settings={"blind": str(out)}), blind=summary)
    md, page = render_markdown(blocks), render_html(blocks, "t")
    paragraphs = md.split("\n\n")
    assert paragraphs[3] == f"**Blind test by experts:** {summary.sentence}."  # beside the answers
    assert "the rater told real from synthetic in 50 % of" in summary.sentence
    section = md.split("## Blind test by experts")[1].split("\n## ")[0]
    assert "| " + " | ".join(summary.columns) + " |" in section and str(summary.calls_needed) in section
    parsed = _Tables()
    parsed.feed(page)
    assert [summary.columns, *summary.rows] in parsed.tables
    # the report names the blind test it used: its scores, and the key (file, test id) they were scored against
    from classify.report.text import shown_path

    assert f"Blind-test scores: `{shown_path(out / blind.SCORES_JSON)}`." in section
    assert f"{(out / blind.KEY_FILE).resolve()} (test id {key['test_id']}," in section


def test_bad_blind_or_realism_folder_stops_cv_before_it_runs(inputs, tmp_path, capsys):
    from classify.__main__ import main

    dataset = inputs[0]
    for flag in ("--blind", "--realism"):
        out = tmp_path / f"out{flag}"
        with pytest.raises(SystemExit) as exc:
            main(["cv", "--data", str(dataset.root), "--mixes", "real", "--weights", "none", "--backbone", "EfficientNetB0",
                  "--image-size", "32", "--epochs", "1", "--output", str(out), flag, str(tmp_path / "nothing-here")])
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert exc.value.code == 2 and len(errors) == 1 and "nothing-here" in errors[0], errors
        assert not out.exists()  # stopped before the CV wrote anything


# ---------------------------------------------------------------- verdicts (issue 18, item 5)


def _csv_rows(text):
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text)))


def test_each_mix_ends_in_a_verdict_matching_decide_family(inputs):
    from analysis.verdicts import decide_family
    from classify.report import results_csv
    from classify.results import CVResults

    res = make_results(inputs)
    real = fold_f1(res, "real", "real")
    family = {f"{t}/{m}": fold_f1(res, t, m) - real for t in ("w1.0", "w0.8") for m in ("real+25", "real+50", "synthetic", "balance")}
    want = decide_family(family, res["n_train_mean"], res["n_test_mean"], delta=0.02, folds=5)
    typed = CVResults.of(res)
    for key, v in want.items():
        tree, mix = key.split("/")
        row = next(r for r in typed.tables[tree] if r.mix == mix)
        assert row.verdict == v
    assert want["w1.0/real+50"].word == "helps" and want["w0.8/real+25"].word == "inconclusive"
    rows = {(r["table"], r["mix"]): r for r in _csv_rows(results_csv(typed))}
    for key, v in want.items():
        r = rows[tuple(key.split("/"))]
        assert r["verdict"] == v.word and float(r["f1_p_holm"]) == pytest.approx(v.p_holm, abs=1e-6)
        assert float(r["f1_ci_low"]) == pytest.approx(v.ci_low, abs=1e-6) and float(r["f1_ci_high"]) == pytest.approx(v.ci_high, abs=1e-6)
    md = md_of(res)
    assert "two one-sided tests (TOST) on the Nadeau-Bengio corrected interval" in md  # the method is stated
    assert "| real+50 | **helps** | +0.502 |" in md


def test_did_not_help_is_stated_only_with_evidence(inputs):
    """Equivalent within ±δ in every mix: "did not help"; the same claim is refused when the data cannot carry it."""
    same = {("real", "real"): [3, 2, 3, 2, 3], ("w1.0", "real+25"): [3, 2, 3, 2, 3], ("w1.0", "real+50"): [3, 2, 3, 2, 3]}
    res = make_results(inputs, errors=same, mixes="real,real+25,real+50")
    answer = md_of(res).split("\n\n")[1]
    assert answer.startswith("**LoRA weight 1.0:** adding synthetic images **did not help**: every mix is equivalent to "
                             "`real` within ±0.02 (best mix real+25: +0.000"), answer

    unsure = {("real", "real"): [3, 2, 3, 2, 3], ("w1.0", "real+25"): [2, 1, 2, 2, 2]}
    res = make_results(inputs, errors=unsure, mixes="real,real+25")
    from analysis.verdicts import repeats_needed

    d = fold_f1(res, "w1.0", "real+25") - fold_f1(res, "real", "real")
    n = repeats_needed(d.mean(), d.std(ddof=1), 5, res["n_train_mean"], res["n_test_mean"], 0.02)
    assert n == 2
    answer = md_of(res).split("\n\n")[1]
    assert "is **inconclusive**: this run cannot say whether it improved macro F1 or not" in answer
    assert answer.endswith(f"about {n} CV repeats would settle it at this spread (`classify.repeats: {n}` in the study "
                           f"file (workflow), or `--repeats {n}` on `classify split` / `classify cv`)."), answer
    assert "did not help" not in md_of(res)


def test_delta_is_a_study_key_that_moves_the_verdict(inputs):
    """A wide δ turns the w0.8 mixes equivalent; δ is in the schema (result-changing), and the CV runs ignore it."""
    from classify.cv import _JOB_FREE, REPORT_ONLY
    from prompts.schema.classify import ClassifySection

    field = ClassifySection.__dataclass_fields__["delta"]
    assert field.default == 0.02 and field.metadata["result"] is True
    assert "delta" in REPORT_ONLY and "delta" in _JOB_FREE
    md = md_of(make_results(inputs, settings={"delta": 0.5}))
    assert "| real+25 | equivalent within ±0.5 |" in md.split("## LoRA weight 0.8")[1]


# ---------------------------------------------------------------- flags (item 6)


def test_near_constant_and_chance_level_are_flagged_in_report_csv_and_json(inputs, tmp_path):
    from classify.report import write_reports

    errors = dict(ERRORS)
    errors[("real", "real")] = [4, 4, 4, 4, 4]  # 2 of 6 right: balanced accuracy about 1/3 with 3 classes
    res = make_results(inputs, errors=errors, near=("w1.0", "synthetic"), settings={"weights": "none"})
    row = next(r for r in res["tables"]["w1.0"] if r["mix"] == "synthetic")
    assert row["flags"] == ["near_constant"] and res["flags"]["chance_level"]["chance"] == pytest.approx(1 / 3)
    md = md_of(res)
    assert ("**Warning — classifiers that predicted nearly one class (≥ 95% of a fold's or of all test images):** "
            "`synthetic` (LoRA weight 1.0: 29 of 30 test images `acceptable`)") in md
    assert "**Warning — the `real` baseline is at chance level:** balanced accuracy 0.333" in md
    assert re.search(r"\| synthetic \|.*\| nearly one class predicted \|", md)
    out = tmp_path / "report"
    write_reports(res, out)
    rows = {(r["table"], r["mix"]): r for r in _csv_rows((out / "results.csv").read_text())}
    assert rows["w1.0", "synthetic"]["flags"] == "near_constant"
    assert all(r["study_flags"] == "chance_level;smoke" for r in rows.values())
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["flags"]) == {"chance_level", "smoke"} and saved["flags"]["smoke"][0].startswith("the classifier's base")
    assert next(r for r in saved["tables"]["w1.0"] if r["mix"] == "synthetic")["verdict"]["word"] in (
        "helps", "hurts", "equivalent", "inconclusive")
    clean = make_results(inputs)
    assert clean["flags"] == {} and not any(r["flags"] for rows in clean["tables"].values() for r in rows)


def test_single_class_is_flagged_in_csv(inputs):
    from classify.report import results_csv

    res = make_results(inputs, constant=("w1.0", "synthetic"))
    rows = {(r["table"], r["mix"]): r for r in _csv_rows(results_csv(res))}
    assert rows["w1.0", "synthetic"]["flags"] == "single_class" and rows["w1.0", "real"]["flags"] == ""


# ---------------------------------------------------------------- small errors (item 7)


def test_repeats_advice_names_the_study_key_and_paths_are_normalised(inputs):
    res = make_results(inputs)
    res["data"] = str(Path(res["data"]) / ".." / Path(res["data"]).name)
    md = md_of(res)
    assert "`classify.repeats: 5` in the study file (workflow), or `--repeats 5` on `classify split` / `classify cv`" in md
    assert "/../" not in md and f"Data `{Path(res['data']).resolve()}`" in md


def test_caption_names_gray_lines_only_when_baselines_are_drawn(inputs):
    from classify.report.figures import plot_caption, plot_series

    with_baselines = plot_caption(plot_series(make_results(inputs)))
    without = plot_caption(plot_series(make_results(inputs, mixes="real,real+25,real+50,synthetic")))
    assert "gray lines: baselines without synthetic images (`oversample`)" in with_baselines and "stars: `balance`" in with_baselines
    assert "gray" not in without and "stars" not in without


def test_large_kid_is_not_printed_times_1e3(inputs):
    from classify.report import realism_markdown, realism_summary

    realism = {"note": "", "rows": [{"weight": "1.0", "class": c, "n_real": 10, "n_synthetic": 3, "kid": 1.48e11,
                                     "kid_std": 2e9, "c2st_accuracy": 1.0, "c2st_std": 0.0, "n_copies": 0} for c in CLASSES_N]}
    text = realism_summary(realism, "w1.0")
    assert "KID 1.48e+11 (0 = same distribution)" in text and "×1e3" not in text
    table = realism_markdown(realism)
    assert "| KID |" in table and "| 1.48e+11 ± 2.0e+09 |" in table and "1e3" not in table
    small = {"note": "", "rows": [dict(realism["rows"][0], kid=0.00148, kid_std=0.0002)]}
    assert "KID ×1e3 1.48 (0 = same" in realism_summary(small, "w1.0") and "| 1.48 ± 0.20 |" in realism_markdown(small)


def test_published_figures_only_for_the_matching_configuration(inputs):
    from classify.report import study_mismatch

    study = {"backbone": "EfficientNetB7", "weights": "imagenet", "image_size": 600, "epochs": 30, "augment": True}
    matching = make_results(inputs, settings=study)
    assert study_mismatch(matching) == []
    md = md_of(matching)
    assert "## Published figures" in md and "published acc. / prec. / rec." in md and "0.729 / 0.731 / 0.715" in md
    other = md_of(make_results(inputs))  # EfficientNetB0 at 32 px
    assert "Published figures" not in other and "0.729" not in other and "0.614" not in other
    renamed = dict(matching, classes=["cat", "dog", "fish"])
    assert study_mismatch(renamed) == ["classes cat, dog, fish (study: acceptable, bad, good)"]


# ---------------------------------------------------------------- dropped outputs (item 1, the report's side)


def test_dropped_outputs_are_named_when_the_workflow_leaves_a_record(inputs, tmp_path):
    from classify.report import DROPPED_JSON, write_reports

    syn_root = tmp_path / "study_out" / "synthetic"  # the workflow's record lies in the synthetic folder (SYN/dropped.json)
    syn_root.mkdir(parents=True)
    res = make_results(inputs, settings={"synthetic": str(syn_root)})
    out = tmp_path / "study_out" / "report"
    write_reports(res, out)
    assert "Dropped from this study" not in (out / "report.md").read_text()
    assert json.loads((out / "results.json").read_text())["dropped"] is None
    (syn_root / DROPPED_JSON).write_text(json.dumps({"version": 1, "dropped": [
        {"kind": "synthetic tree", "path": "synthetic/w1.0", "reason": "LoRA weight 1.0 is no longer in generate.lora_weights"},
        "runs/w1.0"]}))
    write_reports(res, out)
    md = (out / "report.md").read_text()
    assert ("> **Dropped from this study:** `synthetic/w1.0` (LoRA weight 1.0 is no longer in generate.lora_weights); "
            "`runs/w1.0`.") in md
    assert json.loads((out / "results.json").read_text())["dropped"]["entries"][1] == "`runs/w1.0`"
    given = tmp_path / "elsewhere.json"
    given.write_text(json.dumps(["old/tree"]))
    write_reports(res, tmp_path / "plain", dropped=given)
    assert "**Dropped from this study:** `old/tree`." in (tmp_path / "plain" / "report.md").read_text()


def test_bad_dropped_record_stops_cv_before_it_runs(inputs, tmp_path, capsys):
    from classify.__main__ import main

    bad = tmp_path / "dropped.json"
    bad.write_text("{not json")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["cv", "--data", str(inputs[0].root), "--mixes", "real", "--weights", "none", "--backbone", "EfficientNetB0",
              "--image-size", "32", "--epochs", "1", "--output", str(out), "--dropped", str(bad)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exc.value.code == 2 and len(errors) == 1 and "--dropped" in errors[0] and str(bad) in errors[0], errors
    assert not out.exists()


# ---------------------------------------------------------------- typed results, template, encoders (issue 17)


def test_typed_results_read_an_older_results_json_the_same(inputs):
    """A results.json written before verdicts and flags existed reads into the same verdicts and flags."""
    from classify.results import CVResults

    res = make_results(inputs, constant=("w1.0", "synthetic"))
    old = json.loads(json.dumps(res))
    old.pop("flags")
    for rows in old["tables"].values():
        for r in rows:
            r.pop("verdict"), r.pop("flags")
    old["settings"].pop("delta")
    a, b = CVResults.of(res), CVResults.of(old)
    assert [(r.tree, r.mix, r.verdict, r.flags) for r in a.rows()] == [(r.tree, r.mix, r.verdict, r.flags) for r in b.rows()]
    assert md_of(old) == md_of(res)


def test_html_is_a_jinja2_template_with_autoescape(inputs):
    from analysis.tables import Cell, Heading, Table, Text, environment, render_html

    assert environment().autoescape is True
    page = render_html([Heading("<script>x</script>"), Text("**a** `b` <img src=x onerror=y>"),
                        Table(["c<1>"], [[Cell("d&e", title='"q"')]])], "t<")
    assert "<script>x" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "<b>a</b> <code>b</code> &lt;img src=x onerror=y&gt;" in page
    assert "<title>t&lt;</title>" in page and "d&amp;e" in page and 'title="&#34;q&#34;"' in page


def test_one_encoder_round_trips_pixels(tmp_path):
    import base64
    import io

    from PIL import Image

    from analysis.encode import png_uri, thumbnail_uri

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    uri = png_uri(arr)
    assert uri.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
        assert np.array_equal(np.asarray(im), arr)
    Image.fromarray(arr).save(tmp_path / "x.png")
    with Image.open(io.BytesIO(base64.b64decode(thumbnail_uri(tmp_path / "x.png", 12).split(",", 1)[1]))) as im:
        assert im.size == (12, 8)


# ---------------------------------------------------------------- the report in a real browser at 1280 px


def test_report_reads_in_headless_chromium_at_1280px(inputs, tmp_path):
    """The whole report (figures, flags, verdict tables, realism) opens in Chromium at 1280 px: no page-wide sideways
    scroll, the answer and the verdicts visible, every figure decoded. REPORT_SCREENSHOT=path keeps a screenshot."""
    import os
    import shutil

    from tests.test_blind import CHROMEDRIVER, CHROMIUM, _browser

    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"{CHROMIUM} and {CHROMEDRIVER} are needed (Debian packages chromium, chromium-driver)")
    pytest.importorskip("selenium")
    from selenium.webdriver.common.by import By

    from classify.report import write_reports

    realism = tmp_path / "realism.json"
    realism.write_text(json.dumps({"note": "Features: test.", "rows": [
        {"weight": w, "class": c, "n_real": 10, "n_synthetic": 3, "kid": 0.002, "kid_std": 0.001, "c2st_accuracy": 0.8,
         "c2st_std": 0.1, "n_copies": 0} for w in ("1.0", "0.8") for c in CLASSES_N]}))
    syn_root = tmp_path / "study" / "synthetic"  # the workflow's record of dropped outputs lies in SYN/dropped.json
    syn_root.mkdir(parents=True)
    (syn_root / "dropped.json").write_text(json.dumps({"dropped": [{"path": "synthetic/w1.2", "reason": "earlier settings"}]}))
    res = make_results(inputs, near=("w0.8", "synthetic"), settings={"realism": str(realism), "synthetic": str(syn_root)})
    out = tmp_path / "study" / "report"
    write_reports(res, out)
    driver = _browser(tmp_path / "profile", tmp_path / "downloads")
    try:
        driver.get((out / "report.html").as_uri())
        assert driver.title == "Cross-validation report"
        width = driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= 1280, f"the page scrolls sideways: {width} px"
        answer = driver.find_elements(By.CSS_SELECTOR, "p.answer")[0]
        assert answer.is_displayed() and answer.rect["y"] < 800 and "helps" in answer.text  # in the first screen
        assert any("Dropped from this study" in p.text for p in driver.find_elements(By.CSS_SELECTOR, "p.warn"))
        images = driver.find_elements(By.CSS_SELECTOR, "figure img, td.images img")
        assert images and all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", im)
                              for im in images)
        verdicts = [t for t in driver.find_elements(By.TAG_NAME, "table") if t.text.startswith("comparison verdict")]
        assert len(verdicts) == 2 and all(t.is_displayed() for t in verdicts)
        for t in verdicts:  # the verdict tables fit the page: no sideways scroll inside them either
            box = t.find_element(By.XPATH, "..")
            assert driver.execute_script("return arguments[0].scrollWidth <= arguments[0].clientWidth", box), t.text[:80]
        if os.environ.get("REPORT_SCREENSHOT"):
            driver.save_screenshot(os.environ["REPORT_SCREENSHOT"])
            driver.execute_script("window.scrollTo(0, document.querySelector('h2').offsetTop + 600)")
            driver.save_screenshot(os.environ["REPORT_SCREENSHOT"].replace(".png", "_tables.png"))
    finally:
        driver.quit()


def test_cv_help_lists_delta_and_dropped(capsys):
    from classify.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["cv", "--help"])
    text = capsys.readouterr().out
    assert exc.value.code == 0 and "--delta X" in text and "--dropped FILE" in text and "(default: 0.02)" in text
