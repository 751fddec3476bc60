"""Make the example's data: co-culture scenes composed from single-cell crops, with exactly known cells.

    python examples/phenotyping/make_data.py demo-pheno/data                      # from ../shared/data/rbc3
    python examples/phenotyping/make_data.py demo-pheno/data --cells PATH/TO/rbc3

Red blood cells of three classes (normal, spherocyte, target_cell) are cut out of their crops by threshold
and pasted without overlap onto a noisy background (`phenotype.scenes`): two monoculture images per class
(DATA/mono/<class>/images + masks) and nine co-culture images, each mixing the classes in a proportion of
its own (DATA/co/images + masks + cell_types.csv). Without the crops, numpy-drawn cells of two clearly
different sizes and brightnesses stand in.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere inside the repository

from phenotype.scenes import cells_from_folder, synthetic_cell, write_study_data  # noqa: E402

DEFAULT_CELLS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "rbc3"


def main() -> None:
    """Write the example's co-culture and monoculture scenes (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output", help="the data folder to create (must not exist)")
    ap.add_argument("--cells", default=str(DEFAULT_CELLS), help="folder of single-cell crops, one sub-folder per class")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.output)
    if out.exists():
        raise SystemExit(f"error: {out} exists; give a new folder (this script never writes into existing data)")
    cells = Path(args.cells)
    if cells.is_dir():
        classes = sorted(d.name for d in cells.iterdir() if d.is_dir())
        pools = {c: cells_from_folder(cells / c, c, limit=40) for c in classes}
    else:
        rng = np.random.default_rng(args.seed)
        pools = {"small_bright": [synthetic_cell(6, 210, "small_bright", rng) for _ in range(30)],
                 "large_dim": [synthetic_cell(13, 100, "large_dim", rng) for _ in range(30)]}
        print(f"{cells} not found: numpy-drawn cells instead")
    truth = write_study_data(out, pools, mono_images=2, co_images=9, cells_per_image=14, size=(256, 256), seed=args.seed)
    print(f"wrote {out}: {len(pools)} types, {len(truth)} co-culture images")


if __name__ == "__main__":
    main()
