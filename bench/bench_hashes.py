"""The cost of content hashes at scale: the file-hash cache at N files and the base model's hash per job,
now against a git revision's `prompts/fingerprint.py` and `diffusion.model.model_hash`, side by side in one run.

    python -m bench.bench_hashes --files 3000 --before REV     # writes bench/hashes.md
    python -m bench.bench_hashes --smoke                       # 20 files: the script still runs

What is timed (each side with its own, empty cache folder):
- `cold`: `file_sha256` of N new files of 1 MiB (the size from which the disk cache is used), one process:
  hashing plus the cache's writes (before: the whole JSON read and rewritten for every new file);
- `warm`: the same N files again from a fresh process memory (a later job): cache reads only;
- `model hash, per job`: `model_hash` of a base model's U-Net weights file (`--model-mib`), as each LoRA and
  generation job computes it, from a fresh process memory: before, the file is read again every time.
The files are sparse (no disk space used; the bytes hashed are zeros, which costs the same as any bytes).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_at(rev: str, path: str, name: str, package: str):
    """A module's source at git revision `rev`, loaded as `package.name` (its relative imports resolve there)."""
    src = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    spec = importlib.util.spec_from_loader(f"{package}.{name}", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = package
    exec(compile(src, f"{rev}:{path}", "exec"), mod.__dict__)  # noqa: S102 - the repository's own code at REV
    return mod


def sparse_files(folder: Path, n: int, size: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        p = folder / f"img_{i:05d}.tif"
        with open(p, "wb") as f:
            f.truncate(size)
        paths.append(p)
    return paths


def forget(mod) -> None:
    """A fresh process's memory: no in-memory hashes (and, for the append-only cache, nothing read yet)."""
    mod._MEMO.clear()
    if hasattr(mod, "_DISK"):
        mod._DISK.__init__()


def time_files(mod, paths: list[Path], cache: Path) -> tuple[float, float]:
    os.environ["XDG_CACHE_HOME"] = str(cache)
    forget(mod)
    t = time.perf_counter()
    for p in paths:
        mod.file_sha256(p)
    cold = time.perf_counter() - t
    forget(mod)
    t = time.perf_counter()
    for p in paths:
        mod.file_sha256(p)
    return cold, time.perf_counter() - t


def time_model_hash(model_hash, mod, model: Path, cache: Path, jobs: int) -> float:
    """Median seconds of `model_hash` per job over `jobs` fresh process memories (the first job fills the cache)."""
    import statistics

    os.environ["XDG_CACHE_HOME"] = str(cache)
    times = []
    for _ in range(jobs):
        forget(mod)
        t = time.perf_counter()
        model_hash(model)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:] or times)


def old_model_hash(model) -> str:
    """`diffusion.model.model_hash` before it used the cache: the U-Net weights read in full every call."""
    from prompts.files import sha256_file

    weights = sorted((Path(model) / "unet").glob("*.safetensors"))
    return sha256_file(weights[0])[:10]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_hashes", description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=3000)
    p.add_argument("--file-mib", type=float, default=1.0, help="size of each file (the disk cache starts at 1 MiB)")
    p.add_argument("--model-mib", type=int, default=1024, help="size of the base model's U-Net file")
    p.add_argument("--jobs", type=int, default=5, help="jobs that each need the model hash")
    p.add_argument("--before", metavar="REV", help="also time prompts/fingerprint.py and model_hash as at this revision")
    p.add_argument("--md", default=str(Path(__file__).with_name("hashes.md")), help="markdown file to write ('' for none)")
    p.add_argument("--smoke", action="store_true", help="20 small files, a small model, no page written")
    a = p.parse_args(argv)
    if a.smoke:
        a.files, a.model_mib, a.jobs, a.md = 20, 2, 2, ""
    from diffusion.model import model_hash
    from prompts import fingerprint

    sides = {"now": (fingerprint, model_hash)}
    if a.before:
        sides["before"] = (module_at(a.before, "prompts/fingerprint.py", "_fingerprint_before", "prompts"), old_model_hash)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-hashes-") as tmp:
        tmp = Path(tmp)
        files = sparse_files(tmp / "data", a.files, int(a.file_mib * 2**20))
        model = tmp / "model"
        (model / "unet").mkdir(parents=True)
        with open(model / "unet" / "diffusion_pytorch_model.safetensors", "wb") as f:
            f.truncate(a.model_mib * 2**20)
        for name, (mod, mhash) in sides.items():
            cold, warm = time_files(mod, files, tmp / f"cache-{name}")
            per_job = time_model_hash(mhash, mod, model, tmp / f"cache-{name}", a.jobs)
            rows[name] = (cold, warm, per_job)
            print(f"{name}: cold {cold:.2f} s, warm {warm:.2f} s, model hash per job {per_job:.3f} s", file=sys.stderr, flush=True)
    lines = [f"`python -m bench.bench_hashes --files {a.files} --model-mib {a.model_mib}"
             + (f" --before {a.before}" if a.before else "") + f"`, {time.strftime('%Y-%m-%d')}, CPU ({os.cpu_count()} cores, "
             f"load {os.getloadavg()[0]:.1f}); {a.files} files of {a.file_mib:g} MiB, a {a.model_mib} MiB U-Net file, {a.jobs} jobs.", "",
             "| code | first hashing of all files (s) | a later job, all files (s) | model hash per job (s) |",
             "| --- | ---: | ---: | ---: |"]
    for name, (cold, warm, per_job) in rows.items():
        lines.append(f"| {name if name == 'now' else 'before (' + a.before + ')'} | {cold:.2f} | {warm:.3f} | {per_job:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.md:
        Path(a.md).write_text("# Content hashes at scale\n\n" + __doc__.split("\n\n", 2)[2] + "\n" + text, encoding="utf-8")


if __name__ == "__main__":
    main()
