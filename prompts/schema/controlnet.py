"""The `controlnet` section of the study file: one field per key (type, default, range, help, whether it changes the result)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._field import opt

TRAIN = ("controlnet train",)
GEN = ("controlnet generate",)
BOTH = TRAIN + GEN

# Keys of each command (the CLI shows only these flags; the rest of the section is the other command's).
TRAIN_KEYS = ("model", "model_config", "output", "fold", "lora", "lora_weight", "prompt", "negative_prompt", "epochs", "repeats",
              "batch_size", "resolution", "learning_rate", "seed", "empty_prompt_fraction", "mixed_precision",
              "gradient_checkpointing", "max_grad_norm", "allow_pickle", "overwrite")
GENERATE_KEYS = ("model", "model_config", "output", "synthetic", "fold", "lora", "lora_weight", "prompt", "negative_prompt", "count",
                 "augment", "densities", "elastic_alpha", "elastic_sigma", "sampler", "steps", "cfg", "conditioning_scale",
                 "size", "seed", "dtype", "allow_pickle", "overwrite")


@dataclass
class ControlnetSection:
    model: str | None = opt(None, "base model: diffusers folder, single-file .safetensors, or hub id (default: lora.model)",
                            path=True, hub=True)
    model_config: str | None = opt(None, "for a single-file checkpoint offline: a diffusers folder of the same architecture", path=True)
    output: str | None = opt(None, "ControlNet folder: train writes OUT/[fold_<k>/]controlnet/ (diffusers), generate reads it",
                             path=True, required=BOTH)
    synthetic: str | None = opt(None, "generate: pairs go to SYN/[fold_<k>/]<tree>/images/ + masks/ (+ SYN/manifest.jsonl)",
                                path=True, required=GEN)
    fold: str | None = opt(None, "with data.split: a fold index K or 'all' (default with a split: all)", result=False)
    lora: str | None = opt(None, "a LoRA trained beside the ControlNet: a LoRA file, or a `lora train` folder "
                           "(with a split: its fold_<k>/ holding one group)", path=True)
    lora_weight: float = opt(1.0, "weight of that LoRA (fused into the U-Net for training and sampling)")
    prompt: str = opt("a microscopy image of cells", "caption of every training image and prompt of every sample; "
                      "{class} is the pair's class (per-class data)")
    negative_prompt: str = opt("", "negative prompt when sampling")
    epochs: int = opt(20, "train: passes over the (repeated) training pairs", ge=1)
    repeats: int = opt(1, "train: times each pair appears per epoch", ge=1)
    batch_size: int = opt(4, "train: pairs per step", ge=1)
    resolution: int = opt(512, "train: size in pixels (multiple of 8); images and masks are resized and centre-cropped together", ge=8)
    learning_rate: float = opt(1e-5, "train: AdamW learning rate of the ControlNet (diffusers' example: 1e-5)", gt=0)
    seed: int = opt(0, "random seed (train: noise, timesteps, flips; generate: conditions and noise)")
    empty_prompt_fraction: float = opt(0.0, "train: fraction of captions replaced by '' (diffusers' proportion_empty_prompts)",
                                       ge=0, le=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = opt("no", "train: frozen weights in this precision; the ControlNet stays fp32")
    gradient_checkpointing: bool = opt(False, "train: trade compute for memory in the ControlNet and U-Net", result=False)
    max_grad_norm: float = opt(1.0, "train: gradient clipping norm (0 disables)", ge=0)
    count: int = opt(8, "generate: pairs per tree (per fold)", ge=0)
    augment: bool = opt(True, "generate: an `aug` tree whose conditions are single training masks flipped, rotated and elastically deformed")
    densities: list[float] = opt([], "generate: one `density<X>` tree per value: cells of several training masks composed "
                                 "at X cells per 100x100 px", gt=0)
    elastic_alpha: float = opt(8.0, "generate: elastic deformation strength (largest displacement about this many px at 512)", ge=0)
    elastic_sigma: float = opt(16.0, "generate: smoothness of the elastic displacement field (px at 512)", gt=0)
    sampler: str = opt("Euler a", "Euler a, Euler, DDIM, DPM++ 2M, DPM++ 2M Karras")
    steps: int = opt(20, "generate: sampling steps", ge=1)
    cfg: float = opt(7.0, "generate: classifier-free guidance scale", ge=0)
    conditioning_scale: float = opt(1.0, "generate: ControlNet conditioning scale (0: the mask is ignored)", ge=0)
    size: int = opt(512, "generate: width = height in pixels (multiple of 8)", ge=8)
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = opt("auto", "generate: weights precision (auto: fp16 on GPU, fp32 on CPU)")
    allow_pickle: bool = opt(False, "allow pickle checkpoints (.ckpt/.bin/.pt)", result=False)
    overwrite: bool = opt(False, "replace a finished ControlNet or pairs made from other inputs", result=False)
