"""`study search`: an Optuna search of LoRA parameters scored by realism on a fold's test images.

Tiny Stable Diffusion, a small copy of ../shared/data/pbc3 (2 classes x 4 images at 32 px,
2 folds), 1 epoch, 2 images per class, EfficientNetB0 at 32 px with random weights.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prompts.config import load_study
from prompts.errors import UserError
from prompts.normalize import DEFAULT

from .conftest import ROOT, shared_data

CLASSES = 2  # of pbc3's 3: each class costs a LoRA, a generation and a score per trial
PER_CLASS = 4  # images per class in the small copy: 2 train, 2 test per fold
SIZE = 32


@pytest.fixture(scope="module")
def small_pbc3(tmp_path_factory) -> Path:
    """2 classes x 4 images of pbc3, resized to 32 px, with a 2-fold split file."""
    from PIL import Image

    from classify.folds import make_split
    from prompts.dataset import read_dataset
    from prompts.splits import write_split

    src = shared_data("pbc3")
    root = tmp_path_factory.mktemp("pbc3") / "data"
    for cls_dir in sorted(p for p in src.iterdir() if p.is_dir())[:CLASSES]:
        (root / cls_dir.name).mkdir(parents=True)
        for path in sorted(cls_dir.iterdir())[:PER_CLASS]:
            with Image.open(path) as im:
                im.convert("RGB").resize((SIZE, SIZE)).save(root / cls_dir.name / f"{path.stem}.png")
    write_split(root.parent / "folds.json", make_split(read_dataset(root), n_splits=2, seed=0))
    return root


@pytest.fixture(scope="module")
def b0_weights(small_pbc3) -> Path:
    """EfficientNetB0 at 32 px, random weights with BatchNorm statistics calibrated on the images (features that vary)."""
    from classify.model import write_calibrated_weights
    from classify.pixels import load_pixels

    paths = sorted(small_pbc3.rglob("*.png"))
    return write_calibrated_weights("EfficientNetB0", SIZE, load_pixels(paths, SIZE, DEFAULT), small_pbc3.parent / "b0.weights.h5")


def write_study(tmp: Path, data: Path, model: Path, weights: Path, trials: int = 4, extra: str = "") -> Path:
    path = tmp / "study.yaml"
    path.write_text(f"""
data: {{data: {data}, split: {data.parent / 'folds.json'}}}
lora: {{model: {model}, repeats: 1, epochs: 1, batch_size: 2, resolution: {SIZE}}}
generate: {{steps: 2, size: [{SIZE}, {SIZE}], batch_size: 2}}
classify: {{backbone: EfficientNetB0, weights: {weights}, image_size: {SIZE}, batch_size: 8, cache_dir: {tmp / 'cache'}}}
search:
  output: {tmp / 'search'}
  trials: {trials}
  images_per_class: 2
  rank: [2, 4]
  alpha_ratio: [1.0]
  unet_lr: "1e-4..1e-2 log"
  text_encoder_lr: [0.0, 1.0e-4]
  epochs: [1]
  network: [attention]
  lora_weight: [0.8, 1.0]
{extra}""")
    return path


# --------------------------------------------------------------------------- the search space (no model)

def test_space_entries_are_lists_ranges_or_empty():
    from study.search import parse_dimension

    assert parse_dimension("rank", [4, 8]).choices == (4, 8)
    assert parse_dimension("rank", "4,8,16").choices == (4, 8, 16)
    d = parse_dimension("unet_lr", "1e-5..1e-3 log")
    assert (d.low, d.high, d.log, d.integer) == (1e-5, 1e-3, True, False)
    d = parse_dimension("epochs", "5..20 step 5")
    assert (d.low, d.high, d.step, d.integer) == (5, 20, 5, True)
    assert parse_dimension("network", []) is None
    for key, bad, words in (("rank", "8..4", "LOW must be below HIGH"), ("unet_lr", "0..1e-3 log", "LOW above 0"),
                            ("epochs", "1..2.5", "integer"), ("unet_lr", "1e-5...", "not a range"),
                            ("network", "a..b", "not a range"), ("rank", ["x"], "not a number")):
        with pytest.raises(UserError, match=words):
            parse_dimension(key, bad)


def test_unknown_network_preset_is_named():
    from prompts.schema.search import SearchSection
    from study.search import search_space

    with pytest.raises(UserError, match="'locon' is not a network preset"):
        search_space(SearchSection(network=["kohya", "locon"]))


def test_objective_is_zero_for_indistinguishable_and_grows_with_either_term():
    import math

    from study.search import class_objective

    assert class_objective(0.0, 0.5) == 0
    assert class_objective(-0.02, 0.5) == 0  # unbiased KID dips below 0 by chance: clamped
    assert class_objective(0.3, 0.5) == pytest.approx(math.log1p(0.3))
    assert class_objective(0.0, 1.0) == pytest.approx(1.0)  # always told apart
    assert class_objective(0.0, 0.25) == pytest.approx(0.5)  # below chance is no better than above it
    assert class_objective(0.2, float("nan")) == pytest.approx(math.log1p(0.2))
    assert class_objective(0.1, 0.6) < class_objective(0.2, 0.6) < class_objective(0.2, 0.7)


def test_trial_parameters_map_onto_the_study():
    from study.search import trial_study

    s = trial_study(load_study(None), {"rank": 16, "alpha_ratio": 0.5, "unet_lr": 1e-4, "epochs": 3, "lora_weight": 0.7,
                                       "network": "attention"})
    assert (s.lora.rank, s.lora.alpha, s.lora.unet_lr, s.lora.epochs, s.lora.network) == (16, 8.0, 1e-4, 3, "attention")
    assert s.generate.lora_weights == [0.7]


def test_search_needs_a_split(tmp_path, class_data):
    from study.search import run_search

    study = tmp_path / "s.yaml"
    study.write_text(f"data: {{data: {class_data}}}\nlora: {{model: tiny}}\nsearch: {{output: {tmp_path / 'out'}}}\n")
    with pytest.raises(UserError, match="needs a split file"):
        run_search(study)
    assert not (tmp_path / "out" / "trials").exists()


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_stale_trials_of_gone_processes_are_failed_and_live_ones_kept(tmp_path, kind):
    import socket

    import optuna
    from optuna.trial import TrialState

    from study.search import STALE_SECONDS, fail_stale_trials, open_storage

    url = str(tmp_path / "s.journal") if kind == "journal" else f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=open_storage(url), study_name="s")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    now, host = time.time(), socket.gethostname()
    attrs = [{"host": host, "pid": int(gone)},  # this host, process gone
             {"host": host, "pid": os.getpid()},  # this host, alive
             {"host": "elsewhere", "pid": 1, "heartbeat": now - STALE_SECONDS - 1},  # silent too long
             {"host": "elsewhere", "pid": 1, "heartbeat": now}]  # beating
    for a in attrs:
        t = study.ask()
        for k, v in a.items():
            t.set_user_attr(k, v)
        (tmp_path / "trials" / str(t.number)).mkdir(parents=True)
    assert fail_stale_trials(study, tmp_path) == [0, 2]
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.RUNNING, TrialState.FAIL, TrialState.RUNNING]
    assert sorted(p.name for p in (tmp_path / "trials").iterdir()) == ["1", "3"]
    assert fail_stale_trials(study, tmp_path) == []  # once only


def test_bad_storage_url_is_one_line(tmp_path):
    from study.search import open_storage

    with pytest.raises(UserError, match="--storage nosuchdb://x: Optuna cannot open it"):
        open_storage("nosuchdb://x")


# --------------------------------------------------------------------------- real searches on the tiny model

def _run(study_path: Path, **kw):
    from study.search import run_search

    return run_search(study_path, **kw)


def _trials(out: Path, name: str = "lora-search"):
    import optuna

    from study.search import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(str(out / "search.journal"))).get_trials()


def _cli(study: Path) -> list[str]:
    return [sys.executable, "-m", "study", "search", "--config", str(study), "--no-progress"]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", USE_TF="0")


def _check_trials(out: Path, n: int):
    """n COMPLETE trials, each number once, and a folder for exactly the complete ones (failed/pruned: removed)."""
    from optuna.trial import TrialState

    trials = _trials(out)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    complete = sorted(t.number for t in trials if t.state == TrialState.COMPLETE)
    assert len(complete) == n, [(t.number, t.state.name, t.user_attrs.get("note")) for t in trials]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert sorted(int(p.name) for p in (out / "trials").iterdir()) == complete
    assert len({json.dumps(t.params, sort_keys=True) for t in trials if t.state == TrialState.COMPLETE}) == n
    return trials


@pytest.mark.slow
def test_search_killed_in_trial_2_resumes_to_4_complete_trials(small_pbc3, tiny_model, b0_weights, tmp_path, caplog):
    """kill -9 during trial 2, re-run: 4 complete trials, none twice; best_study.yaml validates; image lists are clean."""
    from optuna.trial import TrialState

    from prompts.dataset import read_dataset
    from prompts.splits import read_split

    study = write_study(tmp_path, small_pbc3, tiny_model, b0_weights)
    out = tmp_path / "search"
    proc = subprocess.Popen(_cli(study), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (out / "trials" / "1" / "study.yaml").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    time.sleep(0.5)  # inside trial 2 (number 1), which takes several seconds: training its first LoRA
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    killed = {t.number: t.state for t in _trials(out)}
    assert killed[0] == TrialState.COMPLETE and killed[1] == TrialState.RUNNING

    with caplog.at_level("INFO", logger="study.search"):
        result = _run(study)  # the same search again, in this process
    assert "trial 1: its process" in caplog.text and "marked FAIL" in caplog.text
    trials = _check_trials(out, 4)
    assert trials[1].state == TrialState.FAIL and result["complete"] == 4

    best = load_study(out / "best" / "study.yaml")
    assert best.lora.rank == result["best"]["rank"] and best.generate.lora_weights == [result["best"]["lora_weight"]]
    assert best.lora.unet_lr == pytest.approx(result["best"]["unet_lr"])
    page = (out / "search.html").read_text()
    assert "data:image/png;base64," in page and "Optimisation history" in page and "<script" not in page
    assert (out / "trials.csv").read_text().count("\n") == len(trials) + 1

    # the objective never sees a training image; the LoRAs never see a test image
    ds = read_dataset(small_pbc3)
    fold = read_split(small_pbc3.parent / "folds.json", ds).folds[0]
    train = {str(small_pbc3 / p) for p in fold.train}
    test = {str(small_pbc3 / p) for p in fold.test}
    import yaml

    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        scores = json.loads((out / "trials" / str(t.number) / "realism.json").read_text())
        assert [row["class"] for row in scores["classes"]] == ds.classes
        for row in scores["classes"]:
            assert row["real_images"] and set(row["real_images"]) <= test and not set(row["real_images"]) & train
            assert len(row["synthetic_images"]) == 2
            assert all(str(out / "trials" / str(t.number) / row["class"] / "images") in p for p in row["synthetic_images"])
        configs = list((out / "trials" / str(t.number)).rglob("lora/**/config.yaml"))
        assert len(configs) == len(ds.classes)
        for cfg in configs:
            images = {str(small_pbc3 / p) for p in yaml.safe_load(cfg.read_text())["group"]["images"]}
            assert images and images <= train


@pytest.mark.slow
def test_two_processes_on_one_storage_finish_n_trials_together(small_pbc3, tiny_model, b0_weights, tmp_path):
    """A second process (a subprocess) and this one share the journal file and finish 3 complete trials together."""
    study = write_study(tmp_path, small_pbc3, tiny_model, b0_weights, trials=3, extra="  pruner: none")
    out = tmp_path / "search"
    other = subprocess.Popen(_cli(study), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (out / "trials" / "0").exists() and time.time() < deadline and other.poll() is None:
        time.sleep(0.2)  # the other process has started its first trial
    assert other.poll() is None, other.communicate()[0][-3000:]
    _run(study)
    log = other.communicate(timeout=600)[0]
    assert other.returncode == 0, log[-3000:]
    trials = _check_trials(out, 3)
    pids = {t.user_attrs["pid"] for t in trials if t.state.name == "COMPLETE"}
    assert pids == {other.pid, os.getpid()}, "both processes ran trials"


@pytest.mark.slow
def test_two_objectives_add_the_downstream_macro_f1(small_pbc3, tiny_model, b0_weights, tmp_path):
    extra = "  objective: realism+f1\n  f1_folds: [1]\n  f1_mix: real+50\n"
    study = write_study(tmp_path, small_pbc3, tiny_model, b0_weights, trials=1, extra=extra)
    text = study.read_text().replace("cache_dir:", "epochs: 2, augment: false, cache_dir:")
    study.write_text(text)
    result = _run(study)
    out = tmp_path / "search"
    (t,) = _trials(out)
    assert result["complete"] == 1 and len(t.values) == 2 and 0 <= t.values[1] <= 1
    # the F1 folds' LoRAs are trained on their own fold's training images (fold 1 of the split is fold_0 there)
    assert sorted(p.name for p in (out / "trials" / "0" / "f1" / "lora").iterdir()) == ["fold_0"]
    assert "Pareto front" in (out / "search.html").read_text()
    load_study(out / "best" / "study.yaml")


@pytest.mark.slow
def test_diverged_trials_fail_and_too_many_in_a_row_stop_with_one_line(small_pbc3, tiny_model, b0_weights, tmp_path):
    from optuna.trial import TrialState

    from study.search import DIVERGED_IN_A_ROW

    study = write_study(tmp_path, small_pbc3, tiny_model, b0_weights, trials=1, extra="  pruner: none")
    study.write_text(study.read_text().replace('unet_lr: "1e-4..1e-2 log"', "unet_lr: [1.0e+4]").replace("epochs: [1]", "epochs: [3]"))
    with pytest.raises(UserError, match=f"{DIVERGED_IN_A_ROW} trials in a row diverged .* narrow the search's learning-rate"):
        _run(study)
    trials = _trials(tmp_path / "search")
    assert [t.state for t in trials] == [TrialState.FAIL] * DIVERGED_IN_A_ROW
    assert all("no LoRA was written" in t.user_attrs["note"] for t in trials)
    assert not list((tmp_path / "search" / "trials").iterdir())


def test_cli_flags_reach_the_search_and_bad_values_are_one_line(tmp_path, class_data):
    study = tmp_path / "s.yaml"
    study.write_text(f"data: {{data: {class_data}}}\nlora: {{model: {tmp_path / 'm'}}}\n")
    done = subprocess.run([*_cli(study), "--output", str(tmp_path / "out"), "--rank", "8..4"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "search.rank: '8..4': LOW must be below HIGH" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
    done = subprocess.run([*_cli(study), "--output", str(tmp_path / "out"), "--split", str(tmp_path / "none.json")], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "none.json does not exist" in done.stderr and not (tmp_path / "out").exists()
    done = subprocess.run([*_cli(study), "--output", str(tmp_path / "out"), "--trials", "0"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--trials" in done.stderr and "at least 1" in done.stderr


def test_a_trial_whose_images_come_out_nan_fails_and_the_search_goes_on(small_pbc3, tiny_model, b0_weights, tmp_path):
    """Trial 0 samples at LoRA weight 1e30 (its images overflow to NaN: generate raises BadImages); trial 1 completes."""
    import optuna
    from optuna.trial import TrialState

    from study.search import open_storage

    study = write_study(tmp_path, small_pbc3, tiny_model, b0_weights, trials=1, extra="  pruner: none")
    study.write_text(study.read_text().replace("lora_weight: [0.8, 1.0]", "lora_weight: [1.0e+30, 1.0]")
                     .replace("rank: [2, 4]", "rank: [2]").replace("text_encoder_lr: [0.0, 1.0e-4]", "text_encoder_lr: [0.0]")
                     .replace('unet_lr: "1e-4..1e-2 log"', "unet_lr: [1.0e-3]"))
    url = str(tmp_path / "search" / "search.journal")
    ostudy = optuna.create_study(storage=open_storage(url), study_name="lora-search")
    ostudy.enqueue_trial({"lora_weight": 1.0e30})
    ostudy.enqueue_trial({"lora_weight": 1.0})
    result = _run(study, progress=False)
    trials = _trials(tmp_path / "search")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE], [t.user_attrs.get("note") for t in trials]
    assert "NaN or all black" in trials[0].user_attrs["note"] and result["complete"] == 1
    assert sorted(p.name for p in (tmp_path / "search" / "trials").iterdir()) == ["1"]


def test_the_search_and_the_realism_report_score_the_same_images_alike(small_pbc3, b0_weights, tmp_path):
    """One class's real test images against 'synthetic' ones (the other fold's images): the search's scorer and
    `classify realism` (the report's table) give the same KID and C2ST."""
    from classify.realism import run_realism
    from prompts.config import load_study
    from study.search import RealismScorer, fold_images

    study = load_study(write_study(tmp_path, small_pbc3, tmp_path / "unused", b0_weights))
    images = fold_images(study.data, 0)
    label = sorted(images.test)[0]
    fake = images.train[label]  # stand-ins for synthetic images: real images of the class the scorer never compares
    # a synthetic tree classify realism reads: OUT/fold_0/w1.0/<class>/<image>, with the real data = the test images
    real_root, syn_root = tmp_path / "real", tmp_path / "syn"
    (real_root / label).mkdir(parents=True)
    for p in images.test[label]:
        (real_root / label / p.name).write_bytes(p.read_bytes())
    tree = syn_root / "w1.0" / label
    tree.mkdir(parents=True)
    for p in fake:
        (tree / p.name).write_bytes(p.read_bytes())
    scorer = RealismScorer(study.classify, images, tmp_path / "features")
    row = scorer.score(label, fake)
    cls = study.classify
    cls.synthetic, cls.output = str(syn_root), str(tmp_path / "realism")
    study.data.data = str(real_root)
    (report_row,) = run_realism(study.data, cls, progress=False)["rows"]
    assert row["kid"] == pytest.approx(report_row["kid"], rel=1e-9)
    assert row["c2st_accuracy"] == pytest.approx(report_row["c2st_accuracy"], rel=1e-9)


# --------------------------------------------------------------------------- the page and the comparison (no model)

def _fake_search(n_complete: int, tmp_path: Path):
    """An Optuna study with n_complete trials of two parameters and per-class scores (no training)."""
    import optuna

    from study.search import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ostudy = optuna.create_study(storage=open_storage(str(tmp_path / "s.journal")), study_name="lora-search",
                                 sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(n_complete):
        t = ostudy.ask()
        rank, lr = t.suggest_categorical("rank", [2, 4, 8]), t.suggest_float("unet_lr", 1e-5, 1e-3, log=True)
        t.set_user_attr("kid", {"good": rank * 0.01, "bad<i>": lr * 100})
        t.set_user_attr("c2st", {"good": 0.6, "bad<i>": 0.7})
        ostudy.tell(t, rank * 0.01 + lr * 100)
    return ostudy


@pytest.mark.parametrize("n", [3, 10])
def test_the_search_page_says_what_it_cannot_claim(tmp_path, n):
    from study.search import FoldImages
    from study.search_report import write_outputs

    study = load_study(None)
    study.lora.model, study.classify.weights, study.search.output = "tiny", "calibrated", str(tmp_path)
    images = FoldImages(0, {}, {"good": [tmp_path / f"g{i}.png" for i in range(25)], "bad<i>": [tmp_path / "b.png"] * 4})
    result = write_outputs(_fake_search(n, tmp_path), study, study.search, tmp_path, images)
    page = (tmp_path / "search.html").read_text()
    assert 'id="smoke"' in page and "tiny random Stable Diffusion" in page and "calibrated" in page
    assert ("Parameter importances (fANOVA)" in page) == (n >= 10) and ('id="importance-note"' in page) == (n < 10)
    assert "Class bad&lt;i&gt;: its scores rest on 4 test image(s)" in page and "Class good:" not in page  # autoescaped
    assert "<i>bad" not in page
    assert page.count("<tr><td class=\"num\">") == 2 * n  # per-class rows: every complete trial x class
    best = load_study(tmp_path / "best" / "study.yaml")
    assert best.study.output == str((tmp_path / "best").resolve()) and best.lora.model == "tiny"
    assert best.lora.rank == result["best_params"]["rank"]


def _fake_study_outputs(folder: Path, f1_by_fold: dict[str, list[float]], weight: str, lora_rank: int) -> Path:
    """A study file and the folds.csv / realism.json its workflow would have written (2 folds, mixes real and real+50)."""
    out = folder / "out"
    (out / "report").mkdir(parents=True)
    (out / "realism").mkdir(parents=True)
    lines = ["tree,mix,fold,repeat,n_train,n_test,synthetic_fraction,leaky,accuracy,balanced_accuracy,precision,recall,f1"]
    for mix, values in f1_by_fold.items():
        tree = "real" if mix == "real" else f"w{weight}"
        lines += [f"{tree},{mix},{k},0,80,20,0,False,0,0,0,0,{v}" for k, v in enumerate(values)]
    (out / "report" / "folds.csv").write_text("\n".join(lines) + "\n")
    (out / "realism" / "realism.json").write_text(json.dumps({"rows": [
        {"weight": weight, "class": "good", "kid": 0.5, "c2st_accuracy": 0.9}, {"weight": weight, "class": "bad", "kid": 0.3,
                                                                                 "c2st_accuracy": 0.7}]}))
    study = folder / "study.yaml"
    study.write_text(f"study: {{output: out}}\nlora: {{model: tiny, rank: {lora_rank}}}\ngenerate: {{lora_weights: [{weight}]}}\n"
                     "classify: {folds: 5}\nsearch: {fold: 0}\n")
    return study


def test_the_comparison_sets_both_studies_side_by_side_and_answers_on_held_out_folds(tmp_path):
    from study.compare import write_comparison

    real = [0.70, 0.71, 0.69, 0.72, 0.70]
    default = _fake_study_outputs(tmp_path / "default", {"real": real, "real+50": [0.70, 0.71, 0.69, 0.72, 0.70]}, "1.0", 4)
    # the best study: far better on the search's fold 0 only (the winner's curse), the same elsewhere
    best = _fake_study_outputs(tmp_path / "best", {"real": real, "real+50": [0.95, 0.71, 0.69, 0.72, 0.70]}, "0.8", 8)
    page, md = write_comparison(default, best, None, tmp_path / "comparison")
    text = md.read_text()
    assert "| lora.rank | 4 | 8 |" in text and "| generate.lora_weights | [1.0] | [0.8] |" in text
    held = text.split("## Macro F1 and verdicts vs real: held-out")[1].split("## Macro F1 and verdicts vs real: every fold")[0]
    assert "| best | w0.8 | real+50 | 4 | 0.705" in held and "| default | w1.0 | real+50 | 4 |" in held
    assert "equivalent" in held  # identical on the held-out folds
    every = text.split("## Macro F1 and verdicts vs real: every fold")[1]
    assert "| best | w0.8 | real+50 | 5 | 0.754" in every
    assert "| best | 0.8 | 2 | 0.4000 | 0.800 |" in text  # realism: mean KID and two-sample accuracy
    assert 'id="smoke"' in page.read_text() and "<script" not in page.read_text()


def test_the_search_and_comparison_pages_fit_1280_px_in_a_browser(tmp_path):
    """Headless Chromium at a 1280 px viewport: no horizontal scrolling of the page (wide tables scroll in their box)."""
    from .test_blind import CHROMEDRIVER, CHROMIUM, _browser

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(f"{CHROMIUM} and {CHROMEDRIVER} are needed (Debian packages chromium, chromium-driver)")
    pytest.importorskip("selenium")
    from study.compare import write_comparison
    from study.search import FoldImages
    from study.search_report import write_outputs

    study = load_study(None)
    study.search.output = str(tmp_path / "search")
    many = {f"class_with_a_long_name_{i}": [tmp_path / "x.png"] * 30 for i in range(8)}
    write_outputs(_fake_search(12, tmp_path), study, study.search, tmp_path / "search", FoldImages(0, {}, many))
    real = [0.70, 0.71, 0.69, 0.72, 0.70]
    page, _ = write_comparison(_fake_study_outputs(tmp_path / "d", {"real": real, "real+50": real}, "1.0", 4),
                               _fake_study_outputs(tmp_path / "b", {"real": real, "real+50": real}, "0.8", 8), None,
                               tmp_path / "comparison")
    driver = _browser(tmp_path / "profile", tmp_path / "downloads")
    try:
        for html in (tmp_path / "search" / "search.html", page):
            driver.get(html.as_uri())
            width = driver.execute_script("return document.documentElement.scrollWidth")
            widest = driver.execute_script("return Math.max(0, ...[...document.querySelectorAll('img, table, figure')]"
                                           ".filter(e => !e.closest('.wide')).map(e => e.getBoundingClientRect().right))")
            assert width <= 1280 and widest <= 1280, (html.name, width, widest)
    finally:
        driver.quit()
