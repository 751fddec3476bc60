"""EfficientNet-B7 at 600x600, the study's classifier base: images/s of feature extraction and training steps.

    python -m bench.bench_b7 --device cuda                  # Keras 3, torch backend, float32
    python -m bench.bench_b7 --device cuda --policy mixed_bfloat16 --batch 32 --no-train
    python -m bench.bench_b7 --size 64 --batch 1 2 --steps 2 # a quick CPU check of the script

The base is built by `classify.model.build_base` (random weights: a forward pass costs the
same as with the ImageNet ones) and run as `classify.features.Extractor.features` runs it:
numpy pixels in, `base(x, training=False)`, numpy features out, so the host-device copies
are counted; both ways side by side: `base(x, training=False)` called eagerly (before) and the
compiled predict `Extractor.features` now uses. Training steps are `train_on_batch` of two models from `classify.model`:
the naive path's full model (frozen base + head, `--no-feature-cache`) and the same model
with the whole base trainable (the cost of fine-tuning). Each figure: a warm-up call, then
`--steps` timed calls; images/s is batch / the median call time.

The compute floor is FLOPs per image of the base's forward pass (torch's FlopCounterMode
around one call; convolutions, depthwise included, and matmuls) over the measured rate of
an 8192^3 matrix product in float32 with torch's default TF32 settings. EfficientNet is
dominated by memory-bound depthwise convolutions and elementwise layers, so expect a small
fraction of that floor. Keras picks its backend from KERAS_BACKEND (default here: torch).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def median_call_seconds(call, steps: int) -> float:
    """Median wall time of `steps` calls after one warm-up call; `call` must wait for its result."""
    call()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def feature_rate(base, size: int, batch: int, steps: int, mode: str = "compiled") -> float:
    """Images/s of the frozen base on numpy pixels (batch, size, size, 3) float 0..255, features back as numpy.

    mode 'compiled': `classify.features.Extractor.features` as the study runs it (Keras' compiled predict on
    fixed-shape batches); 'eager': `base(x, training=False)` called from Python, layer by layer (before).
    """
    import keras
    import numpy as np

    from classify.features import Extractor

    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
    if mode == "eager":
        call = lambda: keras.ops.convert_to_numpy(base(x, training=False))  # noqa: E731
    else:
        extractor = Extractor(lambda: base, size, batch_size=batch)
        call = lambda: extractor.features(x)  # noqa: E731
    return batch / median_call_seconds(call, steps)


def train_rate(base, size: int, batch: int, steps: int, whole_base: bool) -> float:
    """Images/s of `train_on_batch` of the full classifier (5 classes); the base frozen or wholly trainable."""
    import numpy as np

    from classify.model import build_full, build_head, compile_model

    base.trainable = whole_base
    model = build_full(base, build_head(int(base.output.shape[-1]), 5), size, augment=False)
    compile_model(model)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = np.eye(5, dtype="float32")[rng.integers(0, 5, batch)]
    seconds = median_call_seconds(lambda: model.train_on_batch(x, y), steps)  # returns the loss as a number: waits
    base.trainable = False
    return batch / seconds


def forward_flops(base, size: int) -> float:
    """FLOPs of one image through the base, counted by torch (torch backend only)."""
    import numpy as np
    from torch.utils.flop_counter import FlopCounterMode

    x = np.zeros((1, size, size, 3), "float32")
    with FlopCounterMode(display=False) as counter:
        base(x, training=False)
    return float(counter.get_total_flops())


def matmul_rate(device: str, n: int) -> float:
    """FLOP/s of an n x n float32 matrix product on the device (torch's default TF32 settings)."""
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    reps = 10 if device == "cuda" else 2
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def device_name(device: str) -> str:
    import platform

    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores, {platform.machine()})"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_b7", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cuda or cpu (the torch backend places Keras tensors on cuda when it is visible)")
    ap.add_argument("--backbone", default="EfficientNetB7")
    ap.add_argument("--size", type=int, default=600, help="pixels (the study: 600)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16, 32], help="feature-extraction batch sizes (the study: 16)")
    ap.add_argument("--train-batch", type=int, default=16, help="training-step batch (the study's batch_size: 16)")
    ap.add_argument("--finetune-batch", type=int, default=8, help="training-step batch with the whole base trainable (memory)")
    ap.add_argument("--steps", type=int, default=10, help="timed calls per figure, after one warm-up call")
    ap.add_argument("--policy", default=None, help="Keras dtype policy, e.g. mixed_bfloat16 (default: Keras' float32)")
    ap.add_argument("--no-train", action="store_true", help="feature extraction only")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--smoke", action="store_true", help="one tiny configuration, one step: checks that the script still runs (writes no .md)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.backbone, args.size, args.batch, args.steps, args.train_batch, args.finetune_batch, args.json = (
            "EfficientNetB0", 32, [2], 1, 2, 2, None)

    from classify.model import build_base, import_keras

    keras = import_keras()
    if args.policy:
        keras.config.set_dtype_policy(args.policy)
    backend = keras.backend.backend()
    t = time.perf_counter()
    base = build_base(args.backbone, None, args.size)
    built = time.perf_counter() - t
    result = {"backbone": args.backbone, "size": args.size, "device": device_name(args.device), "keras": keras.__version__,
              "backend": backend, "policy": keras.config.dtype_policy().name, "build_seconds": built,
              "features_images_per_second": {}, "train_images_per_second": {}}
    if backend == "torch":
        import torch

        result["torch"] = torch.__version__
        result["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
        result["gflop_per_image"] = forward_flops(base, args.size) / 1e9
        result["matmul_tflops"] = matmul_rate(args.device, 8192 if args.device == "cuda" else 1024) / 1e12
        result["floor_images_per_second"] = result["matmul_tflops"] * 1e3 / result["gflop_per_image"]
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}), flush=True)
    rows = []
    for batch in args.batch:
        rates = {mode: feature_rate(base, args.size, batch, args.steps, mode) for mode in ("eager", "compiled")}
        result["features_images_per_second"][batch] = rates
        rows.append(f"| {batch} | {rates['eager']:.2f} | {rates['compiled']:.2f} | {rates['compiled'] / rates['eager']:.2f} |")
        print(f"features batch {batch}: eager {rates['eager']:.2f}, compiled {rates['compiled']:.2f} images/s", flush=True)
    print(f"\n{args.backbone} {args.size} px, Keras {keras.__version__} ({backend} backend), {device_name(args.device)}:\n")
    print("| batch | eager `base(x)` (img/s) | compiled predict (img/s) | compiled / eager |\n| --- | --- | --- | --- |")
    print("\n".join(rows) + "\n", flush=True)
    if not args.no_train:
        for name, whole, batch in (("frozen base + head (naive path)", False, args.train_batch),
                                   ("whole base trainable", True, args.finetune_batch)):
            rate = train_rate(base, args.size, batch, args.steps, whole)
            result["train_images_per_second"][f"{name}, batch {batch}"] = rate
            print(f"train_on_batch batch {batch}, {name}: {rate:.2f} images/s ({rate / batch:.3f} steps/s)", flush=True)
    if args.device == "cuda":
        import torch

        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(result, indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
