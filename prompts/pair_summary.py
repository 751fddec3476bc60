"""`prompts show` on segmentation pair data: sets, pairs, mask kinds, objects per image, bits per file kind."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

MAX_MASKS_PER_SET = 200  # masks read per set for the object counts (every header is read)


def is_pair_data(data, data_section) -> bool:
    """Whether `data` is filed as image–mask pairs (a CSV of pairs, images/ + masks/ at the top or per class, or CTC)."""
    from .pair_layouts import ctc_sequences, layout_of
    from .pairs import _has_cellpose_masks

    root, layout = Path(data), layout_of(data_section)
    if layout.csv or not root.is_dir():
        return bool(layout.csv)
    subs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return ((root / layout.images).is_dir() or bool(ctc_sequences(root)) or _has_cellpose_masks(root)
            or any((d / layout.images).is_dir() or _has_cellpose_masks(d) for d in subs))


def bits_text(planes) -> str:
    """'8 of 8 bits; 12 of 16 bits': the bits used per file kind (dtype), so mixed 8- and 16-bit files are not confused."""
    import numpy as np

    top: dict = {}
    for p in planes:
        if p.dtype.kind in "ub":
            top[p.dtype] = max(top.get(p.dtype, 0), int(p.max()))
        else:
            top.setdefault(p.dtype, None)
    if not top:
        return "?"
    parts = [f"{max(1, int(t).bit_length())} of {np.dtype(d).itemsize * 8} bits" if t is not None else "float"
             for d, t in sorted(top.items(), key=lambda kv: np.dtype(kv[0]).itemsize)]
    return "; ".join(dict.fromkeys(parts))


def _range(values: list[int]) -> str:
    if not values:
        return "-"
    return f"{min(values)}/{int(np.median(values))}/{max(values)}"


def show_pairs(data, data_section) -> str:
    """A table per set (class or sequence): pairs, mask kinds decided, objects per image min/median/max, bits used."""
    from .images import raw_planes
    from .masks import read_mask, read_mask_array
    from .normalize import from_section
    from .pair_layouts import layout_of
    from .pairs import image_shape, read_pairs

    reading = from_section(data_section)  # the study's rule: channels, z and t of the image files
    pairs = read_pairs(data, layout_of(data_section))
    kind = getattr(data_section, "masks", "auto")
    by_set: dict[str, list] = {}
    for p in pairs:
        by_set.setdefault(p.label or "all", []).append(p)
    rows = [("set", "pairs", "masks read as", "objects/image min/median/max", "mask bits", "image bits", "image shapes")]
    for name, ps in sorted(by_set.items()):
        reads = [read_mask(p.mask, kind) for p in ps[:MAX_MASKS_PER_SET]]
        kinds = Counter(r.kind for r in reads)
        mask_bits = bits_text([read_mask_array(p.mask) for p in ps[:MAX_MASKS_PER_SET]])
        image_bits = bits_text([pl for p in ps[:8] for pl in raw_planes(p.image, reading)])
        shapes = Counter("x".join(str(v) for v in image_shape(p.image)[::-1]) for p in ps)
        rows.append((name, str(len(ps)), ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())),
                     _range([r.objects for r in reads]), mask_bits, image_bits,
                     ", ".join(f"{s} ({n})" for s, n in shapes.most_common(3))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    head = (f"{len(pairs)} image–mask pairs in {data} ({len(by_set)} set(s)); data.masks: {kind} "
            "(auto: a mask of one non-zero value is binary, its cells are its connected components)")
    return "\n".join([head, "", *("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)])
