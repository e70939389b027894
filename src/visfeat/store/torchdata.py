"""A torch Dataset over a feature store. Each DataLoader worker opens its own HDF5 handle (FeatureStore reopens
per process), so workers never share one."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from visfeat.store.format import IMAGE_ID
from visfeat.store.reader import FeatureStore


class FeatureDataset(Dataset):
    def __init__(self, path: str, fields: list[str] | None = None):
        self.store = FeatureStore(path)
        self.fields = fields
        self.ids = self.store.ids

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, image_id: str) -> dict:
        return self[self.store.index[image_id]]

    def __getitem__(self, i):
        if isinstance(i, str):
            return self.get(i)
        row = self.store.row(int(i))
        keep = self.fields or list(row)
        out = {k: torch.from_numpy(np.ascontiguousarray(row[k])) for k in keep if k in row}
        out[IMAGE_ID] = self.ids[int(i)]
        return out
