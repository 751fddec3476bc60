"""`lora.together`: K groups trained in one pass give the LoRAs of K separate runs (tiny model, CPU).

Tolerance: every LoRA tensor within atol 5e-5 + rtol 1e-3 of the separate run's (training moves the factors by ~3e-3;
the only difference is the order of float sums in a larger batch). Files, metadata (other than the hashes of the
tensor bytes), fingerprints, loss logs and learning rates are those of the separate runs.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

import lora  # noqa: E402,F401  (sets USE_TF=0)
from diffusion.formats import read_lora  # noqa: E402
from lora.__main__ import main  # noqa: E402

pytestmark = pytest.mark.workflow  # each test trains several tiny LoRAs: minutes on 2 cores, not the inner loop

ATOL, RTOL = 5e-5, 1e-3
COUNTS = {"good": 6, "acceptable": 6, "bad": 3}  # "bad" has half the images: half the steps, then it leaves the batch
BASE = ["--resolution", "64", "--epochs", "2", "--repeats", "1", "--batch-size", "2", "--rank", "4", "--alpha", "2",
        "--lr-scheduler", "cosine", "--validation-images", "1"]


@pytest.fixture(scope="module")
def uneven_data(tmp_path_factory) -> Path:
    """DATA/<class>/<image>: good 6, acceptable 6, bad 3 grayscale 64x64 PNGs."""
    import numpy as np

    from prompts.demo import micrograph

    root = tmp_path_factory.mktemp("uneven") / "data"
    for label, n in COUNTS.items():
        (root / label).mkdir(parents=True)
        for i in range(n):
            micrograph(label, "A549", 64, np.random.default_rng(i)).save(root / label / f"{label}_{i}.png")
    return root


def train(model, data, out, *flags) -> None:
    main(["train", "--model", str(model), "--data", str(data), "--output", str(out), *BASE, *flags])


def both(tmp_path, tiny_model, data, *flags) -> tuple[Path, Path]:
    """OUT of separate runs and of one joint run with the same flags."""
    alone, together = tmp_path / "alone", tmp_path / "together"
    train(tiny_model, data, alone, *flags)
    train(tiny_model, data, together, "--together", "all", *flags)
    return alone, together


def assert_same_loras(alone: Path, together: Path, groups, together_value="all") -> None:
    from safetensors import safe_open

    from prompts import layout

    for group in groups:
        a, b = alone / group, together / group
        assert sorted(p.name for p in a.rglob("*") if "tensorboard" not in p.parts) == \
            sorted(p.name for p in b.rglob("*") if "tensorboard" not in p.parts)
        # every tensor, in both files
        for name in (layout.LORA_DIFFUSERS_FILE, layout.lora_kohya_file(group)):
            with safe_open(str(a / name), "pt") as fa, safe_open(str(b / name), "pt") as fb:
                assert sorted(fa.keys()) == sorted(fb.keys())
                for key in fa.keys():
                    torch.testing.assert_close(fb.get_tensor(key), fa.get_tensor(key), atol=ATOL, rtol=RTOL, msg=f"{group} {name} {key}")
                meta_a, meta_b = fa.metadata(), fb.metadata()
            hashes = {"sshs_model_hash", "sshs_legacy_hash"}  # hashes of the tensor bytes: equal only for equal bytes
            assert {k: v for k, v in meta_a.items() if k not in hashes} == {k: v for k, v in meta_b.items() if k not in hashes}
        assert read_lora(a).rank_alpha() == read_lora(b).rank_alpha() == (4, 2.0)
        # the fingerprint: byte for byte (lora.together does not change the result)
        assert (a / "fingerprint.json").read_bytes() == (b / "fingerprint.json").read_bytes()
        # the loss log: same updates, epochs and learning rates; losses within tolerance
        rows_a, rows_b = (list(csv.DictReader(open(f / "loss.csv"))) for f in (a, b))
        assert [(r["update"], r["epoch"], r["lr_unet"], r["lr_text_encoder"]) for r in rows_a] == \
            [(r["update"], r["epoch"], r["lr_unet"], r["lr_text_encoder"]) for r in rows_b]
        assert all(abs(float(x["loss"]) - float(y["loss"])) <= 1e-4 * (1 + float(x["loss"])) for x, y in zip(rows_a, rows_b))
        # the resolved settings: the same but for the `together` key itself
        import yaml

        cfg_a, cfg_b = (yaml.safe_load((f / "config.yaml").read_text()) for f in (a, b))
        assert str(cfg_b["lora"].pop("together")) == together_value and cfg_a["lora"].pop("together") is None
        assert cfg_a["lora"].pop("output") != cfg_b["lora"].pop("output")
        assert cfg_a == cfg_b
        # the validation image, made with this group's LoRA alone
        import numpy as np
        from PIL import Image

        (img_a,), (img_b,) = (sorted((f / "validation").glob("*.png")) for f in (a, b))
        assert np.abs(np.asarray(Image.open(img_a), dtype=int) - np.asarray(Image.open(img_b), dtype=int)).max() <= 2


def together_size(folder: Path):
    """How many groups trained together with this one (stats.json), None when it trained alone."""
    return json.loads((folder / "stats.json").read_text()).get("trained_together", {}).get("groups")


def test_three_groups_together_equal_three_runs(tmp_path, tiny_model, uneven_data):
    """K = 3 with the text encoder trained (routed too), a cosine schedule and an uneven group."""
    alone, together = both(tmp_path, tiny_model, uneven_data)
    assert_same_loras(alone, together, sorted(COUNTS))
    assert {g: together_size(together / g) for g in COUNTS} == {"good": 3, "acceptable": 3, "bad": 3}
    steps = {g: len(list(csv.DictReader(open(together / g / "loss.csv")))) for g in COUNTS}
    assert steps == {"good": 6, "acceptable": 6, "bad": 4}  # ceil(3/2) x 2 epochs: bad stops, as its own run does
    lora_bad, lora_good = read_lora(together / "bad"), read_lora(together / "good")
    assert any((lora_bad.modules[k].up - lora_good.modules[k].up).abs().max() > 1e-4 for k in lora_bad.modules)  # not one LoRA


def test_together_in_pairs_with_accumulation_cache_and_convolutions(tmp_path, tiny_model, uneven_data):
    """K = 2 (two joint runs: 2 + 1 groups), gradient accumulation, cached latents, LoCon convolutions, gradient
    checkpointing (the recomputed forward is routed too), U-Net only."""
    flags = ["--gradient-accumulation-steps", "2", "--cache-latents", "--conv-dim", "2", "--text-encoder-lr", "0", "--gradient-checkpointing",
             "--noise-offset", "0.05", "--min-snr-gamma", "5"]
    alone, together = tmp_path / "alone", tmp_path / "together"
    train(tiny_model, uneven_data, alone, *flags)
    train(tiny_model, uneven_data, together, "--together", "2", *flags)
    assert_same_loras(alone, together, sorted(COUNTS), together_value="2")
    assert {g: together_size(together / g) for g in COUNTS} == {"acceptable": 2, "bad": 2, "good": None}  # plan order
    assert any(k[1].endswith(("conv1", "conv2")) for k in read_lora(together / "bad").modules)


def test_routed_layer_equals_peft_per_adapter(tiny_model):
    """The routed update of every LoRA layer (Linear and Conv2d) equals peft's own forward with that adapter."""
    from diffusers import UNet2DConditionModel

    from diffusion.formats import network_modules, peft_config
    from lora.together import Router, lora_layers

    unet = UNet2DConditionModel.from_pretrained(tiny_model / "unet")
    kinds = network_modules(unet, None, "kohya", conv_dim=2)
    config = {n: k for (_, n), k in kinds.items()}
    for name in ("g0", "g1"):
        unet.add_adapter(peft_config(config, 4, 2.0, 2, None), adapter_name=name)
    g = torch.Generator().manual_seed(0)
    for layer in lora_layers(unet):
        for d in (layer.lora_B,):
            for p in d.parameters():
                p.data = torch.randn(p.shape, generator=g) * 0.1
    x = torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500, 10, 900])
    hidden = torch.randn(4, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        expected = []
        for name, rows in (("g0", slice(0, 2)), ("g1", slice(2, 4))):
            unet.set_adapter(name)
            expected.append(unet(x[rows], t[rows], hidden[rows]).sample)
        router = Router([unet])
        router.order = ["g0", "g1"]
        got = unet(x, t, hidden).sample
        router.remove()
    torch.testing.assert_close(got, torch.cat(expected), atol=1e-5, rtol=1e-4)


def test_bad_together_value_is_one_line(tmp_path, tiny_model, uneven_data, capsys):
    with pytest.raises(SystemExit) as exc:
        train(tiny_model, uneven_data, tmp_path / "out", "--together", "some")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "together" in err[0] and "'some'" in err[0]
    assert not (tmp_path / "out").exists()


def test_killed_joint_run_continues_to_the_same_loras(tmp_path, tiny_model, uneven_data, monkeypatch):
    """Ctrl-C right after the first group's checkpoint 2: a plain re-run continues that group from it and starts the
    others over (they had none yet), so the groups then take different steps in one batch; the LoRAs are those of
    an uninterrupted joint run."""
    from lora.checkpoints import KILL_ENV

    flags = ["--together", "all", "--checkpointing-steps", "2", "--text-encoder-lr", "0", "--validation-images", "0"]
    train(tiny_model, uneven_data, tmp_path / "whole", *flags)
    monkeypatch.setenv(KILL_ENV, "2:INT")
    with pytest.raises(SystemExit) as exc:
        train(tiny_model, uneven_data, tmp_path / "killed", *flags)
    assert exc.value.code == 130
    assert (tmp_path / "killed" / ".work" / "acceptable" / "checkpoints" / "checkpoint-2").is_dir()
    assert not (tmp_path / "killed" / "acceptable").exists()
    monkeypatch.delenv(KILL_ENV)
    train(tiny_model, uneven_data, tmp_path / "killed", *flags)
    rows = list(csv.DictReader(open(tmp_path / "killed" / "acceptable" / "loss.csv")))
    assert [r["update"] for r in rows] == [str(u) for u in range(1, 7)]
    for group in COUNTS:
        a, b = read_lora(tmp_path / "whole" / group), read_lora(tmp_path / "killed" / group)
        for key, module in a.modules.items():
            torch.testing.assert_close(b.modules[key].up, module.up, atol=ATOL, rtol=RTOL)
            torch.testing.assert_close(b.modules[key].down, module.down, atol=ATOL, rtol=RTOL)
    assert not (tmp_path / "killed" / ".work").exists()


def test_a_joint_checkpoint_continues_one_group_at_a_time(tmp_path, tiny_model, uneven_data, monkeypatch):
    """The checkpoint a joint run writes is the one a separate run writes: dropping --together continues it."""
    from lora.checkpoints import KILL_ENV

    flags = ["--checkpointing-steps", "2", "--text-encoder-lr", "0", "--validation-images", "0", "--groups", "acceptable", "bad"]
    train(tiny_model, uneven_data, tmp_path / "alone", *flags)
    monkeypatch.setenv(KILL_ENV, "2:INT")
    with pytest.raises(SystemExit):
        train(tiny_model, uneven_data, tmp_path / "mixed", "--together", "all", *flags)
    monkeypatch.delenv(KILL_ENV)
    train(tiny_model, uneven_data, tmp_path / "mixed", *flags)  # one at a time from here
    assert sorted(p.name for p in (tmp_path / "mixed").iterdir()) == ["acceptable", "bad"]
    for group in ("acceptable", "bad"):
        a, b = read_lora(tmp_path / "alone" / group), read_lora(tmp_path / "mixed" / group)
        for key, module in a.modules.items():
            torch.testing.assert_close(b.modules[key].up, module.up, atol=ATOL, rtol=RTOL)
        assert (tmp_path / "alone" / group / "fingerprint.json").read_bytes() == (tmp_path / "mixed" / group / "fingerprint.json").read_bytes()


@pytest.mark.parametrize("together", [[], ["--together", "all"]], ids=["alone", "together"])
def test_a_diverging_run_is_one_line_and_writes_no_lora(tmp_path, tiny_model, uneven_data, capsys, together):
    """The loss is read from the device every few updates; a non-finite one still stops the run before any LoRA is written."""
    with pytest.raises(SystemExit) as exc:
        train(tiny_model, uneven_data, tmp_path / "out", "--unet-lr", "1e30", "--text-encoder-lr", "0", "--epochs", "1",
              "--validation-images", "0", "--groups", "good", "bad", *together)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "learning rate is likely too high" in err[0] and "--unet-lr 1e+30" in err[0], err
    assert not [p for p in (tmp_path / "out").glob("*/pytorch_lora_weights.safetensors")]


def test_bf16_together_equals_alone(tmp_path, tiny_model, uneven_data):
    """Mixed precision bf16 (the frozen weights in bf16, the LoRA factors in fp32): the same LoRAs, within the same tolerance."""
    # in subprocesses: accelerate's process-wide state keeps the first mixed-precision setting it saw in a process
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    flags = ["--mixed-precision", "bf16", "--epochs", "1", "--groups", "good", "bad"]
    alone, together = tmp_path / "alone", tmp_path / "together"
    for out, extra in ((alone, []), (together, ["--together", "all"])):
        cmd = [sys.executable, "-m", "lora", "train", "--model", str(tiny_model), "--data", str(uneven_data), "--output", str(out),
               *BASE, *extra, *flags]
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_loras(alone, together, ["bad", "good"])
