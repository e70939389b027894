"""Any timm image model by name (with its pretrained tag): pooled embedding, patch grid, prefix tokens and
intermediate layers, as timm's own forward computes them.

What we take (timm 1.0.31):
- `global`: `forward_head(forward_features(x), pre_logits=True)`, the pooled features before any classifier or
  projection head; `config["pooling"]` names the model's `global_pool` (DINOv3 in timm averages the patch tokens,
  where the upstream DINOv3 embedding is the CLS token: we store timm's).
- `grid`: token models (ViT, EVA, NaFlexViT): the final tokens after the final norm (`forward_features`) without
  the prefix, reshaped row-major to the patch grid, (h, w, D); `prefix`: those prefix tokens (CLS, registers),
  only when the model has some. Feature-map models (ConvNeXt): the last feature map, (h, w, C).
- `layer{i}`: block (ViT) or stage (ConvNeXt) i of `forward_intermediates` (timm's indexing, negative from the
  end), without the final norm, (h, w, D_i). One forward serves all fields: `forward_intermediates` returns the
  same final features as `forward_features`.
- Preprocessing: timm's eval transform (`resolve_model_data_config` + `create_transform`) of the name's pretrained
  cfg, so a local weights file gets its tag's size, crop, interpolation, mean and std, never library defaults.
- Weights: timm's own loading path for a local file (`pretrained_cfg_overlay=dict(file=...)`: its checkpoint
  filter, strict keys); a tensor whose shape the filter had to change (e.g. a resized position embedding) is an
  error, so the file holds exactly the model's shapes.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from visfeat.extractors.base import FieldSpec, TransformExtractor
from visfeat.extractors.weightfiles import file_shapes

__all__ = ["Outputs", "TimmEncoder", "build", "check_decode", "load_model", "pooling_name", "preprocess_config"]

# the pooling, in words, of each library's pool name: timm's `global_pool` (timm/models/vision_transformer.py,
# eva.py; timm/layers/adaptive_avgmax_pool.py) and open_clip's VisionTransformer `pool_type` ("tok", "none"); both
# families record these words
POOLING = {"tok": "cls token", "token": "cls token", "avg": "mean of patches", "map": "attention pool (map head)",
           "max": "max of patches", "avgmax": "mean and max of patches", "none": "none", "": "none"}
# timm/data/transforms_factory.py transforms_imagenet_eval: crop_mode -> (resize mode in open_clip's words, crop)
RESIZE = {"center": ("shortest", "center"), "squash": ("squash", "center"), "border": ("longest", "center, padded")}


def resolved_name(name: str) -> str:
    """`arch.tag` of `name` (timm's default tag when it has none); the pretrained cfg is what fixes the
    preprocessing, so a name without one is refused."""
    import timm

    cfg = timm.get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(f"timm model {name!r} has no pretrained cfg in timm {timm.__version__}: give a name with "
                         f"its pretrained tag (e.g. vit_base_patch14_dinov2.lvd142m)")
    return f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture


def load_model(name: str, path: str, **model_args: Any) -> nn.Module:
    """timm model `name` with the weights file `path`, through timm's loading path (checkpoint filter, strict
    keys); `model_args` go to `timm.create_model` (tests shrink architectures with them)."""
    import timm

    # source "": a registry cfg pointing at the hub would otherwise win over the file (timm _builder.py
    # _resolve_pretrained_source); a file overlay resets custom_load (npz loaders) on its own
    model = timm.create_model(resolved_name(name), pretrained=True,
                              pretrained_cfg_overlay={"file": str(path), "source": ""}, **model_args)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    changed = {k: (s, own[k]) for k, s in file_shapes(path).items() if k in own and own[k] != s}
    if changed:
        k, (s, m) = next(iter(changed.items()))
        raise ValueError(f"weights file {path} is not {name}'s: {len(changed)} tensors differ in shape from the "
                         f"model's (e.g. {k}: file {s}, model {m}); timm's filter would have resized them")
    return model.eval()


def preprocess_config(data_config: dict[str, Any], name: str) -> dict[str, Any]:
    """The eval transform's parameters as the store records them (`config["preprocess"]`)."""
    import timm

    _, h, w = data_config["input_size"]
    resize_mode, crop = RESIZE[data_config.get("crop_mode") or "center"]
    return {
        "size": [int(h), int(w)],
        "resize_mode": resize_mode,  # to size / crop_pct, then the crop to size
        "interpolation": data_config["interpolation"],
        "crop": crop,
        "crop_pct": float(data_config["crop_pct"]),
        "mean": [float(v) for v in data_config["mean"]],
        "std": [float(v) for v in data_config["std"]],
        "from": f"timm {timm.__version__} pretrained_cfg of {name}",
    }


def check_decode(data_config: dict[str, Any], decode: str) -> None:
    """`decode: gpu` runs the transform on tensors; timm's border mode (resize the longer side, pad) pads with a
    per-channel fill that torchvision's tensor pad refuses, so those few tags decode on the CPU."""
    if decode == "gpu" and data_config.get("crop_mode") == "border":
        raise ValueError("decode: gpu cannot pad as this model's eval transform does (timm crop_mode 'border'); "
                         "use decode: pil or draft")


def pooling_name(model: nn.Module, feature_map: bool) -> str:
    """What `forward_head(pre_logits=True)` pools, in words, from the model's `global_pool`."""
    gp = getattr(model, "global_pool", None)
    if gp is None:  # ConvNeXt & co.: the pool sits in the head
        gp = getattr(getattr(model, "head", None), "global_pool", None)
    if isinstance(gp, nn.Module):
        gp = getattr(gp, "pool_type", type(gp).__name__)
    gp = str(gp or "")
    if gp not in POOLING:
        return f"timm global_pool {gp!r}"
    return POOLING[gp].replace("patches", "the last feature map") if feature_map else POOLING[gp]


class Outputs(nn.Module):
    """The timm model and what we take from one forward of it, as a module: the same code gives the fields'
    shapes (run on the meta device) and their values."""

    def __init__(self, model: nn.Module, layers: list[int], grid_hw: tuple[int, int] | None = None):
        super().__init__()
        self.net = model
        self.layers = list(layers)
        # what forward_intermediates resolves indices with (not exported by timm.models)
        from timm.models._features import feature_take_indices

        n = len(model.feature_info)
        try:
            absolute = feature_take_indices(n, self.layers)[0] if self.layers else []
        except AssertionError as e:
            raise ValueError(f"layers {self.layers}: {e} ({n} blocks/stages)") from None
        self.take = sorted(set(absolute))  # forward_intermediates returns them in this order
        self.pick = [self.take.index(a) for a in absolute]
        self.grid_hw = grid_hw
        self.tokens = hasattr(model, "num_prefix_tokens")  # ViT-like; feature-map models (ConvNeXt) lack it
        self.channels_first = getattr(model, "output_fmt", "NCHW") == "NCHW"

    def to_hwc(self, t: torch.Tensor) -> torch.Tensor:
        return t.permute(0, 2, 3, 1) if self.channels_first else t

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # a token model's grid size: from the last block's intermediate until it is known (the probe)
        take = self.take or ([len(self.net.feature_info) - 1] if self.tokens and self.grid_hw is None else [])
        if take:
            final, inter = self.net.forward_intermediates(x, indices=take)
        else:
            final, inter = self.net.forward_features(x), []
        out = {"global": self.net.forward_head(final, pre_logits=True)}
        if final.ndim == 4:
            out["grid"] = self.to_hwc(final)
        else:
            p = int(getattr(self.net, "num_prefix_tokens", 0))
            h, w = self.grid_hw or inter[-1].shape[-2:]
            if final.shape[1] - p != h * w:
                raise ValueError(f"{final.shape[1]} tokens - {p} prefix tokens is not a {h}x{w} patch grid")
            out["grid"] = final[:, p:].reshape(final.shape[0], h, w, final.shape[2])
            if p:
                out["prefix"] = final[:, :p]
        for i, j in zip(self.layers, self.pick):
            out[f"layer{i}"] = self.to_hwc(inter[j])
        return out


def probe(outputs: Outputs, input_size: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """Per-image shape of each output, from a forward on the meta device (no weights copied, no compute)."""
    from torch.func import functional_call

    meta = {k: torch.empty_like(v, device="meta") for k, v in
            list(outputs.named_parameters()) + list(outputs.named_buffers())}
    with torch.no_grad():
        out = functional_call(outputs, meta, (torch.empty(1, *input_size, device="meta"),))
    return {k: tuple(v.shape[1:]) for k, v in out.items()}


class TimmEncoder(TransformExtractor):
    def __init__(self, preset: str, options: dict[str, Any], weights_sha256: str, device, amp: bool,
                 model: nn.Module):
        super().__init__(preset, options, weights_sha256, device, amp)
        import timm.data

        data_config = timm.data.resolve_model_data_config(model)  # the tag's pretrained cfg, set by create_model
        check_decode(data_config, options.get("decode", "pil"))
        self.transform = timm.data.create_transform(**data_config, is_training=False)
        name = model.pretrained_cfg.get("architecture", "") + "." + (model.pretrained_cfg.get("tag") or "")
        self.config["preprocess"] = preprocess_config(data_config, name.rstrip("."))
        layers = [int(i) for i in options.get("layers") or []]
        outputs = Outputs(model, layers)
        self.shapes = probe(outputs, data_config["input_size"])
        self.config["pooling"] = pooling_name(model, feature_map=not outputs.tokens)
        # a ViT's only convolution is its patch embedding; feature-map models are convolutional
        self.channels_last = "never" if outputs.tokens else "always"
        outputs.grid_hw = self.shapes["grid"][:2]
        self.outputs = self.placed(outputs)

    @property
    def model(self) -> nn.Module:
        return self.outputs.net

    def fields(self) -> list[FieldSpec]:
        return [FieldSpec(k, s) for k, s in self.shapes.items()]

    def run(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.outputs(images)


def build(preset, weights: str | None, device, amp: bool, options: dict[str, Any]) -> TimmEncoder:
    from visfeat.extractors.hub import weights_file

    # `weights` as given, else the file the fetch put under resources/weights; never the network
    path, sha = weights_file("timm", options["model"], None, weights)
    return TimmEncoder(preset.name, options, sha, device, amp, load_model(options["model"], path))
