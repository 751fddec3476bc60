"""GPU slots: run a command pinned to one GPU that no other job of the same workflow holds.

    python -m prompts.slots [--dir DIR] -- COMMAND [ARGS...]

Snakemake's `--resources gpu=K` bounds how many GPU jobs run at once, but it does not say
*which* GPU a job gets. This wrapper does: each device has a lock file `DIR/gpu-<device>.lock`
(default DIR: `.snakemake/gpu-slots/` in the workflow's working folder); the wrapper takes an
exclusive `fcntl.flock` on a free one (waiting while all are held), sets
`CUDA_VISIBLE_DEVICES=<device>` and replaces itself with COMMAND (exec). The lock belongs to the
open file, which COMMAND inherits, so the slot is held exactly as long as the job's processes
live: a finished, failed or killed (even `kill -9`) job frees it; nothing is left to clean up.

Devices, in this order: `CELLSYNTH_GPUS` (comma-separated ids; empty means none), else the
`CUDA_VISIBLE_DEVICES` this process was given (a subset of the machine), else `nvidia-smi -L`.
No device, or a SLURM job (`SLURM_JOB_ID`: the scheduler already gave it its own GPUs):
COMMAND runs unchanged, nothing pinned.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DIR = Path(".snakemake") / "gpu-slots"
POLL_S = 0.5  # seconds between attempts while every slot is held


def devices(env=None) -> list[str]:
    """The GPU ids jobs may be pinned to ([] when there is no GPU or pinning is not ours to do)."""
    env = os.environ if env is None else env
    if env.get("SLURM_JOB_ID"):
        return []
    if "CELLSYNTH_GPUS" in env:
        return [d.strip() for d in env["CELLSYNTH_GPUS"].split(",") if d.strip()]
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def acquire(ids: list[str], folder: Path, poll_s: float = POLL_S) -> tuple[str, int]:
    """(device id, open fd holding its exclusive lock); waits until one of `ids` is free."""
    folder.mkdir(parents=True, exist_ok=True)
    said = False
    while True:
        for dev in ids:
            fd = os.open(folder / f"gpu-{dev}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return dev, fd
        if not said:
            print(f"gpu slots: all {len(ids)} GPU(s) busy, waiting for one ({folder})", file=sys.stderr, flush=True)
            said = True
        time.sleep(poll_s)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m prompts.slots", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"folder of the lock files (default {DEFAULT_DIR})")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("give the command after --")
    ids = devices()
    env = dict(os.environ)
    if ids:
        dev, fd = acquire(ids, args.dir)
        os.set_inheritable(fd, True)  # the command keeps the lock until its last process exits
        env["CUDA_VISIBLE_DEVICES"] = dev
        print(f"gpu slots: CUDA_VISIBLE_DEVICES={dev}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execvpe(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
