"""ControlNet of the tiny model: training per fold with records, real conditioning, pairs with provenance, no leaks."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from controlnet import masks as M  # noqa: E402
from prompts.blobs import blob_scene, make_blob_pairs, write_threshold_pairs  # noqa: E402
from prompts.config import load_study  # noqa: E402
from prompts.errors import UserError  # noqa: E402
from prompts.files import sha256_file  # noqa: E402
from prompts.pairs import load_mask  # noqa: E402
from tests.conftest import shared_data  # noqa: E402


def _settings(model, data, out, **kw):
    """(controlnet section, data section) for the tiny model at 64 px."""
    study = load_study(None)
    c = study.controlnet
    c.model, c.output, c.resolution, c.batch_size, c.epochs, c.learning_rate = str(model), str(out), 64, 2, 4, 1e-3
    for k, v in kw.items():
        setattr(c, k, v)
    study.data.data = str(data)
    return c, study.data


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    return make_blob_pairs(tmp_path_factory.mktemp("blobs") / "data", n=4, size=64, seed=0)


@pytest.fixture(scope="module")
def trained(tiny_model, blobs, tmp_path_factory) -> Path:
    """CN/controlnet trained 8 steps on the 4 blob pairs (no split)."""
    from controlnet.train import run

    out = tmp_path_factory.mktemp("cn") / "cn"
    (folder,) = run(*_settings(tiny_model, blobs, out))
    return folder


def test_trained_controlnet_loads_in_diffusers_and_records_every_training_file(trained, blobs):
    from diffusers import ControlNetModel

    net = ControlNetModel.from_pretrained(trained, use_safetensors=True)
    assert net.config.conditioning_channels == 3
    from safetensors import safe_open

    with safe_open(str(trained / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "controlnet_cond_embedding.conv_in.weight" in keys  # the key ComfyUI and sd-webui-controlnet detect diffusers files by
    rec = json.loads((trained / "fingerprint.json").read_text())
    images = sorted((blobs / "images").glob("*.png"))
    assert rec["images"] == {f"images/{p.name}": sha256_file(p) for p in images}
    assert rec["masks"] == {f"masks/{p.name}": sha256_file(blobs / "masks" / p.name) for p in images}
    losses = (trained / "loss.csv").read_text().splitlines()
    assert len(losses) == 1 + 8 and all(np.isfinite(float(r.split(",")[2])) for r in losses[1:])
    # trained: the zero-initialised output convolutions moved
    assert float(net.controlnet_mid_block.weight.detach().abs().max()) > 0


def test_rerun_keeps_a_finished_controlnet_and_refuses_changed_inputs(trained, tiny_model, blobs):
    from controlnet.train import run

    out = trained.parent
    before = (trained / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    run(*_settings(tiny_model, blobs, out))
    assert (trained / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == before
    with pytest.raises(UserError, match="made from other inputs"):
        run(*_settings(tiny_model, blobs, out, learning_rate=2e-3))


def test_controlnet_trains_on_pairs_from_real_stained_cells(tiny_model, tmp_path):
    from controlnet.train import run

    files = sorted(shared_data("pbc3").glob("*/*.jpg"))[::75]
    data = write_threshold_pairs(files, tmp_path / "pbc_pairs", size=64)
    (folder,) = run(*_settings(tiny_model, data, tmp_path / "cn", epochs=1))
    rec = json.loads((folder / "fingerprint.json").read_text())
    assert len(rec["images"]) == len(files) == len(rec["masks"])


def _two_masks():
    """A: cells on the left half only; B: the same left half, and other cells on the right half."""
    a = M.resize_mask(blob_scene(64, np.random.default_rng(11))[1], 128)
    a[:, 64:] = 0
    b = a.copy()
    b[:, 64:] = M.resize_mask(blob_scene(64, np.random.default_rng(12))[1], 128)[:, 64:]
    return M.relabel(a), M.relabel(b)


def test_controlnet_really_conditions_where_the_masks_differ(trained, tiny_model):
    """Same prompt and seed, Euler a: two masks give images that differ, and differ more where the masks differ.

    At conditioning scale 0 the images are identical (the check can fail); the tiny model's images are
    random-weight outputs, so the differences are small, but they follow the masks.
    """
    import torch

    from controlnet.sample import load_pipe

    c, _ = _settings(tiny_model, ".", trained.parent, size=128, steps=8)
    pipe = load_pipe(c, trained, None, torch.device("cpu"))
    a, b = _two_masks()

    def image(mask, scale):
        g = torch.Generator().manual_seed(5)
        return pipe(c.prompt, image=M.condition_image(mask), num_inference_steps=8, controlnet_conditioning_scale=scale,
                    height=128, width=128, generator=g, output_type="np").images[0]

    assert np.array_equal(image(a, 0.0), image(b, 0.0))
    diff = np.abs(image(a, 1.0) - image(b, 1.0)).mean(axis=-1)  # (128, 128)
    same_half, other_half = diff[:, :48].mean(), diff[:, 80:].mean()  # a margin around the seam at x = 64
    assert other_half > 0
    assert other_half > 1.3 * same_half


def test_generate_writes_pairs_with_masks_manifest_and_a1111_provenance(trained, tiny_model, blobs, tmp_path):
    from PIL import Image

    from controlnet.__main__ import main

    syn = tmp_path / "syn"
    argv = ["generate", "--data", str(blobs), "--model", str(tiny_model), "--output", str(trained.parent), "--synthetic", str(syn),
            "--size", "64", "--count", "2", "--densities", "12", "--steps", "3", "--no-progress"]
    main(argv)
    lines = [json.loads(x) for x in (syn / "manifest.jsonl").read_text().splitlines()]
    assert [r["file"] for r in lines] == ["aug/images/syn_00000.png", "aug/images/syn_00001.png",
                                          "density12.0/images/syn_00000.png", "density12.0/images/syn_00001.png"]
    for r in lines:
        img, mask_path = Image.open(syn / r["file"]), syn / r["mask"]
        assert img.mode == "RGB" and img.size == (64, 64)
        assert Image.open(mask_path).mode in ("I;16", "I;16B", "I")
        mask = load_mask(mask_path)
        assert mask.max() == r["cells"] >= 1
        params = img.text["parameters"]
        assert "Sampler: Euler a" in params and f"Seed: {r['seed']}" in params and "ControlNet 0:" in params
        assert r["controlnet_sha256"] == sha256_file(trained / "diffusion_pytorch_model.safetensors")
        assert set(r["sources"]) <= {f"images/blob_{i:03d}.png" for i in range(4)}
    dense = [r for r in lines if r["tree"] == "density12.0"]
    assert all(abs(r["density_reached"] - 12.0) * 64 * 64 / 10_000 <= 1.0 for r in dense)
    # each tree records the data files behind it (what `segment cv` checks against a fold's test pairs)
    tree_rec = json.loads((syn / "density12.0" / "fingerprint.json").read_text())
    assert tree_rec["images"] == json.loads((trained / "fingerprint.json").read_text())["images"]
    assert set(tree_rec["masks"]) == {f"masks/blob_{i:03d}.png" for i in range(4)}
    from prompts.pairs import read_pairs

    assert [p.name for p in read_pairs(syn / "aug")] == ["images/syn_00000.png", "images/syn_00001.png"]
    mtimes = {p: p.stat().st_mtime_ns for p in syn.rglob("*.png")}
    main(argv)  # a re-run makes nothing again
    assert {p: p.stat().st_mtime_ns for p in syn.rglob("*.png")} == mtimes
    # a run killed between a mask and its image: the re-run makes that pair, and the manifest has one line per pair
    (syn / lines[0]["file"]).unlink()
    (syn / "manifest.jsonl").write_text((syn / "manifest.jsonl").read_text() + '{"file": "aug/ima')
    main(argv)
    assert (syn / lines[0]["file"]).is_file()
    assert [json.loads(x)["file"] for x in (syn / "manifest.jsonl").read_text().splitlines()] == [r["file"] for r in lines]
    with pytest.raises(SystemExit) as err:  # other settings: refused, nothing replaced
        main([*argv, "--cfg", "3"])
    assert err.value.code == 2


def _split(path: Path, train: list[str], test: list[str]) -> Path:
    path.write_text(json.dumps({"version": 1, "n_splits": 2, "folds": [{"fold": 0, "train": train, "test": test}]}))
    return path


def test_generate_refuses_a_controlnet_that_saw_a_test_image(trained, tiny_model, blobs, tmp_path):
    """By path, and by content (a renamed copy of a test image in the record)."""
    from controlnet.sample import plan

    names = [f"images/blob_{i:03d}.png" for i in range(4)]
    split = _split(tmp_path / "split.json", names[:3], names[3:])
    cn = tmp_path / "cn"
    shutil.copytree(trained, cn / "fold_0" / "controlnet")  # trained on all four pairs: another split
    c, d = _settings(tiny_model, blobs, cn, synthetic=str(tmp_path / "syn"), size=64, count=1)
    d.split = str(split)
    with pytest.raises(UserError, match=r"trained on 2 test file\(s\) of this fold .*images/blob_003.png"):
        plan(c, d)
    fp_file = cn / "fold_0" / "controlnet" / "fingerprint.json"
    rec = json.loads(fp_file.read_text())
    rec["images"] = {"images/renamed.png" if k == names[3] else k: v for k, v in rec["images"].items()}
    rec["masks"] = {k: v for k, v in rec["masks"].items() if not k.endswith("blob_003.png")}
    fp_file.write_text(json.dumps(rec))
    with pytest.raises(UserError, match=r"images/renamed.png \(a copy of images/blob_003.png\)"):
        plan(c, d)
    assert not (tmp_path / "syn").exists()  # nothing written


def test_train_per_fold_uses_only_the_folds_training_pairs(tiny_model, blobs, tmp_path):
    from controlnet.train import plan

    names = [f"images/blob_{i:03d}.png" for i in range(4)]
    c, d = _settings(tiny_model, blobs, tmp_path / "cn", fold="all")
    d.split = str(_split(tmp_path / "split.json", names[1:], names[:1]))
    (job,) = plan(c, d)
    assert job.out_dir == tmp_path / "cn" / "fold_0" / "controlnet"
    assert sorted(job.fingerprint["images"]) == names[1:]
    assert "masks/blob_000.png" not in job.fingerprint["masks"]


def test_bad_pairs_are_one_line_each_and_exit_status_2(tiny_model, tmp_path, capsys):
    from PIL import Image

    from controlnet.__main__ import main

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / "images" / f"{name}.png")
    Image.fromarray(np.zeros((4, 8), np.uint16)).save(data / "masks" / "a.png")
    with pytest.raises(SystemExit) as err:
        main(["train", "--data", str(data), "--model", str(tiny_model), "--output", str(tmp_path / "cn")])
    assert err.value.code == 2
    text = capsys.readouterr().err.strip().splitlines()
    assert text[0].startswith("error: 2 bad image–mask pair(s)")
    assert any("images/a.png: image is 8x8 px but its mask masks/a.png is 8x4 px" in ln for ln in text)
    assert any("images/b.png: no mask" in ln for ln in text)
    assert not (tmp_path / "cn").exists()


def test_per_class_pairs_fill_the_class_into_the_prompt(tiny_model, trained, tmp_path):
    from controlnet.sample import plan_conditions
    from prompts.pairs import read_pairs

    for label in ("hela", "u2os"):
        make_blob_pairs(tmp_path / "data" / label, n=2, size=64, seed=len(label))
    pairs = read_pairs(tmp_path / "data")
    assert {p.label for p in pairs} == {"hela", "u2os"}
    c, _ = _settings(tiny_model, tmp_path / "data", trained.parent, size=64, count=4, densities=[6.0],
                     prompt="a microscopy image of {class} cells")
    jobs = plan_conditions(c, None, pairs)
    assert [(j.tree, j.label) for j in jobs] == [("aug", "hela"), ("aug", "u2os")] * 2 + [("density6.0", "hela"), ("density6.0", "u2os")] * 2
    for j in jobs:  # a condition uses masks of its own class only
        assert all(s.startswith(j.label + "/") for s in j.sources)
    assert jobs[0].stem == "hela_00000"


def test_controlnet_beside_a_class_lora_and_the_loras_leak_refusal(tiny_model, blobs, tmp_path):
    """A LoRA fused into the U-Net for training; a LoRA whose record lists a test image of the fold is refused."""
    from controlnet.train import plan, run
    from prompts import fingerprint as fpr
    from tests.lora_fixtures import make_lora

    lora_dir = tmp_path / "lora" / "fold_0" / "cells"
    make_lora(tiny_model, lora_dir, seed=3)
    names = [f"images/blob_{i:03d}.png" for i in range(4)]
    c, d = _settings(tiny_model, blobs, tmp_path / "cn", lora=str(tmp_path / "lora"), epochs=1)
    d.split = str(_split(tmp_path / "split.json", names[1:], names[:1]))
    (folder,) = run(c, d)
    import yaml

    assert yaml.safe_load((folder / "config.yaml").read_text())["lora"] == str(lora_dir / "pytorch_lora_weights.safetensors")
    assert json.loads((folder / "fingerprint.json").read_text())["parts"]["lora"] != fpr.digest(None)
    fpr.write(lora_dir / "fingerprint.json", {"version": 1, "parts": {}, "images": {"x/renamed.jpg": sha256_file(blobs / names[0])}})
    with pytest.raises(UserError, match=r"LoRA .* was trained on 1 test file\(s\) of this fold"):
        plan(c, d)


def test_cli_shows_each_commands_own_flags_and_needs_a_model(capsys, tmp_path, blobs):
    from controlnet.__main__ import main

    for cmd, has, lacks in (("train", "--learning-rate", "--densities"), ("generate", "--densities", "--learning-rate")):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        assert has in text and lacks not in text
    with pytest.raises(SystemExit) as err:
        main(["train", "--data", str(blobs), "--output", str(tmp_path / "cn")])
    assert err.value.code == 2 and "--model is missing" in capsys.readouterr().err


def test_a_killed_runs_temporary_folder_is_removed_only_when_stale(tmp_path):
    import os

    from controlnet.train import STALE_AFTER_S, remove_stale_temporaries

    out = tmp_path / "cn" / "controlnet"
    old, fresh, foreign = tmp_path / "cn" / ".controlnet.tmp-a1", tmp_path / "cn" / ".controlnet.tmp-b2", tmp_path / "cn" / "keep"
    for d in (old, fresh, foreign):
        d.mkdir(parents=True)
    past = old.stat().st_mtime - STALE_AFTER_S - 1
    os.utime(old, (past, past))
    os.utime(foreign, (past, past))
    assert remove_stale_temporaries(out) == 1
    assert not old.exists() and fresh.is_dir() and foreign.is_dir()
