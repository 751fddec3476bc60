from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._field import opt


@dataclass
class LoraSection:
    model: str | None = opt(None, "base model: diffusers folder, single-file .safetensors, or hub id", path=True, hub=True)
    model_config: str | None = opt(
        None, "for a single-file checkpoint: a diffusers folder (or hub id) of the same architecture, whose configs are used", path=True, hub=True
    )
    output: str | None = opt(None, "output folder; LoRAs go to OUT/[fold_<k>/]<group>/", path=True)
    per: Literal["class", "cell_line_class", "all"] = opt("class", "one LoRA per class, per (cell line, class), or one for all images")
    classes: list[str] = opt([], "train only these classes (default: all)")
    cell_lines: list[str] = opt([], "train only these cell lines (default: all)")
    fold: int | str | None = opt(None, "with data.split: a fold index K or 'all'")
    epochs: int = opt(10, "passes over the (repeated) images")
    repeats: int = opt(2, "times each image appears per epoch (kohya's repeats)")
    batch_size: int = opt(2, "images per step per process")
    resolution: int = opt(512, "training size in pixels (multiple of 8)")
    unet_lr: float = opt(5e-4, "U-Net LoRA learning rate")
    text_encoder_lr: float = opt(1e-4, "text-encoder LoRA learning rate; 0 trains the U-Net only")
    rank: int = opt(8, "LoRA rank (network dim)")
    alpha: float = opt(8.0, "LoRA alpha; the update is scaled by alpha/rank")
    seed: int = opt(0, "random seed (noise, timesteps, crops, flips, LoRA init)")
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear", "cosine_with_restarts", "polynomial"] = opt(
        "constant", "learning-rate schedule (diffusers' get_scheduler)"
    )
    lr_warmup_steps: int = opt(0, "warm-up of the schedule, in optimizer updates")
    optimizer: Literal["adamw", "adamw8bit"] = opt("adamw", "torch AdamW, or bitsandbytes' 8-bit AdamW (needs bitsandbytes and a CUDA GPU)")
    weight_decay: float = opt(1e-2, "AdamW weight decay")
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 disables)")
    mixed_precision: Literal["no", "fp16", "bf16"] = opt("no", "frozen weights in this precision; LoRA parameters stay fp32")
    gradient_checkpointing: bool = opt(False, "trade compute for memory in the U-Net and text encoder")
    gradient_accumulation_steps: int = opt(1, "steps accumulated before each optimizer update")
    min_snr_gamma: float | None = opt(None, "min-SNR loss weighting gamma (5 is common); none or 0 disables")
    noise_offset: float = opt(0.0, "noise offset (0.05-0.1 helps very dark or bright images)")
    random_flip: bool = opt(True, "random horizontal and vertical flips (micrographs have no up)")
    random_crop: bool = opt(False, "random instead of center crop after resizing the shortest side")
    cache_latents: bool = opt(False, "encode each image with the VAE once (with random_flip: its 4 flips; not with random_crop)")
    checkpointing_steps: int = opt(0, "save a checkpoint (accelerate save_state) every N optimizer updates, for --resume (0: never)")
    checkpoints_total_limit: int = opt(2, "keep this many checkpoints per group (they are deleted when the group finishes)")
    validation_images: int = opt(2, "images sampled with Euler a at the end of each LoRA")
    allow_pickle: bool = opt(False, "allow pickle checkpoints (.ckpt/.bin/.pt): they can run code")
    overwrite: bool = opt(False, "replace a finished LoRA in the output folder")
