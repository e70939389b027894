"""One GPU per extraction job on a machine with several GPUs and no scheduler.

Snakemake does not set CUDA_VISIBLE_DEVICES, so concurrent local jobs would all land on GPU 0. Before CUDA is
initialised, `claim_gpu` takes an exclusive lock file for one of the visible GPUs (held until the process exits,
released by the OS even on a kill) and narrows CUDA_VISIBLE_DEVICES to it; with every GPU taken it waits.
Under SLURM (or any scheduler that already gives the job exactly one GPU) there is nothing to choose.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_HELD: list = []  # open lock files, kept for the life of the process


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired):
        return []


def lock_dir() -> Path:
    d = Path(os.environ.get("VISFEAT_GPU_LOCK_DIR") or Path(tempfile.gettempdir()) / f"visfeat-gpu-locks-{os.getuid()}")
    d.mkdir(parents=True, exist_ok=True)
    return d


def claim_gpu(poll: float = 2.0, timeout: float | None = None) -> str | None:
    """Claim one free GPU among several visible ones; returns its id (None when there is no choice to make)."""
    gpus = visible_gpus()
    if len(gpus) <= 1:
        return None
    start = time.time()
    announced = False
    while True:
        for g in gpus:
            f = open(lock_dir() / f"gpu-{g}.lock", "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            f.write(str(os.getpid()))
            f.flush()
            _HELD.append(f)
            os.environ["CUDA_VISIBLE_DEVICES"] = g
            print(f"[visfeat] claimed GPU {g} of {','.join(gpus)}", file=sys.stderr, flush=True)
            return g
        if timeout is not None and time.time() - start > timeout:
            raise TimeoutError(f"no free GPU among {gpus} after {timeout} s")
        if not announced:
            print(f"[visfeat] all GPUs {','.join(gpus)} busy with other visfeat jobs: waiting", file=sys.stderr, flush=True)
            announced = True
        time.sleep(poll)
