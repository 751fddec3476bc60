"""`python -m controlnet {train,generate}`: mask-conditioned generation of image–mask pairs.

The flags are made from the study schema (prompts/schema/controlnet.py and data.py): one flag per
key, `--some-key` for `some_key`, booleans as `--key` / `--no-key`; a flag overrides the `--config`
study file, which overrides the defaults. `train` and `generate` show only their own keys.
"""
from __future__ import annotations

from prompts.cli import Parser, add_config_flag, add_section_flags, read_settings
from prompts.errors import UserError, run_cli, setup_logging


def build_parser():
    from prompts.schema.controlnet import GENERATE_KEYS, TRAIN_KEYS, ControlnetSection
    from prompts.schema.data import DataSection

    parser = Parser(prog="python -m controlnet", description="ControlNet on Stable Diffusion 1.x conditioned on instance masks: "
                    "train one per fold, generate image–mask pairs")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("train", help="train one ControlNet per fold on the fold's training pairs",
                       description="Train ControlNets; flags override the `controlnet` and `data` sections of --config.")
    add_config_flag(p)
    add_section_flags(p, DataSection, keys=("data", "split"))
    add_section_flags(p, ControlnetSection, keys=TRAIN_KEYS)
    p.add_argument("-v", "--verbose", action="store_true")
    p = sub.add_parser("generate", help="write synthetic image–mask pairs per fold (Euler a), with a manifest and A1111 PNG info",
                       description="Generate pairs; flags override the `controlnet` and `data` sections of --config.")
    add_config_flag(p)
    add_section_flags(p, DataSection, keys=("data", "split"))
    add_section_flags(p, ControlnetSection, keys=GENERATE_KEYS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true")
    return parser


def settings(args, command: str):
    """(controlnet section, data section) of the study file with the flags applied; the model defaults to lora.model."""
    study = read_settings(args, command, ("data", "controlnet"))
    c = study.controlnet
    if c.model is None:
        c.model = study.lora.model or study.generate.model
    if c.model is None:
        raise UserError("--model is missing: give it on the command line or as controlnet.model (or lora.model) in the study file (--config)")
    return c, study.data


@run_cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "train":
        from .train import run

        for folder in run(*settings(args, "controlnet train")):
            print(folder)
    else:
        from .sample import run

        print(run(*settings(args, "controlnet generate"), progress=not args.no_progress))


if __name__ == "__main__":
    main()
