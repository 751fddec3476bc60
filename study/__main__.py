"""`python -m study search`: the LoRA parameter search (orchestration over lora, generate and classify).

The `search` flags are made from the study schema (prompts/schema/search.py and data.py), as
every command's are: a flag on the command line overrides the `--config` file, which overrides
the defaults.
"""
from __future__ import annotations

from prompts.cli import Parser, add_config_flag, add_section_flags, read_settings
from prompts.errors import run_cli, setup_logging


@run_cli
def main(argv=None):
    from prompts.schema import SECTIONS

    parser = Parser(prog="python -m study", description="Orchestration: the LoRA parameter search")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("search", help="search LoRA parameters for realism with Optuna (resumable, shareable across machines)",
                       description="Each trial trains the LoRAs of one fold's training images, generates images and scores "
                       "their realism against that fold's test images. Flags override the `search` section of --config.")
    add_config_flag(p)
    add_section_flags(p, SECTIONS["data"])
    add_section_flags(p, SECTIONS["search"])
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true")

    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "search":
        from study.search import run_search

        study = read_settings(args, "study search", ("data", "search"))
        run_search(study, study.search, progress=not args.no_progress)


if __name__ == "__main__":
    main()
