"""Overlap on CUDA: while the model runs batch k, a background thread takes batch k+1 from the collated batches
(so its decoding and collation run then), pins its images and copies them to the device on a stream of its own.

The consumer's stream waits on the copy's event before the batch is handed on, and every device tensor is marked
as used there (`record_stream`), so the caching allocator never reuses its memory early. On the CPU `prefetch`
is the identity: there the decoding (`loaders.InProcess`) and the model take turns on every core, and a thread
decoding during the forward would compete with the model's threads (`forward.model_threads`); forced on, it
gained nothing beyond noise (bench/README.md, "Settings behind the CPU defaults").

Only image tensors (3 or more dimensions: (C, H, W) or (N, C, H, W)) travel to the device; per-image sizes and
scales stay on the host, where the extractors read them as Python numbers (each read of a device scalar would
wait for the device).
"""
from __future__ import annotations

import queue
import threading
import weakref
from contextlib import nullcontext
from typing import Any, Callable, Iterator

import torch

DEPTH = 2  # batches ready ahead of the consumer; each holds its images in device memory
_POLL_S = 0.1  # how often a producer blocked on a full queue checks whether the consumer stopped


def prefetch(source: Iterator, device: torch.device | str, threaded: bool | None = None) -> Iterator:
    """`source` itself when not `threaded` (None: on CUDA only), else a `Prefetcher` over it."""
    device = torch.device(device)
    if threaded is None:
        threaded = device.type == "cuda"
    return Prefetcher(source, device) if threaded else source


def _walk(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`obj` with `fn` applied to every tensor in its dicts, lists and tuples."""
    if torch.is_tensor(obj):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _walk(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_walk(v, fn) for v in obj)
    return obj


def _device_tensors(obj: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    _walk(obj, lambda t: found.append(t) if t.device.type == "cuda" else None)
    return found


def _to_device(device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    def move(t: torch.Tensor) -> torch.Tensor:
        if t.dim() < 3 or t.device.type != "cpu":  # sizes and scales stay; `decode: gpu` made its images there
            return t
        return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)

    return move


def _produce(source: Iterator, q: queue.Queue, stop: threading.Event, device: torch.device) -> None:
    """The thread: ("batch", batch, event) per batch, then ("end",) or ("error", exception)."""

    def put(msg: tuple) -> bool:
        while not stop.is_set():
            try:
                q.put(msg, timeout=_POLL_S)
                return True
            except queue.Full:
                pass
        return False

    try:
        cuda = device.type == "cuda"
        stream = torch.cuda.Stream(device) if cuda else None
        with torch.cuda.stream(stream) if cuda else nullcontext():  # collation (decode: gpu) runs on it too
            while not stop.is_set():
                if cuda:
                    # torchvision's CUDA decode_jpeg (`decode: gpu`, run by the collation) allocates on this stream
                    # but writes from a stream of its own, without waiting for this one (pytorch/vision PR 9606):
                    # no block freed here may still have kernels pending when it runs
                    stream.synchronize()
                try:
                    b = next(source)
                except StopIteration:
                    put(("end",))
                    return
                event = None
                if cuda:
                    b = _walk(b, _to_device(device))
                    event = torch.cuda.Event()
                    event.record(stream)
                if not put(("batch", b, event)):
                    return
    except BaseException as e:  # noqa: BLE001 -- every failure reaches the consumer
        put(("error", e))
    finally:
        close = getattr(source, "close", None)
        if close is not None:  # a generator: its `finally`s run here, in the thread that ran it
            close()


class Prefetcher:
    """Iterator over `source`'s items, each taken and moved to `device` one step ahead in a daemon thread
    (module doc). Exceptions from `source` re-raise here. Stopping early: `close()` (or leaving a `with`, or
    dropping the last reference) ends the thread and closes `source`."""

    def __init__(self, source: Iterator, device: torch.device):
        self.device = device
        self._q: queue.Queue = queue.Queue(maxsize=DEPTH)
        self._stop = threading.Event()
        self._done = False
        # the thread holds no reference to self, so dropping the iterator (an exception in the loop) stops it
        self.thread = threading.Thread(target=_produce, args=(source, self._q, self._stop, device),
                                       name="visfeat-prefetch", daemon=True)
        weakref.finalize(self, self._stop.set)
        self.thread.start()

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        msg = self._q.get()
        if msg[0] != "batch":
            self._done = True
            self.thread.join()
            if msg[0] == "error":
                raise msg[1]
            raise StopIteration
        _, b, event = msg
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for t in _device_tensors(b):
                t.record_stream(current)
        return b

    def close(self) -> None:
        """Stop the thread (it finishes the item it is taking) and wait for it."""
        self._stop.set()
        self._done = True
        while self.thread.is_alive():
            try:
                self._q.get(timeout=_POLL_S)
            except queue.Empty:
                pass
        self.thread.join()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
