"""The model call: batches through `Extractor.forward`, halving the batch on CUDA out-of-memory instead of
failing the job, and the CPU thread split between decoding and the model (`model_threads`)."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from visfeat.engine.cores import usable_cores

if TYPE_CHECKING:  # torch is imported only where a model runs: a rerun with nothing to extract never loads it
    from visfeat.extractors.base import Extractor


def slice_batch(batch: Any, a: int, b: int) -> Any:
    if isinstance(batch, dict):
        return {k: slice_batch(v, a, b) for k, v in batch.items()}
    return batch[a:b]


class Forward:
    """Batched forward that halves its sub-batch on CUDA out-of-memory and goes on with the smaller size."""

    def __init__(self, extractor: Extractor, cap: int):
        self.extractor, self.cap = extractor, cap

    def __call__(self, batch: Any, n: int) -> list[dict[str, np.ndarray]]:
        import torch

        out: list[dict[str, np.ndarray]] = []
        a = 0
        while a < n:
            b = min(n, a + self.cap)
            try:
                out.extend(self.extractor.forward(slice_batch(batch, a, b)))
                a = b
            except torch.cuda.OutOfMemoryError:
                if self.cap == 1:
                    raise
                torch.cuda.empty_cache()
                self.cap = max(1, self.cap // 2)
                print(f"[visfeat] CUDA out of memory: batch size halved to {self.cap}", file=sys.stderr, flush=True)
        return out


def model_threads(extractor: Extractor, workers: int) -> int:
    """Torch threads for the forward: on the CPU, every core this process may use (its CPU affinity: a SLURM
    job's cpuset), whatever the number of decoding workers: decoding costs far less than the forward, so on a CPU
    the model's threads are worth more than overlap, and taking the workers' cores away from the model is the
    slowest split (bench/README.md, "Settings behind the CPU defaults"). Elsewhere torch's own setting."""
    import torch

    if extractor.device.type != "cpu":
        return torch.get_num_threads()
    return usable_cores()
