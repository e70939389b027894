"""Field declarations shared by extractors and the store (torch-free, so CPU steps can read them)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldSpec:
    """One output field: name, per-image shape (per row when `ragged` names a group whose row count varies per
    image, e.g. regions) and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    ragged: str | None = None
