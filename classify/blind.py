"""A blind real-or-synthetic test for experts: draw the images, write the page and its key, score the answers.

    python -m classify blind-test  --data DATA --synthetic SYN --per-class N [--lora-weights 1.0 0.8] --seed S --output OUT
    python -m classify blind-score --key OUT/key.json --answers a1.json [a2.json ...] --output OUT

The draw is balanced so that guessing scores 50 % overall, per class and per LoRA weight:
for every class c and LoRA weight w it takes `per_class` synthetic images of c from the w trees
and `per_class` real images of c (each real image is used once; real images are split at
random into one block per weight). A block (c, w) holds as many real as synthetic images, so
its rows are exact binomial tests against 0.5.

Files (names written once, below):
    OUT/blind_test.html     one self-contained page: opaque random ids and re-encoded images only
    OUT/key.json            the answer key: id -> real/synthetic, class, cell line, LoRA weight, source file
    OUT/blind_scores.json   scores (blind-score): the summary read back by `load_blind_summary`
    OUT/blind_scores.csv    the per-rater / class / weight table
    OUT/blind_summary.md    the plain reading and the table

Statistics (each a small function below, tested against hand-computed values):
- accuracy = correct calls / calls (skips excluded), exact Clopper-Pearson 95 % interval,
  one-sided exact binomial p of P(X >= correct | calls, 0.5);
- sensitivity = synthetic images called synthetic, specificity = real images called real;
- d' = z(H) - z(F), H the hit rate (synthetic called synthetic), F the false-alarm rate
  (real called synthetic), both with the log-linear correction of Hautus (1995):
  (count + 0.5) / (trials + 1), applied to every cell so that rates of 0 and 1 stay finite
  and d' is not biased by which cells happen to be extreme;
- agreement between raters on the images each of them called: Cohen's kappa for two,
  Fleiss' kappa for three or more;
- calls needed to detect 60 % accuracy: the smallest n from which on the exact one-sided
  binomial test at alpha 0.05 has power >= 0.8 against a true accuracy of 0.6 (exact power
  saw-tooths with n, so the first n that reaches 0.8 is not enough by itself).

Pooling calls of several raters treats them as independent although raters see the same
images; the per-rater rows are exact tests of each rater, the pooled row is a summary.
"""
from __future__ import annotations

import base64
import csv
import io
import logging
import math
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from statistics import NormalDist

import numpy as np

from prompts.errors import UserError
from prompts.files import read_json_mapping, sha256_bytes, write_bytes_atomic, write_json_atomic, write_text_atomic

BLIND_HTML = "blind_test.html"
KEY_FILE = "key.json"
ANSWERS_FILE = "answers.json"  # the name the page downloads
SCORES_JSON = "blind_scores.json"
SCORES_CSV = "blind_scores.csv"
SUMMARY_MD = "blind_summary.md"
KEY_FORMAT = "cellsynth-blind-key"
ANSWERS_FORMAT = "cellsynth-blind-answers"
SCORES_FORMAT = "cellsynth-blind-scores"
VERSION = 1

REAL, SYNTHETIC, SKIP = "real", "synthetic", "skip"
ALPHA, POWER, TARGET_ACCURACY = 0.05, 0.8, 0.6
ALL = "all"
POOLED = "all raters"


# =========================================================================== statistics

def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial proportion k / n; (nan, nan) when n = 0.

    lower = Beta(alpha/2; k, n - k + 1), upper = Beta(1 - alpha/2; k + 1, n - k), with 0 and 1 at the ends.
    """
    from scipy.stats import beta

    if n <= 0:
        return float("nan"), float("nan")
    a = 1.0 - level
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def binom_p_greater(k: int, n: int, p0: float = 0.5) -> float:
    """One-sided exact binomial p: P(X >= k) for X ~ Binomial(n, p0); nan when n = 0."""
    from scipy.stats import binom

    if n <= 0:
        return float("nan")
    return float(binom.sf(k - 1, n, p0))


def loglinear_rate(count: int, trials: int) -> float:
    """Hautus (1995) log-linear corrected rate (count + 0.5) / (trials + 1): never 0 or 1."""
    return (count + 0.5) / (trials + 1)


def dprime(hits: int, n_signal: int, false_alarms: int, n_noise: int) -> float:
    """Signal-detection sensitivity d' = z(H) - z(F), rates log-linear corrected; nan without trials of a kind."""
    if n_signal <= 0 or n_noise <= 0:
        return float("nan")
    z = NormalDist().inv_cdf
    return z(loglinear_rate(hits, n_signal)) - z(loglinear_rate(false_alarms, n_noise))


def cohen_kappa(a, b) -> float:
    """Cohen's kappa of two raters' calls on the same items (sequences of equal length, any labels).

    kappa = (p_o - p_e) / (1 - p_e); nan for no items or when chance agreement is 1.
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError("cohen_kappa needs two sequences of equal length")
    n = len(a)
    if n == 0:
        return float("nan")
    labels = sorted(set(a) | set(b))
    p_o = sum(x == y for x, y in zip(a, b)) / n
    p_e = sum((a.count(c) / n) * (b.count(c) / n) for c in labels)
    return float("nan") if p_e == 1 else (p_o - p_e) / (1 - p_e)


def fleiss_kappa(counts) -> float:
    """Fleiss' kappa of a (items, categories) matrix of how many raters put each item in each category.

    Every item needs the same number of raters m >= 2. nan for no items or when chance agreement is 1.
    """
    x = np.asarray(counts, dtype=float)
    if x.ndim != 2 or x.shape[0] == 0:
        return float("nan")
    m = x.sum(axis=1)
    if not np.all(m == m[0]) or m[0] < 2:
        raise ValueError("fleiss_kappa needs the same number (>= 2) of ratings for every item")
    m = m[0]
    p_i = (np.sum(x * x, axis=1) - m) / (m * (m - 1))
    p_bar = p_i.mean()
    p_j = x.sum(axis=0) / x.sum()
    p_e = float(np.sum(p_j * p_j))
    return float("nan") if p_e == 1 else float((p_bar - p_e) / (1 - p_e))


def critical_count(n: int, alpha: float = ALPHA) -> int:
    """Smallest c with P(X >= c | n, 0.5) <= alpha: the one-sided exact test rejects chance from c correct calls on."""
    from scipy.stats import binom

    c = int(binom.isf(alpha, n, 0.5))  # a candidate near the boundary; step to the exact smallest c
    while c > 0 and binom.sf(c - 2, n, 0.5) <= alpha:
        c -= 1
    while binom.sf(c - 1, n, 0.5) > alpha:
        c += 1
    return c


def exact_power(n: int, accuracy: float = TARGET_ACCURACY, alpha: float = ALPHA) -> float:
    """Power of the one-sided exact binomial test at `alpha` with n calls against a true `accuracy`."""
    from scipy.stats import binom

    if n <= 0:
        return 0.0
    return float(binom.sf(critical_count(n, alpha) - 1, n, accuracy))


def calls_needed(accuracy: float = TARGET_ACCURACY, alpha: float = ALPHA, power: float = POWER) -> int:
    """Smallest n from which on (every n' >= n) the exact one-sided test has power >= `power` at `accuracy`.

    Scans up to twice the normal-approximation size plus a margin, past which the saw-tooth no longer dips.
    """
    z = NormalDist().inv_cdf
    approx = ((z(1 - alpha) * 0.5 + z(power) * math.sqrt(accuracy * (1 - accuracy))) / (accuracy - 0.5)) ** 2
    top = int(2 * approx) + 50
    ok = [exact_power(n, accuracy, alpha) >= power for n in range(1, top + 1)]
    if not ok[-1]:
        raise ValueError("calls_needed: scan range too small")
    n = top
    while n > 1 and ok[n - 2]:
        n -= 1
    return n


def detectable_accuracy(n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true accuracy the exact test detects with `power` from n calls (bisection; power rises with accuracy)."""
    if n <= 0:
        return float("nan")
    lo, hi = 0.5, 1.0
    if exact_power(n, hi, alpha) < power:
        return float("nan")
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if exact_power(n, mid, alpha) >= power else (mid, hi)
    return hi


@dataclass
class Score:
    """Counts of one set of calls and the statistics derived from them."""

    n_real: int = 0  # real images called (not skipped)
    n_synthetic: int = 0
    real_correct: int = 0  # real called real
    synthetic_correct: int = 0  # synthetic called synthetic (hits)
    skipped: int = 0

    def add(self, truth: str, call: str) -> None:
        if call == SKIP:
            self.skipped += 1
        elif truth == REAL:
            self.n_real += 1
            self.real_correct += call == REAL
        else:
            self.n_synthetic += 1
            self.synthetic_correct += call == SYNTHETIC

    @property
    def calls(self) -> int:
        return self.n_real + self.n_synthetic

    @property
    def correct(self) -> int:
        return self.real_correct + self.synthetic_correct

    def stats(self) -> dict:
        n, k = self.calls, self.correct
        lo, hi = clopper_pearson(k, n)
        return {
            "calls": n, "correct": k, "skipped": self.skipped,
            "accuracy": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi,
            "p": binom_p_greater(k, n),
            "sensitivity": self.synthetic_correct / self.n_synthetic if self.n_synthetic else float("nan"),
            "specificity": self.real_correct / self.n_real if self.n_real else float("nan"),
            "dprime": dprime(self.synthetic_correct, self.n_synthetic, self.n_real - self.real_correct, self.n_real),
        }


# =========================================================================== the draw

@dataclass(frozen=True)
class Item:
    """One image of the test. `lora_weight`: the synthetic image's LoRA weight, or the weight block of a real image."""

    id: str
    truth: str  # "real" or "synthetic"
    label: str
    cell_line: str | None
    lora_weight: float
    file: str  # relative to the data folder (real) or the synthetic folder (synthetic)
    path: Path = field(compare=False)


def _synthetic_pools(syn, weights: list[float]) -> dict[tuple[float, str], list[tuple[str, Path, str | None]]]:
    """(weight, class) -> [(file relative to SYN, absolute path, cell line)] over the shared and every fold's tree."""
    from prompts.layout import parse_weight_dir

    pools: dict[tuple[float, str], list] = {}
    trees = list(syn.shared.items()) + [(name, ds) for per in syn.per_fold.values() for name, ds in per.items()]
    for name, ds in trees:
        w = parse_weight_dir(name)
        if w not in weights:
            continue
        for r in ds.records:
            path = ds.abspath(r)
            pools.setdefault((w, r.label), []).append((path.relative_to(syn.root).as_posix(), path, r.cell_line))
    return {key: sorted(v, key=lambda t: t[0]) for key, v in pools.items()}


def _choose_weights(syn, wanted: list[float]) -> list[float]:
    from prompts.layout import parse_weight_dir, weight_dir_name

    have = sorted({parse_weight_dir(n) for n in syn.weights} - {None}, reverse=True)
    if not wanted:
        return have
    missing = [w for w in wanted if float(w) not in have]
    if missing:
        raise UserError(
            f"--lora-weights {', '.join(map(str, missing))}: no {weight_dir_name(missing[0])}/ tree in {syn.root} "
            f"(trees there: {', '.join(weight_dir_name(w) for w in have)})"
        )
    return list(dict.fromkeys(float(w) for w in wanted))


def draw_items(dataset, syn, weights: list[float], per_class: int, seed: int) -> list[Item]:
    """The test's images in page order (shuffled): per class and weight, `per_class` real and `per_class` synthetic.

    Raises a UserError naming the class (and weight) that has too few images, before anything is written.
    """
    rng = np.random.default_rng(seed)
    pools = _synthetic_pools(syn, weights)
    picks: list[tuple[str, str, str | None, float, str, Path]] = []
    for label in dataset.classes:
        real = [r for r in dataset.records if r.label == label]
        need = per_class * len(weights)
        if len(real) < need:
            raise UserError(
                f"class {label} has {len(real)} real image(s) in {dataset.root}, the test needs {need} "
                f"(--per-class {per_class} x {len(weights)} LoRA weight(s)); lower --per-class to {len(real) // len(weights)} or less"
            )
        chosen = rng.choice(len(real), size=need, replace=False)
        for j, idx in enumerate(chosen):  # the random sample is cut into one block per weight
            r = real[int(idx)]
            picks.append((REAL, label, r.cell_line, weights[j // per_class], r.path, dataset.abspath(r)))
        for w in weights:
            pool = pools.get((w, label), [])
            if len(pool) < per_class:
                from prompts.layout import weight_dir_name

                raise UserError(
                    f"class {label} has {len(pool)} synthetic image(s) in the {weight_dir_name(w)}/ trees of {syn.root}, "
                    f"the test needs {per_class}; lower --per-class to {len(pool)} or generate more"
                )
            for idx in rng.choice(len(pool), size=per_class, replace=False):
                rel, path, cell_line = pool[int(idx)]
                picks.append((SYNTHETIC, label, cell_line, w, rel, path))
    ids = _opaque_ids(len(picks), rng)
    order = rng.permutation(len(picks))
    return [Item(ids[i], *picks[i]) for i in order]


def _opaque_ids(n: int, rng) -> list[str]:
    """n distinct random 12-hex-digit ids (seeded): nothing about an image can be read from its id."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        s = "".join(f"{b:02x}" for b in rng.integers(0, 256, size=6))
        if s not in seen:
            seen.add(s)
            ids.append(s)
    return ids


def encode_image(path, size: int, image_format: str = "jpeg", quality: int = 92) -> tuple[str, bytes]:
    """(mime type, bytes) of one image as shown: shorter side resized to `size`, centre square, fresh pixels.

    Grayscale content (mode L, or RGB with equal channels) is encoded as 8-bit gray and colour as RGB, by
    content alone, so real and synthetic images differ in nothing but their pixels. The image is rebuilt
    from its pixel array, so no EXIF, text chunk (generation parameters), ICC profile or file name survives.
    """
    from PIL import Image

    from prompts.images import center_crop, is_grayscale, load_image, resize_shortest_side

    img = center_crop(resize_shortest_side(load_image(path), size), size)
    img = img.convert("L") if is_grayscale(img) else img.convert("RGB")
    fresh = Image.fromarray(np.asarray(img))
    buf = io.BytesIO()
    if image_format == "png":
        fresh.save(buf, format="PNG")
        return "image/png", buf.getvalue()
    fresh.save(buf, format="JPEG", quality=int(quality))
    return "image/jpeg", buf.getvalue()


# =========================================================================== blind-test

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def blind_test(data_section, blind_section) -> list[Path]:
    """Draw the images, write OUT/blind_test.html and OUT/key.json; returns the two paths.

    Every input is checked and every image encoded before anything is written. An existing
    key or page is never replaced: raters' answers are only worth their key.
    """
    from prompts.dataset import read_dataset
    from prompts.guard import check_new_file, check_output_dir

    from .blind_page import render_page
    from .synthetic import read_synthetic

    b = blind_section
    if not data_section.data:
        raise UserError("no data folder: pass --data DIR (the real images)")
    if not b.synthetic:
        raise UserError("no synthetic folder: pass --synthetic DIR (the --output folder of `python -m generate`)")
    if b.per_class < 1:
        raise UserError(f"--per-class {b.per_class}: must be at least 1")
    out = check_output_dir(b.output, data=data_section.data)
    check_output_dir(out, data=b.synthetic)
    for name in (KEY_FILE, BLIND_HTML):
        if (out / name).exists():
            raise UserError(f"--output {out} already holds {name}; a blind test is never replaced "
                            "(its key scores the answers raters send back): choose a new output folder")
        check_new_file(out / name, data=data_section.data)

    dataset = read_dataset(data_section.data, skip_bad_images=data_section.skip_bad_images)
    syn = read_synthetic(b.synthetic, dataset.classes)
    weights = _choose_weights(syn, b.lora_weights)
    items = draw_items(dataset, syn, weights, b.per_class, b.seed)
    images = []
    for it in items:
        mime, data = encode_image(it.path, b.size, b.image_format, b.jpeg_quality)
        images.append({"id": it.id, "src": f"data:{mime};base64," + base64.b64encode(data).decode("ascii")})

    test_id = secrets.token_hex(8)  # unique per page, so two tests never share a browser's saved progress
    page = render_page(test_id, images, b.size).encode("utf-8")
    key = {
        "format": KEY_FORMAT, "version": VERSION, "test_id": test_id, "created": _now(),
        "page": BLIND_HTML, "page_sha256": sha256_bytes(page),
        "data": str(Path(data_section.data).resolve()), "synthetic": str(Path(b.synthetic).resolve()),
        "settings": {"per_class": b.per_class, "lora_weights": weights, "seed": b.seed, "size": b.size,
                     "image_format": b.image_format, "jpeg_quality": b.jpeg_quality},
        "classes": dataset.classes,
        "images": [{"id": it.id, "truth": it.truth, "class": it.label, "cell_line": it.cell_line,
                    "lora_weight": it.lora_weight, "file": it.file} for it in items],
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / KEY_FILE, key)
    write_bytes_atomic(out / BLIND_HTML, page)
    return [out / BLIND_HTML, out / KEY_FILE]


# =========================================================================== blind-score

def read_key(path) -> dict:
    path = Path(path)
    obj = read_json_mapping(path, "key file", "pass the key.json written by `classify blind-test`")
    if obj.get("format") != KEY_FORMAT or not isinstance(obj.get("images"), list):
        raise UserError(f"key file {path} is not a key written by `classify blind-test` (format {obj.get('format')!r})")
    return obj


def read_answers(path, key: dict) -> dict:
    """One rater's answers.json, checked against the key: same test, known ids, known calls."""
    path = Path(path)
    obj = read_json_mapping(path, "answers file", "pass the answers.json a rater downloaded from blind_test.html")
    if obj.get("format") != ANSWERS_FORMAT or not isinstance(obj.get("answers"), list):
        raise UserError(f"answers file {path} is not an answers.json downloaded from a blind-test page")
    if obj.get("test_id") != key["test_id"]:
        raise UserError(f"answers file {path} belongs to another blind test (test id {obj.get('test_id')!r}, "
                        f"the key's is {key['test_id']!r}); pass the key.json written with that page")
    if not str(obj.get("rater") or "").strip():
        raise UserError(f"answers file {path} has no rater name; add one in its \"rater\" field")
    ids = {im["id"] for im in key["images"]}
    for a in obj["answers"]:
        if not isinstance(a, dict) or a.get("id") not in ids:
            raise UserError(f"answers file {path}: image id {a.get('id') if isinstance(a, dict) else a!r} is not in the key")
        if a.get("call") not in (REAL, SYNTHETIC, SKIP):
            raise UserError(f"answers file {path}: call {a.get('call')!r} for image {a['id']} must be real, synthetic or skip")
    return obj


def _scopes(key: dict) -> list[tuple[str, str]]:
    """(class, weight) margins of the table: overall, each class, each weight."""
    classes = sorted({im["class"] for im in key["images"]})
    weights = sorted({im["lora_weight"] for im in key["images"]}, reverse=True)
    return [(ALL, ALL)] + [(c, ALL) for c in classes] + [(ALL, _wtext(w)) for w in weights]


def _wtext(w: float) -> str:
    return repr(float(w))


def _in_scope(im: dict, scope: tuple[str, str]) -> bool:
    c, w = scope
    return (c == ALL or im["class"] == c) and (w == ALL or _wtext(im["lora_weight"]) == w)


def score(key: dict, raters: dict[str, dict[str, dict]]) -> dict:
    """Scores of every rater (and all pooled) on every scope, agreement, and the sample-size figures.

    raters: rater name -> image id -> answer ({"call", "confidence"}).
    """
    truth = {im["id"]: im for im in key["images"]}
    rows = []
    for name in [*raters, POOLED] if len(raters) > 1 else list(raters):
        calls = [a for r in raters.values() for a in r.values()] if name == POOLED else list(raters[name].values())
        for scope in _scopes(key):
            s = Score()
            for a in calls:
                if _in_scope(truth[a["id"]], scope):
                    s.add(truth[a["id"]]["truth"], a["call"])
            rows.append({"rater": name, "class": scope[0], "lora_weight": scope[1], **s.stats()})
    headline = POOLED if len(raters) > 1 else next(iter(raters))
    overall = next(r for r in rows if (r["rater"], r["class"], r["lora_weight"]) == (headline, ALL, ALL))
    return {
        "format": SCORES_FORMAT, "version": VERSION, "test_id": key["test_id"], "n_images": len(key["images"]),
        "raters": list(raters), "rows": rows, "overall": overall,
        "agreement": agreement(raters),
        "by_confidence": by_confidence(truth, raters),
        "calls_needed_60": calls_needed(),
        "detectable_accuracy": detectable_accuracy(overall["calls"]),
    }


def agreement(raters: dict[str, dict[str, dict]]) -> dict | None:
    """Cohen's (two raters) or Fleiss' (three or more) kappa on the images every rater called; None for one rater."""
    if len(raters) < 2:
        return None
    names = list(raters)
    common = sorted(set.intersection(*(
        {i for i, a in raters[n].items() if a["call"] != SKIP} for n in names)))
    if len(names) == 2:
        a, b = ([raters[n][i]["call"] for i in common] for n in names)
        return {"statistic": "Cohen's kappa", "kappa": cohen_kappa(a, b), "images": len(common)}
    counts = [[sum(raters[n][i]["call"] == c for n in names) for c in (REAL, SYNTHETIC)] for i in common]
    return {"statistic": "Fleiss' kappa", "kappa": fleiss_kappa(counts) if common else float("nan"), "images": len(common)}


def by_confidence(truth: dict, raters: dict[str, dict[str, dict]]) -> list[dict]:
    """Pooled accuracy per stated confidence (1-3, or none): are confident calls more often right?"""
    out = []
    for conf in (1, 2, 3, None):
        s = Score()
        for r in raters.values():
            for a in r.values():
                if a["call"] != SKIP and a.get("confidence") == conf:
                    s.add(truth[a["id"]]["truth"], a["call"])
        if s.calls:
            st = s.stats()
            out.append({"confidence": conf, "calls": st["calls"], "accuracy": st["accuracy"],
                        "ci_low": st["ci_low"], "ci_high": st["ci_high"]})
    return out


def blind_score(key_path, answer_paths, output) -> list[Path]:
    """Score raters' answers.json files against key.json; writes scores JSON/CSV and a Markdown summary into `output`."""
    from prompts.guard import check_output_dir

    key = read_key(key_path)
    if not answer_paths:
        raise UserError("no answers: pass --answers a1.json [a2.json ...] (the files raters downloaded)")
    out = check_output_dir(output, data=key.get("data"))
    check_output_dir(out, data=key.get("synthetic"))
    raters: dict[str, dict[str, dict]] = {}
    seen: dict[str, Path] = {}
    for p in answer_paths:
        obj = read_answers(p, key)
        name = str(obj["rater"]).strip()
        if name in seen:
            raise UserError(f"answers files {seen[name]} and {p} are both from rater {name!r}; "
                            "score one of them, or tell them apart in their \"rater\" field")
        seen[name] = Path(p)
        raters[name] = {a["id"]: a for a in obj["answers"]}  # a later answer to the same id wins
    scores = score(key, raters)
    summary = summary_from_scores(scores)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / SCORES_JSON, out / SCORES_CSV, out / SUMMARY_MD]
    write_json_atomic(paths[0], _json_safe(scores))
    write_text_atomic(paths[1], _csv(summary))
    write_text_atomic(paths[2], summary.markdown())
    logging.getLogger("classify").info("%s", summary.sentence)
    return paths


def _json_safe(obj):
    """NaN becomes null (JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _csv(summary: "BlindSummary") -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(summary.columns)
    w.writerows(summary.rows)
    return buf.getvalue()


# =========================================================================== the summary the report shows

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
