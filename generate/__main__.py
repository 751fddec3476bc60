"""`python -m generate --config FILE [flags]` (also `accelerate launch -m generate ...`).

Flags override the study file's `generate` and `data` sections; see generate/README.md.
"""
from __future__ import annotations

import argparse
import logging
import secrets
import sys
from functools import partial
from pathlib import Path

from prompts.config import apply_overrides, load_study
from prompts.errors import UserError, run_cli, setup_logging

log = logging.getLogger("generate")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit status 2, like every other bad input."""

    def error(self, message):
        raise UserError(f"{message} (see python -m generate --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m generate", description="Sample synthetic images from per-class LoRAs of Stable Diffusion 1.x "
                "(A1111 'Euler a' by default), with a manifest and A1111 PNG info. Flags override --config.")
    a = p.add_argument
    a("--config", help="study YAML (sections data, lora, generate, classify)")
    io = p.add_argument_group("inputs and output")
    io.add_argument("--model", help="base model: diffusers folder, single-file .safetensors, or hub id")
    io.add_argument("--model-config", dest="model_config", help="single-file model offline: diffusers folder of the same architecture")
    io.add_argument("--lora", help="LoRA folder of `lora train` (OUT/[fold_<k>/]<group>/) or one LoRA .safetensors")
    io.add_argument("--data", help="data folder (real images: counts, grayscale, img2img starts)")
    io.add_argument("--templates", help="prompt templates YAML (default: the study's)")
    io.add_argument("--output", help="synthetic folder: OUT/[fold_<k>/]w<weight>/[<cell_line>/]<class>/")
    io.add_argument("--split", help="split file of `classify split`: fold k uses fold k's LoRAs and training images")
    io.add_argument("--fold", help="with --split: fold index K or 'all' (default all)")
    io.add_argument("--per", choices=["auto", "class", "cell_line_class"], help="groups (default auto: as the LoRA folder)")
    io.add_argument("--classes", nargs="+", help="only these classes")
    io.add_argument("--cell-lines", dest="cell_lines", nargs="+", help="only these cell lines (per cell_line_class)")
    n = p.add_argument_group("how many")
    n.add_argument("--count", type=int, help="images per group and weight")
    n.add_argument("--fraction", type=float, nargs="+", help="fractions of each group's real (training) images; the largest is made")
    n.add_argument("--balance", action=argparse.BooleanOptionalAction, default=None, help="top every class up to the largest")
    s = p.add_argument_group("sampling")
    s.add_argument("--lora-weights", dest="lora_weights", nargs="+", metavar="W", help="LoRA weights, one tree each (default 1.0 0.8)")
    s.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=None, help="fuse the LoRA at each weight (faster)")
    s.add_argument("--sampler", help="'Euler a' (default), 'Euler', 'DDIM', 'DPM++ 2M', 'DPM++ 2M Karras'")
    s.add_argument("--steps", type=int, help="sampling steps (default 20)")
    s.add_argument("--cfg", type=float, help="CFG scale (default 7)")
    s.add_argument("--size", type=int, nargs="+", metavar="PX", help="width [height], multiples of 8 (default 512 512)")
    s.add_argument("--batch-size", dest="batch_size", type=int, help="images per pipeline call (default 1)")
    s.add_argument("--seed", type=int, help="seed of the run: makes it reproducible (default: random, recorded)")
    s.add_argument("--prompt", help="free text for every group; {class} {cell_line} {group} {trigger}, <lora:NAME:W>")
    s.add_argument("--prompts-file", dest="prompts_file", help="one prompt per line, taken in turn")
    s.add_argument("--negative-prompt", dest="negative_prompt", help="negative prompt (default: the templates')")
    s.add_argument("--init-images", dest="init_images", choices=["none", "real"], help="img2img from the group's real training images")
    s.add_argument("--strength", type=float, nargs="+", help="img2img strength(s), one drawn per image (default 0.5)")
    s.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], help="weights precision (auto: fp16 on GPU, fp32 on CPU)")
    s.add_argument("--allow-pickle", dest="allow_pickle", action=argparse.BooleanOptionalAction, default=None)
    o = p.add_argument_group("running")
    o.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=None, help="replace existing images")
    o.add_argument("--dry-run", action="store_true", help="print how many images each group and weight gets; write nothing")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("-v", "--verbose", action="store_true")
    return p


def resolve(args):
    """Study file + flags -> (generate section, data section), validated."""
    from generate.plan import parse_weight

    study = load_study(args.config)
    if args.lora_weights is not None:
        args.lora_weights = [parse_weight(w) for w in args.lora_weights]
    g = apply_overrides(study.generate, args)
    d = apply_overrides(study.data, args)
    g.lora_weights = list(dict.fromkeys(parse_weight(w) for w in g.lora_weights))
    if not g.lora_weights:
        raise UserError("--lora-weights: give at least one weight (e.g. 1.0 0.8)")
    if len(g.size) not in (1, 2):
        raise UserError(f"--size {' '.join(map(str, g.size))}: give WIDTH [HEIGHT] in pixels")
    for name, value in (("--model", g.model), ("--output", g.output), ("--data", d.data)):
        if not value and not (args.dry_run and name != "--data"):
            raise UserError(f"{name} is missing: give it on the command line or in the study file")
    for v in g.strength:
        if not 0 < v <= 1:
            raise UserError(f"--strength {v}: must be in (0, 1]; 0.3-0.6 keeps the real image's layout")
    return g, d


def plan_jobs(g, d, run_seed: int):
    """The study's plan: every job over the chosen folds (or the whole data)."""
    from prompts.dataset import read_dataset
    from prompts.splits import read_split
    from prompts.templates import load_templates

    from generate.plan import PlanRequest, plan_fold, read_prompts_file
    from generate.sample import is_gray_group

    dataset = read_dataset(d.data, skip_bad_images=d.skip_bad_images)
    templates = load_templates(d.templates)
    req = PlanRequest(lora=g.lora, weights=g.lora_weights, count=g.count, fractions=g.fraction, balance=g.balance,
                      per=g.per, classes=g.classes, cell_lines=g.cell_lines, prompt=g.prompt,
                      prompts=read_prompts_file(g.prompts_file) if g.prompts_file else [],
                      negative_prompt=g.negative_prompt, init_images=g.init_images, strengths=g.strength,
                      run_seed=run_seed)
    is_gray = partial(is_gray_group, dataset.root)
    if d.split:
        split = read_split(d.split, dataset)
        folds = split.select(g.fold)
        jobs = [j for f in folds for j in plan_fold(req, dataset, templates, f.index, set(f.train), is_gray)]
    else:
        if g.fold is not None:
            raise UserError(f"--fold {g.fold} needs --split FILE (the split file of `python -m classify split`)")
        jobs = plan_fold(req, dataset, templates, None, None, is_gray)
    return dataset, jobs


def print_plan(jobs) -> None:
    """Counts per (fold, weight, group) on stdout."""
    from collections import Counter

    counts = Counter((j.fold, j.weight, j.group) for j in jobs)
    print("fold\tweight\tgroup\timages")
    for (fold, w, group), n in sorted(counts.items(), key=lambda kv: (kv[0][0] if kv[0][0] is not None else -1, -kv[0][1], kv[0][2])):
        print(f"{'-' if fold is None else fold}\t{w}\t{group}\t{n}")
    print(f"total\t\t\t{len(jobs)}")


def cpu_processes() -> bool:
    """Several processes and no GPU (`accelerate launch --multi_gpu` or torchrun on CPU): gloo on the CPU."""
    import os

    import torch

    forced = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return forced or (several and not torch.cuda.is_available())


@run_cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    for noisy in ("diffusers", "transformers", "accelerate", "peft", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    g, d = resolve(args)

    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    from generate.sample import Settings, check_settings, generate

    settings = Settings(model=g.model, output=Path(g.output), sampler=g.sampler, steps=g.steps, cfg=g.cfg,
                        width=g.size[0], height=g.size[-1], batch_size=g.batch_size, fuse=g.fuse, dtype=g.dtype,
                        allow_pickle=g.allow_pickle, model_config=g.model_config, overwrite=g.overwrite,
                        seeded=g.seed is not None, progress=not args.no_progress)
    check_settings(settings)
    state = PartialState(cpu=cpu_processes())
    run_seed = [g.seed if g.seed is not None else secrets.randbits(32)]
    if state.num_processes > 1:
        broadcast_object_list(run_seed)  # every process plans the same images with the same seeds
    dataset, jobs = plan_jobs(g, d, run_seed[0])
    if args.dry_run:
        print_plan(jobs)
        return 0

    settings.run_seed = run_seed[0]
    counts = generate(jobs, settings, dataset.root, state)
    if state.is_main_process:
        print(f"{counts['planned']} images planned in {settings.output}: {counts['existing']} were there, "
              f"{counts['made_all']} made; manifest: {settings.output / 'manifest.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
