"""`python -m segment cv | realism | predict` — the segmentation study's cross-validation, the realism of synthetic
pairs, and the model trained on listed pairs predicting other images (another task's cells)."""
from __future__ import annotations

import logging
import os
import sys

from prompts.errors import UserError, run_cli, setup_logging

log = logging.getLogger("segment")

READING = ("masks", "images_dir", "masks_dir", "mask_name", "pairs", "normalize", "percentiles", "channels", "z", "t")  # data section: how pairs are found, how masks and lab images are read

COMMANDS = {
    "cv": ("cross-validate a segmentation model (U-Net, StarDist or the classical floor) over real + synthetic pair mixes, tested on real pairs, and write reports",
           ("data", "split", *READING), None),
    "realism": ("KID, a two-sample test and the mask consistency of synthetic pairs against the real pairs",
                ("data", *READING), ("output", "synthetic", "backbone", "weights", "image_size", "epochs", "batch_size",
                            "learning_rate", "augment", "min_size", "seed", "overwrite")),
    "predict": ("train the segmentation model on the image-mask pairs of --train and write the predicted instance masks "
                "of the images of --images into --out (a phenotyping study's cells, one fold at a time)",
                ("data", *READING), ("model", "pretrained", "backbone", "weights", "image_size", "epochs", "batch_size",
                                     "learning_rate", "augment", "min_size", "seed")),
}


def parser():
    from prompts.cli import Parser, add_config_flag, add_section_flags
    from prompts.schema import SECTIONS

    ap = Parser(prog="python -m segment", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, (help_text, data_keys, seg_keys) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text + ". Flags override --config.")
        add_config_flag(p)
        add_section_flags(p, SECTIONS["data"], data_keys)
        add_section_flags(p, SECTIONS["segment"], seg_keys)
        if name == "predict":
            own = p.add_argument_group("predict")
            own.add_argument("--train", required=True, metavar="CSV",
                             help="the training pairs: a CSV with columns image,mask (`python -m phenotype pairs` writes it)")
            own.add_argument("--images", required=True, metavar="CSV",
                             help="the images to segment: a CSV with columns name,image (never a training image)")
            own.add_argument("--out", required=True, metavar="DIR",
                             help="DIR/<name less its extension>.tif (uint16 instance ids) and DIR/segmenter.json; never inside the data")
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
    study = read_settings(args, f"segment {args.command}", ("data", "segment"))
    if args.command == "cv":
        return cmd_cv(study.data, study.segment, args.progress)
    if args.command == "predict":
        return cmd_predict(study.data, study.segment, args)
    return cmd_realism(study.data, study.segment, args.progress)


def cmd_cv(data, seg, progress: bool) -> int:
    from prompts.fingerprint import claim

    from .cv import run_cv
    from .report import load_realism, write_reports

    names = _cv_output_names(data, seg)
    load_realism(seg.realism)  # a bad --realism stops now, not after the CV
    results = run_cv(data, seg, progress)
    claim(seg.output, names, "segment cv")  # after every check, before the report is written
    paths = write_reports(results, seg.output)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return 0


def _cv_output_names(data, seg) -> list[str]:
    """What `segment cv` writes into --output; refuses (whatever --overwrite says) a file of those names it did not write."""
    from pathlib import Path

    from prompts import layout
    from prompts.fingerprint import claimed, written_by
    from prompts.guard import check_output_dir, check_outputs

    from .cv import OVERLAYS_DIR

    out = check_output_dir(seg.output, data=data.data)
    files = [layout.REPORT_MD, layout.REPORT_HTML, layout.RESULTS_CSV, layout.RESULTS_JSON, layout.SPLIT_FILE,
             layout.FINGERPRINT_FILE]
    legacy = not claimed(out) and written_by(Path(out) / layout.FINGERPRINT_FILE)  # a run from before outputs records
    if not legacy:
        check_outputs(out, files)
    return files + [layout.RUNS_DIR, OVERLAYS_DIR]


def cmd_predict(data, seg, args) -> int:
    from .predict import run_predict

    record = run_predict(data, seg, args.train, args.images, args.out, args.progress)
    log.info("segmented %d image(s) into %s (%s trained on %d pair(s))", len(record["test"]), args.out, seg.model,
             len(record["train"]))
    return 0


def cmd_realism(data, seg, progress: bool) -> int:
    from pathlib import Path

    from prompts.guard import check_new_file
    from prompts.layout import REALISM_JSON, REALISM_MD

    from .realism import run_realism, write_realism

    if not seg.synthetic:
        raise UserError("no synthetic folder: pass --synthetic DIR")
    for name in (REALISM_JSON, REALISM_MD):  # a finished realism report is replaced only when asked
        check_new_file(Path(seg.output) / name, overwrite=seg.overwrite, data=data.data)
    result = run_realism(data, seg, progress)
    from prompts.fingerprint import claim

    claim(seg.output, [REALISM_JSON, REALISM_MD], "segment realism")  # its own: --overwrite may replace them later
    paths = write_realism(result, seg.output)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
