"""Where each image came from: the manifest line, the PNG text chunks, and hashes.

Each PNG carries two text chunks:
- `parameters`: AUTOMATIC1111's text (prompt with <lora:..> tags, "Negative prompt: ...",
  then "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: ..., Size: WxH, Model hash: ...,
  Lora hashes: ..."), which A1111's "PNG Info" tab and civitai read;
- `cellsynth`: the image's manifest record as JSON.

The PNGs are the truth: `OUT/manifest.jsonl` is appended to while a run goes and
rebuilt from the PNGs' `cellsynth` chunks at the start and end of every run, so a
run killed between writing a PNG and its line (or in the middle of a line) ends,
once re-run, with exactly one line per image.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from PIL import Image, PngImagePlugin

from diffusion.a1111 import a1111_number, model_name
from prompts import fingerprint
from prompts.files import atomic_path
from prompts.layout import MANIFEST_FILE

from .plan import ImageJob

MANIFEST = MANIFEST_FILE
CHUNK = "cellsynth"
VERSION = "cellsynth generate 0.1"


def lora_hash(path: str | os.PathLike) -> str:
    """AUTOMATIC1111's LoRA short hash ("Lora hashes", civitai): 12 hex digits, of the kohya file (the one A1111 loads)
    even when `path` is the diffusers file beside it; see `diffusion.formats.a1111_short_hash`."""
    from diffusion.formats import a1111_short_hash

    return a1111_short_hash(path)


def lora_sha256(path: str) -> dict[str, str]:
    """{'diffusers': sha256, 'kohya': sha256} of a LoRA's files (those that exist); read once per file version."""
    st = os.stat(path)
    return dict(_lora_sha256(str(path), st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _lora_sha256(path: str, size: int, mtime_ns: int) -> dict[str, str]:
    from diffusion.formats import lora_file_sha256

    return lora_file_sha256(path)


def portable_path(path: str, out) -> str:
    """A local file or folder as a POSIX path relative to the output folder `out` (a hub id as given).

    Provenance never holds absolute paths: the same study in another folder, or moved, writes the same records.
    """
    if not os.path.exists(path):
        return str(path)
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(out))).as_posix()


def record(job: ImageJob, *, sampler: str, steps: int, cfg: float, size: tuple[int, int], model: str, model_hash: str,
           lora_hashes: dict[str, str], run_seed: int, out=None, reading=None) -> dict:
    """The manifest line of one image (JSON-ready). size = (width, height) in pixels.

    out: the output folder; LoRA paths are recorded relative to it (`portable_path`). reading: the data section's
    rule (`prompts.normalize.Reading`), recorded for an img2img image (required then: its init image's pixels).
    """
    where = (lambda p: portable_path(p, out)) if out is not None else str
    rec = {
        "file": job.file,
        "class": job.label,
        "cell_line": job.cell_line,
        "group": job.group,
        "fold": job.fold,
        "lora_weight": job.weight,
        "loras": [{"name": u.name, "file": where(u.path), "weight": u.multiplier * job.weight, "hash": lora_hashes[u.path],
                   "sha256": lora_sha256(u.path)}
                  for u in job.loras],
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": job.seed,
        "sampler": sampler,
        "steps": steps,
        "cfg": cfg,
        "size": [size[0], size[1]],
        "mode": "img2img" if job.init_image else "txt2img",
        "init_image": job.init_image,
        "strength": job.strength,
        "model": model,  # as given: a hub id, or the path readers resolve from where generate ran (the report's smoke check)
        "model_hash": model_hash,
        "run_seed": run_seed,
        "index": job.index,
        "color": "L" if job.gray else "RGB",
        "version": VERSION,
    }
    if job.init_image:
        from prompts.fingerprint import reading_part

        if reading is None:  # a programming error: the init image's pixels were read under some rule, say which
            raise ValueError("record: an img2img job needs reading= (the data section's prompts.normalize.Reading)")
        rec["reading"] = reading_part(reading)
    return rec


def a1111_parameters(rec: dict) -> str:
    """AUTOMATIC1111's `parameters` text for a manifest record."""
    tags = "".join(f" <lora:{u['name']}:{a1111_number(u['weight'])}>" for u in rec["loras"])
    lines = [rec["prompt"] + tags]
    if rec["negative_prompt"]:
        lines.append(f"Negative prompt: {rec['negative_prompt']}")
    fields = [
        f"Steps: {rec['steps']}",
        f"Sampler: {rec['sampler']}",
        f"CFG scale: {a1111_number(rec['cfg'])}",
        f"Seed: {rec['seed']}",
        f"Size: {rec['size'][0]}x{rec['size'][1]}",
        f"Model hash: {rec['model_hash']}",
        f"Model: {model_name(rec['model'])}",
    ]
    if rec["mode"] == "img2img":
        fields.append(f"Denoising strength: {a1111_number(rec['strength'])}")
    if rec["loras"]:
        fields.append('Lora hashes: "' + ", ".join(f"{u['name']}: {u['hash']}" for u in rec["loras"]) + '"')
    fields.append(f"Version: {VERSION}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


PNG_COMPRESS_LEVEL = 1  # zlib level: lossless at every level; 1 encodes several times faster than PIL's 6


def save_png(image: Image.Image, path: Path, rec: dict, compress_level: int = PNG_COMPRESS_LEVEL) -> None:
    """Write `image` atomically with both text chunks; an existing file is replaced only by the rename.

    The bytes depend only on the pixels and `rec` (no time stamp), so the same image is the same file.
    """
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters(rec))
    info.add_text(CHUNK, json.dumps(rec, sort_keys=False))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info, compress_level=compress_level)


def read_chunk(path: Path) -> dict | None:
    """The `cellsynth` record of a PNG, or None when it has none (not ours) or cannot be read.

    Reads the text chunks before the pixel data (`im.info`, which PIL fills on open) and never decodes the
    pixels: save_png writes both chunks before the image data.
    """
    try:
        with Image.open(path) as im:
            text = im.info.get(CHUNK) if im.format == "PNG" else None
    except (OSError, ValueError, SyntaxError):
        return None
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def append_line(out: Path, rec: dict) -> None:
    """Append one manifest line (prompts.fingerprint: safe with several processes)."""
    fingerprint.append_manifest(out / MANIFEST, rec)


def scan(out: Path) -> tuple[dict[str, dict], list[str]]:
    """Records of every PNG under `out` from its chunk: ({file: record}, [PNGs without a record])."""
    found, foreign = {}, []
    if not out.is_dir():
        return found, foreign
    for dirpath, dirnames, filenames in os.walk(out):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not name.lower().endswith(".png"):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(out).as_posix()
            rec = read_chunk(path)
            if rec is None or rec.get("file") != rel:
                foreign.append(rel)
            else:
                found[rel] = rec
    return found, foreign


STALE_AFTER_S = 600  # a temporary file is renamed into place within seconds; an older one was left by a killed run


def remove_stale_temporaries(out: Path, now: float | None = None) -> int:
    """Delete our own temporary files (`.NAME.*.tmp.png`, `.manifest.*.tmp.jsonl`, `.fingerprint.*.tmp.json`) left by a
    killed run; returns how many. Only files untouched for STALE_AFTER_S seconds: another run writing into the same
    folder at this moment (several workflow jobs, or a second `generate`) keeps its own."""
    import time

    now = time.time() if now is None else now
    n = 0
    for dirpath, _, filenames in os.walk(out):
        for name in filenames:
            if name.startswith(".") and (name.endswith(".tmp.png") or (name.startswith(".manifest.") and name.endswith(".tmp.jsonl"))
                                         or (name.startswith(".fingerprint.") and name.endswith(".tmp.json"))):
                path = Path(dirpath) / name
                try:
                    if now - path.stat().st_mtime >= STALE_AFTER_S:
                        path.unlink()
                        n += 1
                except FileNotFoundError:  # renamed into place by its run meanwhile
                    pass
    return n


def is_our_manifest(path: Path) -> bool:
    """True when every line of an existing manifest is one of generate's records (prompts.fingerprint)."""
    return fingerprint.is_our_manifest(path, VERSION.rsplit(" ", 1)[0])


def rebuild_manifest(out: Path, records: dict[str, dict]) -> None:
    """Write manifest.jsonl atomically: one line per PNG, sorted by file."""
    fingerprint.write_manifest(out / MANIFEST, [records[f] for f in sorted(records)])


def settings_differ(old: dict, new: dict, seeded: bool) -> str | None:
    """The first setting in which an existing image's record differs from the planned one, or None.

    The seed counts only when the run is seeded (an unseeded run draws new seeds).
    """
    keys = ["prompt", "negative_prompt", "sampler", "steps", "cfg", "size", "mode", "strength", "model_hash"]
    if seeded:
        keys.append("seed")
    for key in keys:
        if old.get(key) != new.get(key):
            return f"{key} {old.get(key)!r} (this run: {new.get(key)!r})"
    old_loras = [(u.get("hash"), u.get("weight")) for u in old.get("loras", [])]
    new_loras = [(u["hash"], u["weight"]) for u in new["loras"]]
    if old_loras != new_loras:
        return f"LoRAs {old_loras} (this run: {new_loras})"
    return None


def lora_hashes(jobs: list[ImageJob]) -> dict[str, str]:
    """{LoRA file: short hash} for every LoRA the jobs use."""
    paths = sorted({u.path for j in jobs for u in j.loras})
    return {p: lora_hash(p) for p in paths}

