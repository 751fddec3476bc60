"""`python -m lora {train,convert,tiny-model,single-file}` (also under `accelerate launch -m lora ...`).

The `train` flags are made from the study schema (prompts/schema/lora.py and data.py):
one flag per key, `--some-key` for `some_key`, booleans as `--key` / `--no-key`.
A flag given on the command line overrides the `--config` file, which overrides the defaults.
"""
from __future__ import annotations

import os
import sys

from prompts.cli import Parser, add_config_flag, add_section_flags, read_settings
from prompts.errors import UserError, run_cli, setup_logging


@run_cli
def main(argv=None):
    """`python -m lora train | convert | tiny-model | single-file` (one line and exit status 2 on bad input)."""
    from prompts.schema.data import DataSection
    from prompts.schema.lora import LoraSection

    parser = Parser(prog="python -m lora", description="LoRA fine-tuning of Stable Diffusion 1.x")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("train", help="train one LoRA per group (class, cell line x class, or all)",
                       description="Train LoRAs; flags override the `lora` and `data` sections of --config.")
    add_config_flag(p)
    p.add_argument("--resume", metavar="latest|auto|PATH",
                   help="continue from the latest checkpoint of each group (also what a plain re-run does), or from a "
                   "checkpoint folder; auto: start a group over when its checkpoints were made from other inputs")
    p.add_argument("-v", "--verbose", action="store_true")
    add_section_flags(p, DataSection)
    add_section_flags(p, LoraSection)

    p = sub.add_parser("convert", help="convert a LoRA between diffusers and kohya/A1111 formats (deltas preserved)")
    p.add_argument("input", help="LoRA .safetensors file (either format), or a folder holding pytorch_lora_weights.safetensors")
    p.add_argument("output", help="kohya: a .safetensors file; diffusers: a folder (or a .safetensors path)")
    p.add_argument("--to", required=True, choices=["kohya", "diffusers"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")

    p = sub.add_parser("tiny-model", help="write a tiny random Stable Diffusion (smoke model) in diffusers layout")
    p.add_argument("output", help="folder to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("single-file", help="write a diffusers model as one original-layout (LDM/A1111) .safetensors checkpoint")
    p.add_argument("model", help="diffusers folder")
    p.add_argument("output", help=".safetensors file to write")
    p.add_argument("--overwrite", action="store_true")

    given = sys.argv[1:] if argv is None else list(argv)
    if given[:1] == ["search"]:  # the search is orchestration: it lives above lora
        raise UserError("`lora search` moved: run `python -m study search` with the same flags")
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    if args.command == "train":
        return _train(args, sys.argv[1:] if argv is None else list(argv))
    if args.command == "convert":
        return _convert(args)
    if args.command == "single-file":
        return _single_file(args)
    if args.command == "tiny-model":
        from diffusion.tiny import write_tiny_model

        _check_tiny_target(args.output, args.overwrite)
        out = write_tiny_model(args.output, seed=args.seed, overwrite=args.overwrite)
        print(f"wrote tiny Stable Diffusion (random weights, a smoke model) to {out}")


def _train(args, argv) -> None:
    from .train import Interrupted, plan, run

    study = read_settings(args, "lora train", ("data", "lora"))
    settings, data_settings = study.lora, study.data
    n = _accelerate_cpu_processes()
    if n > 1:
        plan(settings, data_settings, args.resume)  # bad input: one line here, not one per process
        raise SystemExit(_relaunch(n, argv))
    try:
        out = run(settings, data_settings, resume=args.resume)
    except Interrupted as stop:  # Ctrl-C or SIGTERM in a group: say exactly what to run to go on (once, not per process)
        if os.environ.get("RANK", "0") == "0":
            print(f"{'terminated (SIGTERM)' if stop.terminated else 'interrupted'}: {stop}", file=sys.stderr)
        raise SystemExit(143 if stop.terminated else 130) from None
    if os.environ.get("RANK", "0") == "0":
        for folder in out:
            print(folder)


def _accelerate_cpu_processes() -> int:
    """N of `accelerate launch --cpu --num_processes N` when that launcher started only this one process.

    accelerate starts N CPU processes only through MPI (`--mpirun_hostfile`); without it, it runs the
    script once with ACCELERATE_USE_CPU=True and no WORLD_SIZE. The N is then read from the launcher's
    command line (this process's parent) so that the run can be data-parallel as asked. 1 otherwise.
    """
    from prompts.cli import accelerate_cpu_forced

    if not accelerate_cpu_forced() or "WORLD_SIZE" in os.environ:
        return 1
    try:
        import psutil

        cmd = psutil.Process().parent().cmdline()
    except Exception:  # no psutil or no access to the parent: run as one process
        return 1
    if "launch" not in cmd or not any(os.path.basename(a).startswith("accelerate") or a == "accelerate.commands.launch" for a in cmd):
        return 1
    for i, a in enumerate(cmd):
        for flag in ("--num_processes", "--num-processes"):
            if a == flag and i + 1 < len(cmd) and cmd[i + 1].isdigit():
                return int(cmd[i + 1])
            if a.startswith(flag + "="):
                return int(a.split("=", 1)[1]) if a.split("=", 1)[1].isdigit() else 1
    return 1


def _relaunch(n: int, argv: list[str]) -> int:
    """Run `python -m lora <argv>` as n data-parallel CPU processes (torch.distributed.run, gloo); returns the exit status."""
    import logging
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logging.getLogger("lora").info("accelerate launch --cpu started one process; starting %d CPU processes (gloo)", n)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "lora", *argv]
    return subprocess.call(cmd, env={**os.environ, "ACCELERATE_USE_CPU": "True"})


def _check_tiny_target(output: str, overwrite: bool) -> None:
    """--overwrite replaces only a tiny model this tool wrote (its marker file), never a user's model folder."""
    from pathlib import Path

    from prompts.layout import TINY_MODEL_MARKER

    out = Path(output)
    if overwrite and (out / "model_index.json").is_file() and not (out / TINY_MODEL_MARKER).is_file():
        raise UserError(f"{out} holds a diffusers model this tool did not write (no {TINY_MODEL_MARKER}); it is left "
                        "untouched: choose another folder for the tiny model")


def _convert(args) -> None:
    from pathlib import Path

    from diffusion.formats import DIFFUSERS_WEIGHT_NAME, convert
    from prompts import fingerprint
    from prompts.guard import check_new_file

    dst = Path(args.output)
    target = dst if args.to == "kohya" or dst.suffix == ".safetensors" else dst / DIFFUSERS_WEIGHT_NAME
    check_new_file(target, overwrite=args.overwrite, flag="output")  # the user's file is never replaced
    mark = {fingerprint.WRITTEN_BY: fingerprint.mark("lora convert")}  # in the file's own metadata: ours to replace
    print(convert(args.input, dst, args.to, metadata=mark))


def _single_file(args) -> None:
    from pathlib import Path

    from diffusion.ldm import write_single_file
    from diffusion.model import load_pipeline
    from prompts import fingerprint
    from prompts.guard import check_new_file

    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise UserError(f"{out}: the checkpoint is written as safetensors; give a path ending in .safetensors")
    check_new_file(out, overwrite=args.overwrite, flag="output")  # the user's file is never replaced
    pipe = load_pipeline(args.model)
    fingerprint.claim(out.parent, [out.name], "lora single-file")
    print(write_single_file(pipe, out))


if __name__ == "__main__":
    main()
