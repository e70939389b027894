"""The one interface every extractor implements; nothing else in the pipeline knows which model it runs.

Contract:
- `preprocessor()` returns the picklable callable (no model inside) that DataLoader workers run on the CPU:
  8-bit RGB PIL image in, a dict of tensors out. It must not touch the GPU. `preprocess(image)` calls it.
- `collate(samples)` turns a list of those dicts into one batch (default: stack each key).
- `forward(batch)` runs the model on `self.device` and returns one dict of numpy arrays per image, with exactly
  the fields of `fields()` (float32 unless the spec says otherwise).
- `fields()` declares the output: name, per-image shape and dtype; `ragged` names a group whose row count varies
  per image (regions), stored as rows + `{group}_offsets` in the feature store. It agrees with the preset's
  declared `outputs` in the catalog (tests/test_presets.py checks every preset).
- `group_by_aspect`: True when input sizes follow the image's (detectors): `run_extraction` then orders the
  images so a batch holds similar shapes and little padding. False (fixed-size crops): list order.
- `set_given_boxes(boxes)`: forced-boxes mode, features for given boxes per image id (None: back to the
  preset's own boxes); presets without it raise ValueError naming the preset.
- `place(device, amp)` (in the constructor) sets `device` (None: CUDA when available, else CPU) and `amp`
  (fp16 autocast, CUDA only); `forward` runs its model under `autocast()`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import Any, Callable

import numpy as np
import torch

from ..fields import FieldSpec

__all__ = ["Extractor", "FieldSpec", "TransformPreprocessor"]


class TransformPreprocessor:
    """The common case: one torchvision transform, its output under one key. Picklable, so workers can be
    started with spawn/forkserver without copying the model."""

    def __init__(self, transform: Callable, key: str = "image"):
        self.transform, self.key = transform, key

    def __call__(self, image) -> dict[str, Any]:
        return {self.key: self.transform(image)}


class Extractor(ABC):
    preset: str
    config: dict[str, Any]  # the full resolved options, stored in the file's attributes
    weights_sha256: str | None = None
    device: torch.device = torch.device("cpu")
    amp: bool = False
    group_by_aspect: bool = False  # batches by similar shape (see the module docstring)

    def place(self, device: str | torch.device | None, amp: bool) -> None:
        """Where the model runs: `device`, or CUDA when there is one; fp16 autocast only on CUDA."""
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.amp = amp and self.device.type == "cuda"

    def autocast(self) -> AbstractContextManager:
        """The forward's precision: fp16 autocast when `amp`, else full precision."""
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp)

    @abstractmethod
    def fields(self) -> list[FieldSpec]: ...

    @abstractmethod
    def preprocessor(self) -> Callable[[Any], dict[str, Any]]: ...

    def preprocess(self, image) -> dict[str, Any]:
        return self.preprocessor()(image)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}

    @abstractmethod
    def forward(self, batch: dict[str, Any]) -> list[dict[str, np.ndarray]]: ...

    def set_given_boxes(self, boxes: dict[str, np.ndarray] | None) -> None:
        """Forced-boxes mode: features for these boxes (original pixels, x1y1x2y2) per image id."""
        raise ValueError(f"preset {self.preset} does not take given boxes (forced-boxes mode is for region presets)")

    def describe(self) -> str:
        return ", ".join(f"{f.name} {f.shape} {f.dtype}" for f in self.fields())
