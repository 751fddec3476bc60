"""The `lora` section of the study file: one field per key (type, default, range, help, whether it changes the result)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._field import opt

TRAIN = ("lora train",)


@dataclass
class LoraSection:
    model: str | None = opt(None, "base model: diffusers folder, single-file .safetensors, or hub id", path=True, hub=True, required=TRAIN + ("workflow",))
    model_config: str | None = opt(
        None, "for a single-file checkpoint: a diffusers folder (or hub id) of the same architecture, whose configs are used", path=True, hub=True
    )
    output: str | None = opt(None, "output folder; LoRAs go to OUT/[fold_<k>/]<group>/", path=True, required=TRAIN)
    per: Literal["class", "cell_line_class", "all"] = opt("class", "one LoRA per class, per (cell line, class), or one for all images")
    classes: list[str] = opt([], "train only these classes (default: all)", result=False)
    cell_lines: list[str] = opt([], "train only these cell lines (default: all)", result=False)
    fold: int | str | None = opt(None, "with data.split: a fold index K or 'all'", result=False)
    groups: list[str] = opt([], "train only these groups, by folder name (class, or <cell_line>__<class>; default: all)", result=False)
    together: int | str | None = opt(
        None, "train this many groups of a fold at once, in one forward/backward pass (an integer, or 'all'); "
        "the same LoRAs as one at a time, within float tolerance", result=False)
    network: Literal["kohya", "attention"] = opt(
        "kohya", "adapted modules: kohya (sd-scripts' networks.lora: attention, proj_in/out, feed-forward, CLIP MLP) or attention (q, k, v, out only)"
    )
    conv_dim: int = opt(0, "kohya LoCon: rank of LoRA on the 3x3 convolutions of ResNet blocks (0: off)", ge=0)
    conv_alpha: float | None = opt(None, "kohya LoCon alpha of the convolutions (default: 1.0, as sd-scripts)", gt=0)
    epochs: int = opt(10, "passes over the (repeated) images", ge=1)
    repeats: int = opt(2, "times each image appears per epoch (kohya's repeats)", ge=1)
    batch_size: int = opt(2, "images per step per process", ge=1)
    resolution: int = opt(512, "training size in pixels (multiple of 8)", ge=8, multiple_of=8)
    unet_lr: float = opt(5e-4, "U-Net LoRA learning rate", gt=0)
    text_encoder_lr: float = opt(1e-4, "text-encoder LoRA learning rate; 0 trains the U-Net only", ge=0)
    rank: int = opt(8, "LoRA rank (network dim)", ge=1)
    alpha: float = opt(8.0, "LoRA alpha; the update is scaled by alpha/rank", gt=0)
    seed: int = opt(0, "random seed (noise, timesteps, crops, flips, LoRA init)")
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear", "cosine_with_restarts", "polynomial"] = opt(
        "constant", "learning-rate schedule (diffusers' get_scheduler)"
    )
    lr_warmup_steps: int = opt(0, "warm-up of the schedule, in optimizer updates", ge=0)
    optimizer: Literal["adamw", "adamw8bit"] = opt("adamw", "torch AdamW, or bitsandbytes' 8-bit AdamW (needs bitsandbytes and a CUDA GPU)")
    weight_decay: float = opt(1e-2, "AdamW weight decay", ge=0)
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 disables)", ge=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = opt("no", "frozen weights in this precision; LoRA parameters stay fp32")
    gradient_checkpointing: bool = opt(False, "trade compute for memory in the U-Net and text encoder", result=False)
    gradient_accumulation_steps: int = opt(1, "steps accumulated before each optimizer update", ge=1)
    min_snr_gamma: float | None = opt(None, "min-SNR loss weighting gamma (5 is common); none or 0 disables", ge=0)
    noise_offset: float = opt(0.0, "noise offset (0.05-0.1 helps very dark or bright images)", ge=0)
    random_flip: bool = opt(True, "random horizontal and vertical flips (micrographs have no up)")
    random_crop: bool = opt(False, "random instead of center crop after resizing the shortest side")
    cache_latents: bool = opt(False, "encode each image with the VAE once (with random_flip: its 4 flips; not with random_crop)")
    checkpointing_steps: int = opt(0, "save a checkpoint (accelerate save_state) every N optimizer updates, for resuming (0: never)", ge=0, result=False)
    checkpoints_total_limit: int = opt(2, "keep this many checkpoints per group (they are deleted when the group finishes)", ge=1, result=False)
    validation_images: int = opt(2, "images sampled with Euler a at the end of each LoRA", ge=0, result=False)
    allow_pickle: bool = opt(False, "allow pickle checkpoints (.ckpt/.bin/.pt): they can run code", result=False)
    overwrite: bool = opt(False, "replace a finished LoRA in the output folder", result=False)


def together_size(together: int | str | None, n_groups: int) -> int:
    """How many groups `lora.together` trains at once: 1 when unset, n_groups for 'all', else the integer (>= 1).

    Raises UserError naming the key and value when it is neither an integer >= 1 nor 'all'.
    """
    from prompts.errors import UserError

    if together is None:
        return 1
    text = str(together).strip().lower()
    if text == "all":
        return max(n_groups, 1)
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"lora.together: {together!r} is neither a number of groups (1 or more) nor 'all'; give e.g. 15 or all")
    return int(text)
