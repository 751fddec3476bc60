"""A one-node SLURM cluster on this machine, for testing the workflow's SLURM profile.

    python workflow/scripts/local_slurm.py start DIR   # writes DIR/slurm.conf, starts munged, slurmctld, slurmd
    python workflow/scripts/local_slurm.py stop DIR    # stops the daemons it started (by their pid files)

Needs Debian's `slurm-wlm` and `munge` (root: slurmd starts jobs as their user). The cluster
is private to DIR: its own munge key and socket, free TCP ports, state and logs in DIR, no
accounting database (so job states come from `squeue`, not `sacct`), no cgroups
(`proctrack/linuxproc`, `task/none`). Clients find it through `SLURM_CONF=DIR/slurm.conf`.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("slurmd", "slurmctld", "munged")  # stop order


class SlurmUnavailable(RuntimeError):
    """SLURM or munge is not installed, or cannot be started here (the reason is the message)."""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        raise SlurmUnavailable(f"{name} is not installed (Debian: apt-get install slurm-wlm munge)")
    return path


def write_conf(folder: Path, cpus: int, memory_mb: int) -> Path:
    """DIR/slurm.conf for one node (this host) with `cpus` CPUs and `memory_mb` MB, no accounting."""
    host = socket.gethostname()
    ctld_port, d_port = _free_ports(2)
    for sub in ("state", "spool", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = f"""\
ClusterName=cellsynth-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder / 'munge.socket'}
StateSaveLocation={folder / 'state'}
SlurmdSpoolDir={folder / 'spool'}
SlurmctldPidFile={folder / 'slurmctld.pid'}
SlurmdPidFile={folder / 'slurmd.pid'}
SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}
SlurmdLogFile={folder / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=600
SchedulerType=sched/builtin
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""
    path = folder / "slurm.conf"
    path.write_text(conf)
    return path


def start(folder, cpus: int | None = None, memory_mb: int = 8000, timeout_s: float = 60) -> dict:
    """Start munged, slurmctld and slurmd for a cluster in `folder`; returns the environment for clients."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        raise SlurmUnavailable("slurmd must run as root to start jobs; this process is not root")
    munged, mungekey = _binary("munged"), shutil.which("mungekey") or "/usr/sbin/mungekey"
    slurmctld, slurmd = _binary("slurmctld"), _binary("slurmd")
    _binary("sbatch")
    cpus = cpus or os.cpu_count() or 1
    conf = write_conf(folder, cpus, memory_mb)
    env = dict(os.environ, SLURM_CONF=str(conf))
    # The snakemake jobstep plugin drops SLURM_CONF before its `srun` (a real cluster has
    # /etc/slurm/slurm.conf): a shim first on PATH gives it back.
    shim = folder / "bin" / "srun"
    shim.parent.mkdir(exist_ok=True)
    shim.write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {_binary("srun")} "$@"\n')
    shim.chmod(0o755)
    env["PATH"] = f"{shim.parent}{os.pathsep}{env.get('PATH', '')}"
    key = folder / "munge.key"
    if not key.exists():
        _run([mungekey, "--create", "--keyfile", str(key)], "mungekey")
    os.chmod(key, 0o600)
    _run([munged, "--force", f"--socket={folder / 'munge.socket'}", f"--key-file={key}",
          f"--pid-file={folder / 'munged.pid'}", f"--log-file={folder / 'log' / 'munged.log'}",
          f"--seed-file={folder / 'munged.seed'}"], "munged")
    _run([slurmctld, "-f", str(conf)], "slurmctld", env)
    _run([slurmd, "-f", str(conf), "-N", socket.gethostname()], "slurmd", env)
    deadline = time.time() + timeout_s
    state = ""
    while time.time() < deadline:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True)
        state = out.stdout.strip()
        if state.startswith(("idle", "mixed")):
            return env
        time.sleep(1)
    logs = "".join((folder / "log" / f).read_text()[-800:] for f in ("slurmctld.log", "slurmd.log") if (folder / "log" / f).exists())
    stop(folder)
    raise SlurmUnavailable(f"the one-node cluster did not come up in {timeout_s:.0f} s (node state {state!r}); {logs}")


def _run(cmd: list[str], name: str, env=None) -> None:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SlurmUnavailable(f"{name} failed to start: {(res.stderr or res.stdout).strip()[-500:]}")


def stop(folder) -> None:
    """Stop the daemons that `start` started in `folder` (by the pids in their pid files)."""
    folder = Path(folder).resolve()
    for name in DAEMONS:
        pid_file = folder / f"{name}.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit(__doc__)
    if sys.argv[1] == "start":
        try:
            e = start(sys.argv[2])
        except SlurmUnavailable as err:
            sys.exit(f"error: {err}")
        print(f"export SLURM_CONF={e['SLURM_CONF']} PATH={e['PATH']}")
    else:
        stop(sys.argv[2])
