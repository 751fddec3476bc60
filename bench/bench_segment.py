"""StarDist 2D against the Keras U-Net: training steps/s and prediction images/s on the same pairs, side by side.

    .venv/bin/python -m bench.bench_segment                       # CPU: blob scenes, 128 px, batch 4
    .venv/bin/python -m bench.bench_segment --size 512 --pairs 16 # on a GPU: 512 px

Both sides are the toolkit's own models as `segment cv` builds them: the U-Net (`segment.model.Trainer`,
MobileNetV2 encoder, random weights so nothing is downloaded) trained on pairs at `--size`, and
StarDist 2D (`segment.stardist_model`, 32 rays, grid 2, depth 3) trained on patches of `--size` from
the same pairs. Steps: `--steps` per round, batch `--batch`; rounds alternate between the models and
each round's first step (graph tracing) is left out. Training steps/s = steps / the wall time of a
round's `fit` (the lowest of the rounds: other jobs on a shared machine only slow a round down);
prediction images/s = the test images predicted whole (U-Net: at `--size`, probabilities resized
back and instances found; StarDist: `predict_instances` with NMS) / the wall time. It rewrites its
section of bench/segment.md (`<!-- bench:<size> -->`).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def update_markdown(path: Path, name: str, body: str) -> None:
    """Replace the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in `path` (appended if absent)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Segmentation models: StarDist vs U-Net\n"
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
    print(f"updated {path} ({name})")


def make_pairs(work: Path, n: int, size: int):
    """n blob scenes of size x size: (images (n, S, S, 3) uint8, labels (n, S, S) int32)."""
    import numpy as np

    from prompts.blobs import blob_scene

    scenes = [blob_scene(size, np.random.default_rng([7, i])) for i in range(n)]
    return np.stack([s[0] for s in scenes]), np.stack([s[1] for s in scenes]).astype(np.int32)


def unet_round(trainer, x, y_cls, steps: int, batch: int) -> float:
    """Seconds of `steps` training steps of the U-Net (one fit over steps x batch images)."""
    import numpy as np

    idx = np.resize(np.arange(len(x)), steps * batch)
    t0 = time.perf_counter()
    trainer.model.fit(x[idx], y_cls[idx], batch_size=batch, epochs=1, shuffle=False, verbose=0)
    return time.perf_counter() - t0


def stardist_round(model, xs, ys, steps: int) -> float:
    """Seconds of `steps` StarDist training steps (its own data generator and fit)."""
    import contextlib
    import io

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        model.train(xs, ys, validation_data=(xs[:1], ys[:1]), epochs=1, steps_per_epoch=steps)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    import contextlib
    import io
    from types import SimpleNamespace

    import numpy as np

    ap = argparse.ArgumentParser(prog="python -m bench.bench_segment", description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="2 pairs of 32 px, 1 step, 1 round: checks that the script still runs (writes no .md)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.size, args.pairs, args.batch, args.steps, args.rounds = 32, 2, 2, 1, 1

    from segment.model import Trainer, import_keras, targets
    from segment.native import unet_native_instances
    from segment.stardist_model import build

    import_keras()
    x, y = make_pairs(Path("."), args.pairs, args.size)
    y_cls = np.stack([targets(m) for m in y])
    trainer = Trainer("MobileNetV2", "none", args.size, 0, 1e-3)
    grey = [(im.astype(np.float32).mean(-1) / 255.0) for im in x]
    seg = SimpleNamespace(weights="none", pretrained=None, batch_size=args.batch, epochs=1, learning_rate=3e-4)
    with tempfile.TemporaryDirectory() as tmp:
        model = build(seg, args.size, args.pairs, Path(tmp), 0)
        model.config.train_steps_per_epoch = args.steps
        unet_round(trainer, x.astype(np.float32), y_cls, 1, args.batch)  # warm-up: graph tracing
        stardist_round(model, grey, list(y), 1)
        u, s = [], []
        for _ in range(args.rounds):
            u.append(unet_round(trainer, x.astype(np.float32), y_cls, args.steps, args.batch))
            s.append(stardist_round(model, grey, list(y), args.steps))
        t0 = time.perf_counter()
        probs = trainer.predict(x.astype(np.float32), args.batch)
        for p in probs:
            unet_native_instances(p, (args.size, args.size), args.size, 4)
        u_pred = time.perf_counter() - t0
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            for g in grey:
                model.predict_instances(g, show_tile_progress=False)
        s_pred = time.perf_counter() - t0
    u_sps, s_sps = args.steps / min(u), args.steps / min(s)
    u_ips, s_ips = args.pairs / u_pred, args.pairs / s_pred
    import keras
    import tensorflow as tf

    gpu = tf.config.list_physical_devices("GPU")
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    device = f"GPU {gpu[0].name}" if gpu else f"CPU ({os.cpu_count()} cores{load})"
    body = "\n".join([
        f"`python -m bench.bench_segment --size {args.size} --pairs {args.pairs} --batch {args.batch} --steps {args.steps}` "
        f"on {device}, Keras {keras.__version__}, TensorFlow {tf.__version__}; blob scenes {args.size} px.",
        "",
        "| model | training steps/s (batch %d) | prediction images/s |" % args.batch,
        "| --- | --- | --- |",
        f"| U-Net (MobileNetV2 encoder) | {u_sps:.2f} | {u_ips:.2f} |",
        f"| StarDist 2D (32 rays, depth 3) | {s_sps:.2f} | {s_ips:.2f} |",
        f"| StarDist / U-Net | {s_sps / u_sps:.2f} | {s_ips / u_ips:.2f} |",
    ])
    print(body)
    if not args.smoke:
        update_markdown(Path(__file__).with_name("segment.md"), str(args.size), body)


if __name__ == "__main__":
    main()
