"""Two feature stores equal in every dataset and attribute (the creation time aside): what a resumed, rerun or
differently loaded extraction must give against an uninterrupted one."""
import h5py
import numpy as np


def stores_identical(a, b) -> None:
    """Same datasets and attributes, the creation time aside."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        attrs_a = {k: v for k, v in fa.attrs.items() if k != "created"}
        attrs_b = {k: v for k, v in fb.attrs.items() if k != "created"}
        assert attrs_a == attrs_b
        names_a, names_b = [], []
        fa.visit(names_a.append)
        fb.visit(names_b.append)
        assert names_a == names_b
        for n in names_a:
            if isinstance(fa[n], h5py.Dataset):
                assert fa[n].dtype == fb[n].dtype and fa[n].shape == fb[n].shape, n
                assert np.array_equal(fa[n][()], fb[n][()]), n
