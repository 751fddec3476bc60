"""What both study plans (classification: `study.plan`, segmentation: `study.segmentation`) share:
the reading-rule keys every step re-runs on, readable rule params, and the one-line failure.
"""
from __future__ import annotations

import json
import sys

from prompts.fingerprint import settings_part

DATA_KEYS = ("skip_bad_images", "normalize", "percentiles", "channels", "z", "t")  # the reading rule re-runs every step
TINY = "tiny"


def readable(section_name: str, values: dict) -> dict[str, str]:
    """{param name: "section.key=value"} (JSON values): Snakemake's dry-run reason then names the key.

    """
    return {f"{section_name}__{k}": f"{section_name}.{k}={json.dumps(v, sort_keys=True, default=str)}"
            for k, v in sorted(values.items())}


def _keys(section, keys) -> dict:
    part = settings_part(section)
    return {k: part[k] for k in keys if k in part}


def _fail(lines: list[str]):
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    sys.exit(2)
