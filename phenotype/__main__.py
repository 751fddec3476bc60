"""`python -m phenotype cv` — per-cell phenotyping and counting in co-cultures: every classifier under every
training regime (zero-shot from monocultures, retrained with k annotated co-culture images, co-culture only)
in the same folds, with reports."""
from __future__ import annotations

import logging
import os
import sys

from prompts.errors import run_cli, setup_logging

log = logging.getLogger("phenotype")

READING = ("normalize", "percentiles", "channels", "z", "t")  # data section: how lab files are read
COMMANDS = {
    "cv": ("cross-validate per-cell classifiers under each training regime on the co-culture images, and write reports",
           ("data", *READING), None),
    "crops": ("write one fold's training cells as PNG crops per type (the data folder of one LoRA per type, for the "
              "synthetic regime)", ("data", "split", *READING),
              ("crop_size", "segmentation", "min_size", "min_distance", "folds", "repeats", "seed")),
    "pairs": ("write one fold's image-mask pairs (monocultures and co-culture training images with masks) and its test "
              "images as the two lists `python -m segment predict` reads (phenotype.segmentation unet or stardist)",
              ("data", "split"), ("folds", "repeats", "seed")),
}


def parser():
    from prompts.cli import Parser, add_config_flag, add_section_flags
    from prompts.schema import SECTIONS

    ap = Parser(prog="python -m phenotype", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, (help_text, data_keys, keys) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text + ". Flags override --config.")
        add_config_flag(p)
        add_section_flags(p, SECTIONS["data"], data_keys)
        add_section_flags(p, SECTIONS["phenotype"], keys)
        if name in ("crops", "pairs"):
            own = p.add_argument_group(name)
            own.add_argument("--fold", type=int, required=True, metavar="K", help="the fold (0-based, as `phenotype cv` numbers them)")
            own.add_argument("--out", required=True, metavar="DIR",
                             help="the crop folder: DIR/<type>/<image>__c<label>.png and DIR/crops.json (never inside the data)"
                             if name == "crops" else "the lists' folder: DIR/train.csv (image,mask) and DIR/test.csv "
                             "(name,image) (never inside the data)")
        g = p.add_argument_group("running")
        g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
        g.add_argument("-v", "--verbose", action="store_true")
    return ap


@run_cli
def main(argv=None) -> int:
    from prompts.cli import read_settings

    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    study = read_settings(args, f"phenotype {args.command}", ("data", "phenotype"))
    if args.command == "crops":
        return cmd_crops(study.data, study.phenotype, args.fold, args.out)
    if args.command == "pairs":
        return cmd_pairs(study.data, study.phenotype, args.fold, args.out)
    return cmd_cv(study.data, study.phenotype, args.progress)


def cmd_crops(data, ph, fold: int, out) -> int:
    from .foldcrops import crops_of_fold

    record = crops_of_fold(data, ph, fold, out)
    log.info("wrote %d crops of fold %d into %s", len(record["crops"]), fold, out)
    return 0


def cmd_pairs(data, ph, fold: int, out) -> int:
    from .segpairs import write_fold_pairs

    record = write_fold_pairs(data, ph, fold, out)
    log.info("wrote fold %d's %d training pair(s) and %d test image(s) into %s", fold, record["train"], record["test"], out)
    return 0


def cmd_cv(data, ph, progress: bool) -> int:
    from .cv import run_cv
    from .report import write_reports

    results = run_cv(data, ph, progress)
    paths = write_reports(results, ph.output)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
