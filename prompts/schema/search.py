"""The `search` section: an Optuna search of LoRA parameters scored by realism (`python -m study search`).

Each search-space key is a list (Optuna draws one of its values), a range
written as a string, or empty (not searched: the study's `lora`/`generate`
value is kept):

    rank: [4, 8, 16, 32]            # a list: one of these
    unet_lr: "1e-5..1e-3 log"       # a range, log-uniform (floats)
    epochs: "5..20"                 # a range of integers (uniform)
    epochs: "5..20 step 5"          # 5, 10, 15, 20
    alpha_ratio: [1.0]              # fixed (one value)
    network: []                     # not searched

A string without `..` is a comma-separated list ("4,8,16"), as a flag gives it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._field import opt

# The search-space keys, in the order trials suggest them; each maps onto the study
# (lora.<key>, except alpha_ratio -> lora.alpha = ratio x rank, lora_weight -> generate.lora_weights).
MAX_WORKERS = 64  # trial workers at once: each is a Snakemake job holding one core or GPU slot and the storage
SPACE_KEYS = ("rank", "alpha_ratio", "unet_lr", "text_encoder_lr", "epochs", "network", "lora_weight")


@dataclass
class SearchSection:
    output: str | None = opt(None, "search folder: OUT/search.journal, OUT/trials/<n>/, OUT/search.html, OUT/best/study.yaml (workflow default: study.output/search)", path=True,
                             required=("study search",))
    trials: int = opt(20, "COMPLETE trials to reach, counted over every process that shares the storage", ge=1)
    storage: str | None = opt(
        None, "Optuna storage: an RDB URL (sqlite:///FILE, postgresql://...) or a journal file; default OUT/search.journal", path=True
    )
    study_name: str = opt("lora-search", "name of the Optuna study in the storage (several searches can share one storage)")
    fold: int = opt(0, "the split's fold whose training images train the LoRAs and whose test images score them", ge=0)
    images_per_class: int = opt(16, "images generated per class per trial (M), scored against the fold's test images", ge=2)
    objective: Literal["realism", "realism+f1"] = opt(
        "realism", "realism (one objective, pruned), or realism and the downstream CV macro F1 (two objectives, Pareto front)"
    )
    f1_folds: list[int] = opt([0], "with objective realism+f1: the folds whose CV macro F1 is the second objective")
    f1_mix: str = opt("real+50", "with objective realism+f1: the training mix whose macro F1 is measured")
    pruner: Literal["median", "none"] = opt("median", "Optuna's median pruner on the running per-class objective, or none")
    pruner_startup_trials: int = opt(5, "complete trials before the median pruner may prune (Optuna's default)", ge=0)
    workers: int = opt(2, "trial workers the workflow's `search` target runs at once (Snakemake jobs, one core or GPU slot each, "
                       f"one storage); at most search.trials and {MAX_WORKERS}", ge=1, le=MAX_WORKERS)
    seed: int = opt(0, "seed of the TPE sampler (mixed with the process id when several processes share a storage) and of the images")
    # the search space
    rank: str | list[int] = opt([4, 8, 16, 32], "LoRA rank: a list, a range 'LOW..HIGH', or [] to keep lora.rank")
    alpha_ratio: str | list[float] = opt([0.5, 1.0], "alpha / rank (lora.alpha = ratio x rank): a list, a range, or []")
    unet_lr: str | list[float] = opt("1e-5..1e-3 log", "U-Net learning rate: a list, a range ('LOW..HIGH log' is log-uniform), or []")
    text_encoder_lr: str | list[float] = opt("1e-6..1e-4 log", "text-encoder learning rate (0 trains the U-Net only): a list, a range, or []")
    epochs: str | list[int] = opt("5..20", "training epochs: a list, a range, or []")
    network: str | list[str] = opt(["kohya", "attention"], "network preset(s) of lora.network: a list, or []")
    lora_weight: str | list[float] = opt([0.6, 0.8, 1.0], "LoRA weight for sampling (generate.lora_weights): a list, a range, or []")
