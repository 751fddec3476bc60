"""The generation jobs of a study: every image to make over the chosen folds (or the whole data), with the
inputs their tree fingerprints record. Used by `python -m generate` and by the parameter search (`study.search`).
"""
from __future__ import annotations

from functools import partial

from prompts.errors import UserError


def plan_jobs(g, d, run_seed: int, sampler: str = "Euler a"):
    """The study's plan: (dataset, every job over the chosen folds or the whole data, `trees.Inputs`)."""
    from generate.plan import PlanRequest, plan_fold, read_prompts_file
    from generate.sample import is_gray_group
    from generate.trees import Inputs, image_settings
    from prompts.dataset import read_dataset
    from prompts.normalize import from_section
    from prompts.splits import read_split
    from prompts.templates import load_templates

    reading = from_section(d)  # the data section's rule: every image of the data is read with it
    dataset = read_dataset(d.data, skip_bad_images=d.skip_bad_images, reading=reading)
    templates = load_templates(d.templates)
    templates.check_classes(dataset.classes)
    req = PlanRequest(lora=g.lora, weights=g.lora_weights, count=g.count, fractions=g.fraction, balance=g.balance,
                      per=g.per, classes=g.classes, cell_lines=g.cell_lines, prompt=g.prompt,
                      prompts=read_prompts_file(g.prompts_file) if g.prompts_file else [],
                      negative_prompt=g.negative_prompt, init_images=g.init_images, strengths=g.strength,
                      run_seed=run_seed)
    is_gray = partial(is_gray_group, dataset.root, reading=reading)
    inputs = Inputs(data_root=dataset.root, model=g.model, settings=image_settings(g, sampler), templates=d.templates,
                    split=d.split, prompts_file=g.prompts_file, reading=reading)
    if d.split:
        split = read_split(d.split, dataset)
        folds = split.select(g.fold)
        jobs = [j for f in folds for j in plan_fold(req, dataset, templates, f.index, set(f.train), is_gray)]
        inputs.train = {f.index: sorted(f.train) for f in folds}
        inputs.test = {f.index: sorted(f.test) for f in folds}
    else:
        if g.fold is not None:
            raise UserError(f"--fold {g.fold} needs --split FILE (the split file of `python -m classify split`)")
        jobs = plan_fold(req, dataset, templates, None, None, is_gray)
        inputs.train = {None: sorted(r.path for r in dataset.records)}
    return dataset, jobs, inputs
