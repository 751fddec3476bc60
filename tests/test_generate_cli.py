"""generate as a command: killed and re-run, and two processes under `accelerate launch` on CPU."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from generate.__main__ import main as generate_main

from .conftest import ROOT
from .test_generate_run import one_thread  # noqa: F401  (autouse fixture)

torch = pytest.importorskip("torch")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "USE_TF": "0", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def args(tiny_model, loras, data, out, *extra):
    return ["--model", str(tiny_model), "--lora", str(loras), "--data", str(data), "--output", str(out), "--size", "64",
            "--steps", "12", "--no-progress", *map(str, extra)]


def check_complete(out: Path, expected: set[str]) -> None:
    """Exactly the expected PNGs, each decodable, one manifest line each, no temporaries."""
    pngs = {p.relative_to(out).as_posix() for p in out.rglob("*.png") if not p.name.startswith(".")}
    assert pngs == expected
    for rel in pngs:
        with Image.open(out / rel) as im:
            im.load()
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["file"] for r in lines) == sorted(expected)
    assert not [p for p in out.rglob(".*") if p.is_file()]


def test_killed_run_rerun_ends_complete(tiny_model, class_loras, class_data, tmp_path, capsys):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "generate", *args(tiny_model, class_loras, class_data, out, "--count", "4", "--seed", "2",
                                                   "--lora-weights", "1.0", "0.8")]
    expected = {f"w{w}/{c}/{c}_{i:05d}.png" for w in ("1.0", "0.8") for c in ("good", "bad") for i in range(4)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len([p for p in out.rglob("*.png") if not p.name.startswith(".")]) >= 3:  # complete images, not temporaries
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    made = {p.relative_to(out).as_posix() for p in out.rglob("*.png") if not p.name.startswith(".")}
    assert 3 <= len(made) < len(expected)
    assert generate_main(cmd[3:]) == 0  # the same command again (in this process, to save a start-up)
    assert f"{len(made)} were there, {len(expected) - len(made)} made" in capsys.readouterr().out
    check_complete(out, expected)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_make_each_image_once(tiny_model, class_loras, class_data, tmp_path):
    out = tmp_path / "out"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
              "-m", "generate", *args(tiny_model, class_loras, class_data, out, "--count", "3", "--lora-weights", "1.0", "0.5")]
    done = subprocess.run(launch, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    made = {int(p): int(n) for p, n in re.findall(r"process (\d) made (\d+) image", done.stderr)}
    assert set(made) == {0, 1} and sum(made.values()) == 12, done.stderr[-2000:]
    expected = {f"w{w}/{c}/{c}_{i:05d}.png" for w in ("1.0", "0.5") for c in ("good", "bad") for i in range(3)}
    check_complete(out, expected)
    # both processes planned the same seeds: the run seed is shared
    runs = {json.loads(line)["run_seed"] for line in (out / "manifest.jsonl").read_text().splitlines()}
    assert len(runs) == 1


def test_loras_from_lora_train_load_with_their_alpha(tiny_model, class_data, tmp_path):
    """The contract with `lora train`: both files of each group load, with alpha/rank kept (here 2/4)."""
    lora = tmp_path / "lora"
    train = [sys.executable, "-m", "lora", "train", "--model", str(tiny_model), "--data", str(class_data), "--output",
             str(lora), "--epochs", "1", "--repeats", "1", "--resolution", "64", "--validation-images", "0",
             "--rank", "4", "--alpha", "2", "--unet-lr", "0.05", "--text-encoder-lr", "0.05"]
    done = subprocess.run(train, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.skip(f"lora train did not run here: {done.stderr.strip().splitlines()[-1:]}")
    from diffusers import StableDiffusionPipeline

    from generate.sample import load_lora

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    load_lora(pipe, str(lora / "good" / "pytorch_lora_weights.safetensors"), "d", "tiny")
    load_lora(pipe, str(lora / "good" / "good.safetensors"), "k", "tiny")
    layer = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert layer.scaling["d"] == pytest.approx(0.5) and layer.scaling["k"] == pytest.approx(0.5)
    te_layer = pipe.text_encoder.text_model.encoder.layers[0].self_attn.q_proj
    assert te_layer.scaling["d"] == pytest.approx(0.5) and te_layer.scaling["k"] == pytest.approx(0.5)
    for part in (layer.lora_A, layer.lora_B, te_layer.lora_A, te_layer.lora_B):  # the same weights in both files
        assert torch_equal(part["k"].weight, part["d"].weight) and part["d"].weight.abs().max() > 0
    out = tmp_path / "out"
    assert generate_main(args(tiny_model, lora, class_data, out, "--count", "1", "--lora-weights", "1.0")) == 0
    check_complete(out, {"w1.0/good/good_00000.png", "w1.0/bad/bad_00000.png"})


def torch_equal(a, b) -> bool:
    return bool(torch.allclose(a, b, atol=1e-6))
