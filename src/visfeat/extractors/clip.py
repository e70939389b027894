"""OpenAI CLIP global embeddings and grid features, as jianjieluo/OpenAI-CLIP-Feature extracts them.

Model code is open_clip's build of the OpenAI architectures; checkpoints are the official TorchScript archives
(or plain state dicts in the same key layout). What we take (OpenAI-CLIP-Feature, clip/model.py and basic.py):
- ResNets: grid = layer4 output before attnpool, (H, W, C); global = attnpool output.
- ViTs: grid = transformer tokens x[:, 1:] before ln_post and proj; global = ln_post(x[:, 0]) @ proj.
- global is NOT L2-normalised; ViT-B/16, ViT-L/14 and the 448 variants avg-pool the grid 2x2 (stride 2).
- *_448: Resize((448, 448)) bicubic (aspect not kept), position embeddings (ViT, and the RN attnpool's)
  resized with timm's resize_pos_embed, first row kept.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import transforms as T

from visfeat.extractors.base import FieldSpec, TransformExtractor

# openai/CLIP clip/clip.py _transform
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_clip_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The official files are TorchScript archives; plain state dicts (optionally under 'state_dict') work too."""
    try:
        return torch.jit.load(path, map_location="cpu").state_dict()
    except RuntimeError:
        pass
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    return {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}


def build_clip_model(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    from open_clip.model import build_model_from_openai_state_dict

    required = ("visual.", "token_embedding.weight", "text_projection", "positional_embedding")
    missing = [r for r in required if not any(k.startswith(r) for k in state_dict)]
    if missing:
        raise KeyError(f"not an OpenAI CLIP checkpoint: missing keys starting with {missing}")
    model = build_model_from_openai_state_dict(state_dict)
    return model.float().eval()


def sequence_first(model: torch.nn.Module) -> None:
    """Run the transformers sequence-first, (L, N, D), as OpenAI's clip/model.py does; open_clip's are batch-first.
    Why, under AMP only: autocast turns nn.MultiheadAttention's fused path off, and the unfused one hands F.linear
    a transposed (L, N, D) view of batch-first input, which matmul cannot fold into one matrix product: it
    expands the weight once per token, so bf16 ran slower than fp32 (bench/README.md, "Settings behind the CPU
    defaults"). Fed sequence-first the view is contiguous. The same operations otherwise: the outputs are equal."""
    blocks = [model.transformer] + ([model.visual.transformer] if hasattr(model.visual, "transformer") else [])
    for t in blocks:
        t.batch_first = False
        for block in t.resblocks:
            block.attn.batch_first = False


def resize_pos_embed(pos: torch.Tensor, new_grid: int, mode: str = "bicubic") -> torch.Tensor:
    """Resize (1 + g*g, D) position embeddings to (1 + n*n, D), first row kept (timm resize_pos_embed semantics).

    timm >= 0.5 interpolates bicubic (align_corners=False, no antialias); timm 0.4.x, current when
    OpenAI-CLIP-Feature was written, used bilinear: `mode` selects.
    """
    first, grid = pos[:1], pos[1:]
    g = int(math.isqrt(grid.shape[0]))
    grid = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    kw = {"antialias": False} if mode == "bicubic" else {}
    grid = F.interpolate(grid.float(), size=(new_grid, new_grid), mode=mode, align_corners=False, **kw)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1).to(pos.dtype)
    return torch.cat([first, grid], dim=0)


class ClipExtractor(TransformExtractor):
    def __init__(self, preset: str, options: dict[str, Any], weights_sha256: str, device, amp: bool,
                 model: torch.nn.Module):
        super().__init__(preset, options, weights_sha256, device, amp)
        self.model = model
        v = model.visual
        self.is_vit = hasattr(v, "class_embedding")
        self.channels_last = "never" if self.is_vit else "always"  # a ViT has one conv (patches)
        size = int(options["image_size"])
        native = int(v.image_size[0] if isinstance(v.image_size, (tuple, list)) else v.image_size)
        stride = v.patch_size[0] if self.is_vit else 32
        if size != native:
            new_grid = size // stride
            with torch.no_grad():
                if self.is_vit:
                    v.positional_embedding = torch.nn.Parameter(
                        resize_pos_embed(v.positional_embedding.data, new_grid, options["pos_interp"])
                    )
                else:
                    ap = v.attnpool
                    ap.positional_embedding = torch.nn.Parameter(
                        resize_pos_embed(ap.positional_embedding.data, new_grid, options["pos_interp"])
                    )
        self.grid_hw = size // stride // int(options["grid_pool"])
        self.grid_dim = v.transformer.width if self.is_vit else v.attnpool.k_proj.in_features
        self.global_dim = model.text_projection.shape[1]
        interp = T.InterpolationMode.BICUBIC
        resize = T.Resize((size, size), interpolation=interp) if options["squash_resize"] else T.Resize(size, interpolation=interp)
        self.transform = T.Compose([resize, T.CenterCrop(size), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
        if self.amp:
            sequence_first(self.model)
        self.model = self.placed(self.model)

    def fields(self) -> list[FieldSpec]:
        g = self.grid_hw
        return [FieldSpec("global", (self.global_dim,)), FieldSpec("grid", (g, g, self.grid_dim))]

    def _visual(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.model.visual
        if self.is_vit:
            t = v.transformer(v._embeds(x))
            n = t.shape[0]
            s = int(math.isqrt(t.shape[1] - 1))
            grid = t[:, 1:].reshape(n, s, s, -1).permute(0, 3, 1, 2)  # NCHW, row-major patches
            glob = v.ln_post(t[:, 0]) @ v.proj
        else:
            grid = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x)))))
            glob = v.attnpool(grid)
        return glob, grid

    def run(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        glob, grid = self._visual(images)
        p = int(self.config["grid_pool"])
        if p > 1:
            grid = F.avg_pool2d(grid, kernel_size=p, stride=p)
        return {"global": glob, "grid": grid.permute(0, 2, 3, 1)}

    @torch.inference_mode()
    def encode_text(self, captions: list[str]) -> np.ndarray:
        """Unnormalised text embeddings of captions, cleaned as OpenAI-CLIP-Feature clip_textual_feats.py does
        (raw.lower().strip().strip('.')). Captions over 77 tokens are truncated (the original raises)."""
        import open_clip

        texts = [c.lower().strip().strip(".") for c in captions]
        tokens = open_clip.tokenize(texts).to(self.device)  # OpenAI's 49408-token BPE, context 77, truncating
        with self.autocast():
            out = self.model.encode_text(tokens)
        return out.float().cpu().numpy()


def build(preset, weights: str | None, device, amp: bool, options: dict[str, Any]) -> ClipExtractor:
    from visfeat.extractors.weights import resolve_weights

    path, sha = resolve_weights(preset, weights)
    model = build_clip_model(load_clip_state_dict(path))
    return ClipExtractor(preset.name, options, sha, device, amp, model)
