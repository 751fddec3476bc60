"""`python -m study.run [SNAKEMAKE ARGS] --configfile STUDY.yaml`: the workflow, every bad study file one line and exit 2.

Snakemake reads each `--configfile` itself before the workflow starts, so a file that is not a
YAML mapping (a syntax error, a top-level list, an empty or binary file) gets Snakemake's own
message and exit status 1 there. This entry point runs the study check (`prompts.check`, the one
`python -m prompts check` and the Snakefile run) on every `--configfile` first, then hands every
argument to Snakemake with this toolkit's Snakefile: the same one line and exit status 2 for every
bad study, whichever way it is met. `make study CONFIG=...` runs it.
"""
from __future__ import annotations

import sys
from pathlib import Path

SNAKEFILE = Path(__file__).resolve().parents[1] / "workflow" / "Snakefile"


def configfiles(argv: list[str]) -> list[str]:
    """The files given with --configfile/--configfiles (several may follow one flag)."""
    files, taking = [], False
    for arg in argv:
        if arg.startswith("--configfile=") or arg.startswith("--configfiles="):
            files.append(arg.split("=", 1)[1])
            taking = False
        elif arg in ("--configfile", "--configfiles"):
            taking = True
        elif taking and not arg.startswith("-"):
            files.append(arg)
        else:
            taking = False
    return files


def first_errors(argv: list[str]) -> list[str]:
    """The errors of the first bad file among the --configfiles (only the first is a whole study; the
    others overlay it, so only whether they are YAML mappings is checked here)."""
    from prompts.check import check_file
    from prompts.errors import UserError
    from prompts.files import read_yaml_mapping

    files = configfiles(argv)
    if not files:
        return ["give the study file: python -m study.run --cores all --configfile STUDY.yaml"]
    if len(files) == 1:
        return check_file(files[0])
    for f in files:
        try:
            read_yaml_mapping(f, "study file")
        except UserError as err:
            return [str(err)]
    return []  # merged: the Snakefile checks the merged study


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    errors = first_errors(argv)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if errors:
        return 2
    from snakemake.cli import main as snakemake_main

    if not any(a in ("-s", "--snakefile") or a.startswith("--snakefile=") for a in argv):
        argv = ["--snakefile", str(SNAKEFILE), *argv]
    sys.argv = ["snakemake", *argv]  # the Snakefile reads sys.argv (dry run or not)
    return snakemake_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
