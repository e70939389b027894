"""The one interface every extractor implements; nothing else in the pipeline knows which model it runs.

Contract:
- The constructor, `Extractor.__init__(preset, options, weights_sha256, device, amp)`, is every family's first
  step: it sets `preset` (the name), `config` (a copy of the resolved options: stored in the file's attributes and
  in the reuse signature) and `weights_sha256`, and places the model's device and precision (`place`). Nothing
  has a class-level default, so a family that skipped it fails on first use instead of writing a store without
  them. `weights_sha256` is required and non-empty: it enters the reuse signature (engine/reuse.py), and a
  missing one would let rows made with other weights be reused. A family passes the sha256 of the file it loads
  (`weights.resolve_weights`; `weights.sha256_of` of the packaged file for weights shipped in a package).
- What the preset declares it can do, the extractor does, and nothing more: `set_given_boxes` works iff
  `Preset.takes_boxes`, `encode_text` (the text tower) exists iff `Preset.text` (tests/test_preset.py checks
  every preset). Config checks and the workflow read the declarations without building anything.
- `preprocessor()` returns the picklable callable (no model inside) that DataLoader workers run on the CPU:
  8-bit RGB PIL image in, a dict of tensors out. It must not touch the GPU. `preprocess(image)` calls it.
  Its `needed_size(w, h)` says what size its resize makes of a (w, h) image, so `decode: draft` can decode
  JPEGs at a smaller DCT scale; an image so decoded stands for `images.full_size(image)`, which sizes and box
  scales must use instead of `image.size`. Its `tensor_preprocess()` gives the same steps as a callable on a
  uint8 (3, H, W) tensor on the model's device, returning the same dict (`decode: gpu`, device_decode.py).
- `collate(samples)` turns a list of those dicts into one batch (default: stack each key).
- Whole-image families (one transform, one batched model call) subclass `TransformExtractor`: they set
  `transform` and write `run(images)`; its `preprocessor` and `forward` are the ones above, written once.
- `forward(batch)` runs the model on `self.device` and returns one dict of numpy arrays per image, with exactly
  the fields of `fields()` (float32 unless the spec says otherwise).
- `fields()` declares the output: name, per-image shape and dtype; `ragged` names a group whose row count varies
  per image (regions), stored as rows + `{group}_offsets` in the feature store. It agrees with the preset's
  declared `outputs` in the catalog (tests/test_presets.py checks every preset).
- `group_by_aspect`: True when input sizes follow the image's (detectors): `run_extraction` then orders the
  images so a batch holds similar shapes and little padding. False (fixed-size crops): list order.
- `set_given_boxes(boxes)`: forced-boxes mode, features for given boxes per image id (None: back to the
  preset's own boxes); presets without it (`takes_boxes` False) raise ValueError naming the preset.
- `place(device, amp)` (called by the constructor) sets `device` (None: CUDA when available, else CPU) and `amp`;
  `forward` runs its model under `autocast()`: with `amp`, fp16 autocast on CUDA, bf16 on the CPU (float16
  matmuls are slow there, bf16 ones native on CPUs with AVX512-BF16/AMX). Whatever runs under it, a forward
  returns float32 arrays, and what decides box selections (RoI coordinates, scores, regressed boxes, NMS) stays
  float32: torchvision's autocast rules run nms and roi_align in float32 (docs/presets.md "Precision").
- `channels_last` says when the model runs in that memory format (`memory_format`; `placed(module)` and
  `on_device(images)` apply it): oneDNN's and cuDNN's NHWC convolutions are faster (docs/presets.md
  "Precision"). "always"; "amp" where the fp32 outputs are the original's float operations bit
  for bit (the detectron2-family parity fixtures, ties included, rely on it), so only AMP runs change format;
  "never" for models with no 2D convolutions to speak of (ViTs).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import Any, Callable

import numpy as np
import torch

from visfeat.store.format import FieldSpec

__all__ = ["Extractor", "FieldSpec", "TransformExtractor", "TransformPreprocessor"]


class TransformPreprocessor:
    """The common case: one torchvision transform, its output under one key. Picklable, so workers can be
    started with spawn/forkserver without copying the model."""

    def __init__(self, transform: Callable, key: str = "image"):
        self.transform, self.key = transform, key

    def __call__(self, image) -> dict[str, Any]:
        return {self.key: self.transform(image)}

    def tensor_transform(self) -> Callable:
        """The same transform on a uint8 (3, H, W) tensor on any device (`decode: gpu`): ToTensor becomes a
        float conversion (/255), the others run on tensors as they are."""
        from torchvision.transforms import Compose, ConvertImageDtype, ToTensor

        steps = getattr(self.transform, "transforms", [self.transform])
        return Compose([ConvertImageDtype(torch.float32) if isinstance(t, ToTensor) else t for t in steps])

    def tensor_preprocess(self) -> Callable[[torch.Tensor], dict[str, Any]]:
        """`decode: gpu`: uint8 (3, H, W) tensor -> {key: `tensor_transform()` of it}."""
        transform, key = self.tensor_transform(), self.key
        return lambda image: {key: transform(image)}

    def needed_size(self, w: int, h: int) -> tuple[int, int]:
        """The size the transform's leading `Resize` makes of a (w, h) image; (w, h) when it has none."""
        from torchvision.transforms import Resize

        first = getattr(self.transform, "transforms", [self.transform])[0]
        if not isinstance(first, Resize):
            return w, h
        size = [first.size] if isinstance(first.size, int) else list(first.size)
        if len(size) == 2:  # (h, w): that size whatever the aspect
            return size[1], size[0]
        # torchvision functional._compute_resized_output_size: shorter side to size, the longer one truncated
        short, long = min(w, h), max(w, h)
        new_short, new_long = size[0], int(size[0] * long / short)
        if first.max_size is not None and new_long > first.max_size:
            new_short, new_long = int(first.max_size * new_short / new_long), first.max_size
        return (new_short, new_long) if w <= h else (new_long, new_short)


class Extractor(ABC):
    preset: str  # the preset's name
    config: dict[str, Any]  # the full resolved options, stored in the file's attributes
    weights_sha256: str  # of the weights file the model was loaded from
    device: torch.device
    amp: bool
    group_by_aspect: bool = False  # batches by similar shape (see the module docstring)
    channels_last: str = "never"  # "always" | "amp" | "never" (see the module docstring)

    def __init__(self, preset: str, options: dict[str, Any], weights_sha256: str,
                 device: str | torch.device | None, amp: bool) -> None:
        """What every extractor holds, set in one place (see the module docstring); call it before building
        anything that needs `device` or `amp`."""
        if not isinstance(weights_sha256, str) or not weights_sha256:
            raise ValueError(f"preset {preset}: weights_sha256 must name the weights (their file's sha256), "
                             f"got {weights_sha256!r}")
        self.preset, self.config, self.weights_sha256 = preset, dict(options), weights_sha256
        self.place(device, amp)

    def place(self, device: str | torch.device | None, amp: bool) -> None:
        """Where the model runs: `device`, or CUDA when there is one; `amp`: autocast there (`amp_dtype`)."""
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.amp = bool(amp)

    @property
    def amp_dtype(self) -> torch.dtype:
        """bf16 on the CPU (its fp16 kernels are slow; bf16 keeps fp32's range), fp16 on accelerators."""
        return torch.bfloat16 if self.device.type == "cpu" else torch.float16

    @property
    def memory_format(self) -> torch.memory_format:
        if self.channels_last == "always" or (self.channels_last == "amp" and self.amp):
            return torch.channels_last
        return torch.contiguous_format

    def placed(self, module: torch.nn.Module) -> torch.nn.Module:
        """`module` on the device, in `memory_format`, in eval mode."""
        return module.to(self.device, memory_format=self.memory_format).eval()

    def on_device(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of images (N, C, H, W) on the device in `memory_format` (non-blocking from pinned memory)."""
        return images.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def autocast(self) -> AbstractContextManager:
        """The forward's precision: `amp_dtype` autocast when `amp`, else full precision."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp)

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

    @staticmethod
    def per_image(outputs: dict[str, torch.Tensor]) -> list[dict[str, np.ndarray]]:
        """A forward's batched outputs (name -> (N, ...) tensor, any float dtype) as the contract returns them: one
        dict of float32 numpy arrays per image (one device-to-host copy per field, not per image)."""
        arrays = {k: v.float().cpu().numpy() for k, v in outputs.items()}
        n = len(next(iter(arrays.values()))) if arrays else 0
        return [{k: a[i] for k, a in arrays.items()} for i in range(n)]

    def set_given_boxes(self, boxes: dict[str, np.ndarray] | None) -> None:
        """Forced-boxes mode: features for these boxes (original pixels, x1y1x2y2) per image id."""
        raise ValueError(f"preset {self.preset} does not take given boxes (forced-boxes mode is for region presets)")

    def describe(self) -> str:
        return ", ".join(f"{f.name} {f.shape} {f.dtype}" for f in self.fields())


class TransformExtractor(Extractor):
    """The whole-image families (CLIP, effnet, VISSL, open_clip, timm): one torchvision `transform` makes the input
    (TransformPreprocessor) and `run` maps the batch on the device to batched outputs, so placing the batch,
    autocast and the per-image split are written once, here."""

    transform: Callable  # PIL image -> (C, H, W) float tensor, set by the family's constructor

    def preprocessor(self) -> TransformPreprocessor:
        return TransformPreprocessor(self.transform)

    @abstractmethod
    def run(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model on a batch (N, C, H, W) already on the device: field name -> (N, ...) tensor, under autocast."""

    @torch.inference_mode()
    def forward(self, batch: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        x = self.on_device(batch["image"])
        with self.autocast():
            out = self.run(x)
        return self.per_image(out)
