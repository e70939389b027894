"""VISSL's config sections, checked without torch (at config time too): which outputs, which trunk layers and
pooling ops, which heads. The model side is visfeat/extractors/vissl.py; its docstring tells the semantics."""
from __future__ import annotations

import re
from typing import Any

# vissl/config/defaults.yaml MODEL.FEATURE_EVAL_SETTINGS (ASSERT_HEAD_LAYER_SHAPE_INIT accepted; we always check)
FEATURE_EVAL_DEFAULTS: dict[str, Any] = {
    "EVAL_MODE_ON": False,
    "FREEZE_TRUNK_ONLY": False,
    "FREEZE_TRUNK_AND_HEAD": False,
    "EXTRACT_TRUNK_FEATURES_ONLY": False,
    "EVAL_TRUNK_AND_HEAD": False,
    "ASSERT_HEAD_LAYER_SHAPE_INIT": True,
    "SHOULD_FLATTEN_FEATS": True,
    "LINEAR_EVAL_FEAT_POOL_OPS_MAP": [],
}

# vissl/models/heads/mlp.py MLP.__init__ keyword defaults
MLP_DEFAULTS: dict[str, Any] = {
    "use_bn": False,
    "use_relu": False,
    "use_dropout": False,
    "use_bias": True,
    "skip_last_layer_relu_bn": True,
}
HEAD_BATCHNORM_MOMENTUM = 0.1  # vissl/config/defaults.yaml MODEL.HEAD.BATCHNORM_MOMENTUM (eval: unused)

# vissl/models/trunks/resnext.py feat_eval_mapping, in forward order
RESNET_LAYERS = ("conv1", "res1", "res2", "res3", "res4", "res5", "res5avg", "flatten")
# VISSL names by output stride, for timm feature maps (conv1 /2, res2 /4, ... res5 /32 on a ResNet)
LAYER_OF_REDUCTION = {2: "conv1", 4: "res2", 8: "res3", 16: "res4", 32: "res5"}

# configs/config/feature_extraction/trunk_only/rn50_layers.yaml = the docs' five-layer example (+ res5avg)
RN50_LAYERS_MAP = [
    ["conv1", ["AvgPool2d", [[10, 10], 10, 4]]],
    ["res2", ["AvgPool2d", [[16, 16], 8, 0]]],
    ["res3", ["AvgPool2d", [[13, 13], 5, 0]]],
    ["res4", ["AvgPool2d", [[8, 8], 3, 0]]],
    ["res5", ["AvgPool2d", [[6, 6], 1, 0]]],
    ["res5avg", ["Identity", []]],
]
# configs/config/feature_extraction/with_head/rn50_simclr.yaml (= pretrain/simclr/simclr_8node_resnet.yaml head)
SIMCLR_HEAD_SHIPPED = [
    ["mlp", {"dims": [2048, 2048], "use_relu": True, "skip_last_layer_relu_bn": False}],
    ["mlp", {"dims": [2048, 128]}],
]
# docs/source/evaluations/feature_extraction.rst "model head output" example: no ReLU between the two Linears
SIMCLR_HEAD_DOCS = [
    ["mlp", {"dims": [2048, 2048], "use_relu": True}],
    ["mlp", {"dims": [2048, 128]}],
]

RESERVED_FIELDS = ("image_id", "image_path", "image_hw", "failed")


# vissl/models/trunks/feature_extractor.py POOL_OPS (the torch classes: visfeat/extractors/vissl.py)
POOL_OP_NAMES = ("AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool2d", "MaxPool2d", "Identity")
HEAD_TYPES = ("mlp",)  # VISSL's other heads (swav prototypes, eval_mlp, ...) are not supported


# ---------------------------------------------------------------------------------------------------------------
# Config: VISSL's sections -> a plan
class Plan:
    """What to compute: output names, the trunk layer and pool op behind each, flatten, heads."""

    def __init__(self, options: dict[str, Any]):
        fes = options.get("feature_eval_settings") or {}
        if not isinstance(fes, dict):
            raise ValueError(f"feature_eval_settings must be a mapping (VISSL's MODEL.FEATURE_EVAL_SETTINGS), got {fes!r}")
        unknown = sorted(set(fes) - set(FEATURE_EVAL_DEFAULTS))
        if unknown:
            raise ValueError(f"feature_eval_settings: unknown key(s) {unknown}; VISSL's keys: {sorted(FEATURE_EVAL_DEFAULTS)}")
        s = {**FEATURE_EVAL_DEFAULTS, **fes}
        self.settings = s
        pool_map = s["LINEAR_EVAL_FEAT_POOL_OPS_MAP"] or []
        if not isinstance(pool_map, (list, tuple)):
            raise ValueError(f"LINEAR_EVAL_FEAT_POOL_OPS_MAP must be a list of [layer, [op, args]], got {pool_map!r}")
        self.extractor_mode = bool(s["EVAL_MODE_ON"] and (s["FREEZE_TRUNK_ONLY"] or s["FREEZE_TRUNK_AND_HEAD"])
                                   and len(pool_map) > 0)
        if pool_map and not self.extractor_mode:
            raise ValueError("feature_eval_settings: LINEAR_EVAL_FEAT_POOL_OPS_MAP is given but VISSL would ignore it: "
                             "it is used only with EVAL_MODE_ON and (FREEZE_TRUNK_ONLY or FREEZE_TRUNK_AND_HEAD) true")
        self.flatten = bool(s["SHOULD_FLATTEN_FEATS"])
        self.trunk_only = bool(s["EVAL_MODE_ON"] and s["EXTRACT_TRUNK_FEATURES_ONLY"])
        self.pools: list[tuple[str, str, list]] = []  # (output name = trunk layer, op name, args)
        if self.extractor_mode:
            for n, item in enumerate(pool_map):
                where = f"LINEAR_EVAL_FEAT_POOL_OPS_MAP[{n}]"
                if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)
                        and isinstance(item[1], (list, tuple)) and len(item[1]) == 2):
                    raise ValueError(f"{where}: expected [layer, [op, args]], got {item!r}")
                layer, (op, args) = item
                if op not in POOL_OP_NAMES:
                    raise ValueError(f"{where} (layer {layer!r}): unknown pooling op {op!r}; VISSL's ops: "
                                     f"{', '.join(POOL_OP_NAMES)}")
                if not isinstance(args, (list, tuple)):
                    raise ValueError(f"{where} (layer {layer!r}): args of {op} must be a list (positional), got {args!r}")
                self.pools.append((layer, op, list(args)))
            self.names = [p[0] for p in self.pools]
            self.trunk_layers = list(self.names)
        else:
            self.names = ["heads"]
            self.trunk_layers = ["flatten"]  # VISSL's trunk output with no out_feat_keys: its last block
        dup = sorted({n for n in self.names if self.names.count(n) > 1})
        if dup:
            raise ValueError(f"LINEAR_EVAL_FEAT_POOL_OPS_MAP names layer(s) {dup} twice: each is one field")
        for n in self.names:
            if n in RESERVED_FIELDS or not re.fullmatch(r"[A-Za-z0-9_.\-]+", n):
                raise ValueError(f"layer name {n!r} cannot be a field name (letters, digits, _ . -; not {RESERVED_FIELDS})")
        heads = options.get("head_params") or []
        check_head_params(heads)
        self.head_params = [] if self.trunk_only else list(heads)
        if not self.trunk_only:
            nf, nh = len(self.names), len(self.head_params)
            if nh == 0:
                raise ValueError("no head_params, and the trunk-only flags are off: set feature_eval_settings "
                                 "EVAL_MODE_ON and EXTRACT_TRUNK_FEATURES_ONLY for trunk features, or give head_params")
            if not (nh == nf or (nh > 1 and nf == 1)):  # vissl/models/base_ssl_model.py heads_forward
                raise ValueError(f"{nh} heads for {nf} trunk outputs: VISSL runs one head per output, or several "
                                 f"heads in sequence on one output")
            if not s["EVAL_TRUNK_AND_HEAD"]:
                raise ValueError("the heads run but EVAL_TRUNK_AND_HEAD is false: VISSL would not load head weights "
                                 "(random heads); set it true")


def check_head_params(head_params) -> None:
    """MODEL.HEAD.PARAMS: [name, kwargs] per head, or a list of them for a head of several modules."""
    if not isinstance(head_params, (list, tuple)):
        raise ValueError(f"head_params must be VISSL's MODEL.HEAD.PARAMS list, got {head_params!r}")
    for p in head_params:
        modules = p if (isinstance(p, (list, tuple)) and p and isinstance(p[0], (list, tuple))) else [p]
        for m in modules:
            if not (isinstance(m, (list, tuple)) and m and isinstance(m[0], str)):
                raise ValueError(f"head_params: expected [\"mlp\", {{...}}], got {m!r}")
            if m[0] not in HEAD_TYPES:
                raise ValueError(f"head_params: head {m[0]!r} is not supported (supported: {', '.join(HEAD_TYPES)})")
            kw = m[1] if len(m) > 1 else {}
            if not isinstance(kw, dict):
                raise ValueError(f"head_params: mlp settings must be a mapping, got {kw!r}")
            unknown = sorted(set(kw) - set(MLP_DEFAULTS) - {"dims"})
            if unknown:
                raise ValueError(f"head_params: mlp has no option(s) {unknown}; options: dims, {', '.join(MLP_DEFAULTS)}")
            dims = kw.get("dims")
            if not (isinstance(dims, (list, tuple)) and len(dims) >= 2
                    and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims)):
                raise ValueError(f"head_params: mlp dims must be a list of >= 2 positive ints, got {dims!r}")


def check_options(options: dict[str, Any]) -> None:
    """The preset-option check run at config validation: raises ValueError naming what is wrong."""
    backbone = str(options.get("backbone", ""))
    kind, _, name = backbone.partition(":")
    if kind not in ("torchvision", "timm") or not name:
        raise ValueError(f"backbone {backbone!r}: expected torchvision:<name> or timm:<name>")
    plan = Plan(options)
    if kind == "torchvision":
        bad = [layer for layer in plan.trunk_layers if layer not in RESNET_LAYERS]
        if bad:
            raise ValueError(f"layer(s) {bad} are not layers of backbone {backbone!r}; its layers: "
                             f"{', '.join(RESNET_LAYERS)}")
    for k in ("resize_size", "crop_size"):
        if not isinstance(options.get(k), int) or options[k] < 1:
            raise ValueError(f"{k} must be a positive int, got {options.get(k)!r}")
    for k in ("mean", "std"):
        v = options.get(k)
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
            raise ValueError(f"{k} must be 3 numbers (R, G, B), got {v!r}")
