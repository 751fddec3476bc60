"""What `generate` promises (issues 9 and 10), one test per promise, each with the data folder's checksums:

1. nothing escapes OUT and nothing lands in DATA: output locations, labels, files that are not ours;
2. each synthetic tree records its fingerprint: an equal one resumes, a changed one is one line;
3. provenance across steps: LoRAs trained on a fold's test images are refused (by path and by content),
   trigger words that differ are said, a LoRA without a record is said once;
4. templates: a class key that matches no class is an error; `{class}` means the same everywhere;
5. every tree generate writes reads back in `classify` (odd weights, a unicode class);
6. the library raises UserError (no SystemExit) and does not change its arguments; a LoRA with
   wrong shapes is one line, without diffusers' output.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generate.__main__ import main
from prompts.files import sha256_file
from prompts.layout import FINGERPRINT_FILE, LORA_DIFFUSERS_FILE, weight_dir_name
from prompts.splits import Fold, Split, write_split

from .conftest import ROOT
from .helpers import tree_checksums
from .lora_fixtures import make_lora

torch = pytest.importorskip("torch")
SIZE, STEPS = "32", "2"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- helpers




def run(*args) -> int:
    try:
        return main([str(a) for a in args] + ["--no-progress"])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


def args_for(model, lora, data, out, *extra):
    return ["--model", model, "--lora", lora, "--data", data, "--output", out, "--size", SIZE, "--steps", STEPS,
            "--lora-weights", "1.0", "--seed", "1", *extra]


def one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def peft_key(key: str) -> str:
    """A diffusers LoRA key in peft's naming (`lora_A`/`lora_B`), as `lora train` writes them."""
    for old, new in ((".lora.down.", ".lora_A."), (".lora.up.", ".lora_B."), (".lora_linear_layer.down.", ".lora_A."),
                     (".lora_linear_layer.up.", ".lora_B.")):
        key = key.replace(old, new)
    return key


def write_record(lora_folder: Path, images: dict[str, str], triggers: dict[str, str]) -> None:
    """The record `lora train` writes beside a LoRA (the fields generate reads: `images`, `triggers`)."""
    (lora_folder / FINGERPRINT_FILE).write_text(json.dumps({"version": 1, "parts": {}, "images": images,
                                                            "triggers": triggers}))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """DATA/<class>/: good and bad, 4 grayscale 32 px images each."""
    from prompts.demo import micrograph

    root = tmp_path_factory.mktemp("pdata") / "data"
    for label in ("good", "bad"):
        (root / label).mkdir(parents=True)
        for i in range(4):
            micrograph(label, "A549", 32, np.random.default_rng(i)).save(root / label / f"{label}_{i}.png")
    return root


@pytest.fixture(scope="module")
def split(data, tmp_path_factory) -> Path:
    """One fold: images 0 and 1 of each class are the test set."""
    test = [f"{c}/{c}_{i}.png" for c in ("bad", "good") for i in (0, 1)]
    train = [f"{c}/{c}_{i}.png" for c in ("bad", "good") for i in (2, 3)]
    path = tmp_path_factory.mktemp("split") / "folds.json"
    write_split(path, Split(str(data), 1, 1, 0, None, ["bad", "good"], [Fold(0, 0, 0, tuple(train), tuple(test))]))
    return path


@pytest.fixture(scope="module")
def loras(tiny_model, data, tmp_path_factory) -> Path:
    """LORA/fold_0/<class>/ with the record of `lora train`: trained on fold 0's training images."""
    root = tmp_path_factory.mktemp("plora") / "lora"
    for i, label in enumerate(("good", "bad")):
        folder = make_lora(tiny_model, root / "fold_0" / label, seed=i + 1)
        images = {f"{label}/{label}_{k}.png": sha256_file(data / label / f"{label}_{k}.png") for k in (2, 3)}
        write_record(folder, images, {label: f"ooc{label}"})
    return root


def copy_loras(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- 1. nothing escapes OUT, nothing lands in DATA


def test_output_locations_that_would_touch_data_or_files_are_refused(tiny_model, loras, data, split, tmp_path, capsys):
    before, outside = tree_checksums(data), tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    a_file = tmp_path / "a_file.png"
    Image.new("L", (4, 4)).save(a_file)
    cases = {
        data: "inside the data folder",
        data / "good": "inside the data folder",
        data / "synthetic": "inside the data folder",
        a_file: "is an existing file",
        data.parent: "holds the data folder",  # OUT is scanned all the way down: never through the data
    }
    for out, message in cases.items():
        assert run(*args_for(tiny_model, loras, data, out, "--split", split, "--count", "1")) == 2
        assert message in one_error_line(capsys), out
    assert tree_checksums(data) == before and a_file.stat().st_size > 0 and tree_checksums(outside) == {"keep.txt": sha256_file(outside / "keep.txt")}


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_read_only_output_is_one_line(tiny_model, loras, data, split, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert run(*args_for(tiny_model, loras, data, ro / "out", "--split", split, "--count", "1")) == 2
        assert "no permission to write" in one_error_line(capsys)
    finally:
        ro.chmod(0o755)


def test_a_folder_of_the_users_is_filled_around_its_files_never_over_them(tiny_model, loras, data, split, tmp_path, capsys):
    out = tmp_path / "theirs"
    (out / "fold_0" / "w1.0").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes")
    theirs = tree_checksums(out)
    before = tree_checksums(data)
    base = args_for(tiny_model, loras, data, out, "--split", split, "--count", "1")
    # a manifest.jsonl or fingerprint.json we did not write is never replaced without --overwrite
    (out / "manifest.jsonl").write_text("my own list\n")
    assert run(*base) == 2 and "manifest.jsonl exists and was not written by generate" in one_error_line(capsys)
    (out / "manifest.jsonl").unlink()
    (out / "fold_0" / "w1.0" / FINGERPRINT_FILE).write_text('{"mine": true}')
    assert run(*base) == 2 and "fingerprint.json exists and was not written by generate" in one_error_line(capsys)
    (out / "fold_0" / "w1.0" / FINGERPRINT_FILE).unlink()
    # otherwise the run fills the folder in and leaves the user's files as they were
    assert run(*base) == 0
    after = tree_checksums(out)
    assert all(after[k] == v for k, v in theirs.items() if not k.endswith("/"))  # its empty folders now hold images
    assert sorted(k for k in after if k.endswith(".png")) == ["fold_0/w1.0/bad/bad_00000.png", "fold_0/w1.0/good/good_00000.png"]
    assert tree_checksums(data) == before


def test_labels_that_are_not_folder_names_never_become_paths(tiny_model, loras, tmp_path, capsys):
    data = tmp_path / "csvdata"
    data.mkdir()
    Image.new("L", (32, 32), 128).save(data / "a.png")
    Image.new("L", (32, 32), 60).save(data / "b.png")
    out = tmp_path / "deep" / "out"
    for label in ("../../../escaped", "sphero/cyte", ".hidden"):
        (data / "labels.csv").write_text(f"file,label\na.png,{label}\nb.png,good\n")
        before = tree_checksums(tmp_path)
        assert run(*args_for(tiny_model, loras / "fold_0", data, out, "--count", "1")) == 2
        assert "cannot be used as a folder name" in one_error_line(capsys)
        assert tree_checksums(tmp_path) == before and not out.exists()


def test_a_hand_built_job_outside_out_is_refused_by_the_library(tiny_model, data, tmp_path):
    from generate.plan import ImageJob, LoraUse
    from generate.sample import Settings, generate
    from prompts.errors import UserError

    job = ImageJob("../escaped.png", "good", None, "good", None, 1.0, 0, 1, "p", "", (LoraUse("good", "x", 1.0),), True)
    with pytest.raises(UserError, match="outside"):
        generate([job], Settings(model=str(tiny_model), output=tmp_path / "out", width=32, height=32), data)
    assert not (tmp_path / "escaped.png").exists() and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 2. each tree records its fingerprint


def test_trees_record_their_fingerprint_resume_when_equal_and_refuse_when_not(tiny_model, loras, data, split, tmp_path,
                                                                               capsys):
    before = tree_checksums(data)
    out = tmp_path / "out"
    base = args_for(tiny_model, loras, data, out, "--split", split, "--count", "1")
    assert run(*base) == 0
    fp = json.loads((out / "fold_0" / "w1.0" / FINGERPRINT_FILE).read_text())
    assert {"steps", "cfg", "sampler", "seed", "model", "loras", "templates", "split", "data_images"} <= set(fp["parts"])
    assert fp["fold"] == 0 and fp["weight"] == 1.0
    # the union of the LoRAs' training images is carried up for `classify cv`
    assert sorted(fp["images"]) == [f"{c}/{c}_{k}.png" for c in ("bad", "good") for k in (2, 3)]
    # equal fingerprint: resumes (nothing to make); more images or another weight fill the same trees in
    capsys.readouterr()
    assert run(*base) == 0 and "2 were there, 0 made" in capsys.readouterr().out
    assert run(*base[:-1], "2") == 0 and "2 were there, 2 made" in capsys.readouterr().out
    assert run(*base, "--lora-weights", "1.0", "0.5") == 0 and (out / "fold_0" / "w0.5" / FINGERPRINT_FILE).is_file()
    made = tree_checksums(out)
    # a changed setting, template, split or data image: one line naming it, nothing written
    templates = tmp_path / "t.yaml"
    templates.write_text('trigger: "ooc{class}"\nprompt: "{trigger}, another microscope"\n')
    moved_split = tmp_path / "folds2.json"
    moved_split.write_text(split.read_text().replace('"seed": 0', '"seed": 7'))
    for extra, what in ((["--steps", "3"], "steps 2 -> 3"), (["--cfg", "5"], "cfg 7.0 -> 5.0"),
                        (["--templates", templates], "templates"), (["--split", moved_split], "split")):
        argv = base + [str(x) for x in extra]
        assert run(*argv) == 2
        line = one_error_line(capsys)
        assert "was made from other inputs" in line and what in line and "--overwrite" in line, line
    assert tree_checksums(out) == made
    # --overwrite remakes the tree, and our images it no longer plans are removed with its old fingerprint
    assert run(*base, "--steps", "3", "--overwrite") == 0
    pngs = sorted(p.relative_to(out).as_posix() for p in (out / "fold_0" / "w1.0").rglob("*.png"))
    assert pngs == ["fold_0/w1.0/bad/bad_00000.png", "fold_0/w1.0/good/good_00000.png"]
    assert json.loads((out / "fold_0" / "w1.0" / FINGERPRINT_FILE).read_text())["settings"]["steps"] == 3
    assert tree_checksums(data) == before


def test_a_changed_data_image_blocks_a_stale_resume(tiny_model, loras, data, split, tmp_path, capsys):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    out = tmp_path / "out"
    base = args_for(tiny_model, loras, copy, out, "--split", split, "--count", "1")
    assert run(*base) == 0
    Image.new("L", (32, 32), 7).save(copy / "good" / "good_3.png")  # a training image changed
    capsys.readouterr()
    assert run(*base) == 2 and "data_images changed since" in one_error_line(capsys)


# ---------------------------------------------------------------- 3. provenance across steps


def test_loras_trained_on_a_test_image_are_refused_by_path_and_by_content(tiny_model, loras, data, split, tmp_path, capsys):
    before = tree_checksums(data)
    leaky = copy_loras(loras, tmp_path / "leaky")
    good = leaky / "fold_0" / "good"
    record = json.loads((good / FINGERPRINT_FILE).read_text())
    # by path: trained with another split, one of whose training images is in this fold's test set
    write_record(good, {**record["images"], "good/good_0.png": sha256_file(data / "good" / "good_0.png")}, record["triggers"])
    out = tmp_path / "out"
    assert run(*args_for(tiny_model, leaky, data, out, "--split", split, "--count", "1")) == 2
    line = one_error_line(capsys)
    assert "trained on 1 test image(s) of fold_0" in line and "good/good_0.png" in line and not out.exists()
    # by content: a renamed copy of a test image
    write_record(good, {**record["images"], "elsewhere/copy.png": sha256_file(data / "bad" / "bad_1.png")}, record["triggers"])
    assert run(*args_for(tiny_model, leaky, data, out, "--split", split, "--count", "1")) == 2
    assert "bad/bad_1.png" in one_error_line(capsys) and not out.exists()
    assert tree_checksums(data) == before


def test_unrecorded_loras_and_other_trigger_words_are_said(tiny_model, loras, data, split, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="generate")
    other = copy_loras(loras, tmp_path / "other")
    (other / "fold_0" / "bad" / FINGERPRINT_FILE).unlink()  # e.g. a kohya file from elsewhere
    out = tmp_path / "out"
    assert run(*args_for(tiny_model, other, data, out, "--split", split, "--count", "2", "--prompt", "a {class} cell")) == 0
    text = caplog.text
    assert text.count("has no record of its training images") == 1 and "fold_0/bad" in text
    assert text.count("trained with the trigger word 'oocgood'") == 1  # once per LoRA and group, not per image
    # the tree cannot vouch for LoRAs without a record: no `images`, so `classify cv` warns in turn
    assert "images" not in json.loads((out / "fold_0" / "w1.0" / FINGERPRINT_FILE).read_text())


# ---------------------------------------------------------------- 4. templates


def test_template_class_keys_must_match_a_class_and_fields_mean_one_thing(tiny_model, loras, data, split, tmp_path, capsys):
    from generate.plan import PlanRequest, plan_fold
    from prompts.dataset import read_dataset
    from prompts.templates import load_templates

    bad = tmp_path / "typo.yaml"
    bad.write_text('classes:\n  goood: "healthy"\n')
    assert run(*args_for(tiny_model, loras, data, tmp_path / "out", "--split", split, "--count", "1", "--templates", bad)) == 2
    line = one_error_line(capsys)
    assert "classes.goood matches no class" in line and "bad, good" in line
    # {class} in --prompt is the templates' {class}; every templates field works in --prompt too
    tpl = tmp_path / "t.yaml"
    tpl.write_text('classes:\n  good: "healthy monolayer"\ntrigger: "x{class}"\n')
    templates = load_templates(tpl)
    ds = read_dataset(data)
    req = PlanRequest(lora=str(loras / "fold_0"), weights=[1.0], count=1,
                      prompt="{trigger} | {class} | {class_text} | {group}")
    jobs = plan_fold(req, ds, templates, None, None, lambda r: True)
    good = next(j for j in jobs if j.group == "good")
    assert good.prompt == "xgood | good | healthy monolayer | good"
    assert templates.for_group("good").trigger == "x" + templates.fields("good")["class"]


# ---------------------------------------------------------------- 5. writer -> reader


def test_odd_weights_and_a_unicode_class_read_back_in_classify(tiny_model, tmp_path):
    from classify.synthetic import read_synthetic
    from prompts.demo import micrograph

    data = tmp_path / "data"
    classes = ("Zellkörper", "good")
    for label in classes:
        (data / label).mkdir(parents=True)
        for i in range(2):
            micrograph("good", "A549", 32, np.random.default_rng(i)).save(data / label / f"{i}.png")
    lora = tmp_path / "lora"
    for i, label in enumerate(classes):
        make_lora(tiny_model, lora / label, seed=i)
    weights = [1e-05, -0.5, 0.8]
    out = tmp_path / "out"
    assert run("--model", tiny_model, "--lora", lora, "--data", data, "--output", out, "--size", SIZE, "--steps", STEPS,
               "--count", "1", "--seed", "3", "--lora-weights", *weights) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(weight_dir_name(w) for w in weights)
    syn = read_synthetic(out, sorted(classes))
    assert sorted(syn.shared) == sorted(weight_dir_name(w) for w in weights)
    for name, tree in syn.shared.items():
        assert tree.classes == sorted(classes) and len(tree.records) == 2, name


# ---------------------------------------------------------------- 6. the library and its messages


def test_the_library_raises_user_errors_and_leaves_its_arguments_alone(tmp_path):
    from generate.sample import Settings, check_settings
    from prompts.errors import UserError

    s = Settings(model="m", output=tmp_path, sampler="euler A")
    checked = check_settings(s)
    assert checked.sampler == "Euler a" and s.sampler == "euler A"
    with pytest.raises(UserError):
        check_settings(Settings(model="m", output=tmp_path, width=65))
    source = (ROOT / "generate").glob("*.py")
    assert not [p.name for p in source if "SystemExit" in p.read_text() and p.name != "__main__.py"]


def test_nan_images_raise_a_user_error_from_the_library(tiny_model, loras, data, tmp_path):
    from diffusers import StableDiffusionPipeline

    from generate.__main__ import build_parser, plan_jobs, resolve
    from generate.sample import Settings, generate
    from prompts.errors import UserError

    broken = tmp_path / "nan-sd"
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    with torch.no_grad():
        pipe.vae.decoder.conv_out.bias.fill_(float("nan"))
    pipe.save_pretrained(broken)
    args = build_parser().parse_args([str(a) for a in args_for(broken, loras / "fold_0", data, tmp_path / "out", "--count", "1",
                                                               "--classes", "good")])
    g, d = resolve(args)
    dataset, jobs, inputs = plan_jobs(g, d, 1)
    with pytest.raises(UserError, match="NaN or all black"):
        generate(jobs, Settings(model=str(broken), output=tmp_path / "out", steps=2, width=32, height=32, seeded=True),
                 dataset.root, inputs=inputs)


def test_a_lora_with_wrong_shapes_is_one_line_without_diffusers_output(tiny_model, data, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = make_lora(tiny_model, tmp_path / "src" / "good", seed=4, kohya=False)
    sd = load_file(src / LORA_DIFFUSERS_FILE)
    with safe_open(src / LORA_DIFFUSERS_FILE, "pt") as f:
        meta = f.metadata()
    sd = {peft_key(k): (torch.randn(v.shape[0], v.shape[1] + 8) if "attn2.to_k.lora.down" in k else v) for k, v in sd.items()}
    for label in ("good", "bad"):
        (tmp_path / "wrong" / label).mkdir(parents=True)
        save_file(sd, tmp_path / "wrong" / label / LORA_DIFFUSERS_FILE, metadata=meta)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "USE_TF": "0", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "generate", *map(str, args_for(tiny_model, tmp_path / "wrong", data,
                                                                                 tmp_path / "out", "--count", "1"))],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(err) == 1 and "does not fit the base model" in err[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_loras_of_lora_train_with_another_split_are_refused_end_to_end(tiny_model, data, tmp_path, capsys):
    """The issue's case: LoRAs trained per fold of a seed-0 split, used with a seed-1 split."""
    from classify.__main__ import main as classify_main
    from lora.__main__ import main as lora_main

    before = tree_checksums(data)
    def split_file(seed: int) -> Path:
        path = tmp_path / f"s{seed}.json"
        assert classify_main(["split", "--data", str(data), "--folds", "2", "--seed", str(seed), "--output", str(path)]) in (0, None)
        return path

    def fold0(path: Path, part: str) -> set:
        return set(json.loads(path.read_text())["folds"][0][part])

    splits = {0: split_file(0)}
    seed = 1
    while not fold0(split_file(seed), "test") & fold0(splits[0], "train"):  # another split whose fold 0 differs
        seed += 1
    splits[1] = tmp_path / f"s{seed}.json"
    lora = tmp_path / "lora"
    assert lora_main(["train", "--model", str(tiny_model), "--data", str(data), "--split", str(splits[0]), "--fold", "0",
                      "--output", str(lora), "--resolution", "32", "--epochs", "1", "--repeats", "1",
                      "--validation-images", "0"]) in (0, None)
    out = tmp_path / "out"
    capsys.readouterr()
    assert run(*args_for(tiny_model, lora, data, out, "--split", splits[1], "--fold", "0", "--count", "1")) == 2
    assert "test image(s) of fold_0" in one_error_line(capsys) and not out.exists()
    assert run(*args_for(tiny_model, lora, data, out, "--split", splits[0], "--fold", "0", "--count", "1")) == 0
    trained = json.loads((lora / "fold_0" / "good" / FINGERPRINT_FILE).read_text())["images"]
    assert set(trained) <= set(json.loads((out / "fold_0" / "w1.0" / FINGERPRINT_FILE).read_text())["images"])
    assert tree_checksums(data) == before


def test_a_lora_from_diffusers_own_training_script_generates(tiny_model, data, tmp_path):
    """diffusers' train_text_to_image_lora.py writes `convert_state_dict_to_diffusers` keys (`lora.down`,
    `lora_linear_layer.down`) and no kohya file: diffusers loads it, so generate must sample with it."""
    lora = tmp_path / "lora"
    for i, label in enumerate(("good", "bad")):
        make_lora(tiny_model, lora / label, seed=i, kohya=False)
    out = tmp_path / "out"
    assert run(*args_for(tiny_model, lora, data, out, "--count", "1")) == 0
    assert len(list(out.rglob("*.png"))) == 2


# ---------------------------------------------------------------- 7. SIGTERM (SLURM's time limit)


def test_sigterm_is_one_line_naming_the_command_that_resumes_it(tiny_model, loras, data, split, tmp_path):
    import signal
    import time

    out = tmp_path / "out"
    argv = [str(a) for a in args_for(tiny_model, loras, data, out, "--split", split, "--count", "200", "--steps", "20")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "generate", *argv], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # wait until it samples
        lines.append(line)
        if "to make" in line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 143, "".join(lines) + rest
    last = rest.strip().splitlines()[-1]
    assert last.startswith("terminated (SIGTERM); finished work is kept: run `python -m generate "), last
    assert "--count 200" in last and "Traceback" not in rest
