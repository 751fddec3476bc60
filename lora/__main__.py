"""`python -m lora {train,convert,tiny-model}` (also under `accelerate launch -m lora ...`)."""
from __future__ import annotations

import argparse

from prompts.errors import run_cli, setup_logging


@run_cli
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lora", description="LoRA fine-tuning of Stable Diffusion 1.x")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("tiny-model", help="write a tiny random Stable Diffusion (smoke model) in diffusers layout")
    p.add_argument("output", help="folder to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    setup_logging()
    if args.command == "tiny-model":
        from .tiny import write_tiny_model

        out = write_tiny_model(args.output, seed=args.seed, overwrite=args.overwrite)
        print(f"wrote tiny Stable Diffusion (random weights, a smoke model) to {out}")


if __name__ == "__main__":
    main()
