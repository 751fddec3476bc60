"""generate end to end on the tiny model, in process: layout, provenance, seeds, weights, fuse, resume, bad input."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generate.__main__ import main
from prompts.splits import Fold, Split, write_split

from .lora_fixtures import make_lora

torch = pytest.importorskip("torch")
STEPS = "8"


@pytest.fixture(autouse=True)
def one_thread():
    """This machine's cores are shared: one torch thread is much faster than two that wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(*args) -> int:
    """`python -m generate ARGS` in this process; returns the exit status."""
    try:
        return main([str(a) for a in args] + ["--no-progress"])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


def base_args(tiny_model, loras, data, out, *extra):
    return ["--model", tiny_model, "--lora", loras, "--data", data, "--output", out, "--size", "64", "--steps", STEPS, *extra]


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).astype(np.int16)


def bare_pipeline(tiny_model, lora_file=None, weight=1.0):
    """A plain diffusers pipeline: SD + Euler a (linspace) + the LoRA at `weight`."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    pipe.set_progress_bar_config(disable=True)
    if lora_file:
        pipe.load_lora_weights(lora_file, weight_name="pytorch_lora_weights.safetensors", adapter_name="x")
        pipe.set_adapters(["x"], adapter_weights=[weight])
    return pipe


def bare_image(pipe, rec) -> np.ndarray:
    """The image of a manifest record, made by the bare pipeline alone (batch 1) and saved as generate saves it."""
    out = pipe(rec["prompt"], negative_prompt=rec["negative_prompt"], num_inference_steps=rec["steps"],
               guidance_scale=rec["cfg"], width=rec["size"][0], height=rec["size"][1],
               generator=torch.Generator("cpu").manual_seed(rec["seed"]), output_type="np").images[0]
    img = Image.fromarray((out * 255).round().astype(np.uint8))
    return np.asarray(img.convert(rec["color"])).astype(np.int16)


def test_layout_manifest_and_png_info(tiny_model, class_loras, class_data, tmp_path):
    out = tmp_path / "syn"
    assert run(*base_args(tiny_model, class_loras, class_data, out, "--count", "2", "--lora-weights", "1.0", "0.8",
                          "--batch-size", "2")) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == sorted(f"w{w}/{c}/{c}_{i:05d}.png" for w in ("1.0", "0.8") for c in ("good", "bad") for i in (0, 1))
    recs = manifest(out)
    assert sorted(r["file"] for r in recs) == files  # one line per image
    rec = next(r for r in recs if r["file"] == "w0.8/bad/bad_00001.png")
    assert rec["class"] == "bad" and rec["cell_line"] is None and rec["fold"] is None and rec["lora_weight"] == 0.8
    assert rec["sampler"] == "Euler a" and rec["steps"] == 8 and rec["cfg"] == 7.0 and rec["size"] == [64, 64]
    assert rec["loras"][0]["name"] == "bad" and rec["loras"][0]["weight"] == 0.8 and len(rec["loras"][0]["hash"]) == 12
    assert len(rec["model_hash"]) == 10 and 0 <= rec["seed"] < 2**32 and rec["prompt"].startswith("oocbad")
    with Image.open(out / rec["file"]) as im:
        assert im.mode == "L" and im.size == (64, 64)  # grayscale source -> grayscale PNG
        params = im.text["parameters"]
    lines = params.split("\n")
    assert lines[0] == rec["prompt"] + " <lora:bad:0.8>"
    assert lines[1] == "Negative prompt: " + rec["negative_prompt"]
    assert lines[2].startswith(f"Steps: 8, Sampler: Euler a, CFG scale: 7, Seed: {rec['seed']}, Size: 64x64, "
                               f"Model hash: {rec['model_hash']}, Model: tiny-sd")
    assert f'Lora hashes: "bad: {rec["loras"][0]["hash"]}"' in lines[2]
    # the same index has the same seed at both weights, so the LoRA weight is the only difference
    seeds = {r["file"].split("/", 1)[1]: set() for r in recs}
    for r in recs:
        seeds[r["file"].split("/", 1)[1]].add(r["seed"])
    assert all(len(s) == 1 for s in seeds.values())


def test_fixed_seed_reproduces_and_recorded_seed_makes_the_image_alone(tiny_model, class_loras, class_data, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["--count", "2", "--lora-weights", "0.8", "--seed", "123", "--classes", "good"]
    assert run(*base_args(tiny_model, class_loras, class_data, a, *args, "--batch-size", "2")) == 0
    assert run(*base_args(tiny_model, class_loras, class_data, b, *args, "--batch-size", "1")) == 0
    for rec in manifest(a):
        assert np.array_equal(pixels(a / rec["file"]), pixels(b / rec["file"]))  # batch size does not matter
    # a bare diffusers pipeline given only the recorded seed, prompt and LoRA weight makes the same image
    pipe = bare_pipeline(tiny_model, class_loras / "good", 0.8)
    rec = manifest(b)[1]
    assert np.abs(bare_image(pipe, rec) - pixels(b / rec["file"])).max() <= 1
    # and a different run seed gives different images
    c = tmp_path / "c"
    assert run(*base_args(tiny_model, class_loras, class_data, c, "--count", "2", "--lora-weights", "0.8", "--seed", "124",
                          "--classes", "good")) == 0
    assert np.abs(pixels(c / rec["file"]) - pixels(b / rec["file"])).mean() > 2


def test_weight_zero_is_the_base_model_and_fuse_matches(tiny_model, class_loras, class_data, tmp_path):
    out, fused = tmp_path / "out", tmp_path / "fused"
    args = ["--count", "1", "--lora-weights", "0", "1.0", "0.6", "--seed", "9", "--classes", "good"]
    assert run(*base_args(tiny_model, class_loras, class_data, out, *args)) == 0
    assert run(*base_args(tiny_model, class_loras, class_data, fused, *args, "--fuse")) == 0
    recs = {r["lora_weight"]: r for r in manifest(out)}
    base = bare_image(bare_pipeline(tiny_model), recs[0.0])
    assert np.array_equal(pixels(out / recs[0.0]["file"]), base)
    assert np.abs(pixels(out / recs[1.0]["file"]) - base).mean() > 2  # the LoRA does change the image
    for w, rec in recs.items():
        diff = np.abs(pixels(out / rec["file"]) - pixels(fused / rec["file"]))
        assert diff.max() <= 2 and diff.mean() < 0.05, (w, diff.max())


def test_kohya_file_loads_like_the_diffusers_file(tiny_model, class_loras, class_data, tmp_path):
    a, b = tmp_path / "diffusers", tmp_path / "kohya"
    args = ["--count", "1", "--lora-weights", "0.8", "--seed", "3", "--classes", "good"]
    assert run(*base_args(tiny_model, class_loras / "good" / "pytorch_lora_weights.safetensors", class_data, a, *args)) == 0
    assert run(*base_args(tiny_model, class_loras / "good" / "good.safetensors", class_data, b, *args)) == 0
    rec = manifest(a)[0]
    assert np.abs(pixels(a / rec["file"]) - pixels(b / rec["file"])).max() <= 1


def test_resume_makes_only_what_is_missing(tiny_model, class_loras, class_data, tmp_path, capsys):
    out = tmp_path / "out"
    args = base_args(tiny_model, class_loras, class_data, out, "--count", "2", "--lora-weights", "1.0", "--seed", "5")
    assert run(*args) == 0
    first = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    victim = out / "w1.0/good/good_00001.png"
    victim.unlink()
    stale, fresh = out / "w1.0/good/.good_00001.abcd.tmp.png", out / "w1.0/good/.good_00000.efgh.tmp.png"
    stale.write_bytes(b"half a png")  # left by a killed run 11 minutes ago
    os.utime(stale, (stale.stat().st_mtime - 660,) * 2)
    fresh.write_bytes(b"being written")  # another run writing into the same folder right now: kept
    with open(out / "manifest.jsonl", "a") as f:
        f.write('{"file": "w1.0/good/go')  # a line cut short by a kill
    capsys.readouterr()
    assert run(*args) == 0
    assert "3 were there, 1 made" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == t for p, t in first.items() if p != victim)
    assert victim.is_file() and list(out.rglob(".*.tmp.png")) == [fresh]
    fresh.unlink()
    assert sorted(r["file"] for r in manifest(out)) == sorted(p.relative_to(out).as_posix() for p in first)
    # other settings over existing images: refused, nothing changed; --overwrite replaces
    assert run(*args, "--steps", "9") == 2
    assert "w1.0 was made from other inputs (steps 8 -> 9 changed since); pass --overwrite" in capsys.readouterr().err
    assert run(*args, "--steps", "9", "--overwrite") == 0
    assert {r["steps"] for r in manifest(out)} == {9} and len(manifest(out)) == 4
    # a file of the user's where an image would go is never replaced without --overwrite
    victim.unlink()
    Image.new("L", (8, 8)).save(victim)
    assert run(*args, "--steps", "9") == 2
    assert "was not made by generate" in capsys.readouterr().err
    with Image.open(victim) as im:
        assert im.size == (8, 8)


def _split_for(data: Path, test_paths: list[str], train_paths: list[str], path: Path) -> Path:
    write_split(path, Split(str(data), 2, 1, 0, None, ["bad", "good"], [Fold(0, 0, 0, tuple(train_paths), tuple(test_paths))]))
    return path


def test_img2img_starts_only_from_training_images(tiny_model, class_loras, class_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(class_data, data)
    paths = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    test, train = paths[::2], paths[1::2]
    for rel in test:  # a test image read by mistake would fail to decode
        (data / rel).write_bytes(b"not an image: test fold")
    split = _split_for(data, test, train, tmp_path / "split.json")
    loras = tmp_path / "lora"
    shutil.copytree(class_loras, loras / "fold_0")
    out = tmp_path / "out"
    assert run("--model", tiny_model, "--lora", loras, "--data", data, "--split", split, "--fold", "0", "--output", out,
               "--size", "64", "--steps", "10", "--fraction", "0.5", "1.0", "--lora-weights", "1.0",
               "--init-images", "real", "--strength", "0.3", "0.7", "--seed", "1", "--batch-size", "2") == 0
    recs = manifest(out)
    assert len(recs) == len(train)  # fraction 1.0 of fold 0's *training* images per class
    assert all(r["file"].startswith("fold_0/w1.0/") and r["fold"] == 0 and r["mode"] == "img2img" for r in recs)
    assert {r["init_image"] for r in recs} <= set(train)
    assert {r["strength"] for r in recs} <= {0.3, 0.7}
    with Image.open(out / recs[0]["file"]) as im:
        assert "Denoising strength: " in im.text["parameters"]


def test_nan_images_are_reported_not_saved(tiny_model, class_loras, class_data, tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    broken = tmp_path / "nan-sd"
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    with torch.no_grad():
        pipe.vae.decoder.conv_out.bias.fill_(float("nan"))  # what an fp16 VAE overflow looks like
    pipe.save_pretrained(broken)
    out = tmp_path / "out"
    code = run(*base_args(broken, class_loras, class_data, out, "--count", "1", "--lora-weights", "1.0"))
    err = capsys.readouterr().err
    assert code != 0 and "NaN or all black" in err and "--dtype fp32" in err
    assert not list(out.rglob("*.png")) and manifest(out) == []


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written


@pytest.fixture(scope="module")
def wrong_lora(tiny_model, tmp_path_factory) -> Path:
    """A LoRA whose cross-attention keys expect another text width (as an SD 2.x LoRA on SD 1.5)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = make_lora(tiny_model, tmp_path_factory.mktemp("w") / "src" / "good", seed=4, kohya=False)
    sd = load_file(src / "pytorch_lora_weights.safetensors")
    with safe_open(src / "pytorch_lora_weights.safetensors", "pt") as f:
        meta = f.metadata()
    sd = {k: (torch.randn(v.shape[0], v.shape[1] + 8) if "attn2.to_k.lora.down" in k else v) for k, v in sd.items()}
    root = tmp_path_factory.mktemp("wrong") / "lora"
    for label in ("good", "bad"):
        (root / label).mkdir(parents=True)
        save_file(sd, root / label / "pytorch_lora_weights.safetensors", metadata=meta)
    return root


@pytest.mark.parametrize(
    "case, flags, message",
    [
        ("shape", [], "does not fit the base model"),
        ("nolora", [], "no LoRA for 'bad'"),
        ("sampler", ["--sampler", "Euler b"], "unknown sampler"),
        ("size", ["--size", "65", "64"], "--size: 65 must be a multiple of 8"),
        ("weight", ["--lora-weights", "1.0", "heavy"], "'heavy' is not a number"),
        ("split", [], "does not match data folder"),
        ("howmany", [], "say how many"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(case, flags, message, tiny_model, class_loras, wrong_lora, class_data,
                                                   tmp_path, capsys):
    loras = {"shape": wrong_lora}.get(case, class_loras)
    if case == "nolora":
        loras = tmp_path / "lora"
        shutil.copytree(class_loras / "good", loras / "good")
    out = tmp_path / "out"
    count = [] if case == "howmany" else ["--count", "1"]
    args = base_args(tiny_model, loras, class_data, out, *count, *flags)
    if case == "split":
        args += ["--split", _split_for(class_data, ["good/nope.png"], ["good/good_0.png"], tmp_path / "s.json")]
    capsys.readouterr()
    assert run(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


def test_every_sampler_name_samples(tiny_model, class_loras, class_data, tmp_path):
    from diffusion.samplers import SAMPLERS

    for i, name in enumerate(SAMPLERS):
        out = tmp_path / f"s{i}"
        assert run(*base_args(tiny_model, class_loras, class_data, out, "--count", "1", "--lora-weights", "1.0",
                              "--classes", "good", "--sampler", name.lower(), "--steps", "4")) == 0
        rec = manifest(out)[0]
        assert rec["sampler"] == name
        with Image.open(out / rec["file"]) as im:
            assert f"Sampler: {name}," in im.text["parameters"] and np.asarray(im).std() > 0
