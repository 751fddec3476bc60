"""A search trial's names on disk, its objective, and its settings as a study file.

Shared by the search (`study.search`) and its pages (`study.search_report`), which import this module
and never each other's functions the other way round.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

from prompts.config import Study, as_dict, dump_yaml, load_study
from prompts.files import write_text_atomic

STORAGE_FILE = "search.journal"
TRIALS_DIR = "trials"
HTML_FILE = "search.html"
BEST_DIR = "best"  # OUT/best/: the best trial's settings as a study of its own (study.yaml; its outputs beside it)
BEST_FILE = f"{BEST_DIR}/study.yaml"
TINY_MODEL_DIR = "models/tiny-sd"  # OUT/models/tiny-sd: the tiny model of `lora.model: tiny` outside the workflow
TABLE_FILE = "trials.csv"
TRIAL_STUDY = "study.yaml"  # OUT/trials/<n>/study.yaml: the study file of the trial (its exact settings)
TRIAL_SCORES = "realism.json"  # OUT/trials/<n>/realism.json: image lists and scores per class


def class_objective(kid_value: float, c2st_accuracy: float) -> float:
    """log(1 + max(KID, 0)) + 2 |acc - 0.5| (KID on standardised features; no C2ST term when it is NaN: too few images)."""
    term_c2st = 2 * abs(c2st_accuracy - 0.5) if math.isfinite(c2st_accuracy) else 0.0
    return math.log1p(max(kid_value, 0.0)) + term_c2st


def trial_study(study: Study, params: dict) -> Study:
    """A copy of the study with a trial's parameters: lora.<key>, alpha = ratio x rank, generate.lora_weights."""
    s = copy.deepcopy(study)
    for key in ("rank", "unet_lr", "text_encoder_lr", "epochs", "network"):
        if key in params:
            setattr(s.lora, key, params[key])
    if "alpha_ratio" in params:
        s.lora.alpha = float(params["alpha_ratio"]) * s.lora.rank
    if "lora_weight" in params:
        s.generate.lora_weights = [float(params["lora_weight"])]
    return s


def write_trial_study(study: Study, path: Path) -> None:
    """The study as a YAML file (every section, absolute paths), validated by reading it back."""
    from prompts.schema import SECTIONS

    sections = {name: as_dict(getattr(study, name)) for name in SECTIONS if getattr(study, name, None) is not None}
    write_text_atomic(path, dump_yaml(sections))
    load_study(path)


def best_study(study: Study, params: dict, folder: Path) -> Study:
    """The study with the best parameters, a study of its own with its outputs in `folder` (never the default study's).

    The whole-study settings of the user, only the searched keys changed; `tiny`/`calibrated` stay names;
    the split stays the search's (the same folds as the default study, so the two compare fold by fold).
    """
    s = trial_study(study, params)
    s.study.output = str(Path(folder).resolve())
    return s
