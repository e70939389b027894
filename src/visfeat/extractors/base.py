"""The one interface every extractor implements; nothing else in the pipeline knows which model it runs.

Contract:
- `preprocessor()` returns the picklable callable (no model inside) that DataLoader workers run on the CPU:
  8-bit RGB PIL image in, a dict of tensors out. It must not touch the GPU. `preprocess(image)` calls it.
- `collate(samples)` turns a list of those dicts into one batch (default: stack each key).
- `forward(batch)` runs the model on `self.device` and returns one dict of numpy arrays per image, with exactly
  the fields of `fields()` (float32 unless the spec says otherwise).
- `fields()` declares the output: name, per-image shape and dtype; `ragged` names a group whose row count varies
  per image (regions), stored as rows + `{group}_offsets` in the feature store.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
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
    device: Any = "cpu"
    amp: bool = False

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

    def describe(self) -> str:
        return ", ".join(f"{f.name} {f.shape} {f.dtype}" for f in self.fields())
