"""Small helpers shared by the promise tests."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def tree_checksums(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` (hidden ones too, symlinks followed), plus empty folders."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        rel = Path(dirpath).relative_to(folder)
        if not dirnames and not filenames:
            out[f"{rel}/"] = "dir"
        for name in filenames:
            out[str(rel / name)] = hashlib.sha256((Path(dirpath) / name).read_bytes()).hexdigest()
    return out


def help_flags(text: str) -> set[str]:
    """Every option string of an argparse --help text, as exact tokens (the option lines, not the usage or prose).

    `--fold` is not found in a help that has only `--folds`, as a substring test would find it.
    """
    import re

    flags = set()
    for line in text.splitlines():
        m = re.match(r"^\s{2,}(-\S.*?)(?:\s{2,}|$)", line)
        if m:
            flags.update(re.findall(r"(?:^|,\s)(--?[A-Za-z0-9][\w-]*)", m.group(1)))
    return flags


class Ran:
    """What a command run in this process returned: `returncode`, `stdout`, `stderr` (as subprocess.CompletedProcess)."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

    def __repr__(self) -> str:
        return f"Ran(returncode={self.returncode}, stderr={self.stderr[-2000:]!r})"


def run_command(package: str, *argv) -> Ran:
    """`python -m PACKAGE ARGV` in this process: exit status, stdout and stderr as a subprocess would give them.

    Imports (torch, TensorFlow) are paid once per test process instead of once per command: a refusal that takes
    ~10 s as a subprocess takes milliseconds here. The command's logging goes to its captured stderr, as it does
    in a process of its own (pytest's handlers are set aside while it runs), and an unexpected exception becomes
    exit status 1 with its traceback on stderr. The environment and torch's thread count are restored afterwards,
    so a command's thread limits (prompts.threads) do not stay with the test process. PACKAGE may also be a module
    with its own `main(argv)` (`bench.bench_lora`). Use a subprocess where the process itself is under test
    (signals, thread limits, environment variables read at import).
    """
    import contextlib
    import importlib
    import io
    import logging
    import signal
    import sys
    import traceback

    environ = dict(os.environ)  # a command sets thread variables (prompts.threads) and caches: not for the next test
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None

    def restore_environment():
        os.environ.clear()
        os.environ.update(environ)

    try:
        main = importlib.import_module(f"{package}.__main__").main
    except ModuleNotFoundError as missing:  # a module with its own main(argv), as bench.bench_lora
        if missing.name != f"{package}.__main__" and not str(missing).endswith("is not a package"):
            raise
        main = importlib.import_module(package).main
    finally:  # importing a module may set variables too (bench.bench_b7: KERAS_BACKEND)
        restore_environment()
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sigterm = signal.getsignal(signal.SIGTERM)
    root.handlers = []
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                result = main([str(a) for a in argv])
                code = result if isinstance(result, int) else 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
                if isinstance(stop.code, str):
                    print(stop.code, file=err)
            except Exception:  # noqa: BLE001  (what a process would print before dying)
                traceback.print_exc(file=err)
                code = 1
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers, root.level = handlers, level
        signal.signal(signal.SIGTERM, sigterm)
        restore_environment()
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
    return Ran(code, out.getvalue(), err.getvalue())
