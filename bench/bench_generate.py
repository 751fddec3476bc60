"""Images per second of `generate` against a bare diffusers script, side by side in one run.

Same model, LoRA, sampler (Euler a), steps, CFG, size and batch for both, and the same work: both sample and
save every image as a PNG (the bare script with PIL's defaults, `generate` with its provenance chunks and
manifest line). Each side gets one untimed warm-up batch; the clock covers only the timed batches: from the
first timed batch's start until the last image is on disk (for `generate`: until it returns, its final
manifest rebuild included). Fused (--fuse) against unfused for both; `generate` with
Euler a's noise drawn per step (as diffusers does) beside its pre-drawn default. Configurations are measured in turn,
`--repeats` times, and the median is reported, so that load from other programs hits every one alike.

    python -m bench.bench_generate                      # CPU: a mid-size random SD-like model, 128x128
    python -m bench.bench_generate --tiny --batch 1 4 16 --before REV
                                                        # CPU: the tiny model at 512 px, generate now and at REV
    python -m bench.bench_generate --sd15 --device cuda # SD 1.5 architecture (random weights, no download),
                                                        # 512x512 fp16, batch 1 and larger, with the compute floor
    python -m bench.bench_generate --smoke              # one image, one step: the script still runs

The compute floor is FLOPs per image (U-Net x steps x 2 for CFG, text encoder, VAE
decoder; counted by torch's FlopCounterMode) over the measured matrix-multiply rate.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

PROMPT = "oocgood, brightfield micrograph, confluent monolayer"  # < 77 tokens for the tiny tokenizer too
NEGATIVE = "text, watermark, blurry"


def build_model(out: Path, sd15: bool, tiny: bool = False) -> Path:
    """A random Stable Diffusion in diffusers layout: SD 1.5's architecture, a mid-size one for CPUs, or the
    toolkit's tiny smoke model (`diffusion.tiny`: cheap even at 512 px, so that the per-image bookkeeping, not
    the sampling, dominates: the worst case for `generate` against a bare script)."""
    if tiny:
        from diffusion.tiny import write_tiny_model

        return write_tiny_model(out)
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from diffusion.tiny import write_tiny_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_tokenizer(Path(tmp))
        tok = CLIPTokenizer.from_pretrained(tmp)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    if sd15:  # SD 1.5's configs (unet 860 M, VAE 84 M, CLIP ViT-L/14 text 123 M parameters), the one copy in diffusion.model
        from diffusion.model import build_sd15

        unet, text_model, vae = build_sd15("cpu", vae=True, **ids)  # the tiny tokenizer's ids fit
    else:  # about 1/10 of SD 1.5's U-Net compute per pixel: big enough that sampling, not bookkeeping, dominates
        unet = UNet2DConditionModel(sample_size=16, cross_attention_dim=384, attention_head_dim=8,
                                    block_out_channels=(96, 192, 384), layers_per_block=1,
                                    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
        vae = AutoencoderKL(block_out_channels=(32, 64, 128, 128), layers_per_block=1, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            norm_num_groups=32, sample_size=128)
        text = CLIPTextConfig(hidden_size=384, intermediate_size=1536, num_attention_heads=6, num_hidden_layers=6,
                              max_position_embeddings=77, projection_dim=384, vocab_size=len(tok), **ids)
        text_model = CLIPTextModel(text)
    sched = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_model, tokenizer=tok, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def build_lora(model: Path, folder: Path, rank: int = 8, network: str = "attention") -> Path:
    """A random LoRA (B drawn, not zero) on U-Net and text encoder, written by the trainer's own writer."""
    from types import SimpleNamespace

    from diffusion.formats import from_peft, write_diffusers
    from diffusion.model import load_pipeline
    from lora.train import add_lora

    pipe = load_pipeline(model)
    add_lora(pipe.unet, pipe.text_encoder, SimpleNamespace(seed=0, rank=rank, alpha=float(rank), unet_lr=1e-4, text_encoder_lr=1e-4,
                                                         network=network, conv_dim=0, conv_alpha=None))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in (pipe.unet, pipe.text_encoder):
            for name, p in m.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    return write_diffusers(from_peft(pipe.unet, pipe.text_encoder), folder)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare(model: Path, lora: Path, a, fused: bool, out: Path) -> float:
    """Images/s of a plain diffusers script: LoRA at 0.8, Euler a (linspace), `images` images in batches, each
    image saved as a PNG (PIL's defaults, as `image.save(path)` in a user's script does).

    One untimed warm-up batch (sampled and saved); the clock runs over the timed batches only, from the first
    timed batch's start to the last image's file on disk: the same work `generate` is timed over.
    """
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=a.dtype, safety_checker=None,
                                                   requires_safety_checker=False).to(a.device)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="good")
    if fused:
        pipe.set_adapters(["good"], adapter_weights=[1.0])
        pipe.fuse_lora(lora_scale=0.8, adapter_names=["good"])
    else:
        pipe.set_adapters(["good"], adapter_weights=[0.8])
    out.mkdir(parents=True, exist_ok=True)

    def call(seeds):
        images = pipe([PROMPT] * len(seeds), negative_prompt=[NEGATIVE] * len(seeds), num_inference_steps=a.steps,
                      guidance_scale=7.0, width=a.size, height=a.size,
                      generator=[torch.Generator("cpu").manual_seed(s) for s in seeds]).images
        for s, image in zip(seeds, images):
            image.save(out / f"good_{s:05d}.png")

    call([10**6 + i for i in range(a.batch)])  # warm-up batch, not timed
    sync(a.device)
    t = time.perf_counter()
    for start in range(0, a.images, a.batch):
        call(list(range(start, min(start + a.batch, a.images))))
    sync(a.device)
    return a.images / (time.perf_counter() - t)


def before_package(rev: str, tmp: Path) -> str:
    """The `generate` package as it was at git revision `rev`, importable as `generate_before` (for --before)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    dest = tmp / "before"
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", rev, "generate"], cwd=root, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    (dest / "generate").rename(dest / "generate_before")
    sys.path.insert(0, str(dest))
    return "generate_before"


def ours(model: Path, lora: Path, a, fused: bool, out: Path, package: str = "generate", predraw: bool = True) -> float:
    """Images/s of `generate`'s sampling loop, PNGs, provenance and manifest included.

    One call of `generate` plans a warm-up batch then the timed images; the clock starts when the first timed
    batch starts sampling and stops when `generate` returns (every PNG written, the manifest rebuilt): the
    steady-state batches and all of their bookkeeping, nothing of the warm-up's sampling. (Any warm-up PNG
    still being written in the background counts against `generate`.)
    predraw=False: Euler a draws each step's noise per step, as diffusers does (`make_scheduler(predraw_noise=False)`),
    to time what pre-drawing it (`diffusion.euler_noise`) saves.
    """
    import importlib

    from accelerate import PartialState

    plan = importlib.import_module(f"{package}.plan")
    gs = importlib.import_module(f"{package}.sample")
    job_class = getattr(plan, "ImageJob", None) or plan.Job  # the class's name before it was renamed

    def jobs(n, group):  # batches are sorted by group: "0warm" comes first
        return [job_class(f"{group}/w0.8/good/good_{i:05d}.png", "good", None, group, None, 0.8, i, i, PROMPT, NEGATIVE,
                          (plan.LoraUse("good", str(lora), 1.0),), False) for i in range(n)]

    dtype = {torch.float16: "fp16", torch.float32: "fp32", torch.bfloat16: "bf16"}[a.dtype]
    s = gs.Settings(model=str(model), output=out, steps=a.steps, cfg=7.0, width=a.size, height=a.size, batch_size=a.batch,
                    fuse=fused, dtype=dtype, progress=False)
    starts: list[float] = []
    original = gs.sample_batch

    def timed(pipe, i2i, batch, s_, root, reading=None):
        if batch[0].file.startswith("timed") and not starts:
            sync(a.device)
            starts.append(time.perf_counter())
        return original(pipe, i2i, batch, s_, root, reading)

    gs.sample_batch = timed
    make_scheduler = gs.make_scheduler
    if not predraw:
        gs.make_scheduler = lambda name, config: make_scheduler(name, config, predraw_noise=False)
    try:
        gs.generate(jobs(a.batch, "0warm") + jobs(a.images, "timed"), s, out.parent / "data", PartialState())
        t1 = time.perf_counter()
    finally:
        gs.sample_batch, gs.make_scheduler = original, make_scheduler
    return a.images / (t1 - starts[0])


def flops_per_image(model: Path, a) -> float:
    """FLOPs of one image: U-Net (batch 2 for CFG) x steps + text encoder (2 prompts) + VAE decode."""
    from diffusers import StableDiffusionPipeline
    from torch.utils.flop_counter import FlopCounterMode

    pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=a.dtype, safety_checker=None,
                                                   requires_safety_checker=False).to(a.device)
    lat = a.size // 8
    x = torch.randn(2, 4, lat, lat, device=a.device, dtype=a.dtype)
    ctx = torch.randn(2, 77, pipe.text_encoder.config.hidden_size, device=a.device, dtype=a.dtype)
    ids = torch.zeros(2, 77, dtype=torch.long, device=a.device)
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            pipe.unet(x, 500, encoder_hidden_states=ctx)
        unet = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            pipe.text_encoder(ids)
            pipe.vae.decode(x[:1])
        rest = fc.get_total_flops()
    return unet * a.steps + rest


def matmul_rate(a, n: int) -> float:
    """Measured FLOP/s of an n x n matrix multiply in the run's dtype on the run's device."""
    x = torch.randn(n, n, device=a.device, dtype=a.dtype)
    y = torch.randn(n, n, device=a.device, dtype=a.dtype)
    for _ in range(3):
        x @ y
    sync(a.device)
    reps = 20 if a.device.type == "cuda" else 3
    t = time.perf_counter()
    for _ in range(reps):
        x @ y
    sync(a.device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def measure(model: Path, lora: Path, a, tmp: Path, before: str | None, fuse: bool) -> dict[str, list[float]]:
    """Every configuration of one batch size, in turn, `a.repeats` times: {name: [images/s per repeat]}."""
    batch = a.batch
    runs = {"bare": lambda o: bare(model, lora, a, False, o), "generate": lambda o: ours(model, lora, a, False, o)}
    if a.noise_rows:
        runs["generate, noise per step"] = lambda o: ours(model, lora, a, False, o, predraw=False)
    if before:
        runs["generate before"] = lambda o: ours(model, lora, a, False, o, before)
    if fuse:
        runs["bare fused"] = lambda o: bare(model, lora, a, True, o)
        runs["generate --fuse"] = lambda o: ours(model, lora, a, True, o)
    results: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(a.repeats):
        for name, fn in runs.items():
            results[name].append(fn(tmp / f"{name.replace(' ', '_')}_{batch}_{r}"))
        print(f"batch {batch} repeat {r}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in results.items()),
              file=sys.stderr, flush=True)
    return results


def table(rows: list[tuple[int, dict]], floor: float | None) -> list[str]:
    """The markdown table of medians: one row per batch size."""
    names = list(rows[0][1])
    head = ["batch", *names, "generate / bare"]
    if "generate before" in names:
        head.append("before / bare")
    if "generate, noise per step" in names:
        head.append("pre-drawn / per-step noise")
    if "generate --fuse" in names:
        head.append("fused / unfused (generate)")
    if floor:
        head.append("floor")
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for batch, res in rows:
        m = {k: statistics.median(v) for k, v in res.items()}
        cells = [str(batch), *(f"{m[k]:.3f}" for k in names), f"{m['generate'] / m['bare']:.2f}"]
        if "generate before" in m:
            cells.append(f"{m['generate before'] / m['bare']:.2f}")
        if "generate, noise per step" in m:
            cells.append(f"{m['generate'] / m['generate, noise per step']:.2f}")
        if "generate --fuse" in m:
            cells.append(f"{m['generate --fuse'] / m['generate']:.2f}")
        if floor:
            cells.append(f"{floor:.3f}")
        out.append("| " + " | ".join(cells) + " |")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bench_generate", description=__doc__.split("\n")[0])
    p.add_argument("--sd15", action="store_true", help="SD 1.5 architecture (random weights) at 512x512")
    p.add_argument("--tiny", action="store_true", help="the toolkit's tiny smoke model (cheap at 512 px: bookkeeping dominates)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=None, help="timed images per configuration (default 4 CPU, 32 GPU)")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default 1 on CPU; 1 4 8 16 on GPU)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--size", type=int, default=None, help="pixels (default 128 mid model, 512 SD 1.5 and tiny)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None, help="default fp16 on cuda, fp32 on cpu")
    p.add_argument("--before", metavar="REV", help="also time `generate` as it was at this git revision (before/after in one run)")
    p.add_argument("--no-fuse", action="store_true", help="skip the fused configurations")
    p.add_argument("--no-noise-row", dest="noise_rows", action="store_false",
                   help="skip `generate` with Euler a's noise drawn per step (diffusers' way) beside the pre-drawn default")
    p.add_argument("--no-floor", action="store_true", help="skip the FLOP count and matmul rate")
    p.add_argument("--smoke", action="store_true", help="one tiny configuration, one image, one step: checks the script runs")
    a = p.parse_args(argv)
    if a.smoke:
        a.tiny, a.size, a.steps, a.images, a.batch, a.repeats, a.no_floor = True, 64, 1, 1, [1], 1, True
    if a.threads:
        torch.set_num_threads(a.threads)
    a.device = torch.device(a.device)
    gpu = a.device.type == "cuda"
    a.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[a.dtype or ("fp16" if gpu else "fp32")]
    a.size = a.size or (512 if a.sd15 or a.tiny else 128)
    a.images = a.images or (32 if gpu else 4)
    batches = a.batch or ([1, 4, 8, 16] if gpu else [1])
    import logging

    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    logging.basicConfig(level=logging.WARNING)
    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        before = before_package(a.before, tmp) if a.before else None
        model = build_model(tmp / "model", a.sd15, a.tiny)
        lora = build_lora(model, tmp / "lora" / "good")
        from safetensors.torch import load_file

        params = sum(t.numel() for t in load_file(model / "unet" / "diffusion_pytorch_model.safetensors").values())
        floor = rate = flops = None
        if not a.no_floor:
            flops = flops_per_image(model, a)
            rate = matmul_rate(a, 8192 if gpu else 1024)
            floor = rate / flops
            print(f"compute per image {flops / 1e9:.1f} GFLOP; matmul rate {rate / 1e9:.1f} GFLOP/s; floor {floor:.3f} img/s",
                  file=sys.stderr, flush=True)  # early, so that a run cut short still has it
        rows = []
        for batch in batches:
            a.batch = batch
            rows.append((batch, measure(model, lora, a, tmp, before, not a.no_fuse)))
    name = "SD 1.5 architecture" if a.sd15 else "tiny smoke model" if a.tiny else "mid-size SD-like model"
    print(f"\n{name}: U-Net {params / 1e6:.2f} M parameters, {a.size}x{a.size}, Euler a, {a.steps} steps, CFG 7, "
          f"{str(a.dtype).removeprefix('torch.')}, {a.device}, threads {torch.get_num_threads()}, "
          f"{a.images} timed images x {a.repeats} repeats (median images/s)"
          + (f"; `generate before` = generate at {a.before}" if a.before else ""))
    if floor:
        print(f"compute per image {flops / 1e9:.1f} GFLOP; matmul rate {rate / 1e9:.1f} GFLOP/s; floor {floor:.3f} img/s")
    print()
    print("\n".join(table(rows, floor)))


if __name__ == "__main__":
    main()
