import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from helpers.stores import stores_identical
from helpers.throttle import throttled_env

import visfeat
import visfeat.engine.run
from visfeat.engine.forward import Forward
from visfeat.engine.items import folder_items, read_list
from visfeat.engine.loaders import ImageSamples
from visfeat.engine.run import run_extraction
from visfeat.extractors.base import Extractor, FieldSpec


def test_effnet_pipeline_equals_direct_model_and_classifies(sample_dir, bad_dir, tmp_path):
    bad, cases = bad_dir
    items = folder_items(sample_dir) + folder_items(bad)
    ex = visfeat.load_extractor("effnet-lite0", device="cpu")
    res = run_extraction(ex, items, tmp_path / "e.h5", batch_size=4, workers=2)
    s = visfeat.open(tmp_path / "e.h5")
    failed = dict(s.failed)
    assert set(failed) == {k for k, v in cases.items() if v}
    for k, reason in failed.items():
        assert reason.startswith(cases[k])
    assert res["images"] == len(s) == len(items) - len(failed)
    # direct: the same images one at a time through the model
    from visfeat.sources.images import load_image

    for it in items[:3]:
        x = ex.preprocess(load_image(it.abspath))["image"][None]
        with torch.no_grad():
            grid = ex.model.forward_features(x)
            logits = ex.model(x)
        np.testing.assert_allclose(s[it.image_id]["grid"], grid[0].permute(1, 2, 0).numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(s[it.image_id]["logits"], logits[0].numpy(), rtol=1e-4, atol=1e-3)
    # the stored global feature classifies the photos (the offline default's own check)
    cls = ex.model.classifier
    top1 = {i: int(cls(torch.from_numpy(s[i]["global"])).argmax()) for i in ("chelsea", "coffee", "rocket")}
    assert top1 == {"chelsea": 285, "coffee": 967, "rocket": 657}
    assert tuple(s["rotated"]["image_hw"]) == (96, 64)  # EXIF applied: (h, w) of the image as seen


def test_in_process_decoding_equals_workers_and_waits_for_the_forward(sample_dir, bad_dir, tmp_path, monkeypatch):
    """workers 0: the main process decodes with one thread per core, a batch at a time, never during a forward;
    the store is the one DataLoader workers write, failures included."""
    items = folder_items(sample_dir) + folder_items(bad_dir[0])
    ex = visfeat.load_extractor("effnet-lite0", device="cpu")
    run_extraction(ex, items, tmp_path / "workers.h5", batch_size=3, workers=2)
    state = {"forward": False, "overlaps": 0, "threads": set()}
    images = ImageSamples.__getitem__
    forward = ex.forward

    def decode(self, i):
        state["overlaps"] += state["forward"]
        state["threads"].add(threading.get_ident())
        return images(self, i)

    def timed_forward(batch):
        state["forward"] = True
        try:
            return forward(batch)
        finally:
            state["forward"] = False

    monkeypatch.setattr(ImageSamples, "__getitem__", decode)
    monkeypatch.setattr(visfeat.engine.run, "model_threads", lambda extractor, workers: 2)
    monkeypatch.setattr(ex, "forward", timed_forward)
    run_extraction(ex, items, tmp_path / "inproc.h5", batch_size=3, workers=0)
    stores_identical(tmp_path / "workers.h5", tmp_path / "inproc.h5")
    assert state["overlaps"] == 0 and len(state["threads"]) == 2 and threading.get_ident() not in state["threads"]


def test_kill_and_resume_gives_identical_file(sample_dir, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{i.image_id}\t{i.path}\n" for i in folder_items(sample_dir)))
    args = [sys.executable, "-m", "visfeat", "extract", "--preset", "effnet-lite0", "--list", str(lst),
            "--root", str(sample_dir), "--batch-size", "2", "--workers", "1", "--device", "cpu"]
    subprocess.run(args + ["--out", str(tmp_path / "full.h5")], check=True, capture_output=True)
    out = tmp_path / "resumed.h5"
    env = {**os.environ, **throttled_env(tmp_path / "throttle", 1.0)}
    p = subprocess.Popen(args + ["--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    parts = tmp_path / "resumed.h5.parts"
    deadline = time.time() + 120
    while len(list(parts.glob("b*.npz"))) < 2 and time.time() < deadline:
        time.sleep(0.1)
    p.send_signal(signal.SIGKILL)
    p.wait()
    flushed = len(list(parts.glob("b*.npz")))
    assert 2 <= flushed < 4 and not out.exists()
    r = subprocess.run(args + ["--out", str(out)], check=True, capture_output=True, text=True)
    assert f"resuming after {2 * flushed} images" in r.stderr
    stores_identical(tmp_path / "full.h5", out)
    assert not parts.exists()
    r = subprocess.run(args + ["--out", str(out)], check=True, capture_output=True, text=True)
    assert "nothing to do" in r.stderr


@pytest.mark.parametrize("workers", ["auto", "1"])
def test_ctrl_c_ends_in_one_line_keeps_the_parts_and_the_rerun_resumes(sample_dir, tmp_path, workers):
    """Ctrl-C reaches the whole foreground process group (DataLoader workers too), between two flushed batches.
    The child runs on one core, so `auto` is 0 workers, and its log says so."""
    lst = tmp_path / "list.txt"
    items = folder_items(sample_dir)
    lst.write_text("".join(f"{i.image_id}\t{i.path}\n" for i in items))
    out = tmp_path / "o.h5"
    args = [sys.executable, "-m", "visfeat", "extract", "--preset", "effnet-lite0", "--list", str(lst), "--root",
            str(sample_dir), "--batch-size", "2", "--device", "cpu", "--workers", workers, "--out", str(out)]
    one = min(os.sched_getaffinity(0))
    env = {**os.environ, **throttled_env(tmp_path / "throttle", 1.0)}
    p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, preexec_fn=lambda: os.sched_setaffinity(0, {one}))
    parts = tmp_path / "o.h5.parts"
    deadline = time.time() + 120
    while len(list(parts.glob("b*.npz"))) < 2 and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=60)
    flushed = len(list(parts.glob("b*.npz")))
    assert p.returncode == 130 and "Traceback" not in err, err
    assert err.splitlines()[-1] == (f"visfeat extract: interrupted after {2 * flushed} of {len(items)} images; "
                                    "rerun the same command to resume")
    assert ("workers auto -> 0 (1 core)" if workers == "auto" else "1 workers") in err
    assert re.search(rf"\[effnet-lite0\] 2/{len(items)} images \(\S+%\) \S+ img/s, \d+:\d\d:\d\d left", err), err
    assert 2 <= flushed < len(items) // 2 and not out.exists()
    r = subprocess.run(args, capture_output=True, text=True, check=True)
    assert f"resuming after {2 * flushed} images" in r.stderr
    assert len(visfeat.open(out)) == len(items) and not parts.exists()


def test_after_flush_hook_runs_once_each_batch_is_on_disk(sample_dir, tmp_path, monkeypatch):
    """The hook the kill-and-resume tests slow a child down with (see tests/helpers/throttle.py)."""
    parts = tmp_path / "h.h5.parts"
    seen = []
    monkeypatch.setattr(visfeat.engine.run, "after_flush", lambda k: seen.append((k, len(list(parts.glob("b*.npz"))))))
    items = folder_items(sample_dir)
    run_extraction(visfeat.load_extractor("effnet-lite0", device="cpu"), items, tmp_path / "h.h5", batch_size=2,
                   workers=0)
    assert seen == [(k, k + 1) for k in range(-(-len(items) // 2))]


class _OOMOnce(Extractor):
    """Runs on the CPU but raises CUDA's OOM error for batches above a size, as a GPU would."""

    preset, config, device = "t", {}, "cpu"

    def __init__(self, limit):
        self.limit, self.calls = limit, []

    def fields(self):
        return [FieldSpec("x", (1,))]

    def preprocessor(self):
        return dict

    def forward(self, batch):
        n = len(batch["v"])
        self.calls.append(n)
        if n > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return [{"x": v[None].numpy()} for v in batch["v"]]


def test_oom_halves_batch_and_goes_on():
    ex = _OOMOnce(limit=3)
    fwd = Forward(ex, cap=8)
    out = fwd({"v": torch.arange(8.0)}, 8)
    assert [o["x"][0] for o in out] == list(range(8)) and fwd.cap == 2
    assert ex.calls == [8, 4, 2, 2, 2, 2]


def test_read_list_forms(tmp_path):
    (tmp_path / "l.txt").write_text("a/b.jpg\nid2\tc.png\n")
    items = read_list(tmp_path / "l.txt")
    assert [(i.image_id, i.path) for i in items] == [("a/b", "a/b.jpg"), ("id2", "c.png")]
    assert items[0].abspath == str(tmp_path / "a/b.jpg")
    (tmp_path / "dup.txt").write_text("x\ta.jpg\nx\tb.jpg\n")
    with pytest.raises(ValueError, match="repeats line 1"):
        read_list(tmp_path / "dup.txt")
