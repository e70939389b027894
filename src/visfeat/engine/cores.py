"""The CPU cores a job may use, and the decoding-worker count `workers: auto` picks from them.

Standard library only: Snakemake imports it while planning (an extraction job's `threads`), before any model."""
from __future__ import annotations

import os

AUTO = "auto"  # the `workers` value that picks the count from the cores when the job runs

# Up to this many cores, 0 workers: the main process decodes each batch with a thread per core between forwards,
# and decoding and the model take turns on every core instead of competing for them. On 2 cores that was the
# fastest split by far (README.md "how the cores are split"; bench/README.md "This machine (2 cores, CPU)").
FEW_CORES = 4
# Above it, workers decode while the model runs and this many cores stay with the main process (the model call
# and collating; on CUDA the copy thread): bench/README.md "H100 (16 cores)" ran 14 workers on 16 cores.
MAIN_CORES = 2
# What a job under `auto` asks its scheduler for, at most: the cores that fed one GPU in that bench (a SLURM job's
# CPUs are the request, so asking for the planner's every core would ask a GPU node for all of its own).
JOB_CORES = 16


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a SLURM job's cpuset), else the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_workers(cores: int) -> int:
    """The decoding workers for a job of `cores` cores (module constants)."""
    return 0 if cores <= FEW_CORES else cores - MAIN_CORES


def resolve_workers(workers: int | str) -> tuple[int, str]:
    """(count, what the log says about it) of a `workers` value: an int as given, `auto` from usable_cores."""
    if workers != AUTO:
        return int(workers), f"{workers} workers"
    cores = usable_cores()
    n = auto_workers(cores)
    return n, f"workers auto -> {n} ({cores} core{'s' if cores != 1 else ''})"


def job_threads(workers: int | str) -> int:
    """The CPUs an extraction job asks its scheduler for: the workers and the main process; under `auto`, the
    planner's cores up to JOB_CORES (Snakemake caps it at --cores), and the job picks its workers from what it
    gets (its affinity)."""
    return min(usable_cores(), JOB_CORES) if workers == AUTO else int(workers) + 1
