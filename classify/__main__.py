"""`python -m classify split | cv | realism` — guide: docs/rooms/classify.md."""
from __future__ import annotations

import logging
import os
import sys

from prompts.errors import UserError, run_cli, setup_logging

log = logging.getLogger("classify")


# The study-file keys each subcommand takes as flags (data section, classify section).
SPLIT_KEYS = ("output", "folds", "repeats", "group_by", "seed", "overwrite")
READING = ("normalize", "percentiles", "channels", "z", "t")  # data section: how lab files are read (prompts/normalize.py)
MODEL_KEYS = ("backbone", "weights", "image_size", "batch_size", "cache_dir", "seed")
COMMANDS = {
    "split": ("write a stratified (grouped, repeated) k-fold split file", ("data", "skip_bad_images", *READING), SPLIT_KEYS),
    "cv": ("cross-validate the classifier over real + synthetic mixes and write reports", ("data", "split", "skip_bad_images", *READING),
           None),
    "realism": ("KID and a two-sample classifier test, real vs synthetic, per class and LoRA weight",
                ("data", "split", "skip_bad_images", *READING), ("output", "synthetic", *MODEL_KEYS, "overwrite")),
    "calibrate-weights": ("offline smoke stand-in for ImageNet weights: random weights, batch-norm statistics calibrated on DATA",
                          ("data", "skip_bad_images", *READING), ("output", "backbone", "image_size", "seed")),
}


def parser():
    from prompts.cli import Parser, add_config_flag, add_section_flags
    from prompts.schema import SECTIONS

    ap = Parser(prog="python -m classify", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, (help_text, data_keys, classify_keys) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text + ". Flags override --config.")
        add_config_flag(p)
        add_section_flags(p, SECTIONS["data"], data_keys)
        add_section_flags(p, SECTIONS["classify"], classify_keys)
        _run_flags(p)
        if name == "cv":  # the workflow's record of outputs of earlier settings, shown in the report
            p.add_argument("--dropped", metavar="FILE", help="dropped-outputs record (JSON) the report lists under "
                           "\"Dropped from this study\" (default: dropped.json beside OUTPUT, when present)")
        if name == "calibrate-weights":
            p.add_argument("--max-images", type=int, default=64, help="images used for the statistics (default: 64)")
    # the blind test's two subcommands, from the `blind` section
    blind = SECTIONS["blind"]
    p = sub.add_parser("blind-test", help="write a self-contained page for a blind real-or-synthetic test by experts")
    add_config_flag(p)
    add_section_flags(p, SECTIONS["data"], ("data", "skip_bad_images", *READING))
    add_section_flags(p, blind, exclude=("key", "answers"))
    _run_flags(p)
    p = sub.add_parser("blind-score", help="score the raters' answers.json files of a blind test")
    add_config_flag(p)
    add_section_flags(p, blind, ("key", "answers", "output"))
    _run_flags(p)
    return ap


def _run_flags(p) -> None:
    g = p.add_argument_group("running")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    g.add_argument("-v", "--verbose", action="store_true")


def _settings(args):
    """The study file with this subcommand's flags applied: (data section, classify or blind section)."""
    from prompts.cli import read_settings

    sections = ("data", "blind") if args.command.startswith("blind") else ("data", "classify")
    study = read_settings(args, f"classify {args.command}", sections)
    if args.command.startswith("blind"):
        return study.data, study.blind
    return study.data, study.classify


@run_cli
def main(argv=None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # per-run retracing notices are expected here
    data, cls = _settings(args)
    if args.command == "split":
        return cmd_split(data, cls)
    if args.command == "cv":
        return cmd_cv(data, cls, args.progress, args.dropped)
    if args.command == "calibrate-weights":
        return cmd_calibrate(data, cls, args.max_images)
    if args.command == "blind-test":
        return cmd_blind_test(data, cls)
    if args.command == "blind-score":
        return cmd_blind_score(cls)
    return cmd_realism(data, cls, args.progress)


def cmd_split(data, cls) -> int:
    from prompts import fingerprint
    from prompts.dataset import read_dataset
    from prompts.guard import check_new_file

    from .folds import make_split

    check_new_file(cls.output, overwrite=cls.overwrite, data=data.data)
    from prompts.normalize import from_section

    dataset = read_dataset(data.data, skip_bad_images=data.skip_bad_images, reading=from_section(data))  # t: each: one image per t
    split = make_split(dataset, cls.folds, cls.repeats, cls.group_by, cls.seed)
    fingerprint.write_json(cls.output, split.to_json(), "classify split")  # the mark makes it replaceable by --overwrite
    sizes = ", ".join(str(len(f.test)) for f in split.folds)
    log.info("wrote %s: %d fold(s) x %d repeat(s), test sizes %s", cls.output, split.n_splits, split.repeats, sizes)
    return 0


def cmd_cv(data, cls, progress: bool, dropped: str | None = None) -> int:
    from pathlib import Path

    from prompts import fingerprint
    from prompts.guard import check_output_dir, check_outputs
    from prompts.layout import FINGERPRINT_FILE

    from .cv import OUTPUT_NAMES, run_cv
    from .report import report_inputs, write_reports

    if cls.output:  # a missing or bad --output is run_cv's one line
        check_output_dir(cls.output, data=data.data)
        if not fingerprint.written_by(Path(cls.output) / FINGERPRINT_FILE):  # a CV folder of an earlier version is ours
            check_outputs(cls.output, OUTPUT_NAMES)  # the user's files are never replaced, --overwrite or not
    report_inputs(cls.realism, cls.blind, dropped)  # a bad --realism, --blind or --dropped stops now, not after the CV
    results = run_cv(data, cls, progress)
    paths = write_reports(results, cls.output, dropped)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return 0


def cmd_calibrate(data, cls, max_images: int) -> int:
    """Random (seeded) weights whose batch-norm statistics match DATA's images.

    Without ImageNet weights a random EfficientNet's features collapse to ~1e-6 and
    the head learns nothing; calibrating the batch-norm statistics makes the
    features usable for smoke runs. It is no substitute for ImageNet weights.
    """
    import shutil
    from pathlib import Path

    import numpy as np

    from prompts.dataset import read_dataset
    from prompts.files import temp_dir_beside
    from prompts.guard import check_file_target

    from .model import check_backbone, import_keras, write_calibrated_weights
    from .pixels import load_pixels

    out = Path(cls.output)  # required by the schema: read_settings checked it is given
    if not out.name.endswith(".weights.h5"):
        raise UserError(f"--output {cls.output}: give a file name ending in .weights.h5 (Keras' weights format)")
    check_file_target(out, data=data.data)  # an existing file is kept below, never replaced
    check_backbone(cls.backbone)
    if out.exists():  # never replaced: the same settings make the same file, other settings need another name
        log.info("%s exists; kept", out)
        return 0
    from prompts.normalize import from_section

    reading = from_section(data)  # the study's rule: the statistics of the images as the classifier reads them
    dataset = read_dataset(data.data, skip_bad_images=data.skip_bad_images, reading=reading)
    rng = np.random.default_rng(cls.seed)
    records = dataset.records
    picked = sorted(rng.choice(len(records), size=min(max_images, len(records)), replace=False))
    x = load_pixels([dataset.abspath(records[i]) for i in picked], cls.image_size, reading)
    import_keras()  # after every input check: a user error is not preceded by TensorFlow's start-up lines
    tmp_dir = temp_dir_beside(out, prefix=".calibrate.")
    try:
        tmp = write_calibrated_weights(cls.backbone, cls.image_size, x, tmp_dir / out.name, seed=cls.seed)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    log.info("wrote %s: %s at %d px, random weights with batch-norm statistics of %d images (a smoke stand-in, "
             "not ImageNet)", out, cls.backbone, cls.image_size, len(picked))
    return 0


def cmd_realism(data, cls, progress: bool) -> int:
    from pathlib import Path

    from prompts.guard import check_new_file
    from prompts.layout import REALISM_JSON, REALISM_MD

    from .realism import run_realism, write_realism

    for name in (REALISM_JSON, REALISM_MD):  # a finished realism report is replaced only when asked
        check_new_file(Path(cls.output) / name, overwrite=cls.overwrite, data=data.data)
    result = run_realism(data, cls, progress)
    paths = write_realism(result, cls.output)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return 0


def cmd_blind_test(data, blind) -> int:
    from .blind import blind_test

    paths = blind_test(data, blind)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return 0


def cmd_blind_score(blind) -> int:
    from .blind import blind_score

    paths = blind_score(blind.key, blind.answers, blind.output)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
