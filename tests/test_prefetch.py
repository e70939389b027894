"""The prefetcher (prefetch.py): the identity on the CPU; its thread (forced on here, on CPU tensors) keeps
order, passes exceptions on and stops when the consumer does; `run_extraction`'s stores do not change with it."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from helpers.photos import photo
from PIL import Image
from helpers.stores import stores_identical

import visfeat
from visfeat.engine import prefetch as prefetch_mod
from visfeat.engine.items import folder_items
from visfeat.engine.prefetch import prefetch
from visfeat.engine.run import run_extraction


def batches(n: int) -> list[dict]:
    """Batches shaped like extract._Collate's: only "batch" holds tensors (a stacked one, a gridfeats list)."""
    return [{"n_items": 2, "ok": [2 * k, 2 * k + 1], "hw": [(4, 5), (4, 5)], "failed": [],
             "batch": {"image": torch.full((2, 3, 4, 5), float(k)), "input_hw": torch.tensor([[4, 5], [4, 5]]),
                       "images": [torch.zeros(3, 4, 5), torch.ones(3, 4, 5)]}}
            for k in range(n)]


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "visfeat-prefetch"]


def test_cpu_default_is_the_identity():
    src = iter(batches(3))
    before = threading.active_count()
    assert prefetch(src, "cpu") is src
    assert prefetch(src, torch.device("cpu"), threaded=None) is src
    assert threading.active_count() == before and not prefetch_threads()


def test_threaded_keeps_batches_and_order():
    bs = batches(7)
    p = prefetch(iter(bs), "cpu", threaded=True)
    assert isinstance(p, prefetch_mod.Prefetcher)
    got = list(p)
    assert [id(b) for b in got] == [id(b) for b in bs]  # the same objects, in order (no copies on the CPU)
    assert next(p, None) is None  # stays exhausted
    p.thread.join(5)
    assert not p.thread.is_alive()


def test_source_exception_reaches_the_consumer():
    def source():
        for k, b in enumerate(batches(6)):
            if k == 3:
                raise ValueError("bad batch 3")
            yield b

    p = prefetch(source(), "cpu", threaded=True)
    seen = []
    with pytest.raises(ValueError, match="bad batch 3"):
        for b in p:
            seen.append(int(b["batch"]["image"][0, 0, 0, 0]))
    assert seen == [0, 1, 2]
    assert not p.thread.is_alive()


def endless(closed: list):
    k = 0
    try:
        while True:
            yield {"batch": {"image": torch.full((1, 3, 2, 2), float(k))}}
            k += 1
    finally:
        closed.append(k)


def test_break_then_close_ends_the_thread_and_closes_the_source():
    closed: list = []
    p = prefetch(endless(closed), "cpu", threaded=True)
    for _ in p:
        break
    p.close()
    p.thread.join(5)
    assert not p.thread.is_alive()
    assert closed  # the generator's finally ran (in the producer thread)


def test_dropping_the_iterator_after_an_error_ends_the_thread():
    """extract._extract's loop keeps no handle to close: an exception there drops the iterator."""
    closed: list = []

    def loop():
        it = prefetch(endless(closed), "cpu", threaded=True)
        next(it)
        raise RuntimeError("forward failed")

    with pytest.raises(RuntimeError):
        loop()
    for t in prefetch_threads():
        t.join(5)
    assert not prefetch_threads() and closed


def jpegs(d: Path) -> Path:
    d.mkdir()
    for n in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png"):
        photo(n).resize((320, 240), Image.BICUBIC).save(d / f"{Path(n).stem}.jpg", quality=90)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return d


@pytest.mark.parametrize("workers,decode", [(0, "pil"), (1, "pil"), (0, "gpu")])
def test_run_extraction_store_unchanged_with_prefetch_thread(tmp_path, monkeypatch, workers, decode):
    items = folder_items(jpegs(tmp_path / "img"))
    ex = visfeat.load_extractor("effnet-lite0", device="cpu", decode=decode)
    run_extraction(ex, items, tmp_path / "plain.h5", batch_size=2, workers=workers)
    made = []
    orig = prefetch_mod.prefetch

    def forced(source, device, threaded=None):
        p = orig(source, device, threaded=True)
        made.append(p)
        return p

    monkeypatch.setattr(prefetch_mod, "prefetch", forced)
    run_extraction(ex, items, tmp_path / "threaded.h5", batch_size=2, workers=workers)
    assert len(made) == 1 and isinstance(made[0], prefetch_mod.Prefetcher)
    made[0].thread.join(5)
    assert not made[0].thread.is_alive()
    stores_identical(tmp_path / "plain.h5", tmp_path / "threaded.h5")
    s = visfeat.open(tmp_path / "threaded.h5")
    assert len(s) == 5 and [i for i, _ in s.failed] == ["broken"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_images_on_device_sizes_on_host():
    bs = batches(4)
    got = list(prefetch(iter(bs), "cuda"))
    for b, g in zip(bs, got):
        assert g["batch"]["image"].is_cuda and torch.equal(g["batch"]["image"].cpu(), b["batch"]["image"])
        assert all(t.is_cuda for t in g["batch"]["images"])
        assert not g["batch"]["input_hw"].is_cuda and g["ok"] == b["ok"] and g["hw"] == b["hw"]
