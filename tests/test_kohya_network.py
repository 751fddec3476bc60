"""The network presets: kohya sd-scripts' `networks.lora` module set, the attention-only set, kohya LoCon.

The SD 1.5 key set is checked against the naming rule applied by hand to SD 1.5's layout (16
transformer blocks, 12 CLIP layers), on the `meta` device: no weights, no download.
"""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

import lora  # noqa: E402,F401
from diffusion.formats import (  # noqa: E402
    from_peft,
    kohya_name,
    network_args,
    network_modules,
    read_lora,
    write_diffusers,
    write_kohya,
)

# SD 1.5's transformer blocks (diffusers names): 2 per down level 0-2, 1 in the middle, 3 per up level 1-3.
SD15_TRANSFORMERS = ([f"down_blocks.{i}.attentions.{j}" for i in range(3) for j in range(2)] + ["mid_block.attentions.0"]
                     + [f"up_blocks.{i}.attentions.{j}" for i in (1, 2, 3) for j in range(3)])
ATTN = [f"transformer_blocks.0.{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")]
KOHYA_EXTRA = ["proj_in", "proj_out", "transformer_blocks.0.ff.net.0.proj", "transformer_blocks.0.ff.net.2"]
TE_ATTN = [f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
TE_MLP = ["mlp.fc1", "mlp.fc2"]
# SD 1.5's ResNet blocks (2 per down level, 2 in the middle, 3 per up level) and resamplers.
SD15_RESNETS = ([f"down_blocks.{i}.resnets.{j}" for i in range(4) for j in range(2)] + [f"mid_block.resnets.{j}" for j in range(2)]
                + [f"up_blocks.{i}.resnets.{j}" for i in range(4) for j in range(3)])
SD15_RESAMPLERS = [f"down_blocks.{i}.downsamplers.0.conv" for i in range(3)] + [f"up_blocks.{i}.upsamplers.0.conv" for i in range(3)]


def expected(unet_inner, te_inner):
    unet = {kohya_name("unet", f"{t}.{m}") for t in SD15_TRANSFORMERS for m in unet_inner}
    te = {kohya_name("text_encoder", f"text_model.encoder.layers.{i}.{m}") for i in range(12) for m in te_inner}
    return unet | te


@pytest.fixture(scope="module")
def sd15():
    from diffusion.model import build_sd15

    unet, text, _ = build_sd15("meta")
    return unet, text


def names(mods):
    return {kohya_name(c, m) for c, m in mods}


def test_kohya_preset_is_sd_scripts_module_set_at_sd15_size(sd15):
    kohya = network_modules(*sd15, "kohya")
    assert names(kohya) == expected(ATTN + KOHYA_EXTRA, TE_ATTN + TE_MLP)
    assert len(kohya) == 16 * 12 + 12 * 6 == 264
    assert "lora_unet_down_blocks_0_attentions_0_proj_in" in names(kohya)  # SD 1.x: a 1x1 convolution
    assert kohya[("unet", "down_blocks.0.attentions.0.proj_in")] == "conv1x1"
    assert "lora_te_text_model_encoder_layers_11_mlp_fc2" in names(kohya)
    attention = network_modules(*sd15, "attention")
    assert names(attention) == expected(ATTN, TE_ATTN) and len(attention) == 176
    assert len(kohya) - len(attention) == 88  # the modules kohya adapts and the attention set does not


def test_locon_adds_resnet_and_resampler_layers_like_sd_scripts(sd15):
    locon = network_modules(*sd15, "kohya", conv_dim=4)
    extra = {k: v for k, v in locon.items() if k not in network_modules(*sd15, "kohya")}
    convs = {m for (c, m), kind in extra.items() if kind == "conv"}
    assert convs == {f"{r}.{c}" for r in SD15_RESNETS for c in ("conv1", "conv2")} | set(SD15_RESAMPLERS)
    # inside the ResNet blocks kohya also adapts the time projection (Linear) and 1x1 shortcuts, at the network rank
    assert {m for (c, m), kind in extra.items() if kind == "linear"} == {f"{r}.time_emb_proj" for r in SD15_RESNETS}
    assert all(m.endswith("conv_shortcut") for (c, m), kind in extra.items() if kind == "conv1x1")
    assert sum(c == "unet" for c, _ in locon) == 278  # sd-scripts: "create LoRA for U-Net: 278 modules"
    assert not any("conv_in" in m or "conv_out" in m or "time_embedding" in m for _, m in locon)


def test_presets_refuse_nonsense():
    from prompts.errors import UserError

    with pytest.raises(UserError, match="--conv-dim needs --network kohya"):
        network_modules(torch.nn.Linear(1, 1), None, "attention", conv_dim=4)
    with pytest.raises(UserError, match="--network lycoris"):
        network_modules(torch.nn.Linear(1, 1), None, "lycoris")
    assert network_args("kohya") == {"preset": "kohya"}
    assert network_args("kohya", 4) == {"preset": "kohya", "conv_dim": "4", "conv_alpha": "1.0"}  # sd-scripts' default alpha


def random_lora(model, network, conv_dim=0, conv_alpha=None, rank=4, alpha=2.0):
    """A LoRA of the preset on the tiny model with random (non-zero) A and B."""
    from types import SimpleNamespace

    from diffusion.model import load_pipeline
    from lora.train import add_lora

    pipe = load_pipeline(model)
    kinds = network_modules(pipe.unet, pipe.text_encoder, network, conv_dim)
    cfg = SimpleNamespace(seed=0, rank=rank, alpha=alpha, unet_lr=1e-4, text_encoder_lr=1e-4, network=network,
                          conv_dim=conv_dim, conv_alpha=conv_alpha)
    add_lora(pipe.unet, pipe.text_encoder, cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in (pipe.unet, pipe.text_encoder):
            for name, p in m.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return from_peft(pipe.unet, pipe.text_encoder), kinds


def weights(pipe):
    return {(c, k[: -len(".weight")]): v.detach().clone() for c, m in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder))
            for k, v in m.state_dict().items() if k.endswith(".weight")}


@pytest.mark.parametrize("network,conv_dim,conv_alpha", [("kohya", 0, None), ("attention", 0, None), ("kohya", 2, None), ("kohya", 2, 4.0)])
def test_both_files_reload_at_the_trained_scale_per_preset(tiny_model, tmp_path, network, conv_dim, conv_alpha):
    """diffusers loads either file and changes exactly the preset's layers by alpha/rank * B @ A (convs at their own
    rank and alpha); diffusers -> kohya -> diffusers keeps every delta bit for bit."""
    from diffusion.model import load_pipeline
    from lora.__main__ import main

    lw, kinds = random_lora(tiny_model, network, conv_dim, conv_alpha)
    assert set(lw.modules) == set(kinds)
    if conv_dim:
        conv = next(m for k, m in lw.modules.items() if kinds[k] == "conv")
        assert conv.rank == conv_dim and conv.alpha == (conv_alpha or 1.0) and conv.down.shape[-2:] == (3, 3)
    written = write_diffusers(lw, tmp_path / "d")
    write_kohya(lw, tmp_path / "k.safetensors")
    main(["convert", str(tmp_path / "k.safetensors"), str(tmp_path / "d2"), "--to", "diffusers"])
    for a, b in ((lw, read_lora(written)), (lw, read_lora(tmp_path / "k.safetensors")), (lw, read_lora(tmp_path / "d2"))):
        for key in lw.modules:
            assert torch.equal(a.modules[key].delta(), b.modules[key].delta())
    for file in (written, tmp_path / "k.safetensors"):
        pipe = load_pipeline(tiny_model)
        before = weights(pipe)
        pipe.load_lora_weights(str(file.parent), weight_name=file.name)
        pipe.fuse_lora(lora_scale=1.0)
        pipe.unload_lora_weights()
        after = weights(pipe)
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed == set(lw.modules), file.name
        for key, mod in lw.modules.items():
            torch.testing.assert_close(after[key] - before[key], mod.delta(), rtol=1e-4, atol=1e-6)


def test_trained_kohya_file_records_the_preset(tiny_model, class_data, tmp_path):
    """A real (short) training run with LoCon: the kohya file holds exactly the preset's keys and says so."""
    from safetensors import safe_open

    from diffusion.model import load_pipeline
    from lora.__main__ import main

    main(["train", "--model", str(tiny_model), "--data", str(class_data), "--output", str(tmp_path / "out"), "--classes", "good",
          "--resolution", "64", "--epochs", "1", "--repeats", "1", "--validation-images", "0", "--conv-dim", "2"])
    with safe_open(str(tmp_path / "out" / "good" / "good.safetensors"), "pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert json.loads(meta["ss_network_args"]) == {"preset": "kohya", "conv_dim": "2", "conv_alpha": "1.0"}
    pipe = load_pipeline(tiny_model)
    want = names(network_modules(pipe.unet, pipe.text_encoder, "kohya", conv_dim=2))
    assert {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys} == want


def test_module_list_is_the_same_on_an_adapted_model(tiny_model):
    from types import SimpleNamespace

    from diffusion.model import load_pipeline
    from lora.train import add_lora

    pipe = load_pipeline(tiny_model)
    before = network_modules(pipe.unet, pipe.text_encoder, "kohya", conv_dim=2)
    add_lora(pipe.unet, pipe.text_encoder, SimpleNamespace(seed=0, rank=2, alpha=2.0, unet_lr=1e-4, text_encoder_lr=1e-4,
                                                         network="kohya", conv_dim=2, conv_alpha=None))
    assert network_modules(pipe.unet, pipe.text_encoder, "kohya", conv_dim=2) == before
