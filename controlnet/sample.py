"""`controlnet generate`: new masks from a fold's training masks in, synthetic image–mask pairs out.

Top to bottom: check the inputs (data, split, output folders, sampler, size); per fold, find its
ControlNet and refuse it when its fingerprint lists a test image or mask of the fold (by path and
sha256; the same for a LoRA beside it); make the conditions (`plan_conditions`: deterministic from
the seed, the fold's training masks only); check what SYN already holds; then load the base model
(with the LoRA fused), the fold's ControlNet and Euler a (A1111's: `generate.samplers`), and write
each pair: the mask first (16-bit PNG), then the image (8-bit RGB PNG) whose text chunks carry the
AUTOMATIC1111 `parameters` (with sd-webui-controlnet's "ControlNet 0" field) and the manifest record.

Layout (prompts/layout.py): SYN/[fold_<k>/]<tree>/images/<name>.png + masks/<name>.png, tree `aug`
(single training masks flipped/rotated and elastically deformed) or `density<X>` (cells of several
training masks composed at X cells per 100 x 100 px); SYN/manifest.jsonl, one line per pair, rebuilt
from the images' records at the end, so a killed run re-run ends with one line per pair and no half pair.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from prompts import fingerprint as fp
from prompts import layout
from prompts.errors import UserError
from prompts.files import atomic_path, write_text_atomic
from prompts.guard import check_output_dir
from prompts.pair_layouts import layout_of
from prompts.pairs import IMAGES_DIR, MASKS_DIR, Pair, load_mask

from . import masks as M
from .train import caption, check_no_test_files, fold_pairs, fuse_lora, is_finished, resolve_lora

log = logging.getLogger("controlnet")

VERSION = "cellsynth controlnet 0.1"
CHUNK = "cellsynth"
REFERENCE_SIZE = 512  # elastic_alpha and elastic_sigma are given in px at this size


@dataclass
class PairJob:
    """One synthetic pair to make: where it goes and the condition mask it is generated from."""

    fold: int | None
    tree: str
    index: int
    label: str | None
    mask: np.ndarray  # int32 (size, size), relabelled 1..N
    sources: list[str]  # names of the training pairs whose masks it was made from
    seed: int
    density: float | None  # the density asked for (composed trees)

    @property
    def stem(self) -> str:
        return f"{self.label}_{self.index:05d}" if self.label else f"syn_{self.index:05d}"

    @property
    def image_file(self) -> str:
        return (Path(layout.fold_root(Path(), self.fold)) / self.tree / IMAGES_DIR / f"{self.stem}.png").as_posix()

    @property
    def mask_file(self) -> str:
        return (Path(layout.fold_root(Path(), self.fold)) / self.tree / MASKS_DIR / f"{self.stem}.png").as_posix()


def derive_seed(run_seed: int, *parts) -> int:
    """A 32-bit seed from the run seed and names (stable across Python versions and processes)."""
    text = json.dumps([run_seed, *parts], default=str)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big")


# --------------------------------------------------------------------------- conditions

def plan_conditions(cfg, fold: int | None, train: list[Pair]) -> list[PairJob]:
    """Every pair to make for one fold: `count` per tree, conditions made from the training masks only.

    Classes take turns (pair i has class i mod n_classes); a condition uses masks of its class only.
    """
    size = cfg.size
    by_label: dict[str | None, list[tuple[str, np.ndarray]]] = {}
    for p in train:
        if p.label is not None:
            layout.check_name(p.label, "class")
        by_label.setdefault(p.label, []).append((p.name, M.resize_mask(load_mask(p.mask, p.mask_kind), size)))
    labels = sorted(by_label, key=lambda x: (x is None, x or ""))
    scale = size / REFERENCE_SIZE
    trees: list[float | None] = ([None] if cfg.augment else []) + [float(d) for d in cfg.densities]
    jobs = []
    for density in trees:
        tree = layout.pairs_tree_name(density)
        for i in range(cfg.count):
            label = labels[i % len(labels)]
            pool = by_label[label]
            rng = np.random.default_rng(derive_seed(cfg.seed, fold, tree, i, "condition"))
            if density is None:
                k = int(rng.integers(len(pool)))
                mask = M.augment(pool[k][1], rng, cfg.elastic_alpha * scale, cfg.elastic_sigma * scale)
                sources = [pool[k][0]]
            else:
                try:
                    mask, used = M.compose([m for _, m in pool], size, density, rng)
                except ValueError as err:
                    raise UserError(f"density {density:g}: {err} ({size} px); use a larger --size") from None
                sources = [pool[j][0] for j in used]
            jobs.append(PairJob(fold, tree, i, label, mask, sources, derive_seed(cfg.seed, fold, tree, i, "noise"), density))
    return jobs


# --------------------------------------------------------------------------- records and provenance

def pair_record(job: PairJob, cfg, *, model_hash: str, controlnet: Path, controlnet_sha: str, lora: Path | None,
                lora_sha: str | None, sampler: str) -> dict:
    """The manifest line of one pair (JSON-ready)."""
    m = job.mask
    return {
        "file": job.image_file, "mask": job.mask_file, "fold": job.fold, "tree": job.tree, "class": job.label,
        "density": job.density, "density_reached": round(M.density_of(m), 4), "cells": int(m.max()),
        "coverage": round(float((m > 0).mean()), 4), "sources": job.sources,
        "prompt": caption(cfg.prompt, job.label), "negative_prompt": cfg.negative_prompt, "seed": job.seed,
        "sampler": sampler, "steps": cfg.steps, "cfg": cfg.cfg, "size": [cfg.size, cfg.size],
        "controlnet": str(controlnet), "controlnet_sha256": controlnet_sha, "controlnet_scale": cfg.conditioning_scale,
        "condition": "foreground+boundaries", "lora": str(lora) if lora else None, "lora_sha256": lora_sha,
        "lora_weight": cfg.lora_weight if lora else None, "model": str(cfg.model), "model_hash": model_hash,
        "run_seed": cfg.seed, "index": job.index, "mask_sha256": hashlib.sha256(m.astype("<u2").tobytes()).hexdigest(),
        "version": VERSION,
    }


def a1111_parameters(rec: dict) -> str:
    """AUTOMATIC1111's `parameters` text, with sd-webui-controlnet's `ControlNet 0` field."""
    from diffusion.a1111 import a1111_number, model_name

    lines = [rec["prompt"] + (f" <lora:{Path(rec['lora']).parent.name}:{a1111_number(rec['lora_weight'])}>" if rec["lora"] else "")]
    if rec["negative_prompt"]:
        lines.append(f"Negative prompt: {rec['negative_prompt']}")
    control = (f'ControlNet 0: "Module: none, Model: {Path(rec["controlnet"]).parent.name or "controlnet"}_controlnet '
               f'[{rec["controlnet_sha256"][:8]}], Weight: {a1111_number(rec["controlnet_scale"])}, Resize Mode: Just Resize, '
               f'Processor Res: {rec["size"][0]}, Guidance Start: 0, Guidance End: 1, Pixel Perfect: False, Control Mode: Balanced"')
    fields = [f"Steps: {rec['steps']}", f"Sampler: {rec['sampler']}", f"CFG scale: {a1111_number(rec['cfg'])}", f"Seed: {rec['seed']}",
              f"Size: {rec['size'][0]}x{rec['size'][1]}", f"Model hash: {rec['model_hash']}", f"Model: {model_name(rec['model'])}",
              control, f"Version: {VERSION}"]
    lines.append(", ".join(fields))
    return "\n".join(lines)


def save_pair(image: Image.Image, out: Path, rec: dict, mask: np.ndarray) -> None:
    """Mask first (16-bit PNG, marked as ours), then the image (8-bit RGB PNG with both text chunks); each atomic."""
    info = PngImagePlugin.PngInfo()
    info.add_text(CHUNK, json.dumps({"mask_of": rec["file"], "version": VERSION}))
    with atomic_path(out / rec["mask"]) as tmp:
        Image.fromarray(mask.astype(np.uint16)).save(tmp, format="PNG", pnginfo=info)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters(rec))
    info.add_text(CHUNK, json.dumps(rec))
    with atomic_path(out / rec["file"]) as tmp:
        image.convert("RGB").save(tmp, format="PNG", pnginfo=info)


def read_record(path: Path) -> dict | None:
    """The `cellsynth` record of a PNG, or None (absent, unreadable, not ours)."""
    try:
        with Image.open(path) as im:
            text = getattr(im, "text", {}).get(CHUNK)
        rec = json.loads(text) if text else None
    except (OSError, ValueError, SyntaxError):
        return None
    return rec if isinstance(rec, dict) and str(rec.get("version", "")).startswith("cellsynth controlnet") else None


_SAME = ("prompt", "negative_prompt", "seed", "sampler", "steps", "cfg", "size", "controlnet_sha256", "controlnet_scale",
         "lora_sha256", "lora_weight", "model_hash", "mask_sha256", "sources")


def existing_state(out: Path, rec: dict, overwrite: bool) -> bool:
    """True when the pair is there already from the same inputs; False when it is to be (re)made.

    Refuses to replace a file this tool did not write, and (without --overwrite) a pair made from other inputs.
    """
    image, mask = out / rec["file"], out / rec["mask"]
    if not image.exists():
        if mask.exists() and read_record(mask) is None:
            raise UserError(f"{mask} exists and was not written by `controlnet generate`; move it away or choose another --synthetic")
        return False
    old = read_record(image)
    if old is None or old.get("file") != rec["file"]:
        raise UserError(f"{image} exists and was not written by `controlnet generate`; move it away or choose another --synthetic")
    changed = next((k for k in _SAME if old.get(k) != rec.get(k)), None)
    if changed is None and mask.exists():
        return True
    if changed is not None and not overwrite:
        raise UserError(f"{image} was made from other inputs ({changed}: {old.get(changed)!r}, this run: {rec.get(changed)!r}); "
                        "pass --overwrite to replace it, or choose another --synthetic")
    return False


def rebuild_manifest(out: Path) -> int:
    """SYN/manifest.jsonl from the images' records, one line per pair, sorted; returns the number of lines."""
    records = {}
    for path in sorted(out.rglob(f"{IMAGES_DIR}/*.png")):
        rec = read_record(path)
        if rec is not None and "mask" in rec and (out / rec["mask"]).is_file() and rec.get("file") == path.relative_to(out).as_posix():
            records[rec["file"]] = rec
    write_text_atomic(out / layout.MANIFEST_FILE, "".join(json.dumps(records[f]) + "\n" for f in sorted(records)))
    return len(records)


# --------------------------------------------------------------------------- the run

@dataclass
class FoldPlan:
    fold: int | None
    controlnet: Path
    lora: Path | None
    jobs: list[PairJob]
    train: list[Pair]
    data_root: Path


def plan(cfg, data_cfg) -> list[FoldPlan]:
    """Check every input and make every condition, before anything is written or any model loaded."""
    from diffusion.model import check_model
    from diffusion.samplers import canonical_sampler

    if not data_cfg.data:
        raise UserError("--data is missing: give the folder of image–mask pairs the ControlNets were trained on")
    for key in ("output", "synthetic"):
        if not getattr(cfg, key):
            raise UserError(f"--{key} is missing: give it on the command line or as controlnet.{key} in the study file (--config)")
    check_output_dir(cfg.synthetic, data=data_cfg.data, flag="--synthetic")
    if cfg.size % 8:
        raise UserError(f"--size {cfg.size}: must be a multiple of 8 (the VAE downsamples by 8)")
    canonical_sampler(cfg.sampler)
    check_model(cfg.model, cfg.allow_pickle)
    plans = []
    for fold, train, test in fold_pairs(data_cfg.data, data_cfg.split, cfg.fold, layout_of(data_cfg)):
        cn = layout.controlnet_dir(cfg.output, fold)
        if not is_finished(cn):
            raise UserError(f"no finished ControlNet in {cn}; train it with `python -m controlnet train` (same --data, --split, --output)")
        root = Path(data_cfg.data)
        check_no_test_files(fp.read(cn / layout.FINGERPRINT_FILE), test, root, f"ControlNet {cn}")
        lora = resolve_lora(cfg.lora, fold)
        if lora is not None:
            check_no_test_files(fp.read(lora.parent / layout.FINGERPRINT_FILE), test, root, f"LoRA {lora}")
        plans.append(FoldPlan(fold, cn, lora, plan_conditions(cfg, fold, train), train, root))
    return plans


def tree_fingerprint(fold_plan: FoldPlan, tree: str, recs: list[dict]) -> dict:
    """The record of one tree (SYN/[fold_<k>/]<tree>/fingerprint.json): what its pairs were made from.

    `images` and `masks`: {data-relative path: sha256} of every data file behind the tree: the ControlNet's
    (and LoRA's) training images and masks, and the training masks its conditions were made from. `segment cv`
    checks them against the fold's test pairs, by path and by content. `reading`: the reading rule the ControlNet
    recorded (its training images' pixels; None for a ControlNet written before it was recorded), also a part.
    """
    cn = fp.read(fold_plan.controlnet / layout.FINGERPRINT_FILE) or {}
    images, masks = dict(cn.get("images") or {}), dict(cn.get("masks") or {})
    if fold_plan.lora is not None:
        lora = fp.read(fold_plan.lora.parent / layout.FINGERPRINT_FILE) or {}
        images.update(lora.get("images") or {})
    by_name = {p.name: p for p in fold_plan.train}
    used = sorted({n for r in recs for n in r["sources"]})
    masks.update(fp.files_part([by_name[n].mask.relative_to(fold_plan.data_root) for n in used], root=fold_plan.data_root))
    reading = cn.get("reading")  # the rule the ControlNet's training images were read with: the pairs' pixels follow it
    parts = fp.make(controlnet=recs[0]["controlnet_sha256"] if recs else None, pairs=[[r["file"], r["mask_sha256"], r["seed"]] for r in recs],
                    settings={k: recs[0].get(k) for k in _SAME if k not in ("seed", "mask_sha256", "sources")} if recs else None,
                    reading=reading)
    return {**parts, "fold": fold_plan.fold, "tree": tree, "images": dict(sorted(images.items())), "masks": dict(sorted(masks.items())),
            "reading": reading}


def write_tree_fingerprints(out: Path, fold_plan: FoldPlan, recs: list[dict]) -> None:
    """Each tree's record, before its pairs (an equal record is left untouched)."""
    for tree in sorted({r["tree"] for r in recs}):
        rec = tree_fingerprint(fold_plan, tree, [r for r in recs if r["tree"] == tree])
        path = out / layout.fold_root(Path(), fold_plan.fold) / tree / layout.FINGERPRINT_FILE
        if fp.read(path) != rec:
            fp.write(path, rec)


def load_pipe(cfg, controlnet: Path, lora: Path | None, device: torch.device):
    """StableDiffusionControlNetPipeline: the base model (LoRA fused), the fold's ControlNet, the sampler (Euler a as A1111)."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from diffusers.utils import logging as dlog

    from diffusion.model import load_pipeline
    from diffusion.samplers import make_scheduler

    dlog.set_verbosity_error()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.dtype)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    base = load_pipeline(cfg.model, torch_dtype=dtype, allow_pickle=cfg.allow_pickle, config=cfg.model_config)
    fuse_lora(base, lora, cfg.lora_weight)
    net = ControlNetModel.from_pretrained(controlnet, torch_dtype=dtype, use_safetensors=True)
    pipe = StableDiffusionControlNetPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
                                             controlnet=net, scheduler=make_scheduler(cfg.sampler, base.scheduler.config),
                                             safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def sample(pipe, cfg, job: PairJob) -> Image.Image:
    """One image from the job's condition; noise from a CPU generator seeded with the pair's seed."""
    g = torch.Generator().manual_seed(job.seed)
    return pipe(caption(cfg.prompt, job.label), negative_prompt=cfg.negative_prompt or None, image=M.condition_image(job.mask),
                num_inference_steps=cfg.steps, guidance_scale=cfg.cfg, controlnet_conditioning_scale=cfg.conditioning_scale,
                height=cfg.size, width=cfg.size, generator=g).images[0]


def run(cfg, data_cfg, progress: bool = False) -> Path:
    """Make every planned pair that SYN does not hold yet; returns SYN (its manifest rebuilt)."""
    from diffusion.model import model_hash
    from diffusion.samplers import canonical_sampler

    plans = plan(cfg, data_cfg)
    cfg = dataclasses.replace(cfg, sampler=canonical_sampler(cfg.sampler))
    out = Path(cfg.synthetic)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mhash = model_hash(cfg.model)
    work = []  # (fold plan, records, pairs to make): every existing file checked before anything is written
    for fold_plan in plans:
        cn_sha = fp.file_sha256(fold_plan.controlnet / "diffusion_pytorch_model.safetensors")
        lora_sha = fp.file_sha256(fold_plan.lora) if fold_plan.lora else None
        recs = [pair_record(j, cfg, model_hash=mhash, controlnet=fold_plan.controlnet, controlnet_sha=cn_sha, lora=fold_plan.lora,
                            lora_sha=lora_sha, sampler=cfg.sampler) for j in fold_plan.jobs]
        work.append((fold_plan, recs, [(j, r) for j, r in zip(fold_plan.jobs, recs) if not existing_state(out, r, cfg.overwrite)]))
    out.mkdir(parents=True, exist_ok=True)
    bar = _progress(sum(len(p.jobs) for p in plans), progress)
    for fold_plan, recs, todo in work:
        write_tree_fingerprints(out, fold_plan, recs)
        bar.update(len(recs) - len(todo))
        if not todo:
            continue
        pipe = load_pipe(cfg, fold_plan.controlnet, fold_plan.lora, device)
        for job, rec in todo:
            image = sample(pipe, cfg, job)
            if not np.asarray(image).any():  # diffusers turns NaN latents (fp16 overflow) into an all-black image
                raise UserError(f"{rec['file']}: the image came out all black (NaN in the model's output); use --dtype fp32 or bf16")
            save_pair(image, out, rec, job.mask)
            bar.update(1)
        del pipe
    bar.close()
    n = rebuild_manifest(out)
    log.info("%d pair(s) in %s (manifest %s)", n, out, out / layout.MANIFEST_FILE)
    return out


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress(total: int, show: bool):
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="pair", desc="controlnet generate")
