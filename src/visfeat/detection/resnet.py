"""ResNet / ResNeXt trunks as the Caffe-era detectors built them, with frozen batch norm.

Module names follow detectron2 (`stem.conv1`, `res2.0.conv1.norm`, `res2.0.shortcut`), so detectron2 pickles load
by name; other layouts are renamed in `checkpoint`. Variants the originals use:
- stride placement: `stride_in_1x1` True (MSRA/Caffe weights, detectron2 default) or False (ResNeXt/VinVL);
- stem max-pool: Caffe's (kernel 3, stride 2, pad 0, ceil_mode) or torchvision's (pad 1);
- res5 dilation 2 with stride 1 (bottom-up attention's RES5HALVE False; detectron2 RES5_DILATION 2).

Batches of mixed sizes: with `sizes` (each image's unpadded (h, w)), activations outside an image's own extent
are zeroed before every spatial op (3x3 convs, the stem max-pool) and on the output. A padded image then sees
exactly the zeros it would see alone at its border, so its valid outputs equal a run on its own (up to
summation order): padding never leaks into the features. `out_sizes` gives each image's output extent.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# blocks per stage res2..res5 (detectron2/modeling/backbone/resnet.py build_resnet_backbone)
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


@dataclass(frozen=True)
class ResNetSpec:
    depth: int = 101
    stem_out: int = 64
    res2_out: int = 256
    num_groups: int = 1
    width_per_group: int = 64
    stride_in_1x1: bool = True
    caffe_maxpool: bool = False
    res5_dilation: int = 1
    bn_eps: float | None = 1e-5  # None: maskrcnn-benchmark's FrozenBatchNorm2d (no eps)

    def stage(self, i: int) -> tuple[int, int, int]:
        """(blocks, bottleneck channels, out channels) of stage i = 2..5."""
        f = 2 ** (i - 2)
        return BLOCKS[self.depth][i - 2], self.num_groups * self.width_per_group * f, self.res2_out * f


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine (buffers weight, bias, running_mean, running_var).
    With `eps` (1e-5): evaluated with F.batch_norm as detectron2's FrozenBatchNorm2d does without gradients
    (layers/batch_norm.py), so the float operations, not only the maths, match. With `eps=None`:
    maskrcnn-benchmark's (layers/batch_norm.py): scale = weight * rsqrt(running_var), no eps, x * scale + bias'."""

    def __init__(self, n: int, eps: float | None = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.eps is None:
            scale = (self.weight * self.running_var.rsqrt()).reshape(1, -1, 1, 1)
            bias = self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale
            if torch.is_inference_mode_enabled():  # x is a conv's fresh output: same ops, no new buffers
                return x.mul_(scale.to(x.dtype)).add_(bias.to(x.dtype))
            return x * scale.to(x.dtype) + bias.to(x.dtype)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class ConvNorm(nn.Conv2d):
    """Conv without bias followed by a frozen batch norm under `.norm` (detectron2's Conv2d(norm=...))."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, dilation: int = 1,
                 groups: int = 1, eps: float | None = 1e-5):
        super().__init__(cin, cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=False)
        self.norm = FrozenBatchNorm2d(cout, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


Sizes = list[tuple[int, int]]


def pool_out(n: int, k: int, s: int, p: int, ceil: bool) -> int:
    """PyTorch's pooling output length (aten pooling_output_shape), dilation 1."""
    num = n + 2 * p - (k - 1) - 1 + (s - 1 if ceil else 0)
    out = num // s + 1
    if ceil and (out - 1) * s >= n + p:
        out -= 1
    return out


def strided(sizes: Sizes, stride: int) -> Sizes:
    """Extent after a conv of stride `stride` whose padding keeps size at stride 1 (1x1 p0, 3x3 p=dilation, 7x7 p3)."""
    return [((h - 1) // stride + 1, (w - 1) // stride + 1) for h, w in sizes]


def mask_outside(x: torch.Tensor, sizes: Sizes | None) -> torch.Tensor:
    if sizes is None:
        return x
    m = x.new_zeros((x.shape[0], 1, x.shape[2], x.shape[3]))
    for i, (h, w) in enumerate(sizes):
        m[i, :, :h, :w] = 1
    return x * m


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, bottleneck: int, stride: int, groups: int, stride_in_1x1: bool,
                 dilation: int = 1, eps: float | None = 1e-5):
        super().__init__()
        self.shortcut = ConvNorm(cin, cout, 1, stride=stride, eps=eps) if cin != cout else None
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = ConvNorm(cin, bottleneck, 1, stride=s1, eps=eps)
        self.conv2 = ConvNorm(bottleneck, bottleneck, 3, stride=s3, padding=dilation, dilation=dilation,
                              groups=groups, eps=eps)
        self.conv3 = ConvNorm(bottleneck, cout, 1, eps=eps)

    def forward(self, x: torch.Tensor, sizes: Sizes | None = None) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        if sizes is not None:
            out = mask_outside(out, strided(sizes, self.conv1.stride[0]))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)

    @property
    def stride(self) -> int:
        return self.conv1.stride[0] * self.conv2.stride[0]


class Stem(nn.Module):
    def __init__(self, cout: int, caffe_maxpool: bool, eps: float | None = 1e-5):
        super().__init__()
        self.conv1 = ConvNorm(3, cout, 7, stride=2, padding=3, eps=eps)
        self.caffe_maxpool = caffe_maxpool

    def forward(self, x: torch.Tensor, sizes: Sizes | None = None) -> torch.Tensor:
        x = mask_outside(F.relu_(self.conv1(x)), None if sizes is None else strided(sizes, 2))
        if self.caffe_maxpool:  # py-bottom-up-attention detectron2/modeling/backbone/resnet.py BasicStem
            return F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)

    def out_sizes(self, sizes: Sizes) -> Sizes:
        k, p, ceil = (3, 0, True) if self.caffe_maxpool else (3, 1, False)
        return [(pool_out(h, k, 2, p, ceil), pool_out(w, k, 2, p, ceil)) for h, w in strided(sizes, 2)]


def make_stage(spec: ResNetSpec, i: int) -> nn.Sequential:
    """Stage res{i}: the first block changes width and (except res2, or a dilated res5) stride."""
    n, bottleneck, cout = spec.stage(i)
    cin = spec.stem_out if i == 2 else spec.stage(i - 1)[2]
    dilation = spec.res5_dilation if i == 5 else 1
    first_stride = 1 if i == 2 or dilation > 1 else 2
    blocks = []
    for b in range(n):
        blocks.append(Bottleneck(cin if b == 0 else cout, cout, bottleneck, first_stride if b == 0 else 1,
                                 spec.num_groups, spec.stride_in_1x1, dilation, spec.bn_eps))
    return nn.Sequential(*blocks)


class ResNet(nn.Module):
    """Stem + res2..res{last}; `forward` returns the last stage's map (C4 detectors stop at res4)."""

    def __init__(self, spec: ResNetSpec, last: int = 4):
        super().__init__()
        self.spec = spec
        self.stem = Stem(spec.stem_out, spec.caffe_maxpool, spec.bn_eps)
        self.stages = [f"res{i}" for i in range(2, last + 1)]
        for i in range(2, last + 1):
            self.add_module(f"res{i}", make_stage(spec, i))

    @property
    def out_channels(self) -> int:
        return self.spec.stage(int(self.stages[-1][3:]))[2]

    def forward(self, x: torch.Tensor, sizes: Sizes | None = None) -> torch.Tensor:
        """`sizes`: each image's unpadded (h, w) when the batch is padded (see the module docstring)."""
        return self.forward_stages(x, sizes)[-1][0]

    def forward_stages(self, x: torch.Tensor, sizes: Sizes | None = None) -> list[tuple[torch.Tensor, Sizes | None]]:
        """Every stage's output with each image's extent on it (None when nothing is padded): FPN reads them all."""
        if sizes is not None and all(tuple(hw) == tuple(x.shape[2:]) for hw in sizes):
            sizes = None  # nothing padded: the plain path
        x = self.stem(x, sizes)
        if sizes is not None:
            sizes = self.stem.out_sizes(sizes)
        outs = []
        for name in self.stages:
            for block in getattr(self, name):
                x = block(x, sizes)
                if sizes is not None:
                    sizes = strided(sizes, block.stride)
            outs.append((mask_outside(x, sizes), sizes))
        return outs

    def out_sizes(self, sizes: Sizes) -> Sizes:
        return self.stage_sizes(sizes)[-1]

    def stage_sizes(self, sizes: Sizes) -> list[Sizes]:
        """Each image's extent on every stage's output."""
        sizes = self.stem.out_sizes(sizes)
        out = []
        for name in self.stages:
            for block in getattr(self, name):
                sizes = strided(sizes, block.stride)
            out.append(sizes)
        return out
