"""Any open_clip model (SigLIP / SigLIP 2, EVA-CLIP, PE-Core, MetaCLIP 2, OpenAI / LAION CLIP, ...) by its
architecture name and pretrained tag: global embedding, patch grid, prefix tokens, intermediate layers, text.

What each field is (the towers of open_clip 3.3.0's pretrained models: its own ViT, a timm trunk, the
ModifiedResNet; not CoCa's attentional pooler, whose tokens are queries, not patches):
- `global`: `model.encode_image(x)`, NOT L2-normalised (the library's `normalize=False`); `pooling` in the
  config says how the tower pools (cls token, mean of patches, attention pool).
- `grid` (h, w, D): the final layer's patch tokens after the norm the tower applies to its token sequence
  (open_clip ViT: `ln_post`; timm: `forward_features`), reshaped to the patch grid; a tower that norms only the
  pooled vector (CLIPA's `final_ln_after_pool`, timm's `fc_norm`) leaves the tokens as the last block made them.
  Conv towers (ConvNeXt, ModifiedResNet): the last feature map (before the attention pool).
- `prefix` (P, D): the prefix tokens (CLS, registers) normed as `grid`, only when the tower has any.
- `layer{i}` (h, w, D): `forward_intermediates` block i's patch tokens (i as the library indexes, negative ok).
Preprocessing is the (model, tag) pair's, resolved explicitly: a local weights file does not carry it
(open_clip issue #1068), and the tower's image size. A tag trained with QuickGELU gets it even where the
architecture's config lacks it (open_clip then only warns; the weights were trained with it).
"""
from __future__ import annotations

import difflib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visfeat.extractors.base import FieldSpec, TransformExtractor
from visfeat.extractors.timm_encoder import POOLING  # timm is in the clip env too (open_clip needs it)
from visfeat.extractors.weightfiles import file_shapes

# files of a Hugging Face tokenizer, looked for beside the weights file (the hub repos hold them there)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def closest(name: str, names: list[str]) -> str:
    near = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    return ", ".join(near) if near else "none close"


def check_names(model: str, tag: str) -> dict[str, Any]:
    """The pretrained cfg of (model, tag); ValueError naming the closest valid names when either is unknown."""
    import open_clip

    if model not in open_clip.list_models():
        raise ValueError(f"open_clip has no model {model!r}; closest: {closest(model, open_clip.list_models())}")
    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ValueError(f"open_clip model {model!r} has no pretrained tag {tag!r}; its tags: "
                         f"{', '.join(tags) or 'none'}")
    return cfg


def resolve_preprocess(model: str, tag: str, image_size: tuple[int, int]) -> dict[str, Any]:
    """The eval preprocessing of (model, tag) as `open_clip.create_model(model, pretrained=tag)` sets it: the
    tag's mean/std/interpolation/resize mode over open_clip's PreprocessCfg, the tower's image size."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = merge_preprocess_dict(PreprocessCfg(), check_names(model, tag))
    cfg["size"] = tuple(int(s) for s in image_size)
    crop = {"shortest": "center", "squash": "none", "longest": "center, padded with fill_color"}[cfg["resize_mode"]]
    return {**{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}, "crop": crop}


def transform_of(preprocess: dict[str, Any]):
    """open_clip's own eval transform for the resolved preprocessing."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    keys = set(asdict(PreprocessCfg()))
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in preprocess.items() if k in keys}
    return image_transform_v2(PreprocessCfg(**cfg), is_train=False)


def load_strict(model: torch.nn.Module, path: str) -> None:
    """open_clip's own checkpoint load (its key conversions), strictly: every key, and every shape as the file
    has it (open_clip would otherwise resize position embeddings of another image size without a word)."""
    from open_clip.factory import load_checkpoint

    own = model.state_dict()
    bad = [f"{k} {s} (model {tuple(own[k].shape)})" for k, s in file_shapes(path).items()
           if k in own and tuple(own[k].shape) != s]
    if bad:
        raise ValueError(f"{path}: not weights of this model: {'; '.join(bad[:5])}")
    load_checkpoint(model, path, strict=True)


def sequence_first(model: torch.nn.Module) -> None:
    """Run open_clip's own transformers sequence-first: extractors/clip.py `sequence_first` says why (AMP speed;
    the same operations)."""
    from open_clip.transformer import Transformer

    for t in model.modules():
        if isinstance(t, Transformer) and all(isinstance(b.attn, torch.nn.MultiheadAttention) for b in t.resblocks):
            t.batch_first = False
            for b in t.resblocks:
                b.attn.batch_first = False


def take_indices(layers: list[int], n: int) -> list[int]:
    """`layers` as non-negative block indices (the library's `feature_take_indices`); ValueError when out of
    range or naming one block twice."""
    out = [i + n if i < 0 else i for i in layers]
    if any(not 0 <= i < n for i in out) or len(set(out)) != len(out):
        raise ValueError(f"layers {layers}: the tower has {n} blocks (indices {-n}..{n - 1}, each once)")
    return out


class OpenClipExtractor(TransformExtractor):
    def __init__(self, preset: str, options: dict[str, Any], weights_sha256: str, device, amp: bool,
                 model: torch.nn.Module, weights_dir: Path | None = None):
        super().__init__(preset, options, weights_sha256, device, amp)
        v = model.visual
        import open_clip
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.timm_model import TimmModel
        from open_clip.transformer import VisionTransformer

        self.kind = ("vit" if isinstance(v, VisionTransformer) else "timm" if isinstance(v, TimmModel)
                     else "resnet" if isinstance(v, ModifiedResNet) else None)
        if self.kind is None or getattr(v, "attn_pool", None) is not None:  # CoCa's pooler: tokens are queries
            what = "an attentional pooler (CoCa)" if self.kind else f"vision tower {type(v).__name__}"
            raise ValueError(f"open_clip model {options['model']}: {what} is not supported")
        size = tuple(v.image_size) if isinstance(v.image_size, (tuple, list)) else (v.image_size,) * 2
        self.config["preprocess"] = resolve_preprocess(options["model"], options["pretrained"], size)
        if self.config["preprocess"]["resize_mode"] == "longest" and options.get("decode") == "gpu":
            raise ValueError("decode: gpu does not implement resize_mode 'longest' (ResizeKeepRatio); use pil or draft")
        self.transform = transform_of(self.config["preprocess"])
        blocks, self.prefix_tokens = self._shape(v, size)  # per block (h, w, D); prefix count
        self.take = take_indices(list(options.get("layers") or []), len(blocks))
        self.layer_shapes = {f"layer{i}": blocks[t] for i, t in zip(options.get("layers") or [], self.take)}
        self.config["pooling"] = self._pooling(v)
        self.channels_last = "never" if self.kind == "vit" or self.prefix_tokens is not None else "amp"
        self.global_dim = int(open_clip.get_model_config(options["model"])["embed_dim"])  # encode_image's width
        self.weights_dir, self._tokenizer = weights_dir, None
        if self.amp:
            sequence_first(model)
        self.model = self.placed(model)

    def _shape(self, v, size: tuple[int, int]) -> tuple[list[tuple[int, int, int]], int | None]:
        """Each block's output (h, w, D) and the prefix token count (None: a conv tower), from the built tower."""
        h, w = size
        if self.kind == "vit":
            gh, gw = v.grid_size
            self.grid_shape = (gh, gw, v.transformer.width)
            return [self.grid_shape] * len(v.transformer.resblocks), 1
        if self.kind == "resnet":
            stages = [(v.bn3, 4)] + [(s[-1].bn3, r) for s, r in zip((v.layer1, v.layer2, v.layer3, v.layer4),
                                                                     (4, 8, 16, 32))]
            blocks = [(h // r, w // r, bn.num_features) for bn, r in stages]
            self.grid_shape = blocks[-1]
            return blocks, None
        t = v.trunk
        blocks = [(h // f["reduction"], w // f["reduction"], f["num_chs"]) for f in t.feature_info]
        tokens = hasattr(t, "num_prefix_tokens")
        self.grid_shape = (*blocks[-1][:2], t.num_features)
        return blocks, (int(t.num_prefix_tokens) if tokens else None)

    def _pooling(self, v) -> str:
        if self.kind == "resnet":
            return "attention pool"
        if self.kind == "vit":
            return POOLING[v.pool_type]
        if "pool" in v.head:  # open_clip's abs_attn / rot_attn head
            return "attention pool"
        pool = getattr(v.trunk, "global_pool", None)
        pool = pool if isinstance(pool, str) else v.trunk.head.global_pool.pool_type  # conv nets: in the head
        return POOLING.get(pool, pool) if self.prefix_tokens is not None else f"{pool} pool of the feature map"

    def fields(self) -> list[FieldSpec]:
        out = [FieldSpec("global", (self.global_dim,)), FieldSpec("grid", self.grid_shape)]
        if self.prefix_tokens:
            out.append(FieldSpec("prefix", (self.prefix_tokens, self.grid_shape[2])))
        return out + [FieldSpec(name, shape) for name, shape in self.layer_shapes.items()]


    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One pass of the vision tower: global, grid (N, h, w, D), prefix, and the taken blocks (N, h, w, D)."""
        v, take, out = self.model.visual, sorted(self.take), {}
        if self.kind == "vit":
            t = v._embeds(x)
            t, inter = v.transformer.forward_intermediates(t, indices=take) if take else (v.transformer(t), [])
            pooled, _ = v._pool(t)
            out["global"] = pooled @ v.proj if v.proj is not None else pooled
            normed = t if v.final_ln_after_pool else v.ln_post(t)
            feats, inter = normed, [i[:, 1:] for i in inter]
        elif self.kind == "resnet":
            blocks, inter, feats = [v.stem, v.layer1, v.layer2, v.layer3, v.layer4], [], x
            for i, block in enumerate(blocks):
                feats = block(feats)
                if i in take:
                    inter.append(feats)
            out["global"] = v.attnpool(feats)
        else:
            t = v.trunk
            feats, inter = t.forward_intermediates(x, indices=take, output_fmt="NCHW") if take else \
                (t.forward_features(x), [])
            out["global"] = v.head(t.forward_head(feats))
        if self.prefix_tokens is None:  # conv: NCHW maps
            out["grid"] = feats.permute(0, 2, 3, 1)
            inter = [i.permute(0, 2, 3, 1) for i in inter]
        else:
            p, n = self.prefix_tokens, len(x)
            out["grid"] = feats[:, p:].reshape(n, *self.grid_shape[:2], -1)
            if p:
                out["prefix"] = feats[:, :p]
            inter = [i.permute(0, 2, 3, 1) if i.ndim == 4 else i.reshape(n, *self.grid_shape[:2], -1) for i in inter]
        by_block = dict(zip(take, inter))
        out.update({name: by_block[t] for name, t in zip(self.layer_shapes, self.take)})
        return out

    def tokenizer(self):
        """The model's own tokenizer (`open_clip.get_tokenizer`); a Hugging Face one from the files beside the
        weights when they are there, else from the hub (offline: an error naming what to place where)."""
        if self._tokenizer is None:
            import open_clip

            model = self.config["model"]
            text_cfg = open_clip.get_model_config(model)["text_cfg"]
            hf = text_cfg.get("hf_tokenizer_name")
            local = self.weights_dir if hf and self.weights_dir and any(
                (self.weights_dir / f).exists() for f in TOKENIZER_FILES) else None
            try:
                if local:
                    from open_clip.tokenizer import HFTokenizer

                    self._tokenizer = HFTokenizer(str(local), context_length=text_cfg.get("context_length"),
                                                  tokenizer_mode=text_cfg.get("tokenizer_mode"),
                                                  **text_cfg.get("tokenizer_kwargs", {}))
                else:
                    self._tokenizer = open_clip.get_tokenizer(model)
            except (ImportError, OSError, ValueError) as e:
                where = self.weights_dir or "the weights file's folder"
                raise RuntimeError(
                    f"text for open_clip model {model!r} needs the Hugging Face tokenizer {hf!r} and the "
                    f"`transformers` package: place that hub repo's tokenizer files ({', '.join(TOKENIZER_FILES)}, "
                    f"and tokenizer.model where the repo has one) in {where}, beside the weights file "
                    f"(fetch_weights does), or let the hub client reach it ({type(e).__name__}: {e})") from e
        return self._tokenizer

    @torch.inference_mode()
    def encode_text(self, captions: list[str]) -> np.ndarray:
        """Text embeddings (N, D): `model.encode_text` of the model's own tokenization, not normalised, like
        `global`; captions longer than the context are truncated by the tokenizer."""
        tokens = self.tokenizer()(list(captions)).to(self.device)
        with self.autocast():
            out = self.model.encode_text(tokens)
        return out.float().cpu().numpy()


def build_model(model: str, tag: str, path: str) -> torch.nn.Module:
    """The architecture (with the tag's QuickGELU), random init, then the weights file loaded strictly."""
    import open_clip

    cfg = check_names(model, tag)
    quick_gelu = bool(cfg.get("quick_gelu", open_clip.get_model_config(model).get("quick_gelu", False)))
    # pretrained_text=False: no hub download of an HF text tower's own weights; the file holds all of them
    m = open_clip.create_model(model, pretrained=None, pretrained_text=False, quick_gelu=quick_gelu)
    load_strict(m, path)
    return m.float().eval()


def build(preset, weights: str | None, device, amp: bool, options: dict[str, Any]) -> OpenClipExtractor:
    model, tag = options["model"], options["pretrained"]
    check_names(model, tag)
    from visfeat.extractors.hub import weights_file

    path, sha = weights_file("open_clip", model, tag, weights)  # never the network: fetch_weights fetched it
    m = build_model(model, tag, path)
    return OpenClipExtractor(preset.name, options, sha, device, amp, m, weights_dir=Path(path).parent)
