"""Predicted instance masks handed from the segment room to another room, through files (the one contract).

A phenotyping study with `phenotype.segmentation: unet | stardist` finds the cells of each fold's test
co-culture images with the segmentation task's own model, trained per fold on that fold's training pairs only.
The rooms never import each other; they meet in this layout:

    FOLD_DIR/                    one fold (the workflow: OUT/segmented/fold_<k>/)
        pairs/train.csv          image,mask: the fold's training image-mask pairs (absolute paths)
        pairs/test.csv           name,image: the fold's test images and the stable name of each
        masks/<name>.tif         the predicted instance mask of each test image (uint16 ids, 0 background)
        masks/segmenter.json     what trained the segmenter: model settings, sha256 of every training image and
                                 mask and of every test image (the reader's leak check compares them)

`python -m phenotype pairs` writes pairs/, `python -m segment predict` reads it and writes masks/,
`python -m phenotype cv --segmented ROOT` reads ROOT/fold_<k>/masks/.
"""
from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath

from .errors import UserError

PAIRS_DIR = "pairs"
MASKS_DIR = "masks"
TRAIN_CSV = "train.csv"
TEST_CSV = "test.csv"
RECORD = "segmenter.json"
TRAIN_COLUMNS = ("image", "mask")
TEST_COLUMNS = ("name", "image")


def mask_name(name: str) -> str:
    """The predicted mask's file name (POSIX, relative) of a test image named `name`: its name less the
    extension, `.tif`. Raises UserError for a name that is absolute or climbs out ('..')."""
    rel = PurePosixPath(str(name))
    if not str(name) or rel.is_absolute() or ".." in rel.parts:
        raise UserError(f"test image name {name!r} is not a relative path; names come from the data folder (e.g. images/a.png)")
    return rel.with_suffix(".tif").as_posix()


def mask_path(masks_dir, name: str) -> Path:
    """masks_dir/<name less its extension>.tif (`mask_name`)."""
    return Path(masks_dir) / mask_name(name)


def write_rows(path, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """A CSV of `columns` and `rows` (str-able), written atomically."""
    import io

    from .files import write_bytes_atomic

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows([[str(v) for v in r] for r in rows])
    write_bytes_atomic(Path(path), buf.getvalue().encode("utf-8"))


def read_rows(path, columns: tuple[str, ...], flag: str) -> list[tuple[str, ...]]:
    """The rows of a CSV written by `write_rows` with these columns; one UserError line for a missing file,
    a wrong header or an empty cell."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file; write it with `python -m phenotype pairs` (columns {','.join(columns)})")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != columns:
            raise UserError(f"{flag} {path}: the header must be {','.join(columns)} (found {','.join(header or [])})")
        rows = []
        for i, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(columns) or any(not v.strip() for v in row):
                raise UserError(f"{flag} {path} line {i}: give {len(columns)} non-empty values ({','.join(columns)})")
            rows.append(tuple(v.strip() for v in row))
    return rows


def read_train_pairs(path) -> list[tuple[Path, Path]]:
    """[(image, mask)] of a train.csv; each file must exist."""
    pairs = [(Path(a), Path(b)) for a, b in read_rows(path, TRAIN_COLUMNS, "--train")]
    for image, mask in pairs:
        for p in (image, mask):
            if not p.is_file():
                raise UserError(f"--train {path}: {p} does not exist; write the list again with `python -m phenotype pairs`")
    if not pairs:
        raise UserError(f"--train {path}: no training pair; the segmenter needs image-mask pairs (instance masks beside the images)")
    return pairs


def read_test_images(path) -> list[tuple[str, Path]]:
    """[(name, image)] of a test.csv; each image must exist and names must be distinct relative paths."""
    rows = [(n, Path(p)) for n, p in read_rows(path, TEST_COLUMNS, "--images")]
    seen: set[str] = set()
    for name, image in rows:
        key = mask_name(name)
        if key in seen:
            raise UserError(f"--images {path}: two test images share the name {name} (less its extension); names must be distinct")
        seen.add(key)
        if not image.is_file():
            raise UserError(f"--images {path}: {image} does not exist; write the list again with `python -m phenotype pairs`")
    return rows


def test_image_hashes(test: list[tuple[str, Path]]) -> dict[str, str]:
    """{test image name: sha256 of its file} of [(name, image)] rows (test.csv)."""
    from .fingerprint import file_sha256

    return {name: file_sha256(image) for name, image in test}


def find_test_image_in_training(train: list[tuple[Path, Path]], test: list[tuple[str, Path]],
                                test_sha: dict[str, str] | None = None) -> tuple[Path, str] | None:
    """The first training image or mask that is a test image, by resolved path or by sha256, as
    (that training file, the test image's name); None when training and test share nothing.

    The one leak rule of the layout: `phenotype pairs` applies it before writing the lists and
    `segment predict` again before training on them. `test_sha` is `test_image_hashes(test)` if known.
    """
    from .fingerprint import file_sha256

    test_sha = test_sha if test_sha is not None else test_image_hashes(test)
    by_sha = {sha: name for name, sha in test_sha.items()}
    by_path = {Path(image).resolve(): name for name, image in test}
    for pair in train:
        for p in pair:
            hit = by_path.get(Path(p).resolve()) or by_sha.get(file_sha256(p))
            if hit:
                return Path(p), hit
    return None
