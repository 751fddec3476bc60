"""`python -m generate --config FILE [flags]` (also `accelerate launch -m generate ...`).

Flags override the study file's `generate` and `data` sections; guide: docs/rooms/generate.md.
"""
from __future__ import annotations

import dataclasses
import logging
import secrets
import sys

from prompts.cli import Parser, add_config_flag, add_section_flags, cpu_processes, read_settings
from prompts.errors import UserError, run_cli, setup_logging
from prompts.layout import MANIFEST_FILE

from .jobs import plan_jobs

log = logging.getLogger("generate")


def build_parser():
    """The parser of `python -m generate`: the `generate` and `data` sections of the schema as flags."""
    from prompts.schema.data import DataSection
    from prompts.schema.generate import GenerateSection

    p = Parser(prog="python -m generate", description="Sample synthetic images from per-class LoRAs of Stable Diffusion 1.x "
               "(A1111 'Euler a' by default), with a manifest and A1111 PNG info. Flags override --config.")
    add_config_flag(p)
    add_section_flags(p, DataSection)
    add_section_flags(p, GenerateSection)
    o = p.add_argument_group("running")
    o.add_argument("--dry-run", action="store_true", help="print how many images each group and weight gets; write nothing")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("-v", "--verbose", action="store_true")
    return p


def resolve(args):
    """Study file + flags -> (generate section, data section), validated."""
    study = read_settings(args, "generate --dry-run" if args.dry_run else "generate", ("data", "generate"))
    g, d = study.generate, study.data
    g.lora_weights = list(dict.fromkeys(g.lora_weights))
    if not g.lora_weights:
        raise UserError("--lora-weights: give at least one weight (e.g. 1.0 0.8)")
    if len(g.size) not in (1, 2):
        raise UserError(f"--size {' '.join(map(str, g.size))}: give WIDTH [HEIGHT] in pixels")
    return g, d


def print_plan(jobs) -> None:
    """Counts per (fold, weight, group) on stdout."""
    from collections import Counter

    counts = Counter((j.fold, j.weight, j.group) for j in jobs)
    print("fold\tweight\tgroup\timages")
    for (fold, w, group), n in sorted(counts.items(), key=lambda kv: (kv[0][0] if kv[0][0] is not None else -1, -kv[0][1], kv[0][2])):
        print(f"{'-' if fold is None else fold}\t{w}\t{group}\t{n}")
    print(f"total\t\t\t{len(jobs)}")


@run_cli
def main(argv=None):
    """`python -m generate`: plan the images, then sample them (one line and exit status 2 on bad input)."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    for noisy in ("diffusers", "transformers", "accelerate", "peft", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    g, d = resolve(args)

    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    from generate.sample import Settings, generate

    settings = Settings.from_section(g, progress=not args.no_progress)
    state = PartialState(cpu=cpu_processes())
    run_seed = [g.seed if g.seed is not None else secrets.randbits(32)]
    if state.num_processes > 1:
        broadcast_object_list(run_seed)  # every process plans the same images with the same seeds
    dataset, jobs, inputs = plan_jobs(g, d, run_seed[0], settings.sampler)
    if args.dry_run:
        print_plan(jobs)
        return 0

    settings = dataclasses.replace(settings, run_seed=run_seed[0])
    counts = generate(jobs, settings, dataset.root, state, inputs)
    if state.is_main_process:
        print(f"{counts['planned']} images planned in {settings.output}: {counts['existing']} were there, "
              f"{counts['made_all']} made; manifest: {settings.output / MANIFEST_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
