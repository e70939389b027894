import hashlib
import tarfile

import pytest
from helpers.http_server import FileServer, zip_bytes

from visfeat.extractors.weights import WeightFile, WeightsMissing, fetch
from visfeat.sources.download import ChecksumError, DownloadError, download, unpack

DATA = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(DATA).hexdigest()


def test_resumes_after_dropped_connection(tmp_path):
    with FileServer({"/w.bin": DATA}) as srv:
        srv.drop_after["/w.bin"] = 300_000
        out = download(srv.url + "/w.bin", tmp_path / "w.bin", sha256=SHA, backoff=0.01)
        assert out.read_bytes() == DATA
        assert srv.requests[0] == ("/w.bin", None) and srv.requests[1] == ("/w.bin", "bytes=300000-")
        assert not (tmp_path / "w.bin.part").exists()


def test_checksum_mismatch_moved_aside_with_both_sums(tmp_path):
    with FileServer({"/w.bin": DATA}) as srv:
        srv.corrupt.add("/w.bin")
        with pytest.raises(ChecksumError) as e:
            download(srv.url + "/w.bin", tmp_path / "w.bin", sha256=SHA, backoff=0.01)
        bad = hashlib.sha256(DATA[:10] + bytes([DATA[10] ^ 0xFF]) + DATA[11:]).hexdigest()
        assert SHA in str(e.value) and bad in str(e.value)
        assert not (tmp_path / "w.bin").exists() and (tmp_path / "w.bin.corrupt").exists()


def test_weights_fetch_and_offline_message(tmp_path):
    with FileServer({"/RN50.pt": DATA}) as srv:
        wf = WeightFile("RN50.pt", srv.url + "/RN50.pt", SHA)
        dest = tmp_path / "resources/weights/clip-rn50/RN50.pt"
        assert fetch("clip-rn50", wf, dest).read_bytes() == DATA
        missing = WeightFile("RN101.pt", srv.url + "/RN101.pt", SHA)
        with pytest.raises(WeightsMissing) as e:
            fetch("clip-rn101", missing, tmp_path / "resources/weights/clip-rn101/RN101.pt", retries=1)
        assert "place RN101.pt" in str(e.value) and "resources/weights/clip-rn101/RN101.pt" in str(e.value)
    offline = WeightFile("X.pt", "http://127.0.0.1:9/X.pt", SHA)  # nothing listens on port 9
    with pytest.raises(WeightsMissing, match="place X.pt"):
        fetch("p", offline, tmp_path / "X.pt", timeout=2, retries=1)


def test_unpack_is_atomic_and_redone(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes({"imgs/a.txt": b"1", "imgs/b.txt": b"2"}))
    dest = tmp_path / "ds"
    # a killed unpack leaves only the temporary sibling: never a tree at dest
    (tmp_path / ".ds.unpacking" / "imgs").mkdir(parents=True)
    (tmp_path / ".ds.unpacking" / "imgs" / "half").write_bytes(b"x")
    unpack(archive, dest)
    assert sorted(p.name for p in (dest / "imgs").iterdir()) == ["a.txt", "b.txt"]
    assert not (tmp_path / ".ds.unpacking").exists()
    tar = tmp_path / "a.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(dest / "imgs", arcname="imgs")
    unpack(tar, tmp_path / "ds2")
    assert (tmp_path / "ds2/imgs/a.txt").read_bytes() == b"1"
    (tmp_path / "junk.bin").write_bytes(b"junk")
    with pytest.raises(DownloadError, match="not a zip or tar"):
        unpack(tmp_path / "junk.bin", tmp_path / "ds3")


def test_free_disk_checked_before_downloading(tmp_path):
    with FileServer({"/big.zip": DATA}) as srv:
        with pytest.raises(DownloadError, match="not enough free disk .* GB free"):
            download(srv.url + "/big.zip", tmp_path / "big.zip", size=10**15)  # a petabyte archive
        assert srv.requests == []  # refused before any byte was asked for
