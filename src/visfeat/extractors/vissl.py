"""Trunk-layer and head features the way VISSL's `extract_features` engine computes them, for torchvision ResNets
and any timm model (features_only). VISSL itself no longer installs on a current torch; this is a re-implementation
from its source (facebookresearch/vissl), not a copy.

Config: the preset options hold VISSL's own yaml sections, so a user pastes theirs:
- `feature_eval_settings` = MODEL.FEATURE_EVAL_SETTINGS (EVAL_MODE_ON, FREEZE_TRUNK_ONLY, FREEZE_TRUNK_AND_HEAD,
  EXTRACT_TRUNK_FEATURES_ONLY, EVAL_TRUNK_AND_HEAD, SHOULD_FLATTEN_FEATS, LINEAR_EVAL_FEAT_POOL_OPS_MAP); missing
  keys take VISSL's defaults (vissl/config/defaults.yaml: all False, SHOULD_FLATTEN_FEATS True).
- `head_params` = MODEL.HEAD.PARAMS, e.g. [["mlp", {"dims": [2048, 2048], "use_relu": true}], ["mlp", {...}]].
- `backbone`: "torchvision:<resnet name>" (VISSL's ResNeXt trunk is torchvision's modules) or "timm:<model name>".

What VISSL does, and so what we do (file names are VISSL's):
- Layers (vissl/models/trunks/resnext.py feat_eval_mapping): conv1 = after bn1 + ReLU, before the max-pool;
  res1 = after the max-pool; res2..res5 = layer1..layer4; res5avg = avgpool (C, 1, 1); flatten = (C,).
- Each LINEAR_EVAL_FEAT_POOL_OPS_MAP entry [layer, [op, args]] applies op(*args), args positional to the torch
  constructor (vissl/models/trunks/feature_extractor.py), then flattens when SHOULD_FLATTEN_FEATS.
- The map is used only when EVAL_MODE_ON and (FREEZE_TRUNK_ONLY or FREEZE_TRUNK_AND_HEAD)
  (vissl/models/model_helpers.py is_feature_extractor_model); then the output names are the map's layer names.
  Otherwise the one output is named `heads` (vissl/trainer/trainer_main.py), even when it is the trunk output:
  the docs' "trunk output" example (preset vissl-rn50-trunk) writes layer `heads` = flattened res5avg (2048,).
- EVAL_MODE_ON and EXTRACT_TRUNK_FEATURES_ONLY: trunk outputs only; else the heads run on them
  (vissl/models/base_ssl_model.py heads_forward: one head per output, or several heads in sequence on one).
- The `mlp` head (vissl/models/heads/mlp.py): Linear per dims pair, then BN / ReLU / Dropout as asked, except
  after the last Linear while skip_last_layer_relu_bn (default True).

Head variant of `vissl-rn50-simclr-head`: it follows the SHIPPED SimCLR configs
(configs/config/feature_extraction/with_head/rn50_simclr.yaml, pretrain/simclr/simclr_8node_resnet.yaml):
Linear(2048, 2048) -> ReLU -> Linear(2048, 128), the head SimCLR was trained with. The docs' example
(docs/source/evaluations/feature_extraction.rst) omits skip_last_layer_relu_bn, so its first mlp keeps the default
True and has NO ReLU: Linear -> Linear (cosine ~0.72 to the shipped one on the same weights). To get the docs'
variant: `--set head_params='[["mlp", {"dims": [2048, 2048], "use_relu": true}], ["mlp", {"dims": [2048, 128]}]]'`
(SIMCLR_HEAD_DOCS below).

Our deliberate differences, all errors instead of silent surprises: a pool map that VISSL would ignore (flags off),
heads without head weights in the checkpoint (VISSL would run randomly initialised heads when
EVAL_TRUNK_AND_HEAD is off), duplicate layer names (VISSL's dict keeps the last). EXIF: VISSL (PIL) ignores it;
visfeat applies it by default (option `exif`, the one stated exception to faithfulness) and `exif: false` matches
VISSL.

Checkpoints: a torchvision state dict (`conv1.weight`, ..., `fc.*`), optionally under `state_dict` / with `module.`
prefixes, or a VISSL one: {"classy_state_dict": {"base_model": {"model": {"trunk": {"_feature_blocks.<torchvision
key>"}, "heads": {"0.clf.0.weight", ...}}}}} (a feature-extractor trunk adds `base_model.`; flat `trunk.` /
`heads.` keys work too). For a single-Linear head a torchvision file's `fc` serves as head 0 (rn50_supervised.yaml).
timm backbones load a timm state dict of that model (for `timm:resnet50` the torchvision file fits).
"""
from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn as nn
from torchvision import transforms as T

from visfeat.extractors.base import FieldSpec, TransformExtractor
from visfeat.detection.statedict import load_strict
from visfeat.extractors.vissl_config import (  # noqa: F401  (SIMCLR_HEAD_DOCS: the docs' head variant, for users)
    HEAD_BATCHNORM_MOMENTUM,
    LAYER_OF_REDUCTION,
    MLP_DEFAULTS,
    POOL_OP_NAMES,
    RESNET_LAYERS,
    SIMCLR_HEAD_DOCS,
    Plan,
    check_options,
)


class _Identity(nn.Module):
    """VISSL's Identity (vissl/models/model_helpers.py): takes at most one ignored constructor argument."""

    def __init__(self, args=None):
        super().__init__()

    def forward(self, x):
        return x


# vissl/models/trunks/feature_extractor.py POOL_OPS
POOL_OPS = {  # keys: vissl_config.POOL_OP_NAMES
    "AdaptiveAvgPool2d": nn.AdaptiveAvgPool2d,
    "AdaptiveMaxPool2d": nn.AdaptiveMaxPool2d,
    "AvgPool2d": nn.AvgPool2d,
    "MaxPool2d": nn.MaxPool2d,
    "Identity": _Identity,
}
assert tuple(POOL_OPS) == POOL_OP_NAMES  # the torch-free config check knows the same ops


def _mlp_layers(kw: dict[str, Any], bn_eps: float) -> list[nn.Module]:
    """vissl/models/heads/mlp.py create_layers (kw checked by vissl_config.check_head_params)."""
    o = {**MLP_DEFAULTS, **kw}
    dims = o["dims"]
    layers: list[nn.Module] = []
    last = dims[0]
    for i, dim in enumerate(dims[1:]):
        layers.append(nn.Linear(last, dim, bias=o["use_bias"]))
        if i == len(dims) - 2 and o["skip_last_layer_relu_bn"]:
            break
        if o["use_bn"]:
            layers.append(nn.BatchNorm1d(dim, eps=bn_eps, momentum=HEAD_BATCHNORM_MOMENTUM))
        if o["use_relu"]:
            layers.append(nn.ReLU(inplace=True))
        if o["use_dropout"]:
            layers.append(nn.Dropout())
        last = dim
    return layers


class MLPHead(nn.Module):
    """VISSL's `mlp` head: layers under `clf` (so checkpoint keys `N.clf.K.*` load as they are); 2D input or
    (N, C, 1, 1)."""

    def __init__(self, kw: dict[str, Any], bn_eps: float):
        super().__init__()
        self.clf = nn.Sequential(*_mlp_layers(kw, bn_eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim > 2:
            if any(d != 1 for d in x.shape[2:]):
                raise ValueError(f"mlp head expects (N, C) or (N, C, 1, 1) input, got {tuple(x.shape)}")
            x = x.reshape(x.shape[0], x.shape[1])
        return self.clf(x)


def _head_module(param, bn_eps: float) -> nn.Module:
    return MLPHead(param[1] if len(param) > 1 else {}, bn_eps)  # "mlp", the one type check_head_params allows


def build_heads(head_params: list, bn_eps: float) -> nn.ModuleList:
    """vissl/models/base_ssl_model.py _get_heads: a [name, kwargs] is one head; a list of them is one head made
    of several modules in sequence."""
    heads = nn.ModuleList()
    for p in head_params:
        if isinstance(p, (list, tuple)) and p and isinstance(p[0], (list, tuple)):
            heads.append(nn.Sequential(*[_head_module(q, bn_eps) for q in p]))
        else:
            heads.append(_head_module(p, bn_eps))
    return heads


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints
def _torch_load(path: str):
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # VISSL training checkpoints may pickle more than tensors (optimizer/loss state)
        print(f"[visfeat] {path}: not loadable with weights_only=True; loading it as a full pickle (only use "
              f"files you trust)", file=sys.stderr)
        return torch.load(path, map_location="cpu", weights_only=False)


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


def read_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, str]:
    """(trunk state dict in torchvision keys, heads state dict `N.clf.K.*` or None, layout name).

    A torchvision file's `fc.*` is returned as heads {"0.clf.0.*"} (a single-Linear head, rn50_supervised.yaml)."""
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise KeyError(f"{path}: not a state dict or VISSL checkpoint (a {type(obj).__name__})")
    layout = "torchvision"
    if "classy_state_dict" in obj or "base_model" in obj:
        layout = "vissl"
        inner = obj.get("classy_state_dict", obj)
        try:
            model = inner["base_model"]["model"]
            trunk = dict(model["trunk"])
        except (KeyError, TypeError):
            raise KeyError(f"{path}: a VISSL checkpoint without classy_state_dict.base_model.model.trunk") from None
        heads = dict(model.get("heads") or {}) or None
    else:
        sd = obj.get("state_dict", obj.get("model_state_dict", obj))
        sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
        if any(k.startswith("trunk.") for k in sd):
            layout = "vissl"
            trunk = {k[6:]: v for k, v in sd.items() if k.startswith("trunk.")}
            heads = {k[6:]: v for k, v in sd.items() if k.startswith("heads.")} or None
        else:
            trunk = {k: v for k, v in sd.items() if not k.startswith("fc.")}
            fc = {k[3:]: v for k, v in sd.items() if k.startswith("fc.")}
            heads = {f"0.clf.0.{k}": v for k, v in fc.items()} or None
    if layout == "vissl":
        trunk = _strip(_strip(trunk, "base_model."), "_feature_blocks.")
    trunk = {k: v for k, v in trunk.items() if torch.is_tensor(v)}
    return trunk, heads, layout


# ---------------------------------------------------------------------------------------------------------------
# Trunks: forward(x, wanted) -> {layer: tensor}
class TorchvisionResNetTrunk(nn.Module):
    layers = RESNET_LAYERS

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, wanted: set[str]) -> dict[str, torch.Tensor]:
        m, out = self.model, {}
        steps = [
            ("conv1", lambda t: m.relu(m.bn1(m.conv1(t)))),
            ("res1", m.maxpool), ("res2", m.layer1), ("res3", m.layer2), ("res4", m.layer3), ("res5", m.layer4),
            ("res5avg", m.avgpool), ("flatten", lambda t: torch.flatten(t, 1)),
        ]
        for name, f in steps:
            x = f(x)
            if name in wanted:
                out[name] = x
            if len(out) == len(wanted):
                break
        return out


class TimmTrunk(nn.Module):
    """A timm features_only model. Feature maps are named by VISSL's layer of their output stride (conv1 /2,
    res2 /4, res3 /8, res4 /16, res5 /32, where strides are distinct) and by timm's module names; res5avg =
    global average of the last map (C, 1, 1), flatten = its (C,)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        info = model.feature_info
        reds, mods = info.reduction(), info.module_name()
        self.index: dict[str, int] = {}
        for i, (r, mod) in enumerate(zip(reds, mods)):
            self.index[mod] = i
            if r in LAYER_OF_REDUCTION and reds.count(r) == 1:
                self.index[LAYER_OF_REDUCTION[r]] = i
        self.layers = tuple(self.index) + ("res5avg", "flatten")

    def forward(self, x: torch.Tensor, wanted: set[str]) -> dict[str, torch.Tensor]:
        feats = self.model(x)
        out = {n: feats[i] for n, i in self.index.items() if n in wanted}
        if wanted & {"res5avg", "flatten"}:
            avg = torch.nn.functional.adaptive_avg_pool2d(feats[-1], 1)
            out["res5avg"], out["flatten"] = avg, torch.flatten(avg, 1)
        return out


def build_trunk(backbone: str, trunk_sd: dict[str, torch.Tensor], path: str) -> nn.Module:
    kind, _, name = str(backbone).partition(":")
    if kind == "torchvision":
        import torchvision

        ctor = getattr(torchvision.models, name, None)
        if ctor is None or not callable(ctor):
            raise ValueError(f"backbone {backbone!r}: torchvision has no model {name!r}")
        model = ctor(weights=None)
        if not isinstance(model, torchvision.models.ResNet):
            raise ValueError(f"backbone {backbone!r}: only torchvision ResNets are VISSL trunks "
                             f"(use timm:<name> for others)")
        load_strict(model, trunk_sd, path, f"torchvision {name}", optional=("fc.",))
        return TorchvisionResNetTrunk(model.eval())
    if kind == "timm":
        import timm

        if not timm.is_model(name):
            raise ValueError(f"backbone {backbone!r}: timm has no model {name!r} (timm.list_models() names them)")
        full = timm.create_model(name, pretrained=False)
        cls = full.pretrained_cfg.get("classifier") or ()
        cls = (cls,) if isinstance(cls, str) else tuple(cls)
        sd = {k: v for k, v in trunk_sd.items() if not k.startswith(tuple(f"{c}." for c in cls))}
        load_strict(full, sd, path, f"timm {name}", optional=tuple(f"{c}." for c in cls))
        del full
        # timm's own features_only path: the weights go into the full model, which is then wrapped
        model = timm.create_model(name, features_only=True, pretrained=True,
                                  pretrained_cfg_overlay={"state_dict": sd, "source": "", "file": None,
                                                          "url": None, "hf_hub_id": None})
        return TimmTrunk(model.eval())
    raise ValueError(f"backbone {backbone!r}: expected torchvision:<name> or timm:<name>")


# ---------------------------------------------------------------------------------------------------------------
class VisslExtractor(TransformExtractor):
    channels_last = "always"

    def __init__(self, preset: str, options: dict[str, Any], weights_sha256: str, device, amp: bool,
                 trunk: nn.Module, heads: nn.ModuleList, plan: Plan):
        super().__init__(preset, options, weights_sha256, device, amp)
        self.plan = plan
        unknown = [layer for layer in plan.trunk_layers if layer not in trunk.layers]
        if unknown:
            raise ValueError(f"layer(s) {unknown} are not layers of backbone {options['backbone']!r}; "
                             f"its layers: {', '.join(trunk.layers)}")
        self.pools = nn.ModuleList()
        for layer, op, args in plan.pools:
            try:
                self.pools.append(POOL_OPS[op](*args))
            except (TypeError, ValueError) as e:
                raise ValueError(f"LINEAR_EVAL_FEAT_POOL_OPS_MAP layer {layer!r}: {op}(*{args!r}) failed: {e}") from None
        self.trunk, self.heads, self.pools = self.placed(trunk), self.placed(heads), self.placed(self.pools)
        resize, crop = int(options["resize_size"]), int(options["crop_size"])
        self.transform = T.Compose([
            T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.CenterCrop(crop),
            T.ToTensor(),
            T.Normalize(tuple(options["mean"]), tuple(options["std"])),
        ])
        try:  # shapes from one forward at the crop size (fixed per config)
            probe = self.run(torch.zeros(1, 3, crop, crop, device=self.device))
        except RuntimeError as e:
            raise ValueError(f"this feature_eval_settings/head_params does not run on {options['backbone']} at "
                             f"{crop}x{crop}: {e}") from None
        self.shapes = {n: tuple(t.shape[1:]) for n, t in probe.items()}

    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.plan
        feats = self.trunk(x, set(p.trunk_layers))
        outs = [feats[layer] for layer in p.trunk_layers]
        if p.extractor_mode:  # vissl/models/trunks/feature_extractor.py forward
            outs = [pool(o) for pool, o in zip(self.pools, outs)]
            if p.flatten:
                outs = [torch.flatten(o, start_dim=1) for o in outs]
        if not p.trunk_only:  # vissl/models/base_ssl_model.py heads_forward
            if len(self.heads) == len(outs):
                outs = [h(o) for h, o in zip(self.heads, outs)]
            else:
                o = outs[0]
                for h in self.heads:
                    o = h(o)
                outs = [o]
        return dict(zip(p.names, outs))

    def fields(self) -> list[FieldSpec]:
        return [FieldSpec(n, self.shapes[n]) for n in self.plan.names]



def build(preset, weights: str | None, device, amp: bool, options: dict[str, Any]) -> VisslExtractor:
    from visfeat.extractors.weights import resolve_weights

    check_options(options)  # config errors before loading anything
    plan = Plan(options)
    heads = build_heads(plan.head_params, float(options["head_batchnorm_eps"]))
    path, sha = resolve_weights(preset, weights)
    trunk_sd, heads_sd, layout = read_checkpoint(path)
    trunk = build_trunk(options["backbone"], trunk_sd, path)
    if len(heads):
        if not heads_sd:
            raise KeyError(f"{path}: this {layout} checkpoint has no head weights, and head_params asks for heads "
                           f"(a VISSL model-zoo checkpoint holds them under classy_state_dict.base_model.model.heads)")
        load_strict(heads, heads_sd, path, f"head_params {plan.head_params}")
    with torch.no_grad():
        return VisslExtractor(preset.name, options, sha, device, amp, trunk, heads, plan)
