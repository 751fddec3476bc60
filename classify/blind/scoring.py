"""`classify blind-score`: read the key and the raters' answers (checked), score every rater and scope."""
from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

from prompts.errors import UserError
from prompts.files import read_json_mapping, sha256_file, write_json_atomic, write_text_atomic

from .names import (
    ALL,
    ANSWERS_FORMAT,
    CONFIDENCES,
    KEY_FORMAT,
    POOLED,
    REAL,
    SCORES_CSV,
    SCORES_FORMAT,
    SCORES_JSON,
    SKIP,
    SUMMARY_MD,
    SYNTHETIC,
    VERSION,
)
from .stats import Score, calls_needed, cohen_kappa, detectable_accuracy, fleiss_kappa
from .summary import BlindSummary, summary_from_scores


def read_key(path) -> dict:
    """key.json written by `classify blind-test`, checked: its test id, and id / truth / class / weight of every image."""
    path = Path(path)
    obj = read_json_mapping(path, "key file", "pass the key.json written by `classify blind-test`")
    if obj.get("format") != KEY_FORMAT or not isinstance(obj.get("images"), list):
        raise UserError(f"key file {path} is not a key written by `classify blind-test` (format {obj.get('format')!r})")
    if not isinstance(obj.get("test_id"), str) or not obj["test_id"]:
        raise UserError(f"key file {path} has no test id: pass the key.json written with the page, unedited")
    seen = set()
    for im in obj["images"]:
        where = f"key file {path}: image {im.get('id') if isinstance(im, dict) else im!r}"
        if not isinstance(im, dict) or not isinstance(im.get("id"), str) or im["id"] in seen:
            raise UserError(f"{where}: every image needs a distinct string id")
        seen.add(im["id"])
        if im.get("truth") not in (REAL, SYNTHETIC):
            raise UserError(f"{where}: truth {im.get('truth')!r} must be {REAL!r} or {SYNTHETIC!r}")
        if not isinstance(im.get("class"), str):
            raise UserError(f"{where}: class {im.get('class')!r} must be a class name")
        w = im.get("lora_weight")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise UserError(f"{where}: lora_weight {w!r} must be a number")
    return obj


def _check_answer(a, path: Path, ids: set[str]) -> None:
    """One answer of a rater: a string id of the key, a call, and a confidence of 1-3 or null."""
    if not isinstance(a, dict):
        raise UserError(f"answers file {path}: answer {a!r} must be an object with id, call and confidence")
    if not isinstance(a.get("id"), str) or a["id"] not in ids:
        raise UserError(f"answers file {path}: image id {a.get('id')!r} is not in the key")
    if a.get("call") not in (REAL, SYNTHETIC, SKIP):
        raise UserError(f"answers file {path}: call {a.get('call')!r} for image {a['id']} must be real, synthetic or skip")
    conf = a.get("confidence")
    if conf is not None and (isinstance(conf, bool) or conf not in CONFIDENCES):
        raise UserError(f"answers file {path}: confidence {conf!r} for image {a['id']} must be 1, 2, 3 or null")


def read_answers(path, key: dict) -> dict:
    """One rater's answers.json, checked against the key: same test, a rater name, known ids, known calls."""
    path = Path(path)
    obj = read_json_mapping(path, "answers file", "pass the answers.json a rater downloaded from blind_test.html")
    if obj.get("format") != ANSWERS_FORMAT or not isinstance(obj.get("answers"), list):
        raise UserError(f"answers file {path} is not an answers.json downloaded from a blind-test page")
    if obj.get("test_id") != key["test_id"]:
        raise UserError(f"answers file {path} belongs to another blind test (test id {obj.get('test_id')!r}, "
                        f"the key's is {key['test_id']!r}); pass the key.json written with that page")
    if not isinstance(obj.get("rater"), str) or not obj["rater"].strip():
        raise UserError(f"answers file {path}: rater {obj.get('rater')!r} must be a name; put one in its \"rater\" field")
    ids = {im["id"] for im in key["images"]}
    for a in obj["answers"]:
        _check_answer(a, path, ids)
    return obj


def coverage(key: dict, raters: dict[str, dict[str, dict]]) -> list[dict]:
    """Per rater: images answered (skips included) of the images in the test, and whether they finished."""
    n = len(key["images"])
    return [{"rater": name, "answered": len(answers), "images": n, "complete": len(answers) >= n}
            for name, answers in raters.items()]


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
        "coverage": coverage(key, raters),
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
    scores["key"] = {"file": str(Path(key_path).resolve()), "sha256": sha256_file(key_path), "test_id": key["test_id"]}
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
