"""LoRA formats (diffusers <-> kohya/A1111) and the data pipeline, without training."""
from __future__ import annotations

import pytest

from prompts.normalize import DEFAULT

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

import lora  # noqa: E402,F401
from diffusion.formats import (  # noqa: E402
    DIFFUSERS_WEIGHT_NAME,
    LoraModule,
    LoraWeights,
    deltas,
    from_peft,
    kohya_name,
    module_from_kohya,
    read_lora,
    write_diffusers,
    write_kohya,
)
from lora import data as D  # noqa: E402
from lora.__main__ import main  # noqa: E402


@pytest.fixture(scope="module")
def random_lora(tiny_model):
    """A peft LoRA on the tiny model's U-Net and text encoder with random (non-zero) A and B, rank 4, alpha 1."""
    from types import SimpleNamespace

    from diffusion.model import load_pipeline
    from lora.train import add_lora

    pipe = load_pipeline(tiny_model)
    add_lora(pipe.unet, pipe.text_encoder, SimpleNamespace(seed=0, rank=4, alpha=1.0, unet_lr=1e-4, text_encoder_lr=1e-4,
                                                        network="kohya", conv_dim=0, conv_alpha=None))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in (pipe.unet, pipe.text_encoder):
            for name, p in m.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return from_peft(pipe.unet, pipe.text_encoder)


def load_lora(pipe, file, **kwargs):
    """diffusers' load_lora_weights; offline (HF_HUB_OFFLINE=1) it needs the folder and weight_name."""
    pipe.load_lora_weights(str(file.parent), weight_name=file.name, **kwargs)


def assert_same_deltas(a: LoraWeights, b: LoraWeights):
    da, db = deltas(a), deltas(b)
    assert da.keys() == db.keys() and da
    for k in da:
        torch.testing.assert_close(da[k], db[k], rtol=0, atol=0)


def test_kohya_names_round_trip(random_lora):
    for comp, module in random_lora.modules:
        assert module_from_kohya(kohya_name(comp, module)) == (comp, module)
    assert kohya_name("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0") == \
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"
    assert module_from_kohya("lora_te_text_model_encoder_layers_11_mlp_fc1") == ("text_encoder", "text_model.encoder.layers.11.mlp.fc1")
    assert module_from_kohya("lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj") == \
        ("unet", "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj")


def test_diffusers_kohya_diffusers_preserves_deltas(random_lora, tmp_path):
    first = write_diffusers(random_lora, tmp_path / "d1")
    main(["convert", str(first.parent), str(tmp_path / "k.safetensors"), "--to", "kohya"])
    main(["convert", str(tmp_path / "k.safetensors"), str(tmp_path / "d2"), "--to", "diffusers"])
    a, k, b = read_lora(first), read_lora(tmp_path / "k.safetensors"), read_lora(tmp_path / "d2")
    assert (a.metadata["__format__"], k.metadata["__format__"], b.metadata["__format__"]) == ("diffusers", "kohya", "diffusers")
    assert_same_deltas(random_lora, a)
    assert_same_deltas(a, k)
    assert_same_deltas(k, b)
    assert k.metadata["ss_network_dim"] == "4" and float(k.metadata["ss_network_alpha"]) == 1.0


def test_mixed_ranks_and_alphas_survive_diffusers_reload(random_lora, tiny_model, tmp_path):
    """Per-module rank and alpha (as in kohya files from other tools) reload in diffusers at their own scale."""
    from diffusion.model import load_pipeline

    mods = dict(random_lora.modules)
    key = next(k for k in mods if k[0] == "unet")
    m = mods[key]
    mods[key] = LoraModule(m.down[:2].clone(), m.up[:, :2].clone(), alpha=8.0)  # rank 2, alpha 8: scale 4
    mixed = LoraWeights(mods)
    write_kohya(mixed, tmp_path / "mixed.safetensors")
    main(["convert", str(tmp_path / "mixed.safetensors"), str(tmp_path / "d"), "--to", "diffusers"])
    assert_same_deltas(mixed, read_lora(tmp_path / "d"))
    pipe = load_pipeline(tiny_model)
    base = pipe.unet.state_dict()[f"{key[1]}.weight"].clone()
    load_lora(pipe, tmp_path / "d" / DIFFUSERS_WEIGHT_NAME)
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()
    torch.testing.assert_close(pipe.unet.state_dict()[f"{key[1]}.weight"] - base, mods[key].delta(), rtol=1e-4, atol=1e-6)


def test_convert_to_named_diffusers_file(random_lora, tmp_path):
    write_kohya(random_lora, tmp_path / "k.safetensors")
    main(["convert", str(tmp_path / "k.safetensors"), str(tmp_path / "named.safetensors"), "--to", "diffusers"])
    assert_same_deltas(random_lora, read_lora(tmp_path / "named.safetensors"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.safetensors", "named.safetensors"]
    assert DIFFUSERS_WEIGHT_NAME not in {p.name for p in tmp_path.iterdir()}


def test_kohya_hash_matches_sd_scripts_definition(random_lora, tmp_path):
    """sshs_model_hash = SHA-256 of the tensor bytes of the file saved with only its ss_* metadata."""
    import hashlib

    from safetensors import safe_open
    from safetensors.torch import save_file

    path = write_kohya(random_lora, tmp_path / "k.safetensors", {"ss_output_name": "x"})
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    ss_only = tmp_path / "ss.safetensors"
    save_file(state, str(ss_only), {k: v for k, v in meta.items() if k.startswith("ss_")})
    raw = ss_only.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(raw[8 + n:]).hexdigest()


# --------------------------------------------------------------------------- data

def test_resize_crop_and_grayscale_policy(tmp_path):
    import numpy as np
    from PIL import Image

    from prompts.dataset import read_dataset

    (tmp_path / "a").mkdir()
    Image.fromarray(np.tile(np.arange(200, dtype=np.uint8), (100, 1)), "L").save(tmp_path / "a" / "wide.png")  # 200x100
    Image.fromarray(np.full((150, 90, 3), (10, 200, 30), np.uint8), "RGB").save(tmp_path / "a" / "tall.png")
    images = D.load_images(read_dataset(tmp_path), 64, DEFAULT)
    tall, wide = images.images  # sorted paths
    assert wide.shape == (3, 64, 128) and tall.shape == (3, 107, 64)  # shortest side = 64, aspect kept
    assert torch.equal(wide[0], wide[1]) and torch.equal(wide[1], wide[2])  # gray stays gray
    assert tall[:, 50, 30].tolist() == [10, 200, 30]  # colour stays colour
    x = D.pixel_batch(images, [1], random_crop=False, generator=None)
    assert x.shape == (1, 3, 64, 64) and -1.0 <= x.min() and x.max() <= 1.0
    center = D.crop(wide, 64, False, None)
    assert torch.equal(center, wide[:, :, 32:96])
    g = torch.Generator().manual_seed(0)
    crops = {D.crop(wide, 64, True, g)[0, 0, 0].item() for _ in range(20)}
    assert len(crops) > 1  # random crops move


def test_epoch_batches_cover_every_image_and_split_across_processes():
    order = D.epoch_order(5, repeats=2, epoch=0, seed=0)
    assert sorted(order) == sorted(list(range(5)) * 2) and order != D.epoch_order(5, 2, 1, 0)
    one = D.epoch_batches(order, 2, 1, 0)
    assert [i for b in one for i in b] == order
    p0, p1 = D.epoch_batches(order, 2, 2, 0), D.epoch_batches(order, 2, 2, 1)
    assert len(p0) == len(p1) == D.steps_per_epoch(5, 2, 2, 2) == 3
    assert set(i for b in p0 + p1 for i in b) == set(range(5))
    flags = torch.tensor([[True, False], [False, True]])
    x = torch.arange(8.0).reshape(2, 1, 2, 2)
    y = D.apply_flips(x, flags)
    assert torch.equal(y[0], x[0].flip(-1)) and torch.equal(y[1], x[1].flip(-2))


# --------------------------------------------------------------------------- the hash A1111 shows

def a1111_rule(kohya_file) -> str:
    """A1111's extensions-builtin/Lora/network.py, written out: the `sshs_model_hash` metadata, else the
    SHA-256 of the bytes after the safetensors header (the addnet hash); shorthash = the first 12 digits."""
    import hashlib
    import json as _json

    raw = kohya_file.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    meta = _json.loads(raw[8:8 + n]).get("__metadata__", {})
    addnet = hashlib.sha256(raw[8 + n:]).hexdigest()
    return (meta.get("sshs_model_hash") or addnet)[:12], addnet[:12]


def test_png_lora_hash_is_a1111_short_hash_of_the_kohya_file(random_lora, tiny_model, class_data, tmp_path):
    """generate given the diffusers file writes the kohya file's A1111 hash in `Lora hashes` and the manifest,
    and the manifest keeps the SHA-256 of both files."""
    import hashlib
    import json as _json

    from PIL import Image

    from diffusion.formats import a1111_short_hash
    from generate.__main__ import main as generate_main

    folder = tmp_path / "loras" / "good"
    write_diffusers(random_lora, folder)
    kohya = write_kohya(random_lora, folder / "good.safetensors", {"ss_output_name": "good"})
    short, addnet = a1111_rule(kohya)
    assert short == addnet  # our sshs_model_hash is the addnet hash, as kohya's is
    out = tmp_path / "out"
    generate_main(["--model", str(tiny_model), "--lora", str(tmp_path / "loras"), "--data", str(class_data), "--classes", "good",
                   "--output", str(out), "--size", "64", "64", "--steps", "2", "--count", "1", "--lora-weights", "1.0", "--no-progress"])
    (rec,) = [_json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    with Image.open(out / rec["file"]) as im:
        params = im.text["parameters"]
    assert f'Lora hashes: "good: {short}"' in params
    (u,) = rec["loras"]
    assert u["hash"] == short
    assert u["sha256"] == {"diffusers": hashlib.sha256((folder / DIFFUSERS_WEIGHT_NAME).read_bytes()).hexdigest(),
                           "kohya": hashlib.sha256(kohya.read_bytes()).hexdigest()}
    # a diffusers file alone: the hash of the kohya file `lora convert` makes from it
    alone = tmp_path / "alone"
    write_diffusers(random_lora, alone)
    main(["convert", str(alone), str(tmp_path / "converted.safetensors"), "--to", "kohya"])
    assert a1111_short_hash(alone / DIFFUSERS_WEIGHT_NAME) == a1111_rule(tmp_path / "converted.safetensors")[0]


def test_bad_lora_header_is_one_line_naming_the_file(tmp_path):
    from prompts.errors import UserError

    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(UserError) as err:
        read_lora(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    from diffusion.formats import a1111_short_hash

    with pytest.raises(UserError, match="not a readable safetensors LoRA file"):
        a1111_short_hash(bad)
