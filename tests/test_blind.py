"""The blind real-or-synthetic test: statistics against hand-computed values, the draw, the page, the scores,
and the page driven by keys in a real headless Chromium."""
from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from classify import blind
from prompts.errors import UserError
from prompts.normalize import DEFAULT
from prompts.schema.blind import BlindSection
from prompts.schema.data import DataSection

CLASSES = ("alphacyte", "betacyte")


# --------------------------------------------------------------------------- statistics, by hand

def test_clopper_pearson_closed_forms_and_reference():
    # k = 0 and k = n have closed forms: upper = 1 - (a/2)^(1/n), lower = (a/2)^(1/n)
    lo, hi = blind.clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-12)
    lo, hi = blind.clopper_pearson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 10), abs=1e-12)
    # 54 of 100 (the issue's example; R's binom.test(54, 100) gives 0.4374116 0.6401566)
    lo, hi = blind.clopper_pearson(54, 100)
    assert (lo, hi) == (pytest.approx(0.4374116, abs=1e-6), pytest.approx(0.6401566, abs=1e-6))
    from scipy.stats import binomtest

    ref = binomtest(37, 80).proportion_ci(0.95, method="exact")
    assert blind.clopper_pearson(37, 80) == (pytest.approx(ref.low, abs=1e-10), pytest.approx(ref.high, abs=1e-10))
    assert all(math.isnan(v) for v in blind.clopper_pearson(0, 0))


def test_one_sided_binomial_p_by_counting():
    assert blind.binom_p_greater(9, 10) == pytest.approx(11 / 1024, abs=1e-15)  # 10 + 1 outcomes of 1024
    hand = sum(math.comb(100, k) for k in range(54, 101)) / 2**100
    assert blind.binom_p_greater(54, 100) == pytest.approx(hand, abs=1e-12)
    assert round(hand, 2) == 0.24
    assert blind.binom_p_greater(0, 10) == pytest.approx(1.0)


def test_dprime_loglinear_by_hand():
    z = NormalDist().inv_cdf
    # 8 of 10 synthetic called synthetic, 2 of 10 real called synthetic: H = 8.5/11, F = 2.5/11
    assert blind.dprime(8, 10, 2, 10) == pytest.approx(z(8.5 / 11) - z(2.5 / 11), abs=1e-12)
    assert blind.dprime(8, 10, 2, 10) == pytest.approx(1.4957, abs=1e-4)  # 2 x 0.74786
    # perfect rates stay finite: H = 10.5/11, F = 0.5/11
    assert blind.dprime(10, 10, 0, 10) == pytest.approx(2 * z(10.5 / 11), abs=1e-12)
    assert blind.dprime(5, 10, 5, 10) == pytest.approx(0.0, abs=1e-12)  # chance
    assert math.isnan(blind.dprime(3, 3, 0, 0))
    from scipy.stats import norm

    assert blind.dprime(3, 7, 1, 9) == pytest.approx(norm.ppf(3.5 / 8) - norm.ppf(1.5 / 10), abs=1e-9)


def test_cohen_kappa_by_hand_and_sklearn():
    # 10 items: both real 4, A real/B synthetic 1, A synthetic/B real 2, both synthetic 3
    a = ["r"] * 4 + ["r"] + ["s"] * 2 + ["s"] * 3
    b = ["r"] * 4 + ["s"] + ["r"] * 2 + ["s"] * 3
    # p_o = 0.7; A: 5 r / 5 s, B: 6 r / 4 s -> p_e = .5*.6 + .5*.4 = 0.5; kappa = 0.2 / 0.5
    assert blind.cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 2, 40).tolist(), rng.integers(0, 2, 40).tolist()
    assert blind.cohen_kappa(x, y) == pytest.approx(cohen_kappa_score(x, y), abs=1e-12)
    assert math.isnan(blind.cohen_kappa(["r", "r"], ["r", "r"]))  # chance agreement 1: undefined


def test_fleiss_kappa_wikipedia_example():
    # Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories -> kappa 0.210
    counts = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]
    assert blind.fleiss_kappa(counts) == pytest.approx(0.20993, abs=1e-4)
    assert blind.fleiss_kappa([[3, 0], [0, 3], [3, 0]]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        blind.fleiss_kappa([[2, 0], [1, 0]])


def test_exact_power_and_calls_needed():
    # n = 10: P(X >= 9 | 0.5) = 11/1024 <= 0.05 < P(X >= 8) = 56/1024, so 9 correct calls are needed
    assert blind.critical_count(10) == 9
    assert blind.exact_power(10) == pytest.approx(10 * 0.6**9 * 0.4 + 0.6**10, abs=1e-12)
    from scipy.stats import binom

    def power(n):  # brute force, independent of critical_count
        c = next(c for c in range(n + 2) if binom.sf(c - 1, n, 0.5) <= 0.05)
        return binom.sf(c - 1, n, 0.6)

    n = blind.calls_needed()
    assert power(n) >= 0.8 and power(n - 1) < 0.8
    assert all(power(m) >= 0.8 for m in range(n, n + 150))
    assert 140 < n < 200  # the normal approximation gives about 153
    acc = blind.detectable_accuracy(n)
    assert 0.59 < acc <= 0.6 + 1e-9


# --------------------------------------------------------------------------- a small study on disk

def _write_study(root: Path, real_per_class: int = 8, syn_per_tree: int = 3) -> tuple[Path, Path]:
    """DATA/<class>/realfile_*.jpg (RGB, 40x30, EXIF naming the file) and SYN/{w1.0,w0.8,fold_0/w1.0}/<class>/synfile_*.png."""
    from PIL import Image, PngImagePlugin

    rng = np.random.default_rng(0)
    data, syn = root / "data", root / "syn"
    for c in CLASSES:
        (data / c).mkdir(parents=True)
        for i in range(real_per_class):
            exif = Image.Exif()
            exif[0x010E] = f"realfile_{c}_{i}"  # ImageDescription: must not reach the page
            gray = rng.integers(0, 255, (30, 40), dtype=np.uint8)
            Image.fromarray(gray).convert("RGB").save(data / c / f"realfile_{c}_{i}.jpg", exif=exif.tobytes())
        for tree in ("w1.0", "w0.8", "fold_0/w1.0"):
            (syn / tree / c).mkdir(parents=True)
            for i in range(syn_per_tree):
                info = PngImagePlugin.PngInfo()
                info.add_text("parameters", f"a micrograph of {c}, synfile")
                Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(
                    syn / tree / c / f"synfile_{c}_{i}.png", pnginfo=info)
    return data, syn


@pytest.fixture
def study(tmp_path):
    data, syn = _write_study(tmp_path)
    return tmp_path, data, syn


def _make(data, syn, out, **kw):
    section = BlindSection(synthetic=str(syn), output=str(out), **{"per_class": 2, "lora_weights": [1.0, 0.8], **kw})
    return blind.blind_test(DataSection(data=str(data)), section)


def _page_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="blind-data">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


def test_draw_is_balanced_seeded_and_pools_fold_trees(study):
    root, data, syn = study
    page, key_path = _make(data, syn, root / "out")
    key = json.loads(key_path.read_text())
    images = key["images"]
    assert len(images) == 2 * 2 * 2 * 2  # classes x weights x (real + synthetic) x per_class
    for c in CLASSES:
        for w in (1.0, 0.8):
            block = [im for im in images if im["class"] == c and im["lora_weight"] == w]
            assert sorted(im["truth"] for im in block) == ["real", "real", "synthetic", "synthetic"]
    reals = [im["file"] for im in images if im["truth"] == "real"]
    assert len(set(reals)) == len(reals)  # each real image is used once
    assert all(im["file"].startswith(("w1.0/", "w0.8/", "fold_0/w1.0/")) for im in images if im["truth"] == "synthetic")
    assert len({im["id"] for im in images}) == len(images)
    assert key["settings"]["seed"] == 0 and key["page"] == blind.BLIND_HTML
    # the same seed draws the same images with the same ids in the same order; another seed differs
    again = json.loads(_make(data, syn, root / "again")[1].read_text())["images"]
    assert again == images
    other = json.loads(_make(data, syn, root / "other", seed=1)[1].read_text())["images"]
    assert other != images
    # the page order mixes real and synthetic (no block of one kind first)
    truths = [im["truth"] for im in images]
    assert truths != sorted(truths) and truths != sorted(truths, reverse=True)


def test_page_reveals_nothing_but_pixels(study):
    from PIL import Image

    root, data, syn = study
    page, key_path = _make(data, syn, root / "out")
    html = page.read_text(encoding="utf-8")
    key = json.loads(key_path.read_text())
    pdata = _page_data(html)
    assert pdata["test_id"] == key["test_id"]
    assert [im["id"] for im in pdata["images"]] == [im["id"] for im in key["images"]]
    assert all(set(im) == {"id", "src"} for im in pdata["images"])
    # with the images cut out, no class name, file name, folder or source path is left in the HTML and JS
    text = re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", html)
    for needle in (*CLASSES, "realfile", "synfile", "w1.0", "w0.8", "fold_0", ".png", ".jpg", str(data), str(syn)):
        assert needle not in text, needle
    assert '"truth"' not in text and "lora_weight" not in text
    # every embedded image: same format, size and mode whether real or synthetic, no metadata left
    seen = {}
    for im, k in zip(pdata["images"], key["images"]):
        mime, b64 = im["src"][5:].split(";base64,")
        raw = base64.b64decode(b64)
        assert b"realfile" not in raw and b"synfile" not in raw and b"micrograph" not in raw
        with Image.open(io.BytesIO(raw)) as img:
            assert "exif" not in img.info and "parameters" not in img.info and "icc_profile" not in img.info
            assert not img.getexif()
            seen.setdefault(k["truth"], set()).add((mime, img.format, img.size, img.mode))
    assert seen["real"] == seen["synthetic"] == {("image/jpeg", "JPEG", (512, 512), "L")}
    # png on request, at the asked size
    page2, _ = _make(data, syn, root / "png", image_format="png", size=64)
    src = _page_data(page2.read_text())["images"][0]["src"]
    assert src.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as img:
        assert img.size == (64, 64) and not {k for k in img.info if k not in ("dpi",)}


def test_bad_inputs_stop_before_writing(study):
    root, data, syn = study
    out = root / "out"
    with pytest.raises(UserError, match=r"class alphacyte has 8 real image\(s\).*lower --per-class to 4"):
        _make(data, syn, out, per_class=5)
    with pytest.raises(UserError, match=r"class alphacyte has 3 synthetic image\(s\) in the w0.8/"):
        _make(data, syn, out, per_class=4)
    with pytest.raises(UserError, match=r"--lora-weights 0.5: no w0.5/ tree"):
        _make(data, syn, out, lora_weights=[0.5])
    with pytest.raises(UserError, match="inside the data folder"):
        _make(data, syn, data / "blind")
    with pytest.raises(UserError, match="inside the data folder"):
        _make(data, syn, syn / "blind")
    assert not out.exists() and not (data / "blind").exists() and not (syn / "blind").exists()
    _make(data, syn, out)
    key_before = (out / blind.KEY_FILE).read_bytes()
    with pytest.raises(UserError, match="already holds key.json; a blind test is never replaced"):
        _make(data, syn, out, seed=5)
    assert (out / blind.KEY_FILE).read_bytes() == key_before


def _answers(key: dict, rater: str, call_of, confidence=None) -> dict:
    return {"format": blind.ANSWERS_FORMAT, "version": 1, "test_id": key["test_id"], "rater": rater,
            "answers": [{"id": im["id"], "position": i, "call": call_of(im), "confidence": confidence}
                        for i, im in enumerate(key["images"])]}


def test_scores_by_hand(study):
    root, data, syn = study
    _, key_path = _make(data, syn, root / "out")
    key = json.loads(key_path.read_text())
    flip = {"real": "synthetic", "synthetic": "real"}
    perfect = _answers(key, "Ada", lambda im: im["truth"], confidence=3)
    # Ben: right on alphacyte, wrong on betacyte, and skips the w0.8 synthetic betacyte images
    ben = _answers(key, "Ben", lambda im: "skip" if (im["class"] == "betacyte" and im["truth"] == "synthetic"
                                                      and im["lora_weight"] == 0.8) else
                   im["truth"] if im["class"] == "alphacyte" else flip[im["truth"]])
    paths = []
    for a in (perfect, ben):
        p = root / f"{a['rater']}.json"
        p.write_text(json.dumps(a))
        paths.append(p)
    written = blind.blind_score(key_path, paths, root / "scores")
    assert [p.name for p in written] == [blind.SCORES_JSON, blind.SCORES_CSV, blind.SUMMARY_MD]
    scores = json.loads(written[0].read_text())
    rows = {(r["rater"], r["class"], r["lora_weight"]): r for r in scores["rows"]}
    ada = rows[("Ada", "all", "all")]
    assert (ada["calls"], ada["correct"], ada["accuracy"], ada["skipped"]) == (16, 16, 1.0, 0)
    assert ada["p"] == pytest.approx(2.0**-16)
    assert ada["dprime"] == pytest.approx(2 * NormalDist().inv_cdf(8.5 / 9))
    ben_all = rows[("Ben", "all", "all")]
    assert (ben_all["calls"], ben_all["correct"], ben_all["skipped"]) == (14, 8, 2)
    assert ben_all["p"] == pytest.approx(sum(math.comb(14, k) for k in range(8, 15)) / 2**14)
    # Ben's specificity: real images called real: all 4 alphacyte, none of 4 betacyte
    assert ben_all["specificity"] == pytest.approx(4 / 8) and ben_all["sensitivity"] == pytest.approx(4 / 6)
    assert rows[("Ben", "betacyte", "all")]["accuracy"] == 0.0
    assert rows[("Ben", "all", "0.8")]["calls"] == 6
    pooled = rows[("all raters", "all", "all")]
    assert (pooled["calls"], pooled["correct"]) == (30, 24)
    # Cohen's kappa on the 14 images both called: Ada = truth, Ben = truth on 8, flipped on 6
    agr = scores["agreement"]
    ada_calls = [im["truth"] for im in key["images"] if not (im["class"] == "betacyte" and im["truth"] == "synthetic" and im["lora_weight"] == 0.8)]
    ben_calls = [t if im["class"] == "alphacyte" else flip[t] for im, t in
                 zip([im for im in key["images"] if not (im["class"] == "betacyte" and im["truth"] == "synthetic" and im["lora_weight"] == 0.8)], ada_calls)]
    assert agr["statistic"] == "Cohen's kappa" and agr["images"] == 14
    assert agr["kappa"] == pytest.approx(blind.cohen_kappa(ada_calls, ben_calls))
    # the summary the CV report shows
    s = blind.load_blind_summary(root / "scores")
    assert s.sentence.startswith("raters told real from synthetic in 80 % of 30 calls (95 % CI 61-92 %, p < 0.001)")
    assert s.sentence.endswith("distinguishable, better than chance")
    assert s.columns[:4] == ["rater", "class", "LoRA weight", "calls"] and len(s.rows) == len(scores["rows"])
    assert s.calls_needed == blind.calls_needed() and "Cohen's kappa" in s.agreement
    assert "| Ada | all | all | 16 | 100 % |" in (root / "scores" / blind.SUMMARY_MD).read_text()
    assert (root / "scores" / blind.SCORES_CSV).read_text().splitlines()[0].startswith("rater,class,LoRA weight")


def test_plain_reading_of_the_issue_example():
    lo, hi = blind.clopper_pearson(54, 100)
    overall = {"calls": 100, "accuracy": 0.54, "ci_low": lo, "ci_high": hi, "p": blind.binom_p_greater(54, 100)}
    text = blind.plain_reading(overall, 3, blind.calls_needed())
    assert text.startswith("raters told real from synthetic in 54 % of 100 calls (95 % CI 44-64 %, p = 0.24): "
                           "not distinguishable at this sample size")


def test_fleiss_for_three_raters_and_answer_errors(study):
    root, data, syn = study
    _, key_path = _make(data, syn, root / "out")
    key = json.loads(key_path.read_text())
    paths = []
    for name in ("A", "B", "C"):
        p = root / f"{name}.json"
        p.write_text(json.dumps(_answers(key, name, lambda im: "real")))
        paths.append(p)
    blind.blind_score(key_path, paths, root / "scores")
    scores = json.loads((root / "scores" / blind.SCORES_JSON).read_text())
    assert scores["agreement"]["statistic"] == "Fleiss' kappa" and scores["agreement"]["kappa"] is None  # all one call
    assert blind.load_blind_summary(root / "scores").sentence.startswith("raters told real from synthetic in 50 % of 48 calls")
    bad = root / "bad.json"
    bad.write_text(json.dumps({**_answers(key, "D", lambda im: "real"), "test_id": "other"}))
    with pytest.raises(UserError, match="belongs to another blind test"):
        blind.blind_score(key_path, [bad], root / "s2")
    bad.write_text(json.dumps(_answers(key, "D", lambda im: "maybe")))
    with pytest.raises(UserError, match="call 'maybe'.*must be real, synthetic or skip"):
        blind.blind_score(key_path, [bad], root / "s2")
    with pytest.raises(UserError, match="both from rater 'A'"):
        blind.blind_score(key_path, [paths[0], paths[0]], root / "s2")
    bad.write_text("{not json")
    with pytest.raises(UserError, match="is not valid JSON"):
        blind.blind_score(key_path, [bad], root / "s2")
    with pytest.raises(UserError, match="inside the data folder"):
        blind.blind_score(key_path, [paths[0]], data / "scores")
    assert not (root / "s2").exists() and not (data / "scores").exists()


def test_every_embedded_image_has_one_byte_length_and_unchanged_pixels(study):
    """Real and synthetic JPEGs differ in size (a cue anyone can read in the page source): all are padded to one."""
    from PIL import Image

    root, data, syn = study
    for fmt, out in (("jpeg", root / "out"), ("png", root / "png")):
        page, key_path = _make(data, syn, out, image_format=fmt, size=48)
        key = json.loads(key_path.read_text())
        srcs = [im["src"] for im in _page_data(page.read_text())["images"]]
        assert len({len(s) for s in srcs}) == 1, fmt  # one length for every data URI
        for src, k in zip(srcs, key["images"]):
            raw = base64.b64decode(src.split(",", 1)[1])
            base = root / ("data" if k["truth"] == "real" else "syn") / k["file"]
            _, unpadded = blind.encode_image(base, 48, fmt, reading=DEFAULT)
            assert len(raw) > len(unpadded)  # every image carries a pad, none is the "unpadded" one
            with Image.open(io.BytesIO(raw)) as a, Image.open(io.BytesIO(unpadded)) as b:
                assert np.array_equal(np.asarray(a), np.asarray(b))  # the pad changes no pixel


def test_scores_name_the_key_and_each_raters_coverage(study):
    root, data, syn = study
    _, key_path = _make(data, syn, root / "out")
    key = json.loads(key_path.read_text())
    full, part = root / "full.json", root / "part.json"
    full.write_text(json.dumps(_answers(key, "A", lambda im: "real")))
    answers = _answers(key, "B", lambda im: "synthetic")
    answers["answers"] = answers["answers"][:5]  # B stopped after 5 of 16
    part.write_text(json.dumps(answers))
    blind.blind_score(key_path, [full, part], root / "scores")
    scores = json.loads((root / "scores" / blind.SCORES_JSON).read_text())
    cov = {c["rater"]: c for c in scores["coverage"]}
    assert cov["A"] == {"rater": "A", "answered": 16, "images": 16, "complete": True}
    assert cov["B"]["answered"] == 5 and not cov["B"]["complete"]
    summary = blind.load_blind_summary(root / "scores")
    notes = " ".join(summary.notes)
    assert "rater B answered 5 of 16 images (31 %): stopped early" in notes
    assert str(key_path.resolve()) in notes and key["test_id"] in notes


@pytest.mark.parametrize("edit, message", [
    (lambda a: a["answers"][0].update(id=[a["answers"][0]["id"]]), "image id .* is not in the key"),
    (lambda a: a["answers"][0].update(confidence="very"), "confidence 'very' .* must be 1, 2, 3 or null"),
    (lambda a: a["answers"][0].update(confidence=float("nan")), "confidence nan .* must be 1, 2, 3 or null"),
    (lambda a: a["answers"][0].update(confidence=True), "confidence True"),
    (lambda a: a.update(rater=["A", "B"]), r"rater \['A', 'B'\] must be a name"),
    (lambda a: a["answers"].append("x"), "answer 'x' must be an object"),
])
def test_bad_answers_are_one_line_and_write_nothing(study, edit, message):
    root, data, syn = study
    _, key_path = _make(data, syn, root / "out")
    key = json.loads(key_path.read_text())
    answers = _answers(key, "A", lambda im: "real")
    edit(answers)
    bad = root / "bad.json"
    bad.write_text(json.dumps(answers))
    with pytest.raises(UserError, match=message):
        blind.blind_score(key_path, [bad], root / "scores")
    assert not (root / "scores").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda k: k["images"][0].update(truth="maybe"), "truth 'maybe' must be 'real' or 'synthetic'"),
    (lambda k: k.pop("test_id"), "has no test id"),
    (lambda k: k["images"][1].update(id=k["images"][0]["id"]), "distinct string id"),
    (lambda k: k["images"][0].update(lora_weight="high"), "lora_weight 'high' must be a number"),
])
def test_bad_keys_are_one_line(study, edit, message):
    root, data, syn = study
    _, key_path = _make(data, syn, root / "out")
    key = json.loads(key_path.read_text())
    answers = root / "a.json"
    answers.write_text(json.dumps(_answers(key, "A", lambda im: "real")))
    edit(key)
    bad_key = root / "key.json"
    bad_key.write_text(json.dumps(key))
    with pytest.raises(UserError, match=message):
        blind.blind_score(bad_key, [answers], root / "scores")
    assert not (root / "scores").exists()


def test_fleiss_kappa_matches_statsmodels_and_cohen_matches_sklearn():
    from sklearn.metrics import cohen_kappa_score
    from statsmodels.stats.inter_rater import fleiss_kappa

    rng = np.random.default_rng(3)
    counts = rng.multinomial(4, [0.3, 0.7], size=30)
    assert blind.fleiss_kappa(counts) == pytest.approx(fleiss_kappa(counts, method="fleiss"))
    a, b = rng.integers(0, 2, 40).tolist(), rng.integers(0, 2, 40).tolist()
    assert blind.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))


# --------------------------------------------------------------------------- the page in a real browser

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _browser(profile: Path, downloads: Path):
    """Headless Chromium at a 1280x800 viewport, downloads into `downloads`, state kept in `profile`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    return driver


def _keys(driver, keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(keys).perform()


def test_page_in_headless_chromium(study, tmp_path):
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"{CHROMIUM} and {CHROMEDRIVER} are needed (Debian packages chromium, chromium-driver)")
    pytest.importorskip("selenium")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    root, data, syn = study
    page, key_path = _make(data, syn, root / "out")
    key = json.loads(key_path.read_text())
    truth = {im["id"]: im["truth"] for im in key["images"]}
    profile, downloads = tmp_path / "profile", tmp_path / "downloads"
    downloads.mkdir()
    # the rater's plan: right on real images, "synthetic" on every synthetic image but one skipped
    plan, skipped_one = {}, False
    calls_made = []

    def answer_current(driver, i):
        nonlocal skipped_one
        shot = driver.find_element(By.ID, "shot")
        image_id = shot.get_attribute("data-id")
        assert shot.get_attribute("src").startswith("data:image/jpeg;base64,")
        if truth[image_id] == "synthetic" and not skipped_one:
            skipped_one, call, keys = True, "skip", "k"
        else:
            call = truth[image_id]
            keys = ("3" if i % 2 else "") + ("r" if call == "real" else "s")
        plan[image_id] = (call, 3 if (i % 2 and call != "skip") else None)
        _keys(driver, keys)
        calls_made.append(image_id)

    n = len(key["images"])
    driver = _browser(profile, downloads)
    try:
        driver.get(page.as_uri())
        assert driver.find_element(By.ID, "rater") == driver.switch_to.active_element  # focus starts on the name
        _keys(driver, "Ada" + Keys.ENTER)
        for i in range(n // 2):
            answer_current(driver, i)
        assert driver.find_element(By.ID, "progress-text").text == f"{n // 2} of {n} answered"
        # U goes back one image and forgets its answer; answering again restores the count
        _keys(driver, "u")
        assert driver.find_element(By.ID, "shot").get_attribute("data-id") == calls_made[-1]
        assert driver.find_element(By.ID, "progress-text").text == f"{n // 2 - 1} of {n} answered"
        calls_made.pop()
        answer_current(driver, n // 2 - 1)
        shot_path = tmp_path / "blind_test_1280x800.png"
        driver.save_screenshot(str(shot_path))
        print(f"screenshot of the page at 1280x800: {shot_path}")
        # the image, both call buttons and the confidence buttons fit in a 1280x800 window
        for el_id in ("shot", "call-real", "call-synthetic", "skip"):
            rect = driver.find_element(By.ID, el_id).rect
            assert rect["y"] + rect["height"] <= 800 and rect["x"] + rect["width"] <= 1280, el_id
    finally:
        driver.quit()  # the browser is closed mid-way

    driver = _browser(profile, downloads)
    try:
        driver.get(page.as_uri())
        assert driver.find_element(By.ID, "resume").is_displayed()
        assert driver.find_element(By.ID, "resume-count").text == f"{n // 2} of {n} images answered."
        _keys(driver, Keys.ENTER)
        assert driver.find_element(By.ID, "progress-text").text == f"{n // 2} of {n} answered"
        for i in range(n // 2, n):
            answer_current(driver, i)
        WebDriverWait(driver, 20).until(lambda d: (downloads / blind.ANSWERS_FILE).is_file())
        assert driver.find_element(By.ID, "done").is_displayed()
        # accessible: every button has a text label, and keyboard focus is visible (a solid outline)
        labels = driver.execute_script("return Array.from(document.querySelectorAll('button')).map(b => b.textContent.trim())")
        assert labels and all(labels)
        active = driver.switch_to.active_element
        assert active.get_attribute("id") == "download"
        assert driver.execute_script("return getComputedStyle(arguments[0]).outlineStyle", active) == "solid"
    finally:
        driver.quit()

    downloaded = downloads / blind.ANSWERS_FILE
    answers = json.loads(downloaded.read_text())
    assert answers["rater"] == "Ada" and answers["test_id"] == key["test_id"] and answers["n_images"] == n
    got = {a["id"]: (a["call"], a["confidence"]) for a in answers["answers"]}
    assert got == plan and len(calls_made) == n
    assert sorted(a["position"] for a in answers["answers"]) == list(range(n))
    # the downloaded file scores: every call right, one synthetic image skipped
    blind.blind_score(key_path, [downloaded], tmp_path / "scores")
    summary = blind.load_blind_summary(tmp_path / "scores")
    assert summary.sentence.startswith(f"the rater told real from synthetic in 100 % of {n - 1} calls")
    assert summary.rows[0][:4] == ["Ada", "all", "all", str(n - 1)] and summary.rows[0][-1] == "1"


# --------------------------------------------------------------------------- the commands

def _cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "classify", *map(str, args)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)


def test_blind_commands(study):
    root, data, syn = study
    out = root / "blind"
    bad = _cli("blind-test", "--data", data, "--synthetic", syn, "--per-class", 9, "--output", out)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        f"error: class alphacyte has 8 real image(s) in {data}, the test needs 18 "
        "(--per-class 9 x 2 LoRA weight(s)); lower --per-class to 4 or less"]
    assert not out.exists()
    ok = _cli("blind-test", "--data", data, "--synthetic", syn, "--per-class", 1, "--lora-weights", "1.0",
              "--seed", 3, "--size", 48, "--output", out)
    assert ok.returncode == 0, ok.stderr
    key = json.loads((out / blind.KEY_FILE).read_text())
    assert len(key["images"]) == 4 and key["settings"]["lora_weights"] == [1.0] and key["settings"]["size"] == 48
    answers = root / "ada.json"
    answers.write_text(json.dumps(_answers(key, "Ada", lambda im: "real")))
    scored = _cli("blind-score", "--key", out / blind.KEY_FILE, "--answers", answers, "--output", out)
    assert scored.returncode == 0, scored.stderr
    assert "the rater told real from synthetic in 50 % of 4 calls" in scored.stderr
    assert (out / blind.SUMMARY_MD).is_file() and (out / blind.BLIND_HTML).is_file()
