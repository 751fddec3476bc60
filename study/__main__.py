"""`python -m study search`: the LoRA parameter search (orchestration over lora, generate and classify).

The `search` flags are made from the study schema (prompts/schema/search.py and data.py), as
every command's are: a flag on the command line overrides the `--config` file, which overrides
the defaults.
"""
from __future__ import annotations

from prompts.cli import Parser, add_config_flag, add_section_flags, read_settings
from prompts.errors import UserError, run_cli, setup_logging


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
    m = p.add_argument_group("stand-ins (the workflow passes the files it built)")
    m.add_argument("--model", help="a model for the trials in place of the study's `lora.model: tiny` (or any base model); "
                   "the best study keeps the study file's name")
    m.add_argument("--weights", help="a classifier weights file in place of the study's `classify.weights: calibrated`")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true")

    c = sub.add_parser("compare", help="the default study beside the best study of the search (HTML and Markdown)",
                       description="Reads both studies' report/folds.csv and realism/realism.json; writes OUTPUT.html and OUTPUT.md.")
    c.add_argument("--default", required=True, metavar="STUDY.yaml", help="the default study file")
    c.add_argument("--best", required=True, metavar="STUDY.yaml", help="the best study file (SEARCH/best/study.yaml)")
    c.add_argument("--search", metavar="DIR", help="the search folder (linked from the page)")
    c.add_argument("--output", required=True, metavar="PATH", help="output path without suffix (writes .html and .md)")
    b = sub.add_parser("best-study", help="print the path of the best study file the workflow's search target writes")
    add_config_flag(b)
    for q in (c, b):
        q.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "search":
        from study.search import run_search

        study = read_settings(args, "study search", ("data", "search"))
        run_search(study, study.search, model=args.model, weights=args.weights, progress=not args.no_progress)
    elif args.command == "compare":
        from study.compare import write_comparison

        for path in write_comparison(args.default, args.best, args.search, args.output):
            print(f"wrote {path}")
    elif args.command == "best-study":
        from prompts.config import load_study
        from study.search import BEST_FILE, workflow_search_dir

        if not args.config:
            raise UserError("--config is missing: give the study file")
        print(workflow_search_dir(load_study(args.config)) / BEST_FILE)


if __name__ == "__main__":
    main()
