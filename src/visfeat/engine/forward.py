"""Run one extractor over a list of images into one store, resumably and incrementally.

DataLoader workers decode and preprocess while the model runs. Each finished batch is flushed as its own small
file under `{out}.parts/` (written to a temporary name, then renamed), so a job killed at any instant loses at most
the batch in flight; rerunning with the same arguments skips the flushed items. Batches are fixed runs of
`batch_size` consecutive items, so a resumed run computes exactly the batches an uninterrupted one would and
produces the same file. When all items are done the store is assembled under a temporary name and renamed to
`out`: the finished file appears atomically.

An existing `out` is the previous run's store: exactly up to date (same extractor signature, same images with
the same content) it is left alone; otherwise its rows (and failures) are reused for every image whose id and
file sha256 are unchanged under the same extractor signature, only the rest is extracted, and the store is
assembled anew in item order, so it equals, byte for byte, the store a clean run writes (store.WRITE_BLOCK,
SOURCE_DATE_EPOCH) wherever the model's output does not depend on which images share a batch."""
# SPLIT FROM visfeat.extract
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

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
    job's cpuset), whatever the number of decoding workers. Measured on 2 cores (32 640x480 JPEGs, batch 16):
    taking the workers' cores away from the model is the slowest split (2 workers + 1 thread: effnet-lite0 21.8
    img/s, CLIP ViT-B/32 7.3), sharing them is better (2 + 2: 21.7, 12.4), and decoding in the main process is
    fastest (0 workers + 2 threads: 36.6, 15.2): decoding costs 5-20 ms an image, the forward 30-70 ms, so on a
    CPU the model's threads are worth more than overlap. Elsewhere torch's own setting."""
    import torch

    if extractor.device.type != "cpu":
        return torch.get_num_threads()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
