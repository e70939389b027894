"""store/summary.py: a store's image count and failed ids in the line a run ends with."""
import visfeat
from visfeat.store.summary import SHOWN_FAILED, failed_text, read_summary


def test_failed_text_names_the_first_ids_and_counts_the_rest():
    ids = [f"img{i}" for i in range(SHOWN_FAILED + 3)]
    assert failed_text([], "s.h5") == "0 failed"
    assert failed_text(ids[:2], "s.h5") == "2 failed (img0, img1; visfeat inspect s.h5)"
    text = failed_text(ids, "s.h5")
    assert text.startswith(f"{len(ids)} failed (img0, ") and f"img{SHOWN_FAILED - 1} ... and 3 more" in text
    assert f"img{SHOWN_FAILED}," not in text and text.endswith("; visfeat inspect s.h5)")


def test_read_summary_is_the_stores_counts(bad_dir, tmp_path):
    from visfeat.engine.items import folder_items
    from visfeat.engine.run import run_extraction

    folder, cases = bad_dir
    run_extraction(lambda: visfeat.load_extractor("effnet-lite0", device="cpu"), folder_items(str(folder)),
                   tmp_path / "s.h5", workers=0)
    s = read_summary(tmp_path / "s.h5")
    store = visfeat.open(tmp_path / "s.h5")
    assert s.images == len(store) == sum(r is None for r in cases.values())
    assert list(s.failed) == [i for i, _ in store.failed] and len(s.failed) == 4
    assert s.line() == f"{tmp_path / 's.h5'}: {s.images} images, " + failed_text(s.failed, tmp_path / "s.h5")
