"""Limit every library's threads to the cores a job is given.

On 2 cores, three jobs with default threads (each library sizing its pool to the whole machine)
made generation 20x slower. A job's share is `CELLSYNTH_THREADS`, else `OMP_NUM_THREADS` (what
Snakemake's `threads:` and SLURM's `--cpus-per-task` set), else the cores this process may run on.
Called by every command before torch or TensorFlow is imported.
"""
from __future__ import annotations

import os

# Every library's thread variable (tests/conftest.py sets the same ones per test worker).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                    "TF_NUM_INTRAOP_THREADS", "VECLIB_MAXIMUM_THREADS")


def job_threads() -> int:
    """The number of threads this job may use (at least 1)."""
    for var in ("CELLSYNTH_THREADS", "OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def limit_threads() -> int:
    """Set the thread variables of OpenMP, BLAS and TensorFlow (unless set), and torch's pools if loaded."""
    n = job_threads()
    for var in THREAD_VARIABLES:
        os.environ.setdefault(var, str(n))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(min(2, n)))
    import sys

    if "torch" in sys.modules:  # imported already (tests): set its pool directly
        sys.modules["torch"].set_num_threads(n)
    return n
