"""One study output, one run: a lock on the study's output folder, and Snakemake's stale locks cleared safely.

The run that executes jobs holds an exclusive `flock` on OUT/.study.lock for its whole life and
writes its host, pid and start time into it. The kernel releases a `flock` when its process ends,
however it ends (kill -9 included), so a held lock always means a live run:

- a second run on the same OUT is refused at once with one line naming the running one;
- a run that holds the lock knows no other run works on OUT, so a Snakemake lock
  (`.snakemake/locks/*.lock`) that lists files under OUT was left by a run that is gone
  (kill -9, lost node): it is removed, saying so, instead of stopping on Snakemake's LockException.
"""
from __future__ import annotations

import base64
import datetime
import fcntl
import json
import os
import socket
from pathlib import Path

from prompts.errors import UserError

_HELD: list[int] = []  # the lock's file descriptor, kept open for the life of the process


def holder(lock_file: Path) -> str:
    """'host H, pid P, started T' of the run holding `lock_file` (what it wrote), or a plain note."""
    try:
        info = json.loads(Path(lock_file).read_text(encoding="utf-8") or "{}")
        return f"host {info['host']}, pid {info['pid']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a run that has not yet written its name"


def acquire(lock_file: Path) -> bool:
    """Take the study lock (True), or False when a live run holds it. Kept until the process ends.

    Raises UserError (one line) when the lock cannot be written at all (a read-only output folder).
    """
    lock_file = Path(lock_file)
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:  # a read-only folder or parent, a full disk: one line, not a traceback
        raise UserError(f"study.output {lock_file.parent}: cannot write there ({err.strerror}); "
                        "choose a folder you can write to (or make this one writable)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": started}) + "\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode(), 0)
    _HELD.append(fd)
    return True


def refuse(lock_file: Path) -> UserError:
    return UserError(f"another run works on this study's output ({holder(lock_file)}; lock {lock_file}): "
                     "wait for it to finish, or stop it, then run again")


def clear_stale_snakemake_locks(out: Path, workdir: Path) -> list[Path]:
    """Remove Snakemake's lock files in `workdir` that list paths under `out`; call only while holding the study lock."""
    locks = Path(workdir) / ".snakemake" / "locks"
    if not locks.is_dir():
        return []
    prefix = str(Path(out)) + os.sep
    removed = []
    for f in sorted(locks.glob("*.lock")):
        try:
            lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        if any(line.strip() == str(out) or line.strip().startswith(prefix) for line in lines):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def snakemake_incomplete(workdir: Path, output) -> bool:
    """True when Snakemake (run from `workdir`) marks `output` as written by a job that never finished.

    Snakemake records such an output in `.snakemake/incomplete/` under its path in url-safe base64, cut
    into parts of the file system's longest name, all but the last prefixed with '@' (its `_record_path`).
    """
    root = Path(workdir) / ".snakemake" / "incomplete"
    if not root.is_dir():
        return False
    try:
        max_len = os.pathconf(root, "PC_NAME_MAX") or 255
    except (OSError, ValueError):
        max_len = 255
    b64 = base64.urlsafe_b64encode(str(output).encode()).decode()
    parts = [b64[i:i + max_len - 1] for i in range(0, len(b64), max_len - 1)]
    parts = ["@" + s for s in parts[:-1]] + parts[-1:]
    return root.joinpath(*parts).is_file()
