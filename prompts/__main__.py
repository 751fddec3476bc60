"""`python -m prompts show | check | schema | demo-data`: the study's vocabulary from the command line.

show: groups, image counts and prompts of a data folder, and what the tools read from its files (formats,
bit depths, channels, shapes, the reading rule), with an optional contact sheet of the images as normalised;
check: validate a whole study file.
"""
from __future__ import annotations

import sys
from collections import Counter

from .cli import Parser, add_config_flag, add_section_flags
from .dataset import read_dataset
from .errors import UserError, run_cli
from .schema import DataSection
from .schema.data import PAIR_KEYS  # segmentation pair data: how pairs are found and read
from .templates import load_templates

READING_KEYS = ("normalize", "percentiles", "channels", "z", "t")


def show(data: str, templates: str | None, per: str, dataset=None) -> str:
    """The text `prompts show` prints: each group, its image count and prompts, and how its files are read."""
    dataset = dataset or read_dataset(data)  # the caller's, read under its --skip-bad-images
    tpl = load_templates(templates)
    tpl.check_classes(dataset.classes)
    if per == "cell_line_class":
        counts = Counter((r.label, r.cell_line) for r in dataset.records)
    else:
        counts = Counter((r.label, None) for r in dataset.records)
    lines = [
        f"data: {dataset.root} ({len(dataset.records)} images from {dataset.source}; "
        f"classes: {', '.join(f'{k} {v}' for k, v in dataset.class_counts().items())}"
        + (f"; cell lines: {', '.join(dataset.cell_lines)})" if dataset.cell_lines else ")"),
        f"templates: {tpl.source}",
        "",
    ]
    rows = [("group", "images", "trigger", "prompt")]
    for (label, cell_line), n in sorted(counts.items(), key=lambda kv: (kv[0][1] or "", kv[0][0])):
        p = tpl.for_group(label, cell_line)
        rows.append((p.group, str(n), p.trigger, p.prompt))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    lines += ["", f"negative prompt: {tpl.negative_prompt}"]
    return "\n".join(lines)


def _joined(counter: Counter, most: int = 3) -> str:
    items = [f"{k} ({n})" if len(counter) > 1 else str(k) for k, n in counter.most_common(most)]
    return ", ".join(items) + (f", +{len(counter) - most} more" if len(counter) > most else "")


def sample(dataset, per_class: int) -> dict[str, list]:
    """Up to `per_class` records of each class, evenly spread over its records (deterministic)."""
    out = {}
    for label in dataset.classes:
        records = [r for r in dataset.records if r.label == label]
        step = max(1, len(records) // max(1, per_class))
        out[label] = records[::step][:per_class]
    return out


def used_bits(dataset, records, reading) -> str:
    """'12 of 16 bits' from the largest raw value of some images (a 12-bit camera stored in 16 bits), read
    under `reading` (its channels, z and t)."""
    from .images import raw_planes
    from .pair_summary import bits_text

    return bits_text([p for r in records for p in raw_planes(dataset.abspath(r), reading)])


def describe_reading(dataset, reading, per_class: int) -> str:
    """Per class: formats, dtypes, channels and shapes of every image (headers), the bits used by a sample,
    and the reading rule every command applies."""
    from .images import describe_image

    lines = [f"reading: {reading.describe()}", ""]
    rows = [("class", "images", "formats", "dtype", "bits used", "channels", "shapes")]
    picked = sample(dataset, per_class)
    for label in dataset.classes:
        records = [r for r in dataset.records if r.label == label]
        info = [describe_image(dataset.abspath(r)) for r in records]
        rows.append((label, str(len(records)), _joined(Counter(i["format"] for i in info)), _joined(Counter(i["dtype"] for i in info)),
                     used_bits(dataset, picked[label], reading), _joined(Counter(i["channels"] for i in info)),
                     _joined(Counter(i["shape"] for i in info))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def contact_sheet(dataset, per_class: int, reading, tile: int = 128):
    """A PIL RGB image: one row per class, up to `per_class` of its images as the tools see them
    (normalised under `reading`, shorter side resized to `tile`, centre square), the class name on the left."""
    from PIL import Image, ImageDraw

    from .images import center_crop, load_image, resize_shortest_side

    picked = sample(dataset, per_class)
    label_w = 8 + 7 * max(len(c) for c in picked)
    columns = max(len(records) for records in picked.values())
    sheet = Image.new("RGB", (label_w + columns * (tile + 4), len(picked) * (tile + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (label, records) in enumerate(picked.items()):
        y = row * (tile + 4)
        draw.text((4, y + tile // 2 - 6), label, fill="black")
        for col, r in enumerate(records):
            img = center_crop(resize_shortest_side(load_image(dataset.abspath(r), reading), tile), tile).convert("RGB")
            sheet.paste(img, (label_w + col * (tile + 4), y))
    return sheet


def write_sheet(path, dataset, per_class: int, overwrite: bool, reading) -> None:
    """The contact sheet as a PNG at `path` (never inside the data folder; an existing file only with --overwrite)."""
    import io

    from .files import write_bytes_atomic
    from .guard import check_new_file

    check_new_file(path, overwrite=overwrite, data=dataset.root, flag="--sheet")
    buf = io.BytesIO()
    contact_sheet(dataset, per_class, reading).save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


@run_cli
def main(argv=None):
    """`python -m prompts show | demo-data | check | schema` (one line and exit status 2 on bad input)."""
    parser = Parser(prog="python -m prompts", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("show", help="print the groups found, their image counts and prompts (pair data: sets, pairs, mask kinds, objects, bits)")
    p.add_argument("--data", help="dataset folder (or data.data of --config)")
    p.add_argument("--templates", help="prompt templates YAML (default: the shipped organ-on-chip templates)")
    p.add_argument("--per", choices=["class", "cell_line_class"], default=None,
                   help="group by class or by (cell line, class); default: cell_line_class when the data has cell lines")
    add_config_flag(p)
    add_section_flags(p, DataSection, keys=("skip_bad_images", *READING_KEYS, *PAIR_KEYS))
    p.add_argument("--sheet", metavar="PNG", help="also write a contact sheet of the images as normalised (never inside the data folder)")
    p.add_argument("--sheet-images", type=int, default=6, help="images per class on the contact sheet (default 6)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --sheet file")
    d = sub.add_parser("demo-data", help="write the demo data set (brightfield-like, 5 cell lines x good/acceptable/bad)")
    d.add_argument("output", help="folder to write (existing images are kept)")
    d.add_argument("--images", type=int, default=60, help="about this many images in the study's class proportions (default 60)")
    d.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    d.add_argument("--seed", type=int, default=0)
    ck = sub.add_parser("check", help="check a whole study file as the workflow does before any job: one line per error, exit status 2 when any")
    ck.add_argument("study", help="study YAML file")
    sc = sub.add_parser("schema", help="print every key of the study YAML file with its type and default (Markdown)")
    sc.add_argument("--readme", help="instead, rewrite the marked schema section of this Markdown file (docs/reference/study-file.md)")
    sc.add_argument("--json-schema", help="instead, write the JSON Schema the workflow validates with to this file")
    args = parser.parse_args(argv)
    if args.command == "check":
        from .check import check_file  # the workflow runs the same check before any job

        errors = check_file(args.study)
        for line in errors:
            print(f"error: {line}", file=sys.stderr)
        if errors:
            raise SystemExit(2)
        print(f"{args.study}: valid")
        return
    if args.command == "schema":
        from .config import describe_schema

        if args.json_schema:
            from .files import write_text_atomic
            from .schema.json_schema import json_schema_yaml

            write_text_atomic(args.json_schema, json_schema_yaml())
        elif args.readme:
            from .config import update_readme_schema

            update_readme_schema(args.readme)
        else:
            print(describe_schema())
        return
    if args.command == "demo-data":
        from .demo import class_counts, write_demo_dataset

        if args.images < 15 or args.size < 32:
            raise UserError("--images must be at least 15 and --size at least 32")
        counts = class_counts(args.images)
        out = write_demo_dataset(args.output, per_class=counts, size=args.size, seed=args.seed)
        print(f"demo data in {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + " (synthetic stand-ins, not real micrographs)")
        return
    from .cli import read_settings

    study = read_settings(args, "prompts show", ("data",))  # the reading rule of --config and the flags: study.data
    data = study.data.data
    if not data:
        raise UserError("--data is missing: give the dataset folder, or data.data in the study file (--config)")
    if args.sheet_images < 1:
        raise UserError(f"--sheet-images {args.sheet_images}: must be at least 1")
    from .pair_summary import is_pair_data, show_pairs

    if is_pair_data(data, study.data):  # segmentation pairs: sets, pairs, mask kinds, objects, bits (not classes and prompts)
        print(show_pairs(data, study.data))
        return
    from .images import fit_reading
    from .normalize import from_section

    reading = from_section(study.data)
    dataset = read_dataset(data, skip_bad_images=study.data.skip_bad_images, reading=reading)
    reading = fit_reading([dataset.abspath(r) for r in dataset.records], reading)  # percentile-dataset: over every image shown
    reading_text = describe_reading(dataset, reading, args.sheet_images)
    if args.sheet:
        write_sheet(args.sheet, dataset, args.sheet_images, args.overwrite, reading)
    per = args.per
    if per is None:
        per = "cell_line_class" if dataset.cell_lines else "class"
    print(show(data, args.templates or study.data.templates, per, dataset))
    print()
    print(reading_text)
    if args.sheet:
        print(f"contact sheet: {args.sheet}")


if __name__ == "__main__":
    main()
