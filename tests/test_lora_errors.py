"""Bad input to `python -m lora train` / `convert`: one line on stderr, exit status 2, nothing written."""
from __future__ import annotations

import shutil

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import lora  # noqa: E402,F401
from lora.__main__ import main  # noqa: E402

FAST = ["--resolution", "64", "--epochs", "1", "--repeats", "1", "--validation-images", "0"]


def fails(capsys, *argv) -> str:
    """Run the CLI, expect exit status 2 and exactly one `error:` line; returns it."""
    with pytest.raises(SystemExit) as exc:
        main(list(map(str, argv)))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith(("Loading pipeline", "There are modules"))]  # library chatter
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


def train_args(model, data, out, *flags):
    return [str(a) for a in ("train", "--model", model, "--data", data, "--output", out, *FAST, *flags)]


def test_missing_data_folder(capsys, tiny_model, tmp_path, out):
    msg = fails(capsys, *train_args(tiny_model, tmp_path / "nope", out))
    assert "nope" in msg and "--data" in msg
    assert not out.exists()


def test_empty_data_folder(capsys, tiny_model, tmp_path, out):
    (tmp_path / "empty").mkdir()
    msg = fails(capsys, *train_args(tiny_model, tmp_path / "empty", out))
    assert "holds no images" in msg
    assert not out.exists()


def test_class_without_images(capsys, tiny_model, class_data, out):
    msg = fails(capsys, *train_args(tiny_model, class_data, out, "--classes", "good,nosuch"))
    assert "nosuch" in msg and "good" in msg
    assert not out.exists()


def test_cell_line_without_images(capsys, tiny_model, demo_data, out):
    msg = fails(capsys, *train_args(tiny_model, demo_data, out, "--per", "cell_line_class", "--cell-lines", "HeLa"))
    assert "HeLa" in msg and "A549" in msg
    assert not out.exists()


def test_undecodable_image_named_then_skipped(capsys, tiny_model, class_data, tmp_path, out):
    data = tmp_path / "data"
    shutil.copytree(class_data, data)
    (data / "bad" / "broken.png").write_bytes(b"not a png at all")
    msg = fails(capsys, *train_args(tiny_model, data, out))
    assert "broken.png" in msg and "--skip-bad-images" in msg
    assert not out.exists()
    main(train_args(tiny_model, data, out, "--skip-bad-images", "--classes", "bad"))
    import yaml

    used = yaml.safe_load((out / "bad" / "config.yaml").read_text())["group"]["images"]
    assert len(used) == 6 and "bad/broken.png" not in used


def test_missing_model(capsys, class_data, tmp_path, out):
    msg = fails(capsys, *train_args(tmp_path / "no-model", class_data, out))
    assert "no-model" in msg and "does not exist" in msg
    assert not out.exists()


def test_folder_that_is_not_a_model(capsys, class_data, tmp_path, out):
    msg = fails(capsys, *train_args(class_data, class_data, out))
    assert "not a Stable Diffusion model" in msg
    assert not out.exists()


def test_file_that_is_not_a_checkpoint(capsys, class_data, tmp_path, out):
    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    msg = fails(capsys, *train_args(bogus, class_data, out))
    assert "model.safetensors" in msg
    assert not out.exists()


def test_pickle_checkpoint_refused(capsys, class_data, tmp_path, out):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"pickle")
    msg = fails(capsys, *train_args(ckpt, class_data, out))
    assert "pickle" in msg and "--allow-pickle" in msg
    assert not out.exists()


def test_offline_hub_id(capsys, class_data, out, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = fails(capsys, *train_args("nobody-here/no-such-model", class_data, out, "--classes", "bad"))
    assert "nobody-here/no-such-model" in msg and "--model DIR" in msg
    assert not out.exists()


def test_finished_group_refused_unless_overwrite(capsys, tiny_model, class_data, out):
    main(train_args(tiny_model, class_data, out, "--classes", "bad"))
    first = (out / "bad" / "bad.safetensors").read_bytes()
    msg = fails(capsys, *train_args(tiny_model, class_data, out, "--classes", "bad", "--seed", "1"))
    assert str(out / "bad") in msg and "--overwrite" in msg
    assert (out / "bad" / "bad.safetensors").read_bytes() == first  # nothing overwritten
    main(train_args(tiny_model, class_data, out, "--classes", "bad", "--seed", "1", "--overwrite"))
    assert (out / "bad" / "bad.safetensors").read_bytes() != first
    assert sorted(p.name for p in out.iterdir()) == ["bad"]


def test_config_unknown_key_and_wrong_type(capsys, tiny_model, class_data, tmp_path, out):
    cfg = tmp_path / "study.yaml"
    cfg.write_text("lora:\n  rnak: 4\n")
    msg = fails(capsys, "train", "--config", cfg, "--model", tiny_model, "--data", class_data, "--output", out)
    assert "lora.rnak" in msg and "unknown key" in msg
    cfg.write_text("lora:\n  epochs: ten\n")
    msg = fails(capsys, "train", "--config", cfg, "--model", tiny_model, "--data", class_data, "--output", out)
    assert "lora.epochs" in msg and "integer" in msg
    assert not out.exists()


def test_bad_numbers(capsys, tiny_model, class_data, out):
    assert "multiple of 8" in fails(capsys, *train_args(tiny_model, class_data, out, "--resolution", "60"))
    assert "--random-crop" in fails(capsys, *train_args(tiny_model, class_data, out, "--cache-latents", "--random-crop"))
    assert "--split" in fails(capsys, *train_args(tiny_model, class_data, out, "--fold", "0"))
    assert not out.exists()


def test_convert_refuses_missing_and_existing(capsys, tmp_path):
    msg = fails(capsys, "convert", tmp_path / "none.safetensors", tmp_path / "x.safetensors", "--to", "kohya")
    assert "does not exist" in msg
    src = tmp_path / "a.bin"
    src.write_bytes(b"x")
    assert "safetensors" in fails(capsys, "convert", src, tmp_path / "y.safetensors", "--to", "kohya")
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()


def test_lora_file_given_as_model(capsys, class_data, tmp_path, out):
    import torch
    from safetensors.torch import save_file

    fake = tmp_path / "style.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, str(fake))
    msg = fails(capsys, *train_args(fake, class_data, out))
    assert "style.safetensors" in msg and "LoRA" in msg
    assert not out.exists()
