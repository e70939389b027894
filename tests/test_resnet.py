"""Contracts of `detection.resnet`: frozen batch norm with and without eps, stride placement, the stem's max-pool,
res5 dilation, module names, output sizes and padded batches.

Sources: detectron2/layers/batch_norm.py and detectron2/modeling/backbone/resnet.py (eps 1e-5, BasicStem,
STRIDE_IN_1X1, RES5_DILATION), maskrcnn_benchmark/layers/batch_norm.py (no eps) and
maskrcnn_benchmark/modeling/backbone/resnet.py (BottleneckWithFixedBatchNorm).
"""
from __future__ import annotations

import pytest
import torch

from visfeat.detection.resnet import FrozenBatchNorm2d, ResNet, ResNetSpec, make_stage

TINY = dict(depth=50, stem_out=8, res2_out=16, width_per_group=2, num_groups=2)


def frozen_bn(n: int, eps, var: torch.Tensor) -> FrozenBatchNorm2d:
    bn = FrozenBatchNorm2d(n, eps)
    g = torch.Generator().manual_seed(0)
    bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
    bn.bias.copy_(torch.randn(n, generator=g))
    bn.running_mean.copy_(torch.randn(n, generator=g))
    bn.running_var.copy_(var)
    return bn


def by_hand(bn: FrozenBatchNorm2d, x: torch.Tensor, eps: float) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    return ((x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + eps) * bn.weight.view(shape)
            + bn.bias.view(shape))


def test_frozen_bn_with_and_without_eps():
    var = torch.tensor([1e-6, 1e-4, 1.0, 4.0])
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    with_eps, no_eps = frozen_bn(4, 1e-5, var), frozen_bn(4, None, var)
    torch.testing.assert_close(with_eps(x), by_hand(with_eps, x, 1e-5))  # detectron2
    torch.testing.assert_close(no_eps(x), by_hand(no_eps, x, 0.0))  # maskrcnn-benchmark
    # where the variance is small the two differ by far more than rounding: eps is not a detail
    assert (with_eps(x)[:, 0] - no_eps(x)[:, 0]).abs().max() > 1
    with torch.inference_mode():  # the in-place path gives the same numbers
        torch.testing.assert_close(no_eps(x.clone()), by_hand(no_eps, x, 0.0))


def test_frozen_bn_has_the_four_checkpoint_buffers_and_no_parameters():
    bn = FrozenBatchNorm2d(3)
    assert sorted(dict(bn.named_buffers())) == ["bias", "running_mean", "running_var", "weight"]
    assert not list(bn.parameters())


@pytest.mark.parametrize("eps", [1e-5, None])
def test_spec_eps_reaches_every_batch_norm(eps):
    spec = ResNetSpec(**TINY, bn_eps=eps)
    norms = [m for m in [*ResNet(spec).modules(), *make_stage(spec, 5).modules()] if isinstance(m, FrozenBatchNorm2d)]
    assert len(norms) > 50 and {m.eps for m in norms} == {eps}


def test_module_names_follow_detectron2():
    keys = set(ResNet(ResNetSpec(**TINY)).state_dict())
    for k in ("stem.conv1.weight", "stem.conv1.norm.running_var", "res2.0.shortcut.weight",
              "res2.0.shortcut.norm.weight", "res3.0.conv1.weight", "res4.5.conv3.norm.bias"):
        assert k in keys
    assert "res2.1.shortcut.weight" not in keys  # a shortcut conv only where the width changes
    assert not any(k.startswith("res5") for k in keys)  # a C4 trunk stops at res4


def test_stage_widths_and_groups():
    spec = ResNetSpec(**TINY)
    # (blocks, bottleneck = groups * width * 2^(i-2), out = res2_out * 2^(i-2)); depth 50: 3, 4, 6, 3 blocks
    assert [spec.stage(i) for i in range(2, 6)] == [(3, 4, 16), (4, 8, 32), (6, 16, 64), (3, 32, 128)]
    res3 = make_stage(spec, 3)
    assert res3[0].conv2.groups == 2 and res3[0].conv2.out_channels == 8 and res3[0].conv3.out_channels == 32
    assert ResNet(spec).out_channels == 64 and ResNet(spec, last=5).out_channels == 128


@pytest.mark.parametrize("stride_in_1x1, strides", [(True, (2, 1)), (False, (1, 2))])
def test_stride_in_1x1_places_the_stride(stride_in_1x1, strides):
    block = make_stage(ResNetSpec(**TINY, stride_in_1x1=stride_in_1x1), 3)[0]
    assert (block.conv1.stride[0], block.conv2.stride[0]) == strides
    assert block.shortcut.stride[0] == 2 and block.stride == 2


def test_res5_dilation_keeps_the_resolution():
    """Bottom-up attention's RES5HALVE False / detectron2 RES5_DILATION 2: res5 stride 1, every conv2 dilated 2."""
    x = torch.randn(3, 64, 14, 14)
    plain = make_stage(ResNetSpec(**TINY, res5_dilation=1), 5)
    dilated = make_stage(ResNetSpec(**TINY, res5_dilation=2), 5)
    assert plain[0].stride == 2 and plain[0].conv2.dilation == (1, 1)
    assert dilated[0].stride == 1 and dilated[0].shortcut.stride == (1, 1)
    assert all(b.conv2.dilation == (2, 2) and b.conv2.padding == (2, 2) for b in dilated)
    with torch.no_grad():
        assert plain(x).shape == (3, 128, 7, 7)
        assert dilated(x).shape == (3, 128, 14, 14)


@pytest.mark.parametrize("caffe, size", [(True, 3), (False, 4)])
def test_stem_max_pool(caffe, size):
    """14 px -> conv s2 -> 7 -> max-pool k3 s2: Caffe's (pad 0, ceil_mode) gives 3, torchvision's (pad 1) 4."""
    resnet = ResNet(ResNetSpec(**TINY, caffe_maxpool=caffe))
    with torch.no_grad():
        assert resnet.stem(torch.randn(1, 3, 14, 14)).shape == (1, 8, size, size)
    assert resnet.stem.out_sizes([(14, 14)]) == [(size, size)]


@pytest.mark.parametrize("caffe", [True, False])
def test_output_sizes_match_the_forward(caffe):
    resnet = ResNet(ResNetSpec(**TINY, caffe_maxpool=caffe), last=5).eval()
    hw = [(45, 70)]
    with torch.no_grad():
        outs = resnet.forward_stages(torch.randn(1, 3, *hw[0]))
    shapes = [tuple(x.shape[2:]) for x, _ in outs]
    assert shapes == [s[0] for s in resnet.stage_sizes(hw)]
    assert [x.shape[1] for x, _ in outs] == [16, 32, 64, 128]
    assert resnet.out_sizes(hw) == resnet.stage_sizes(hw)[-1]


def test_butd_sizes_600x900_give_a_38x57_res4_map():
    """py-bottom-up-attention (Caffe max-pool): 600 -> 300 -> 150 -> 75 -> 38 (stride 16)."""
    resnet = ResNet(ResNetSpec(**TINY, caffe_maxpool=True))
    assert resnet.stem.out_sizes([(600, 900)]) == [(150, 225)]
    assert resnet.out_sizes([(600, 900)]) == [(38, 57)]


def test_a_padded_image_gives_what_it_gives_alone():
    resnet = ResNet(ResNetSpec(**TINY, caffe_maxpool=True)).eval()
    g = torch.Generator().manual_seed(0)
    for m in resnet.modules():  # non-trivial statistics, so that padding would show
        if isinstance(m, FrozenBatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    small = torch.randn(1, 3, 37, 50, generator=g)
    big = torch.randn(1, 3, 64, 64, generator=g)
    batch = torch.zeros(2, 3, 64, 64)
    batch[0, :, :37, :50] = small[0]
    batch[1] = big[0]
    with torch.no_grad():
        alone = resnet(small)
        out = resnet(batch, [(37, 50), (64, 64)])
    h, w = resnet.out_sizes([(37, 50)])[0]
    assert alone.shape[2:] == (h, w)
    torch.testing.assert_close(out[0, :, :h, :w], alone[0], rtol=1e-4, atol=1e-5)
    assert torch.all(out[0, :, h:] == 0) and torch.all(out[0, :, :, w:] == 0)
