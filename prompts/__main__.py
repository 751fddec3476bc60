"""`python -m prompts show | check | schema | demo-data`: the study's vocabulary from the command line.

show: groups, image counts and prompts of a data folder; check: validate a whole study file.
"""
from __future__ import annotations

import sys
from collections import Counter

from .cli import Parser
from .dataset import read_dataset
from .errors import UserError, run_cli
from .templates import load_templates


def show(data: str, templates: str | None, per: str) -> str:
    dataset = read_dataset(data)
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


@run_cli
def main(argv=None):
    parser = Parser(prog="python -m prompts", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("show", help="print the groups found, their image counts and prompts")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--templates", help="prompt templates YAML (default: the shipped organ-on-chip templates)")
    p.add_argument("--per", choices=["class", "cell_line_class"], default=None,
                   help="group by class or by (cell line, class); default: cell_line_class when the data has cell lines")
    d = sub.add_parser("demo-data", help="write the demo data set (brightfield-like, 5 cell lines x good/acceptable/bad)")
    d.add_argument("output", help="folder to write (existing images are kept)")
    d.add_argument("--images", type=int, default=60, help="about this many images in the study's class proportions (default 60)")
    d.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    d.add_argument("--seed", type=int, default=0)
    ck = sub.add_parser("check", help="check a whole study file as the workflow does before any job: one line per error, exit status 2 when any")
    ck.add_argument("study", help="study YAML file")
    sc = sub.add_parser("schema", help="print every key of the study YAML file with its type and default (Markdown)")
    sc.add_argument("--readme", help="instead, rewrite the marked schema section of this README")
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
    per = args.per
    if per is None:
        per = "cell_line_class" if read_dataset(args.data).cell_lines else "class"
    print(show(args.data, args.templates, per))


if __name__ == "__main__":
    main()
