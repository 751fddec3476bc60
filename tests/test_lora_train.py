"""The LoRA trainer end to end on the tiny Stable Diffusion (CPU, resolution 64, a few steps)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prompts.normalize import DEFAULT

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

import lora  # noqa: E402,F401  (sets USE_TF=0)
from diffusion.formats import DIFFUSERS_WEIGHT_NAME, deltas, read_lora  # noqa: E402
from lora.__main__ import main  # noqa: E402

from .conftest import ROOT, shared_data  # noqa: E402

FAST = ["--resolution", "64", "--epochs", "1", "--repeats", "1", "--validation-images", "0"]


def train(model, data, out, *flags):
    """`python -m lora train` in this process; returns the exit status (0 or SystemExit code)."""
    try:
        main(["train", "--model", str(model), "--data", str(data), "--output", str(out), *FAST, *flags])
    except SystemExit as exc:
        return exc.code
    return 0


def run_cli(*args, env=None, timeout=300):
    """`python -m ...` in a subprocess from the repository root."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def load_lora(pipe, file, **kwargs):
    """diffusers' load_lora_weights; offline (HF_HUB_OFFLINE=1) it needs the folder and weight_name."""
    pipe.load_lora_weights(str(file.parent), weight_name=file.name, **kwargs)


def pipe_image(pipe, seed=0):
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    return pipe("a brightfield micrograph", num_inference_steps=3, height=64, width=64, generator=g, output_type="np").images[0]


@pytest.fixture(scope="module")
def trained(tiny_model, class_data, tmp_path_factory):
    """Per-class LoRAs (good, bad) with the default output set, rank 4 and alpha 2 (scale 0.5)."""
    out = tmp_path_factory.mktemp("trained") / "loras"
    assert train(tiny_model, class_data, out, "--rank", "4", "--alpha", "2", "--validation-images", "1") == 0
    return out


# --------------------------------------------------------------------------- outputs and loading

def test_outputs_per_group(trained):
    for group in ("bad", "good"):
        folder = trained / group
        names = {p.name for p in folder.iterdir()}
        assert {DIFFUSERS_WEIGHT_NAME, f"{group}.safetensors", "config.yaml", "loss.csv", "validation"} <= names
        assert len(list((folder / "validation").glob("*.png"))) == 1
        with open(folder / "loss.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 3 and all(float(r["loss"]) > 0 for r in rows)  # 6 images x 1 repeat x 1 epoch / batch 2
    assert not (trained / ".work").exists()  # checkpoints and logs of finished groups are gone
    assert not [p for p in trained.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_kohya_file_metadata(trained):
    from safetensors import safe_open

    with safe_open(str(trained / "bad" / "bad.safetensors"), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert any(k.startswith("lora_unet_") and k.endswith(".lora_down.weight") for k in keys)
    assert any(k.startswith("lora_te_") and k.endswith(".alpha") for k in keys)
    assert meta["ss_network_dim"] == "4" and float(meta["ss_network_alpha"]) == 2.0
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_sd_model_name"] == "tiny-sd"
    assert len(meta["sshs_model_hash"]) == 64
    assert json.loads(meta["ss_tag_frequency"])["1_bad"]


def test_weight_zero_reproduces_base_and_one_differs(trained, tiny_model):
    from diffusion.model import load_pipeline

    pipe = load_pipeline(tiny_model)
    base = pipe_image(pipe)
    load_lora(pipe, trained / "bad" / DIFFUSERS_WEIGHT_NAME, adapter_name="bad")
    pipe.set_adapters(["bad"], adapter_weights=[0.0])
    assert (pipe_image(pipe) == base).all()
    pipe.set_adapters(["bad"], adapter_weights=[1.0])
    assert abs(pipe_image(pipe) - base).max() > 1e-3


def test_alpha_not_rank_reloads_at_trained_scale(trained, tiny_model):
    """Fusing the reloaded LoRA changes each weight by exactly alpha/rank * up @ down (rank 4, alpha 2)."""
    from diffusion.model import load_pipeline

    pipe = load_pipeline(tiny_model)
    before = {**{("unet", k): v.clone() for k, v in pipe.unet.state_dict().items()},
              **{("text_encoder", k): v.clone() for k, v in pipe.text_encoder.state_dict().items()}}
    load_lora(pipe, trained / "good" / DIFFUSERS_WEIGHT_NAME)
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()
    after = {**{("unet", k): v for k, v in pipe.unet.state_dict().items()},
             **{("text_encoder", k): v for k, v in pipe.text_encoder.state_dict().items()}}
    trained_deltas = deltas(read_lora(trained / "good"))
    assert {c for c, _ in trained_deltas} == {"unet", "text_encoder"}
    for (comp, module), delta in trained_deltas.items():
        key = (comp, f"{module}.weight")
        torch.testing.assert_close(after[key] - before[key], delta, rtol=1e-4, atol=1e-6)
    assert read_lora(trained / "good").rank_alpha() == (4, 2.0)


def test_kohya_file_loads_in_diffusers_like_the_diffusers_file(trained, tiny_model):
    from diffusion.model import load_pipeline

    images = []
    for source in (trained / "bad" / DIFFUSERS_WEIGHT_NAME, trained / "bad" / "bad.safetensors"):
        pipe = load_pipeline(tiny_model)
        load_lora(pipe, source)
        images.append(pipe_image(pipe))
    assert abs(images[0] - images[1]).max() < 1e-5


def test_resolved_config_records_the_run(trained):
    import yaml

    cfg = yaml.safe_load((trained / "bad" / "config.yaml").read_text())
    assert cfg["lora"]["rank"] == 4 and cfg["lora"]["alpha"] == 2.0 and cfg["lora"]["resolution"] == 64
    assert sorted(cfg["group"]["images"]) == [f"bad/bad_{i}.png" for i in range(6)]
    assert cfg["group"]["prompts"] and cfg["group"]["negative_prompt"]


# --------------------------------------------------------------------------- learning

def fixed_batch_loss(pipe, folder: Path, data: Path, label: str) -> float:
    """Denoising loss of the class's images at fixed noise and 24 timesteps spread over 50..950."""
    import torch.nn.functional as F
    import yaml

    from lora import data as D
    from prompts.dataset import read_dataset

    prompt = yaml.safe_load((folder / "config.yaml").read_text())["group"]["prompts"][0]
    images = D.load_images(read_dataset(data).select(classes=[label]), 64, DEFAULT)
    with torch.no_grad():
        x = D.pixel_batch(images, list(range(len(images))), False, None)
        latents = (pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor).repeat(4, 1, 1, 1)
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
        t = torch.linspace(50, 950, len(latents)).long()
        ids = pipe.tokenizer([prompt] * len(latents), padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        pred = pipe.unet(pipe.scheduler.add_noise(latents, noise, t), t, pipe.text_encoder(ids)[0]).sample
        return F.mse_loss(pred, noise).item()


def test_training_lowers_the_loss_on_a_fixed_batch(tiny_model, class_data, tmp_path):
    from diffusion.model import load_pipeline

    out = tmp_path / "out"
    assert train(tiny_model, class_data, out, "--classes", "bad", "--epochs", "10", "--unet-lr", "1e-3", "--no-random-flip") == 0
    pipe = load_pipeline(tiny_model)
    before = fixed_batch_loss(pipe, out / "bad", class_data, "bad")
    load_lora(pipe, out / "bad" / DIFFUSERS_WEIGHT_NAME)
    after = fixed_batch_loss(pipe, out / "bad", class_data, "bad")
    assert after < 0.97 * before, (before, after)


# --------------------------------------------------------------------------- groups and folds

def test_per_cell_line_class_fan_out(tiny_model, demo_data, tmp_path):
    out = tmp_path / "out"
    assert train(tiny_model, demo_data, out, "--per", "cell_line_class", "--classes", "bad", "--cell-lines", "A549,HUVEC") == 0
    assert sorted(p.name for p in out.iterdir()) == ["A549__bad", "HUVEC__bad"]
    for group in ("A549__bad", "HUVEC__bad"):
        assert (out / group / DIFFUSERS_WEIGHT_NAME).is_file() and (out / group / f"{group}.safetensors").is_file()


def test_plan_lists_every_group(tiny_model, demo_data, tmp_path):
    from lora.train import plan
    from prompts.schema.data import DataSection
    from prompts.schema.lora import LoraSection

    data = DataSection(data=str(demo_data))
    for per, n in (("class", 3), ("cell_line_class", 15), ("all", 1)):
        jobs = plan(LoraSection(model=str(tiny_model), output=str(tmp_path / per), per=per), data)
        assert len(jobs) == n and sum(len(j.dataset.records) for j in jobs) == 30
    all_job = plan(LoraSection(model=str(tiny_model), output=str(tmp_path / "a"), per="all"), data)[0]
    assert len(set(all_job.captions)) == 15  # per image: its class and cell line
    assert not (tmp_path / "class").exists()  # planning writes nothing


def test_the_trainer_and_the_study_plan_form_the_same_groups(tiny_model, demo_data, tmp_path):
    """One rule forms LoRA groups (prompts.layout.lora_groups): the workflow plans exactly the jobs the trainer runs."""
    from lora.plan import plan
    from prompts.dataset import read_dataset
    from prompts.schema.data import DataSection
    from prompts.schema.lora import LoraSection
    from study.plan import _groups

    records = read_dataset(demo_data).records
    for per in ("class", "cell_line_class"):
        jobs = plan(LoraSection(model=str(tiny_model), output=str(tmp_path / per), per=per), DataSection(data=str(demo_data)))
        assert [j.group for j in jobs] == [g["group"] for g in _groups(records, per)]


def test_fold_filter_never_trains_on_a_test_image(tiny_model, class_data, tmp_path):
    import yaml

    from prompts.dataset import read_dataset

    paths = [r.path for r in read_dataset(class_data).records]
    folds = [{"repeat": 0, "fold": k, "test": paths[k::3], "train": [p for p in paths if p not in paths[k::3]]} for k in range(3)]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"version": 1, "data": str(class_data), "n_splits": 3, "repeats": 1, "seed": 0,
                                 "group_by": None, "classes": ["bad", "good"], "folds": folds}))
    out = tmp_path / "out"
    assert train(tiny_model, class_data, out, "--split", str(split), "--fold", "all", "--classes", "bad") == 0
    assert sorted(p.name for p in out.iterdir()) == ["fold_0", "fold_1", "fold_2"]
    for k, fold in enumerate(folds):
        used = yaml.safe_load((out / f"fold_{k}" / "bad" / "config.yaml").read_text())["group"]["images"]
        assert used and not set(used) & set(fold["test"])
        assert set(used) == {p for p in fold["train"] if p.startswith("bad/")}
    out1 = tmp_path / "one"
    assert train(tiny_model, class_data, out1, "--split", str(split), "--fold", "1", "--classes", "bad") == 0
    assert [p.name for p in out1.iterdir()] == ["fold_1"]


# --------------------------------------------------------------------------- checkpoints
# Kill, Ctrl-C, resume, damaged and foreign checkpoints, changed inputs: tests/test_promise_lora.py.


# --------------------------------------------------------------------------- processes, precision, models, data

def test_two_process_cpu_launch(tiny_model, class_data, tmp_path):
    out = tmp_path / "out"
    accelerate = Path(sys.executable).with_name("accelerate")
    proc = subprocess.run([str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lora", "train", "--model", str(tiny_model),
                           "--data", str(class_data), "--output", str(out), *FAST, "--classes", "bad"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stderr  # data-parallel: 6 images / (batch 2 x 2 processes) = 2 steps
    with open(out / "bad" / "loss.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert read_lora(out / "bad").modules


def test_bf16_keeps_lora_in_fp32_with_all_options(tiny_model, class_data, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("-m", "lora", "train", "--model", str(tiny_model), "--data", str(class_data), "--output", str(out), *FAST,
                   "--classes", "bad", "--mixed-precision", "bf16", "--gradient-checkpointing", "--cache-latents",
                   "--gradient-accumulation-steps", "2", "--min-snr-gamma", "5", "--noise-offset", "0.1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lora_w = read_lora(out / "bad")
    for m in lora_w.modules.values():
        assert m.down.dtype == torch.float32 and torch.isfinite(m.up).all()
    assert any(m.up.abs().max() > 0 for m in lora_w.modules.values())  # B moved away from its zero init


def test_cache_latents_with_flips_trains(tiny_model, class_data, tmp_path):
    out = tmp_path / "out"
    assert train(tiny_model, class_data, out, "--classes", "good", "--cache-latents", "--random-flip") == 0
    assert (out / "good" / DIFFUSERS_WEIGHT_NAME).is_file()


def test_single_file_checkpoint_model(tiny_model, class_data, tmp_path):
    """A single-file LDM-layout .safetensors (written by `python -m lora single-file`) trains offline with --model-config."""
    from diffusion.model import load_pipeline

    ckpt = tmp_path / "tiny.safetensors"
    main(["single-file", str(tiny_model), str(ckpt)])
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)
    assert any(k.startswith("first_stage_model.") for k in keys) and any(k.startswith("cond_stage_model.transformer.") for k in keys)
    a, b = load_pipeline(tiny_model), load_pipeline(ckpt, config=tiny_model)
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    out = tmp_path / "out"
    assert train(ckpt, class_data, out, "--model-config", str(tiny_model), "--classes", "bad") == 0
    assert (out / "bad" / "bad.safetensors").is_file()


def test_sixteen_bit_tiffs_train(tiny_model, tmp_path):
    from lora import data as D
    from prompts.dataset import read_dataset

    data = shared_data("brightfield16")
    images = D.load_images(read_dataset(data).select(classes=["spheroid"]), 64, DEFAULT)
    for img in images.images:
        assert img.shape == (3, 64, 64) and torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
        assert int(img.max()) - int(img.min()) > 20  # real contrast survives the 16 -> 8 bit scaling
    out = tmp_path / "out"
    assert train(tiny_model, data, out, "--classes", "spheroid") == 0
    assert (out / "spheroid" / DIFFUSERS_WEIGHT_NAME).is_file()
