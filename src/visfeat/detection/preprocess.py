"""Detector input: named sizes, the originals' resize rules, the three preprocessors and batch padding.

Preprocessing (DataLoader workers, CPU), by preset option `preprocess`:
- `detectron2` (butd, grid-feats-vqa): ResizeShortestEdge with PIL bilinear on the uint8 image, BGR, minus the mean.
- `maskrcnn` (VinVL): maskrcnn-benchmark Resize.get_size, PIL bilinear, ToTensor x255 BGR, minus the mean.
- `caffe_float` (VMB, X-LXMERT): float BGR minus the mean, OpenCV-bilinear resize by one factor. Option
  `resize`: "numpy" (default) = OpenCV's plain C++ path reimplemented, bitwise (OpenCV is not a dependency);
  "opencv" = `cv2.resize` itself, as the scripts call it, so a build that routes it through Intel IPP (pip's
  x86-64 wheels) gives the same pixels as the original run with that build.
A batch is zero-padded to its largest image (`pad_batch`); `ceil_to` gives each image's own canvas.
Each preprocessor's `needed_size(w, h)` is its resize rule's output size (what `decode: draft` may decode a JPEG
down to); sizes and scales follow the full image (`images.full_size`), the resize starts from the pixels given.
`tensor_preprocess()` gives the same steps on a uint8 (3, H, W) tensor on any device (`decode: gpu`), returning the
same dict (sizes and scales on the host): PIL's uint8 bilinear resize becomes `pil_bilinear` (Pillow's fixed-point
resampling in int32 tensor ops, bit for bit), the Caffe float path's OpenCV resize `cv2_linear_resize` on the
tensor (the same taps and float32 operations), so on the same decoded pixels the model input is `pil`'s.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import PIL
import torch
from PIL import Image

from visfeat.sources.images import full_size

# Named input sizes (shortest edge / longest edge cap).
SIZES = {
    "600/1000": (600, 1000),  # LXMERT: demo/detectron2_mscoco_proposal_maxnms.py INPUT.MIN/MAX_SIZE_TEST
    "800/1333": (800, 1333),  # detectron2 config/defaults.py (iglue, the fork's attribute notebooks)
}


def resized_hw(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2 ResizeShortestEdge.get_transform (data/transforms/transform_gen.py), float for float."""
    scale = short * 1.0 / min(h, w)
    if h < w:
        newh, neww = short, scale * w
    else:
        newh, neww = scale * h, short
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def _on(values: np.ndarray | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A small host constant on `like`'s device; non-blocking, so a pageable copy is staged without waiting for the
    device (a blocking copy per image would wait for the batch's decode)."""
    return torch.as_tensor(values).to(like.device, non_blocking=True)


PIL_PRECISION_BITS = 32 - 8 - 2  # Pillow src/libImaging/Resample.c PRECISION_BITS (8-bit images)
# Pillow 13 Resample.c ImagingResampleInner may run the vertical pass first (pil_bilinear); 10-12 never do
PIL_VERTICAL_FIRST = int(PIL.__version__.split(".")[0]) >= 13


def _pil_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow Resample.c precompute_coeffs + normalize_coeffs_8bpc for BILINEAR (support 1) on one axis: per output
    pixel, its `ksize` source indices (clamped into the image; those past the window weigh 0) and fixed-point
    weights, computed in float64 in the C code's order of operations."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    center = (np.arange(n_out, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)  # C (int) truncates
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), n_in) - xmin
    x = np.arange(ksize)
    dist = np.abs(((x[None] + xmin[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale))
    k = np.where((dist < 1.0) & (x[None] < xmax[:, None]), 1.0 - dist, 0.0)  # bilinear_filter
    ww = np.zeros(n_out)
    for j in range(ksize):  # summed left to right, as the C loop does
        ww += k[:, j]
    k = np.divide(k, ww[:, None], out=k, where=ww[:, None] != 0)
    kint = np.trunc(0.5 + k * (1 << PIL_PRECISION_BITS)).astype(np.int32)  # weights are >= 0
    return np.minimum(xmin[:, None] + x[None], n_in - 1), kint


def _pil_pass(image: torch.Tensor, dim: int, n_out: int) -> torch.Tensor:
    """One of Pillow's 8-bit resample passes (ImagingResampleHorizontal/Vertical_8bpc) along `dim` of an int32
    (C, H, W) image: 2**21 + sum of pixel x weight, shifted right by 22 and clipped (clip8); exact in int32."""
    idx, kint = (_on(a, image) for a in _pil_taps(image.shape[dim], n_out))
    weight_shape = [n_out if d == dim else 1 for d in range(3)]
    out_shape = [n_out if d == dim else n for d, n in enumerate(image.shape)]
    acc = torch.full(out_shape, 1 << (PIL_PRECISION_BITS - 1), dtype=torch.int32, device=image.device)
    for j in range(idx.shape[1]):
        acc += image.index_select(dim, idx[:, j]) * kint[:, j].reshape(weight_shape)
    return (acc >> PIL_PRECISION_BITS).clamp_(0, 255)


def pil_bilinear(image: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """`Image.resize((w, h), BILINEAR)` of a uint8 (3, H, W) tensor, bit for bit, as float32 grey levels: Pillow's
    fixed-point two-pass resampling, each pass rounded to 8 bits (the filter widens when it shrinks: PIL's
    antialiasing); the horizontal pass first, except that Pillow 13 runs the vertical one first when the height
    shrinks by more than twice as many pixels as the width (Pillow 13.0.0's behaviour, checked bit for bit by
    tests/test_decode_detectors.py), and
    the order moves results by 1 grey level. torch's antialiased `interpolate` runs the same filter in float and
    rounds once: 13-21% of the values 1 grey level apart from PIL's on the test photos."""
    (h, w), (nh, nw) = image.shape[1:], hw
    x = image.to(torch.int32)
    order = (1, 2) if PIL_VERTICAL_FIRST and 0 < h - nh and 2 * (w - nw) < h - nh else (2, 1)
    for dim in order:
        if hw[dim - 1] != x.shape[dim]:
            x = _pil_pass(x, dim, hw[dim - 1])
    return x.float()


class DetectorPreprocessor:
    """RGB PIL image -> {"image": (3, h, w) float32 normalised, "input_hw", "orig_hw"}. Picklable."""

    def __init__(self, short: int, max_size: int, mean: tuple[float, float, float], std: tuple[float, float, float],
                 bgr: bool):
        self.short, self.max_size, self.bgr = short, max_size, bgr
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)

    def needed_size(self, w: int, h: int) -> tuple[int, int]:
        nh, nw = resized_hw(h, w, self.short, self.max_size)
        return nw, nh

    def __call__(self, image: Image.Image) -> dict[str, Any]:
        w, h = full_size(image)
        nh, nw = resized_hw(h, w, self.short, self.max_size)
        # detectron2 ResizeTransform.apply_image: PIL resize of the uint8 image, BILINEAR
        arr = np.asarray(image.resize((nw, nh), Image.BILINEAR), dtype=np.float32)
        if self.bgr:
            arr = arr[:, :, ::-1]
        arr = (arr - self.mean) / self.std
        return {"image": torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))),
                "input_hw": torch.tensor([nh, nw]), "orig_hw": torch.tensor([h, w])}

    def tensor_preprocess(self) -> Callable[[torch.Tensor], dict[str, Any]]:
        return self._tensor

    def _tensor(self, image: torch.Tensor) -> dict[str, Any]:
        h, w = image.shape[1:]
        nh, nw = resized_hw(h, w, self.short, self.max_size)
        x = pil_bilinear(image, (nh, nw))
        if self.bgr:
            x = x.flip(0)
        x = (x - _on(self.mean, x)[:, None, None]) / _on(self.std, x)[:, None, None]
        return {"image": x.contiguous(), "input_hw": torch.tensor([nh, nw]), "orig_hw": torch.tensor([h, w])}


def legacy_resized_hw(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """maskrcnn-benchmark data/transforms/transforms.py Resize.get_size (scene_graph_benchmark, VinVL):
    the short side capped by round(max * short / long), the other side truncated."""
    size = short
    lo, hi = float(min(w, h)), float(max(w, h))
    if hi / lo * size > max_size:
        size = int(round(max_size * lo / hi))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def caffe_scale(h: int, w: int, short: int, max_size: int) -> float:
    """The one resize factor of Caffe's get_image_blob, as MMF extract_features_vmb.py _image_transform,
    X-LXMERT's scripts and MILVLG utils/extract_utils.py get_image_blob compute it: short / short side, unless
    the long side would then round (np.round) past max_size."""
    scale = short / min(h, w)
    if np.round(scale * max(h, w)) > max_size:
        scale = max_size / max(h, w)
    return scale


def _linear_taps(n_out: int, n_in: int, scale: float, clamp_weight: bool):
    """OpenCV INTER_LINEAR source taps for one axis (imgproc/src/resize.cpp resize / resizeGeneric_): src =
    float32((dst + 0.5) * scale - 0.5), no antialiasing. Columns (`clamp_weight`): a tap left of 0 or at/after
    n_in - 1 becomes that edge pixel with weight 0. Rows: only the two source rows are clamped to the image, the
    weights stay (the border rows are S0 * (1 - f) + S0 * f, not S0)."""
    f = ((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    wgt = f - i0
    if not clamp_weight:
        return np.clip(i0, 0, n_in - 1), np.clip(i0 + 1, 0, n_in - 1), wgt.astype(np.float32)
    wgt[i0 < 0] = 0
    i0 = np.clip(i0, 0, n_in - 1)
    wgt[i0 >= n_in - 1] = 0
    return i0, np.minimum(i0 + 1, n_in - 1), wgt.astype(np.float32)


def cv2_linear_resize(arr: np.ndarray | torch.Tensor, out_hw: tuple[int, int], scale_xy: tuple[float, float]):
    """cv2.resize(INTER_LINEAR) of a float32 (H, W, C) image as OpenCV's plain path computes it (no IPP), in
    numpy: bitwise equal (float32 products and sums, horizontal pass then vertical, no fused multiply-add).
    A tensor (any device, any strides) goes through the same float32 operations, one kernel each.
    `scale_xy` is OpenCV's source step per output pixel: 1 / fx, or 1 / (out / in) when dsize is given."""
    h, w = arr.shape[:2]
    x0, x1, wx = _linear_taps(out_hw[1], w, scale_xy[0], True)
    y0, y1, wy = _linear_taps(out_hw[0], h, scale_xy[1], False)
    if torch.is_tensor(arr):
        x0, x1, wx, y0, y1, wy = (_on(a, arr) for a in (x0, x1, wx, y0, y1, wy))
    rows = arr[:, x0] * (1 - wx)[None, :, None] + arr[:, x1] * wx[None, :, None]
    return rows[y0] * (1 - wy)[:, None, None] + rows[y1] * wy[:, None, None]


RESIZE = ("numpy", "opencv")
OPENCV_PIN = "opencv-python-headless==5.0.0.93"  # the build tests/fixtures/vmb_opencv was made with


def _cv2():
    """The cv2 module, or an ImportError that names the package to install."""
    try:
        import cv2
    except ImportError as e:
        raise ImportError(f"resize 'opencv' calls cv2.resize, and OpenCV is not installed: pip install {OPENCV_PIN} "
                          "(or resize 'numpy', the default: OpenCV's plain path without OpenCV)") from e
    return cv2


class CaffeFloatPreprocessor:
    """MMF extract_features_vmb.py / X-LXMERT coco_extract_grid_feature.py input: the RGB image as float32,
    to BGR, minus the Caffe mean, then OpenCV bilinear resize of the float image. `mode` "scale": by one factor
    (sides rounded as OpenCV does); "floor32": X-LXMERT grid8, int(scale * side) floored to a multiple of 32 per
    side. `resize`: "numpy" or "opencv" (module docstring). Returns {"image", "input_hw", "orig_hw", "scale"};
    the canvas is padded to 32 by the collate."""

    def __init__(self, short: int, max_size: int, mean: tuple[float, float, float], mode: str = "scale",
                 resize: str = "numpy"):
        if resize not in RESIZE:
            raise ValueError(f"resize {resize!r} unknown; resize modes: {', '.join(RESIZE)}")
        if resize == "opencv":
            _cv2()  # fail when the extractor is built, not in a loader worker
        self.short, self.max_size, self.mode, self.resize = short, max_size, mode, resize
        self.mean = np.asarray(mean, np.float64)

    def _sizes(self, w: int, h: int) -> tuple[float, int, int, tuple[float, float]]:
        """scale, output width and height, and OpenCV's source step per output pixel, for a (w, h) image."""
        scale = caffe_scale(h, w, self.short, self.max_size)
        if self.mode == "floor32":
            nw, nh = int(scale * w), int(scale * h)
            nw, nh = max(32, nw - nw % 32), max(32, nh - nh % 32)
            return scale, nw, nh, (1.0 / (nw / w), 1.0 / (nh / h))  # resize.cpp: inv_scale = dsize / ssize
        nw, nh = int(np.rint(w * scale)), int(np.rint(h * scale))  # OpenCV saturate_cast rounds
        return scale, nw, nh, (1.0 / scale, 1.0 / scale)

    def needed_size(self, w: int, h: int) -> tuple[int, int]:
        return self._sizes(w, h)[1:3]

    def _opencv(self, im: np.ndarray, scale: float, nw: int, nh: int, full: bool) -> np.ndarray:
        """cv2.resize called as the scripts call it: MMF with fx = fy = scale, X-LXMERT with dsize. A draft-decoded
        image (`full` False: fewer pixels than the full size) goes by dsize; those are not the original's pixels."""
        cv2 = _cv2()
        if self.mode == "scale" and full:
            return cv2.resize(im, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        return cv2.resize(im, (nw, nh), interpolation=cv2.INTER_LINEAR)

    def __call__(self, image: Image.Image) -> dict[str, Any]:
        im = np.asarray(image, dtype=np.float32)[:, :, ::-1].copy()
        im -= self.mean  # float32 in place, as `im -= np.array([...])` in the scripts
        w, h = full_size(image)
        scale, nw, nh, (sx, sy) = self._sizes(w, h)
        if self.resize == "opencv":
            out = self._opencv(im, scale, nw, nh, im.shape[:2] == (h, w))
        else:
            # a draft-decoded image holds fewer pixels per full-size pixel: the step shrinks with it (x 1.0 otherwise)
            out = cv2_linear_resize(im, (nh, nw), (sx * (im.shape[1] / w), sy * (im.shape[0] / h)))
        return {"image": torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)),
                "input_hw": torch.tensor([nh, nw]), "orig_hw": torch.tensor([h, w]),
                "scale": torch.tensor(scale, dtype=torch.float64)}

    def tensor_preprocess(self) -> Callable[[torch.Tensor], dict[str, Any]]:
        """Resize `numpy`'s operations whatever `resize` says: `opencv` (cv2.resize through IPP) has no tensor form."""
        return self._tensor

    def _tensor(self, image: torch.Tensor) -> dict[str, Any]:
        h, w = image.shape[1:]
        # float64 minus the float64 mean, then float32: what numpy does for `im -= mean` on a float32 image
        im = (image.flip(0).double() - _on(self.mean, image)[:, None, None]).float()
        scale, nw, nh, step = self._sizes(w, h)
        out = cv2_linear_resize(im.permute(1, 2, 0), (nh, nw), step).permute(2, 0, 1)
        return {"image": out.contiguous(), "input_hw": torch.tensor([nh, nw]), "orig_hw": torch.tensor([h, w]),
                "scale": torch.tensor(scale, dtype=torch.float64)}


class LegacyPreprocessor:
    """scene_graph_benchmark (VinVL) build_transforms at test: Resize.get_size, PIL bilinear resize of the RGB
    image (torchvision F.resize), ToTensor (/255), TO_BGR255 (x255, BGR), minus mean, divided by std."""

    def __init__(self, short: int, max_size: int, mean: tuple[float, float, float], std: tuple[float, float, float]):
        self.short, self.max_size = short, max_size
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def needed_size(self, w: int, h: int) -> tuple[int, int]:
        nh, nw = legacy_resized_hw(h, w, self.short, self.max_size)
        return nw, nh

    def __call__(self, image: Image.Image) -> dict[str, Any]:
        w, h = full_size(image)
        nh, nw = legacy_resized_hw(h, w, self.short, self.max_size)
        arr = np.asarray(image.resize((nw, nh), Image.BILINEAR), dtype=np.uint8)
        t = torch.from_numpy(arr.transpose(2, 0, 1).copy()).float().div(255)[[2, 1, 0]] * 255
        t = (t - self.mean) / self.std
        return {"image": t.contiguous(), "input_hw": torch.tensor([nh, nw]), "orig_hw": torch.tensor([h, w])}

    def tensor_preprocess(self) -> Callable[[torch.Tensor], dict[str, Any]]:
        return self._tensor

    def _tensor(self, image: torch.Tensor) -> dict[str, Any]:
        h, w = image.shape[1:]
        nh, nw = legacy_resized_hw(h, w, self.short, self.max_size)
        t = pil_bilinear(image, (nh, nw)).div(255)[[2, 1, 0]] * 255
        t = (t - _on(self.mean, t)) / _on(self.std, t)
        return {"image": t.contiguous(), "input_hw": torch.tensor([nh, nw]), "orig_hw": torch.tensor([h, w])}


def ceil_to(n: int, k: int) -> int:
    """n rounded up to a multiple of k (k <= 0: n)."""
    return -(-n // k) * k if k > 0 else n


def pad_batch(images: list[torch.Tensor], divisible: int = 0) -> torch.Tensor:
    """Zero-pad to the largest H and W (rounded up to `divisible`), bottom and right (detectron2 ImageList)."""
    h = max(t.shape[1] for t in images)
    w = max(t.shape[2] for t in images)
    if divisible > 0:
        h, w = -(-h // divisible) * divisible, -(-w // divisible) * divisible
    out = images[0].new_zeros((len(images), 3, h, w))
    for i, t in enumerate(images):
        out[i, :, : t.shape[1], : t.shape[2]] = t
    return out


PREPROCESS = ("detectron2", "maskrcnn", "caffe_float")
