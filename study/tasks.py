"""The task registry: the one place the workflow tells one study task from another.

Every task's plan (a `study.plan.Plan` for classification, a `study.segmentation.SegPlan` for
segmentation, ...) implements one protocol, `StudyPlan`: what `workflow/rules/common.smk`,
`study.guard` and `study.outputs` read, whatever the task. A task registers with one entry in `_builtin()` below (and its
value checks with `prompts.check.register`):

    register(Task("phenotyping", "study.phenotyping:resolve", ("rules/phenotyping.smk",),
                  example=..., stale_change={...}, bad_value=({...}, "...")))

and gets the whole shared machinery (the check, the lock, the ownership guard, moving aside outputs of
earlier settings, the publishing of realism and the report) and the promise tests
(tests/test_promise_tasks.py), which run over `names()`. The per-task value checks of the study file
live in the matching registry of `prompts.check` (`prompts` sits below `study`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

from prompts.layout import StudyLayout


@runtime_checkable
class StudyPlan(Protocol):
    """A study resolved into the workflow's paths, jobs and re-run triggers (all paths absolute).

    Attributes: task (study.task), layout (every path: `prompts.layout.StudyLayout`), split and
    split_given, tiny_model, warnings, study (the validated `prompts.config.Study`).
    """

    task: str
    layout: StudyLayout
    split: Path
    split_given: bool
    tiny_model: bool
    warnings: list[str]

    def targets(self) -> list[str]:
        """What `rule all` asks for: the published report and realism, and the seal of every sealed folder."""

    def params(self, rule: str) -> dict:
        """A rule's `params`: one readable `section.key=value` per result-changing setting it reads."""

    def sealed_folders(self) -> list[str]:
        """Every folder output with a seal (re-made when a file in it is deleted or edited)."""

    def folder_outputs(self) -> list[str]:
        """Every folder output a job of the plan may (re)make under OUT, hidden working folders aside:
        Snakemake deletes each before its job runs, so the guard checks each for a user's file first."""

    def stale_outputs(self) -> list[dict]:
        """Outputs under OUT of earlier settings that the plan no longer defines: [{kind, path, reason}];
        they are moved to OUT/dropped/ and listed in OUT/synthetic/dropped.json (the report shows it)."""


@dataclass(frozen=True)
class Task:
    """One study task: how its study resolves into a plan, its own rules files (relative to workflow/), and
    the smallest study of it that runs offline (what the promise tests run for every task).

    example(folder): writes folder/study.yaml (study.output: out) and the data it names, at smoke size.
    stale_change: a study override after which some outputs of the finished example are of earlier settings.
    bad_value: (a study override the check refuses, a piece of its one error line).
    """

    name: str
    # "module:function" of (study, study_file, config) -> plan, raising prompts.errors.UserError: named, not
    # imported, so that the registry imports no plan module (each plan module may read the registry)
    resolver: str
    rules: tuple[str, ...]
    example: Callable[[Path], None] | None = None
    stale_change: dict = field(default_factory=dict)
    bad_value: tuple[dict, str] | None = None


    def resolve(self, study, study_file: Path, config: dict) -> StudyPlan:
        """The plan of a checked study of this task."""
        import importlib

        module, function = self.resolver.split(":")
        return getattr(importlib.import_module(module), function)(study, study_file, config)


_TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    _TASKS[task.name] = task
    return task


def names() -> list[str]:
    """The registered tasks, in registration order."""
    _builtin()
    return list(_TASKS)


def get(name: str) -> Task:
    """The registered task `name` (the schema's check has already refused an unknown study.task)."""
    _builtin()
    return _TASKS[name]


_CLASSIFICATION_EXAMPLE = """\
study: {output: out}
data: {data: data}
lora: {model: tiny, per: class, repeats: 1, epochs: 1, batch_size: 2, resolution: 64, rank: 4, alpha: 4.0,
       validation_images: 0, checkpointing_steps: 1}
generate: {steps: 2, size: [32, 32], batch_size: 8, lora_weights: [1.0, 0.8], fraction: [0.5], seed: 0}
classify: {folds: 2, group_by: "regex:^\\\\d{8}", backbone: EfficientNetB0, weights: calibrated, image_size: 32,
           epochs: 2, augment: false, mixes: [real, real+50]}
"""

_SEGMENTATION_EXAMPLE = """\
study: {output: out, task: segmentation}
data: {data: data}
controlnet: {model: tiny, resolution: 64, batch_size: 2, epochs: 1, learning_rate: 0.001, count: 2, densities: [3.0],
             steps: 2, size: 64}
segment: {folds: 2, weights: tiny, image_size: 64, epochs: 1, batch_size: 4, mixes: [real, real+50], overlays: 1}
"""


def _classification_example(folder: Path) -> None:
    """2 classes x 6 images of one cell line (64 px), tiny models, 2 folds, 2 LoRA weights."""
    from prompts.demo import write_demo_dataset

    write_demo_dataset(Path(folder) / "data", per_class={"good": 6, "bad": 6}, cell_lines=["A549"], size=64)
    (Path(folder) / "study.yaml").write_text(_CLASSIFICATION_EXAMPLE, encoding="utf-8")


def _segmentation_example(folder: Path) -> None:
    """4 blob scenes with their masks (64 px), the tiny model, 2 folds, trees `aug` and `density3.0`."""
    from prompts.blobs import make_blob_pairs

    make_blob_pairs(Path(folder) / "data", n=4, size=64, seed=0)
    (Path(folder) / "study.yaml").write_text(_SEGMENTATION_EXAMPLE, encoding="utf-8")


_PHENOTYPING_EXAMPLE = """\
study: {output: out, task: phenotyping}
data: {data: data}
phenotype: {crop_size: 32, regimes: [zero-shot, retrained, co-only], k: [1], models: [reference], folds: 2,
            trees: 20, overlays: 1}
"""


def _phenotyping_example(folder: Path) -> None:
    """2 numpy-drawn cell types (small bright, large dim): 1 monoculture image each and 4 co-culture images
    (96 px, 6 cells each), the reference method only, 2 folds, regimes zero-shot, retrained-k1, co-only."""
    import numpy as np

    from phenotype.scenes import synthetic_cell, write_study_data

    rng = np.random.default_rng(0)
    pools = {"small_bright": [synthetic_cell(5, 210, "small_bright", rng) for _ in range(12)],
             "large_dim": [synthetic_cell(10, 100, "large_dim", rng) for _ in range(12)]}
    write_study_data(Path(folder) / "data", pools, mono_images=1, co_images=4, cells_per_image=6, size=(96, 96), seed=0)
    (Path(folder) / "study.yaml").write_text(_PHENOTYPING_EXAMPLE, encoding="utf-8")


def _builtin() -> None:
    if "classification" not in _TASKS:
        register(Task("classification", "study.plan:resolve_classification",
                      ("rules/classification.smk", "rules/models.smk", "rules/lora.smk", "rules/generate.smk",
                       "rules/classify.smk", "rules/search.smk"),
                      example=_classification_example, stale_change={"generate": {"lora_weights": [1.0]}},
                      bad_value=({"classify": {"mixes": ["real", "nonsense"]}}, "classify.mixes")))
    if "segmentation" not in _TASKS:
        register(Task("segmentation", "study.segmentation:resolve_task", ("rules/segmentation.smk",),
                      example=_segmentation_example, stale_change={"controlnet": {"densities": []}},
                      bad_value=({"segment": {"folds": 9}}, "segment.folds 9")))
    if "phenotyping" not in _TASKS:
        register(Task("phenotyping", "study.phenotyping:resolve_task", ("rules/phenotyping.smk",),
                      example=_phenotyping_example, stale_change={"phenotype": {"regimes": ["zero-shot", "co-only"]}},
                      bad_value=({"phenotype": {"folds": 9}}, "phenotype.folds 9")))
