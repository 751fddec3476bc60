"""Diffusers -> original (LDM / AUTOMATIC1111) single-file Stable Diffusion 1.x checkpoints.

The inverse of what `StableDiffusionPipeline.from_single_file` reads. It follows
diffusers' `scripts/convert_diffusers_to_original_stable_diffusion.py`, with the
block indices computed from the U-Net config instead of SD 1.5's fixed numbers,
so that it also converts the tiny smoke model (2 levels, 1 layer per block).

Key layout of the result: `model.diffusion_model.*` (U-Net), `first_stage_model.*`
(VAE), `cond_stage_model.transformer.*` (CLIP text encoder).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
_VAE_RESNET = [("conv_shortcut", "nin_shortcut")]
_VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _unet_prefix_map(config) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) pairs for a UNet2DConditionModel config."""
    n = len(config["block_out_channels"])
    per = config["layers_per_block"]
    pairs = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
             ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2.")]
    for i in range(n):
        for j in range(per):
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(per + 1) * i + j + 1}.0."))
            pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(per + 1) * i + j + 1}.1."))
        if i < n - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(per + 1) * (i + 1)}.0.op."))
        has_attn = "CrossAttn" in config["up_block_types"][i]
        for j in range(per + 1):
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(per + 1) * i + j}.0."))
            pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(per + 1) * i + j}.1."))
        if i < n - 1:
            pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(per + 1) * i + per}.{2 if has_attn else 1}."))
    pairs += [("mid_block.attentions.0.", "middle_block.1."), ("mid_block.resnets.0.", "middle_block.0."),
              ("mid_block.resnets.1.", "middle_block.2.")]
    return pairs


def _rename(key: str, prefixes: list[tuple[str, str]], inner: list[tuple[str, str]]) -> str:
    for hf, ldm in prefixes:
        if key.startswith(hf):
            rest = key[len(hf):]
            for a, b in inner:
                if rest.startswith(a + "."):
                    rest = b + rest[len(a):]
                    break
            return ldm + rest
    return key


def unet_to_ldm(state: dict, config) -> dict:
    """U-Net weights in diffusers names -> `model.diffusion_model.*` names."""
    prefixes = _unet_prefix_map(config)
    return {"model.diffusion_model." + _rename(k, prefixes, _RESNET): v for k, v in state.items()}


def vae_to_ldm(state: dict, config) -> dict:
    """VAE weights in diffusers names -> `first_stage_model.*` names (attention as 1x1 convs)."""
    n = len(config["block_out_channels"])
    prefixes = [("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for i in range(n):
        for j in range(config["layers_per_block"] + 1):
            prefixes.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
            prefixes.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}."))
        prefixes.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        prefixes.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
    for part in ("encoder", "decoder"):
        prefixes.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))
        for j in range(2):
            prefixes.append((f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}."))
    out = {}
    for k, v in state.items():
        new = _rename(k, prefixes, _VAE_RESNET + _VAE_ATTN)
        if ".mid.attn_1." in new and new.endswith(".weight") and v.ndim == 2:
            v = v.reshape(*v.shape, 1, 1)  # linear -> 1x1 conv
        out["first_stage_model." + new] = v
    return out


def pipeline_to_ldm(pipe) -> dict[str, torch.Tensor]:
    """The whole pipeline as one original-layout state dict."""
    state = {}
    state.update(unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config))
    state.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    state.update({"cond_stage_model.transformer." + k: v for k, v in pipe.text_encoder.state_dict().items()})
    return {k: v.detach().contiguous() for k, v in state.items()}


def write_single_file(pipe, out: str | os.PathLike) -> Path:
    """Write `pipe` as a single-file `.safetensors` checkpoint in the LDM/A1111 key layout (atomic)."""
    from safetensors.torch import save_file

    from prompts.files import atomic_path

    out = Path(out)
    with atomic_path(out) as tmp:
        save_file(pipe_to_cpu_state(pipe), str(tmp), metadata={"format": "pt"})
    return out


def pipe_to_cpu_state(pipe) -> dict[str, torch.Tensor]:
    """The pipeline's weights as one LDM (A1111) state dict on the CPU."""
    return {k: v.to("cpu") for k, v in pipeline_to_ldm(pipe).items()}
