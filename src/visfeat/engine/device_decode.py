"""`decode: gpu`: workers only read a JPEG's bytes and header; the main process decodes a batch of them on the
model's device (`torchvision.io.decode_jpeg` on a list: nvJPEG on CUDA, libjpeg-turbo on the CPU) and runs the
preset's preprocessing there as tensor ops (its preprocessor's `tensor_preprocess()`: resize, crop, normalisation,
the detectors' mean subtraction). Other formats decode in the workers as under `pil` and travel as uint8 tensors.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from visfeat.sources.images import ImageError, load_bytes, load_image, load_tar_member

# PIL ImageOps.exif_transpose's methods for EXIF orientations 2-8, as tensor ops on (C, H, W)
_ORIENT: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    2: lambda t: t.flip(2),  # FLIP_LEFT_RIGHT
    3: lambda t: t.flip(1, 2),  # ROTATE_180
    4: lambda t: t.flip(1),  # FLIP_TOP_BOTTOM
    5: lambda t: t.transpose(1, 2),  # TRANSPOSE
    6: lambda t: torch.rot90(t, -1, (1, 2)),  # ROTATE_270 (90 clockwise)
    7: lambda t: t.transpose(1, 2).flip(1, 2),  # TRANSVERSE
    8: lambda t: torch.rot90(t, 1, (1, 2)),  # ROTATE_90
}


@dataclass
class EncodedJpeg:
    """A JPEG as a worker hands it over: its bytes, the EXIF orientation to apply (1: none), its name for reasons
(a JPEG the tensor decoder refuses is decoded by PIL, as under `pil`, and fails only with PIL's reason)."""

    data: torch.Tensor  # uint8, 1-D
    orientation: int
    name: str


def read_sample(path: str, offset: int, size: int, apply_exif: bool, max_pixels: int) -> tuple[Any, tuple[int, int]]:
    """Worker side: (EncodedJpeg or the decoded (3, H, W) uint8 tensor of any other format, oriented (h, w)).
    The header is checked as `load_image` checks it; a bad file raises ImageError."""
    try:
        if offset >= 0:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        raise ImageError(f"unreadable: {e.strerror or e}") from None
    if offset >= 0 and len(data) < size:
        raise ImageError(f"truncated tar: it ends {size - len(data)} bytes short of this {size}-byte member")
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, im.size
            orientation = im.getexif().get(0x0112, 1) if apply_exif else 1
    except Exception:  # not an image PIL knows: let the `pil` path give the reason
        fmt, w, h, orientation = None, 0, 0, 1
    if fmt == "JPEG" and 0 < w * h <= max_pixels:
        orientation = orientation if orientation in _ORIENT else 1
        hw = (w, h) if orientation in (5, 6, 7, 8) else (h, w)
        data_t = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return EncodedJpeg(data_t, orientation, os.path.basename(path)), hw
    img = (load_tar_member(path, offset, size, apply_exif, max_pixels) if offset >= 0
           else load_image(path, apply_exif, max_pixels))
    t = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()
    return t, (img.height, img.width)


def _decode_one(e: EncodedJpeg) -> torch.Tensor | str:
    """On the CPU: torchvision's decoder, else PIL's (CMYK, odd markers), else PIL's reason."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(e.data, mode=ImageReadMode.RGB)
    except Exception:
        pass
    try:  # orientation is applied by the caller, like for the tensor decoder's output
        img = load_bytes(e.data.numpy().tobytes(), e.name, apply_exif=False, max_pixels=2**62)
    except ImageError as err:
        return str(err)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()


class DevicePreprocess:
    """Main-process side: a batch of worker samples -> the preprocessor's sample dict (images on `device`) or a
    reason. `preprocess`: the preprocessor's `tensor_preprocess()`."""

    def __init__(self, preprocess: Callable[[torch.Tensor], dict[str, Any]], device: torch.device):
        self.preprocess, self.device = preprocess, torch.device(device)

    def decode(self, samples: list[Any]) -> list[torch.Tensor | str]:
        """uint8 (3, H, W) on the device per sample, JPEGs in one batched call (one by one on the CPU if the
        batch call refuses one, so a bad file fails alone), orientation applied; or the reason it failed."""
        from torchvision.io import ImageReadMode, decode_jpeg

        out: list[torch.Tensor | str] = [s.to(self.device, non_blocking=True) if torch.is_tensor(s) else s
                                         for s in samples]
        jpegs = [k for k, s in enumerate(samples) if isinstance(s, EncodedJpeg)]
        if jpegs:
            try:
                decoded = decode_jpeg([samples[k].data for k in jpegs], mode=ImageReadMode.RGB, device=self.device)
            except Exception:
                decoded = [_decode_one(samples[k]) for k in jpegs]
            for k, t in zip(jpegs, decoded):
                if torch.is_tensor(t):
                    t = t.to(self.device, non_blocking=True)
                    orient = _ORIENT.get(samples[k].orientation)
                    t = orient(t) if orient else t
                out[k] = t
        return out

    def __call__(self, samples: list[Any]) -> list[dict[str, torch.Tensor] | str]:
        res: list[dict[str, torch.Tensor] | str] = []
        for t in self.decode(samples):
            if isinstance(t, str):
                res.append(t)
                continue
            try:
                res.append(self.preprocess(t))
            except Exception as e:  # a preprocessing bug on one odd image is that image's failure
                res.append(f"preprocess failed: {type(e).__name__}: {e}")
        return res
