"""The one strict state-dict load every checkpoint reader uses: a mismatch is an error naming the keys."""
from __future__ import annotations

import torch


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], path, what: str,
                optional: tuple[str, ...] = ()) -> None:
    """Load `state` into `model`: every key present (except those starting with `optional`), no extra key, every
    shape equal; tensors are cast to the model's dtypes. Raises KeyError naming the first offending keys."""
    own = model.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not (optional and k.startswith(optional)))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise KeyError(f"{path}: the weights do not fit {what}: {len(missing)} missing (e.g. {missing[:4]}), "
                       f"{len(unexpected)} unexpected (e.g. {unexpected[:4]})")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise KeyError(f"{path}: {k} has shape {tuple(v.shape)}, {what} expects {tuple(own[k].shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
