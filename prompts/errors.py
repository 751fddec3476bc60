"""User errors: one clear line, exit status 2, no traceback."""
from __future__ import annotations

import errno
import functools
import logging
import sys


class UserError(Exception):
    """Bad input from the user: the message names the file, key or value and what to do."""


_STORAGE_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM}


def storage_message(err: OSError) -> str:
    """One line for a write that the file system refused (disk full, read-only, no permission)."""
    where = err.filename or "the output folder"
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only"}.get(err.errno, "permission denied")
    return (f"cannot write {where}: {what}; free space or choose another output folder, then re-run the same command "
            "(finished work is kept)")


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM and `kill` send): handled like Ctrl-C, so a stopped run says how to resume."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _catch_sigterm() -> None:
    """Make SIGTERM raise `Terminated` in the main thread, unless someone else handles it already."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def resume_command(main, argv) -> str:
    """The command line that resumes this run: `python -m <package> <same arguments>`."""
    import shlex

    module = main.__module__
    if module == "__main__":  # run as `python -m package`: its spec has the real name
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = spec.name if spec is not None else module
    package = module.removesuffix(".__main__")
    return shlex.join(["python", "-m", package, *(sys.argv[1:] if argv is None else [str(a) for a in argv])])


# How writers that do not raise OSError (torch.save, safetensors) word a refused write.
_WRITE_FAILURES = {
    errno.ENOSPC: ("No space left on device", "os error 28", "unexpected pos", "write failed"),  # the last two: torch.save
    errno.EROFS: ("Read-only file system", "os error 30"),
    errno.EACCES: ("Permission denied", "os error 13"),
}


def raise_storage_error(err: Exception, path) -> None:
    """Raise the OSError that a failed write of `path` really was (`run_cli` makes it one line), else `err` itself."""
    import os

    text = str(err)
    for code, words in _WRITE_FAILURES.items():
        if any(w in text for w in words):
            raise OSError(code, os.strerror(code), str(path)) from err
    raise err


def run_cli(main):
    """Wrap a CLI entry point: `UserError` becomes one line on stderr and exit status 2; Ctrl-C and SIGTERM
    one line naming the command that resumes (exit 130 and 143)."""

    @functools.wraps(main)
    def wrapper(argv=None):
        from .threads import limit_threads

        limit_threads()
        _catch_sigterm()
        try:
            return main(argv)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except BrokenPipeError:  # output piped into `head`
            sys.stderr.close()
            raise SystemExit(0) from None
        except OSError as err:
            if err.errno not in _STORAGE_ERRORS:
                raise
            print(f"error: {storage_message(err)}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt as stop:
            what = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
            print(f"{what}; finished work is kept: run `{resume_command(main, argv)}` to resume", file=sys.stderr)
            raise SystemExit(143 if isinstance(stop, Terminated) else 130) from None

    return wrapper


def setup_logging(verbose: bool = False) -> None:
    """Readable logs: time, level only when not INFO, message."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
