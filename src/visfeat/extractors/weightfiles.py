"""Reading the weights files the hub-named families load (open_clip, timm: safetensors or a torch state dict).
Its own module, imported only by those families, so the other families' envs need no safetensors."""
from __future__ import annotations

import torch


def file_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a weights file holds, read without loading the tensors where the format allows (a
    safetensors header; a memory-mapped state dict), so a builder can refuse a file of another model before the
    library would silently resize what does not fit (position embeddings of another image size)."""
    if str(path).endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    try:
        sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:  # not a zip archive: mmap is unavailable
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict):  # a checkpoint wrapping its state dict, as timm's and open_clip's loaders accept
        sd = next((sd[k] for k in ("state_dict", "model") if isinstance(sd.get(k), dict)), sd)
    else:
        sd = {}
    return {k.removeprefix("module."): tuple(v.shape) for k, v in sd.items() if hasattr(v, "shape")}
