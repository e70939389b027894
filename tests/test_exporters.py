"""interop/exporters.py: a store that is not what a layout's readers read is refused in one line naming what they
expect and what the store holds, and nothing is written (the round trips are in tests/test_import_compare.py)."""
from __future__ import annotations

import numpy as np
import pytest
from test_import_compare import random_rows, region_store

from visfeat.cli import main
from visfeat.interop.exporters import export
from visfeat.store.format import FieldSpec
from visfeat.store.writer import writing


def grid_store(path, preset: str, grid: tuple[int, ...], n: int = 2, extra: dict[str, tuple] | None = None) -> None:
    """A store of `n` images holding a fixed `grid` field (and `extra` fields), as `preset` names itself."""
    fields = {"grid": grid, **(extra or {})}
    with writing(path, [FieldSpec(k, s) for k, s in fields.items()], {"preset": preset, "config": "{}"}) as w:
        w.append([f"i{k}" for k in range(n)], [f"i{k}.jpg" for k in range(n)], np.full((n, 2), 32, np.int32),
                 {k: np.ones((n, *s), np.float32) for k, s in fields.items()}, {})


def refused(capsys, fmt: str, store, out) -> str:
    """`visfeat export` of `store`: exit code 2, one line on stderr, nothing at `out`."""
    assert main(["export", "--format", fmt, str(store), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"visfeat export: error: {fmt}: ") and err.count("\n") == 1, err
    assert not out.exists() and not out.with_name(out.name + ".tmp").exists()
    return err


def test_xlxmert_grid8_refuses_a_grid_of_another_shape(tmp_path, capsys):
    grid_store(tmp_path / "effnet.h5", "effnet-lite0", (7, 7, 1280), extra={"global": (1280,), "logits": (1000,)})
    err = refused(capsys, "xlxmert-grid8", tmp_path / "effnet.h5", tmp_path / "grid8.h5")
    assert "8x8x2048" in err and "7x7x1280" in err and "effnet-lite0" in err


def test_xlxmert_grid8_refuses_another_presets_8x8x2048_grid(tmp_path, capsys):
    """gridfeats-x152 pooled to 8x8 has X-LXMERT's shape but res5 features, not grid8-x152's fc6."""
    grid_store(tmp_path / "res5.h5", "gridfeats-x152", (8, 8, 2048))
    err = refused(capsys, "xlxmert-grid8", tmp_path / "res5.h5", tmp_path / "grid8.h5")
    assert "grid8-x152" in err and "gridfeats-x152" in err


def test_xlxmert_grid8_takes_an_imported_store_of_its_shape(tmp_path):
    """A store imported from X-LXMERT's file names no preset: its shape is what can be checked."""
    grid_store(tmp_path / "imported.h5", "", (8, 8, 2048))
    assert export("xlxmert-grid8", str(tmp_path / "imported.h5"), str(tmp_path / "grid8.h5")) == 2


def _regions(n_boxes: list[int], dim: int) -> dict[str, dict]:
    """One image per entry of `n_boxes`, with that many regions of `dim` features."""
    return {f"img{k}": next(iter(random_rows(k, 1, boxes=m, dim=dim).values())) for k, m in enumerate(n_boxes)}


def test_xlxmert_boxes36_refuses_images_without_36_boxes(tmp_path, capsys):
    region_store(tmp_path / "vinvl.h5", _regions([36, 10, 100], 2048))
    err = refused(capsys, "xlxmert-boxes36", tmp_path / "vinvl.h5", tmp_path / "boxes36.h5")
    assert "36 boxes" in err and "2 of 3 images" in err and "10 to 100" in err


def test_xlxmert_boxes36_refuses_features_not_2048_wide(tmp_path, capsys):
    region_store(tmp_path / "narrow.h5", _regions([36, 36], 8))
    err = refused(capsys, "xlxmert-boxes36", tmp_path / "narrow.h5", tmp_path / "boxes36.h5")
    assert "36 boxes x 2048" in err and "(K, 8)" in err


def test_xlxmert_boxes36_writes_36_boxes_of_2048(tmp_path):
    region_store(tmp_path / "butd.h5", _regions([36, 36], 2048))
    assert export("xlxmert-boxes36", str(tmp_path / "butd.h5"), str(tmp_path / "boxes36.h5")) == 2


@pytest.mark.parametrize("fmt", ["lxmert-h5", "lxmert-tsv", "mmf-npy", "xlxmert-boxes36"])
def test_region_layouts_refuse_a_grid_store(tmp_path, capsys, fmt):
    grid_store(tmp_path / "clip.h5", "clip-vit-b32", (7, 7, 768), extra={"global": (512,)})
    err = refused(capsys, fmt, tmp_path / "clip.h5", tmp_path / "out")
    assert "reads regions (features, boxes, obj_id" in err and "(clip-vit-b32) holds grid, global" in err


def test_xmodaler_npz_refuses_a_store_without_global_and_grid(tmp_path, capsys):
    region_store(tmp_path / "butd.h5", _regions([36], 8))
    err = refused(capsys, "xmodaler-npz", tmp_path / "butd.h5", tmp_path / "out")
    assert "grid and global" in err and "butd-r101-36" in err
