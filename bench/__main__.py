"""`python -m bench [lora|generate|classify|search|workflow|decode ...]`: run the benchmarks, each writes bench/<room>.md.

BENCHMARKS.md collects those figures. Every figure is a ratio measured side by side in one
run (this machine is shared and noisy), never an absolute time checked by a test.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

ROOMS = tuple(sorted(p.stem.removeprefix("bench_") for p in Path(__file__).parent.glob("bench_*.py")))  # every bench module
DEFAULT = ("lora", "generate", "classify", "search", "decode")  # workflow runs the demo study twice (about half an hour): ask for it


def main(argv=None) -> None:
    rooms = (argv if argv is not None else sys.argv[1:]) or list(DEFAULT)
    for room in rooms:
        if room not in ROOMS:
            raise SystemExit(f"error: unknown benchmark {room!r}; choose from {', '.join(ROOMS)}")
        print(f"== bench {room}", flush=True)
        module = importlib.import_module(f"bench.bench_{room}")
        module.main([])


if __name__ == "__main__":
    main()
