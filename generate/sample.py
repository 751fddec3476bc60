"""The sampling loop: a plan of images in, PNGs and manifest lines out.

Top to bottom: check the output folder (never in the data, never over a file we
did not write), the LoRAs against the split (`trees`), and what the output folder
already holds (each tree's fingerprint, each PNG's record); load the base model and
the sampler and check every LoRA against the model, before anything is written;
record each tree's fingerprint; share the missing images between processes
(`accelerate launch`); then, batch by batch, switch LoRAs and weight, run the
diffusers pipeline, reject NaN or all-black images, and write each PNG atomically
with its provenance.

Shapes: images leave the pipeline as float arrays (batch, height, width, 3) in
0..1 and are saved as 8-bit PNGs (mode L when the group's source is grayscale).
Noise is drawn on the CPU from one generator per image, seeded with the image's
seed, so a seed reproduces its image alone, in any batch and on any device.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffusion.samplers import canonical_sampler, make_scheduler
from prompts.errors import UserError
from prompts.guard import check_output_dir, is_inside
from prompts.images import is_grayscale, load_image

from . import provenance as prov
from . import trees
from .plan import ImageJob, batches, share, tree_dir

log = logging.getLogger("generate")


def _schema_default(key: str):
    """The default of `generate.<key>` in the study schema: Settings never re-declares one."""
    from prompts.config import field_default
    from prompts.schema.generate import GenerateSection

    return field_default({f.name: f for f in dataclasses.fields(GenerateSection)}[key])


@dataclass
class Settings:
    """How to sample (resolved from the config and flags); defaults are the schema's (prompts/schema/generate.py)."""

    model: str
    output: Path
    sampler: str = _schema_default("sampler")
    steps: int = _schema_default("steps")
    cfg: float = _schema_default("cfg")  # the classifier-free guidance scale
    width: int = _schema_default("size")[0]
    height: int = _schema_default("size")[-1]
    batch_size: int = _schema_default("batch_size")
    fuse: bool = _schema_default("fuse")
    dtype: str = _schema_default("dtype")  # auto, fp32, fp16, bf16
    allow_pickle: bool = _schema_default("allow_pickle")
    model_config: str | None = _schema_default("model_config")
    overwrite: bool = _schema_default("overwrite")
    seeded: bool = False  # --seed given: seeds are part of the settings that must match on resume
    run_seed: int = 0
    progress: bool = True

    @classmethod
    def from_section(cls, g, progress: bool = True) -> "Settings":
        """The sampling settings of a validated `generate` section (g.size: [W] or [W, H])."""
        return check_settings(cls(
            model=g.model, output=Path(g.output or "."), sampler=g.sampler, steps=g.steps, cfg=g.cfg, width=g.size[0],
            height=g.size[-1], batch_size=g.batch_size, fuse=g.fuse, dtype=g.dtype, allow_pickle=g.allow_pickle,
            model_config=g.model_config, overwrite=g.overwrite, seeded=g.seed is not None, progress=progress))


class BadImages(UserError):
    """Images came out NaN or all black (not saved): a diverged LoRA or an fp16 VAE overflow."""


# ---------------------------------------------------------------- model


def check_settings(s: Settings) -> Settings:
    """Sampler name and size, before any model is loaded; returns a copy with the sampler's canonical
    name (the caller's object is left as it is). The size is checked by the schema's rule for `--size`
    (a library caller skips the command line's validation); the CLI's other values come validated."""
    from prompts.config import check_field
    from prompts.schema.generate import GenerateSection

    s = dataclasses.replace(s, sampler=canonical_sampler(s.sampler))
    check_field(GenerateSection, "size", [s.width, s.height], "--size")
    return s


def load_pipe(s: Settings, device: torch.device):
    """The text-to-image pipeline on `device` with the chosen sampler; progress bars off."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    from diffusion.model import load_pipeline

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(s.dtype)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = load_pipeline(s.model, torch_dtype=dtype, allow_pickle=s.allow_pickle, config=s.model_config)
    pipe.scheduler = make_scheduler(s.sampler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def warn_long_prompts(tokenizer, jobs: list[ImageJob]) -> None:
    """CLIP reads 77 tokens; say once per prompt when one is longer (it is encoded in chunks of 75, as A1111 does)."""
    from .prompt_weighting import chunk

    for text in sorted({p for j in jobs for p in (j.prompt, j.negative_prompt)}):
        n = len(chunk(tokenizer, text)[0])
        if n > 1:
            log.info("prompt is longer than 75 tokens: encoded in %d chunks of 75 tokens, as A1111 does: %r", n, text[:80])


def img2img_pipe(pipe):
    """An image-to-image pipeline sharing the text-to-image pipeline's modules (and LoRA adapters)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    p = StableDiffusionImg2ImgPipeline(**pipe.components)
    p.set_progress_bar_config(disable=True)
    return p


@contextlib.contextmanager
def _quiet_loaders():
    """diffusers logs the whole state-dict error (one line per layer) before it raises: say it once, ourselves."""
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def load_lora(pipe, path: str, name: str, model: str) -> None:
    """Load a LoRA file (diffusers or kohya/A1111 keys) as adapter `name`; a one-line UserError when it cannot be."""
    p = Path(path)
    try:
        with _quiet_loaders():
            pipe.load_lora_weights(str(p.parent), weight_name=p.name, adapter_name=name)
    except Exception as err:  # diffusers and peft raise RuntimeError, ValueError, KeyError ...
        text = str(err)
        mismatch = next((ln.strip() for ln in text.splitlines() if "mismatch" in ln), None)
        if mismatch:
            raise UserError(
                f"LoRA {path} does not fit the base model {model} ({mismatch[:160]}); it was trained for another "
                "base model: pass the --model it was trained on"
            ) from None
        first = text.strip().splitlines()[0][:200] if text.strip() else ""
        raise UserError(f"cannot load LoRA {path} ({err.__class__.__name__}: {first}); is it an SD 1.x LoRA?") from None


def check_loras(pipe, paths: list[str], model: str) -> None:
    """Load each LoRA once and remove it again: a LoRA for another base model fails here, before any image."""
    for path in paths:
        load_lora(pipe, path, "check", model)
        found = [part for part, names in pipe.get_list_adapters().items() if "check" in names]
        pipe.delete_adapters("check")
        if not found:
            raise UserError(f"LoRA {path}: none of its keys match a layer of {model}; it was made for another model")


class Adapters:
    """The LoRAs on the pipeline: loads what a batch needs, drops the rest, sets or fuses the weight."""

    def __init__(self, pipe):
        self.pipe, self.names, self.fused, self.state, self.loaded = pipe, {}, False, None, 0

    def use(self, loras, weight: float, fuse: bool) -> None:
        """Make `loras` (LoraUse tuple) act at multiplier x weight; weight 0 is the bare base model."""
        if self.state == (loras, weight, fuse):
            return
        pipe = self.pipe
        if self.fused:
            pipe.unfuse_lora()
            self.fused = False
        keep = {u.path for u in loras}
        drop = [name for path, name in self.names.items() if path not in keep]
        if drop:
            pipe.delete_adapters(drop)
            self.names = {p: n for p, n in self.names.items() if p in keep}
        for u in loras:
            if u.path not in self.names:
                name, self.loaded = f"lora{self.loaded}", self.loaded + 1
                load_lora(pipe, u.path, name, "the base model")
                self.names[u.path] = name
        names = [self.names[u.path] for u in loras]
        if weight == 0:
            pipe.disable_lora()
        else:
            pipe.enable_lora()
            if fuse:  # fuse_lora multiplies the adapter weights by lora_scale: set them to the tag multipliers first
                pipe.set_adapters(names, adapter_weights=[u.multiplier for u in loras])
                pipe.fuse_lora(lora_scale=weight, adapter_names=names)
                self.fused = True
            else:
                pipe.set_adapters(names, adapter_weights=[u.multiplier * weight for u in loras])
        self.state = (loras, weight, fuse)


# ---------------------------------------------------------------- images


def fit(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover width x height (aspect kept), centre-crop, RGB: an img2img start image."""
    scale = max(width / img.width, height / img.height)
    w, h = max(width, round(img.width * scale)), max(height, round(img.height * scale))
    img = img.resize((w, h), Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
    left, top = (w - width) // 2, (h - height) // 2
    return img.crop((left, top, left + width, top + height)).convert("RGB")


def problem(arr: np.ndarray) -> str | None:
    """'NaN' or 'all black' for a failed image (float array H x W x 3 in 0..1), else None."""
    if not np.isfinite(arr).all():
        return "NaN"
    if float(arr.max()) <= 0.5 / 255:
        return "all black"
    return None


def to_pil(arr: np.ndarray, gray: bool) -> Image.Image:
    """float H x W x 3 in 0..1 -> 8-bit PIL image, mode L (luma) for a grayscale group."""
    img = Image.fromarray((arr * 255).round().astype(np.uint8))
    return img.convert("L") if gray else img


def initial_noise(batch: list[ImageJob], generators: list[torch.Generator], shape: tuple[int, int, int],
                  dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Each image's starting latents, drawn up front on the CPU from its own generator: (B, C, H/8, W/8).

    The draw is the one diffusers makes itself (`randn_tensor` with a list of CPU generators: one
    torch.randn of shape (1, C, h, w) per image, in the run's dtype), so an image's seed gives the same
    image alone, in any batch and on any device. The tensor is built in pinned memory on CUDA and copied
    without blocking, so the copy overlaps the text encoder's work.
    """
    noise = torch.cat([torch.randn((1, *shape), generator=g, dtype=dtype) for g in generators])
    if device.type == "cuda":
        return noise.pin_memory().to(device, non_blocking=True)
    return noise.to(device)


def sample_batch(pipe, i2i, batch: list[ImageJob], s: Settings, data_root: Path, reading=None) -> np.ndarray:
    """Pipeline calls for a batch of jobs with one batch key -> float array (B, H, W, 3) in 0..1.

    Prompts are encoded with A1111's weighting and 75-token chunking (`prompt_weighting`); jobs whose
    prompts take different numbers of chunks go through separate calls, so an image depends on its own
    prompts and seed only. Text-to-image starting noise is drawn up front (`initial_noise`); the sampler's
    own noise (Euler a) comes from the same per-image generators, in the same order as diffusers draws it.
    reading: the data section's rule (`prompts.normalize.Reading`) the init images of img2img jobs are read with;
    required when the batch has init images.
    """
    from .prompt_weighting import prompt_pairs

    gens = [torch.Generator("cpu").manual_seed(j.seed) for j in batch]
    out: list = [None] * len(batch)
    with torch.inference_mode():
        pairs = prompt_pairs(pipe.text_encoder, pipe.tokenizer, [j.prompt for j in batch], [j.negative_prompt for j in batch])
        for length in sorted({c.shape[0] for c, _ in pairs}):
            idx = [i for i, (c, _) in enumerate(pairs) if c.shape[0] == length]
            embeds = torch.stack([pairs[i][0] for i in idx])
            kw = dict(prompt_embeds=embeds, negative_prompt_embeds=torch.stack([pairs[i][1] for i in idx]),
                      num_inference_steps=s.steps, guidance_scale=s.cfg, generator=[gens[i] for i in idx], output_type="np")
            if batch[0].init_image is None:
                scale = pipe.vae_scale_factor
                shape = (pipe.unet.config.in_channels, s.height // scale, s.width // scale)
                latents = initial_noise([batch[i] for i in idx], [gens[i] for i in idx], shape, embeds.dtype, embeds.device)
                images = pipe(width=s.width, height=s.height, latents=latents, **kw).images
            else:
                if reading is None:  # a programming error, not a user's: the caller forgot the study's rule
                    raise ValueError("sample_batch: img2img jobs need reading= (the data section's prompts.normalize.Reading)")
                starts = [fit(load_image(data_root / batch[i].init_image, reading), s.width, s.height) for i in idx]
                images = i2i(image=starts, strength=batch[0].strength, **kw).images
            for i, image in zip(idx, images):
                out[i] = image
    return np.stack(out)


class PngWriter:
    """Writes finished images (PNG with provenance, then the manifest line) on a bounded pool of threads.

    The main thread goes on to sample the next batch while earlier images are encoded (zlib and PIL release
    the GIL); at most `max_pending` images wait, so memory stays bounded. `drain` waits for every image and
    re-raises the first error a writer met (a full disk, a vanished folder) in the main thread.
    """

    def __init__(self, out: Path, workers: int | None = None, max_pending: int = 32):
        from concurrent.futures import ThreadPoolExecutor

        self.out, self.max_pending = out, max_pending
        self.pool = ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1), thread_name_prefix="png")
        self.pending: list = []
        self.records: dict[str, dict] = {}  # file -> record of every image written: the run's records, no rescan

    def _write(self, arr: np.ndarray, gray: bool, rec: dict) -> None:
        prov.save_png(to_pil(arr, gray), self.out / rec["file"], rec)
        prov.append_line(self.out, rec)

    def submit(self, arr: np.ndarray, gray: bool, rec: dict) -> None:
        """Queue one image (float H x W x 3 in 0..1) and its record; blocks while `max_pending` are queued."""
        while len(self.pending) >= self.max_pending:
            self.pending.pop(0).result()
        self.pending.append(self.pool.submit(self._write, arr, gray, rec))
        self.records[rec["file"]] = rec

    def drain(self) -> None:
        """Wait for every queued image; the first writer's error is raised here."""
        pending, self.pending = self.pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        """Wait for every pending PNG and stop the writer threads."""
        try:
            self.drain()
        finally:
            self.pool.shutdown(wait=True)


# ---------------------------------------------------------------- the run


def existing(s: Settings, jobs: list[ImageJob], records: dict, planned: dict[str, dict], foreign: list[str]) -> list[ImageJob]:
    """The jobs still to make; an existing image made with other settings, or not by generate, is an error
    (unless --overwrite)."""
    todo, foreign = [], set(foreign)
    for job in jobs:
        target = s.output / job.file
        if target.is_symlink() or target.is_dir():
            raise UserError(f"{target} exists and is a {'link' if target.is_symlink() else 'folder'} generate did not write; "
                            "it is left untouched: move it away or choose another --output")
        if job.file in foreign:  # the user's image: never replaced, --overwrite or not (prompts.guard's rule)
            raise UserError(f"{s.output / job.file} exists and was not made by generate (no {prov.CHUNK} PNG chunk); it is "
                            "left untouched (--overwrite replaces only generate's own images): move it away or choose another --output")
        old = records.get(job.file)
        if old is None or s.overwrite:
            todo.append(job)
            continue
        diff = prov.settings_differ(old, planned[job.file], s.seeded)
        if diff:
            raise UserError(
                f"{s.output / job.file} exists and was made with {diff}; pass --overwrite to replace it, "
                "or choose another --output"
            )
    return todo


def check_output(s: Settings, jobs: list[ImageJob], data_root: Path) -> None:
    """OUT is a writable folder outside the data; every planned file lies inside OUT; the manifest there is ours."""
    check_output_dir(s.output, data=data_root, flag="--output")
    if is_inside(data_root, s.output):  # OUT is scanned (and our temporaries removed) all the way down
        raise UserError(f"--output {s.output} holds the data folder {data_root}; choose an output folder beside the data, "
                        "not above it")
    for j in jobs:  # plans come from prompts.layout with checked names; a ImageJob built by hand is checked here
        parts = Path(j.file).parts
        if Path(j.file).is_absolute() or ".." in parts or not parts:
            raise UserError(f"planned image {j.file!r} would lie outside {s.output}; labels must be plain folder names")
    manifest = s.output / prov.MANIFEST
    if (manifest.exists() or manifest.is_symlink()) and (manifest.is_symlink() or not prov.is_our_manifest(manifest)):
        raise UserError(f"{manifest} exists and was not written by generate; it is left untouched (--overwrite replaces "
                        "only generate's own files): move it away or choose another --output")


def remove_replaced(out: Path, stale: list[str], records: dict[str, dict], planned: dict) -> dict[str, dict]:
    """Delete our own images (they carry our record) in trees made from other inputs that this run does not
    make again, so a tree holds only images of its fingerprint; returns the records left."""
    stale = set(stale)
    for rel, rec in list(records.items()):
        if rel not in planned and tree_dir(rec.get("fold"), rec.get("lora_weight", 0.0)) in stale:
            os.unlink(out / rel)
            del records[rel]
    return records


def generate(jobs: list[ImageJob], s: Settings, data_root: Path, state=None, inputs: trees.Inputs | None = None) -> dict:
    """Make every planned image that is missing; returns counts {'planned', 'existing', 'made', 'failed'}.

    state: an accelerate PartialState (one process when None): each process makes
    a contiguous share of the missing images' batches.
    inputs: what else determines the trees (`trees.Inputs`); with it, the LoRAs are checked against
    the split and each tree records its fingerprint (the CLI always gives it).
    Raises UserError for bad input, before anything is written, and when images came out NaN.
    """
    from accelerate import PartialState

    from diffusion.model import model_hash

    state = state or PartialState()
    reading = inputs.reading if inputs is not None else None  # the data section's rule: init images are read with it
    s = check_settings(s)
    check_output(s, jobs, Path(data_root))
    stale, current = [], {}
    if inputs is not None:
        trees.check_against_split(jobs, inputs)
        current = trees.tree_fingerprints(jobs, inputs)
        stale = trees.stale_trees(s.output, current, s.overwrite)
    hashes, mhash = prov.lora_hashes(jobs), model_hash(s.model)
    planned = {j.file: prov.record(j, sampler=s.sampler, steps=s.steps, cfg=s.cfg, size=(s.width, s.height),
                                   model=str(s.model), model_hash=mhash, lora_hashes=hashes, run_seed=s.run_seed,
                                   out=s.output, reading=reading)
               for j in jobs}
    records, foreign = prov.scan(s.output)
    todo = existing(s, jobs, records, planned, foreign)  # raises before anything is written
    pipe = i2i = None
    if todo:  # every process plans the same todo list, so all load the model or none
        pipe = load_pipe(s, state.device)
        i2i = img2img_pipe(pipe) if any(j.init_image for j in todo) else None
        if state.is_main_process:
            warn_long_prompts(pipe.tokenizer, todo)
        check_loras(pipe, sorted({u.path for j in todo for u in j.loras}), s.model)  # raises before anything is written
    state.wait_for_everyone()
    if state.is_main_process and inputs is not None:  # after every check: a refused run prints one line
        trees.warn_unrecorded(jobs, inputs)
        trees.warn_triggers(jobs)
    if state.is_main_process:
        s.output.mkdir(parents=True, exist_ok=True)
        prov.remove_stale_temporaries(s.output)
        records = remove_replaced(s.output, stale, records, planned)
        trees.write_fingerprints(s.output, current)
        prov.rebuild_manifest(s.output, records)
        for rel in foreign[:5]:
            log.warning("%s is not one of ours (no %s chunk); left alone", s.output / rel, prov.CHUNK)
    state.wait_for_everyone()

    mine = share(batches(todo, s.batch_size), state.process_index, state.num_processes)
    n_mine = sum(len(b) for b in mine)
    if state.is_main_process:
        log.info("%d planned, %d already there, %d to make (%d process(es)); run seed %d",
                 len(jobs), len(jobs) - len(todo), len(todo), state.num_processes, s.run_seed)
    adapters, failed, made, t0 = Adapters(pipe), [], 0, time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(total=n_mine, unit="img", disable=not (s.progress and state.is_main_process and n_mine), dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30)  # a log file gets a line every 30 s
    writer = PngWriter(s.output)
    try:
        with bar:  # closed on Ctrl-C or SIGTERM too, so the one line that says how to resume comes last
            for batch in mine:
                adapters.use(batch[0].loras, batch[0].weight, s.fuse)
                arrays = sample_batch(pipe, i2i, batch, s, data_root, reading)
                for job, arr in zip(batch, arrays):
                    bad = problem(arr)
                    if bad:
                        failed.append(job)
                        log.error("%s: %s image (seed %d) not saved", job.file, bad, job.seed)
                        continue
                    writer.submit(arr, job.gray, planned[job.file])
                    made += 1
                bar.update(len(batch))
    finally:
        writer.close()  # every queued image is written (or its error raised) before the run goes on or stops
    elapsed = time.perf_counter() - t0
    if made:
        log.info("process %d made %d image(s) in %.1f s (%.2f img/s)", state.process_index, made, elapsed, made / elapsed)

    state.wait_for_everyone()
    counts = {"planned": len(jobs), "existing": len(jobs) - len(todo), "made": made, "failed": len(failed),
              "seconds": elapsed}
    if state.is_main_process:
        records = final_records(s.output, records, writer.records, todo, state.num_processes)
        prov.rebuild_manifest(s.output, records)
        counts["made_all"] = sum(j.file in records for j in jobs) - counts["existing"]
    if failed:
        raise BadImages(
            f"{len(failed)} image(s) came out NaN or all black and were not saved (e.g. {failed[0].file}, "
            f"seed {failed[0].seed}); with fp16 this is the VAE overflowing: re-run with --dtype fp32 or bf16, "
            "which makes only the missing images"
        )
    return counts


def final_records(out: Path, before: dict[str, dict], written: dict[str, dict], todo: list[ImageJob],
                  processes: int) -> dict[str, dict]:
    """Every record in OUT after the run, from memory: what was there before plus what this process wrote.

    With several processes, the images the others made are read from their PNG chunks (text only, no
    decoding); nothing else is scanned again.
    """
    records = {**before, **written}
    if processes > 1:
        for job in todo:
            if job.file not in written:
                rec = prov.read_chunk(out / job.file)
                if rec is not None and rec.get("file") == job.file:
                    records[job.file] = rec
    return records


@functools.lru_cache(maxsize=None)
def _gray(path: Path, reading) -> bool:
    return is_grayscale(load_image(path, reading))


def is_gray_group(data_root: Path, records, sample: int = 8, *, reading) -> bool:
    """True when the group's images (up to `sample` of them, in path order, read under `reading`: the data
    section's rule, whose channels decide grey or colour) are all grayscale.

    Only the records given are read: for a fold, its training images (never a test image).
    """
    return all(_gray(data_root / r.path, reading) for r in sorted(records, key=lambda r: r.path)[:sample])
