"""sources/manifest.py: shard membership by a stable hash of the id, decided once by the manifest job; each job
reads only its own rows, the same items in the same order as the whole manifest cut by `shard_of` gave."""
import hashlib
import io
import os

import pandas as pd
import pyarrow.parquet as pq
import pytest

from visfeat.engine.items import manifest_items
from visfeat.sources.folder import DatasetError, scan_folder
from visfeat.sources.manifest import (build_manifest, manifest_root, manifest_shards, per_image_rows, read_shard,
                                      shard_index, shard_of, write_manifest, write_shard)
from visfeat.sources.sample import SAMPLE_PHOTOS


def test_manifest_reads_headers(sample_dir):
    df = build_manifest(sample_dir, scan_folder(sample_dir))
    assert len(df) == len(SAMPLE_PHOTOS)
    row = df.set_index("image_id").loc["chelsea"]
    assert (row.width, row.height) == (451, 300) and row.bytes > 0


def test_shards_deterministic_balanced_and_complete(tmp_path):
    n = 4000
    df = pd.DataFrame({"image_id": [f"id{i:04d}" for i in range(n)][::-1], "path": [f"p{i}" for i in range(n)]})
    lines = []
    for i in range(4):
        write_shard(df, 4, i, tmp_path / f"{i}.txt")
        lines.append((tmp_path / f"{i}.txt").read_text().splitlines())
    assert all(abs(len(x) - n / 4) < 0.1 * n / 4 for x in lines), [len(x) for x in lines]  # balanced by the hash
    ids = [line.split("\t")[0] for x in lines for line in x]
    assert sorted(ids) == sorted(df["image_id"]) and len(set(ids)) == n  # every id once
    assert all(x == sorted(x) for x in lines)  # sorted by id within a shard
    write_shard(df.sample(frac=1, random_state=1), 4, 2, tmp_path / "again.txt")
    assert (tmp_path / "again.txt").read_text().splitlines() == lines[2]  # whatever the manifest's row order
    assert sum(len(shard_of(df.head(2), 4, i)) for i in range(4)) == 2  # fewer images than shards: some empty


def test_shard_membership_is_stable_when_images_are_added_or_removed():
    """Membership by a hash of the id, not by position: adding or removing ids moves no other id (issue 17)."""
    old = [f"photos/{i:05d}" for i in range(1000)]
    new = old[:500] + old[501:] + [f"photos/{i:05d}" for i in range(1000, 1010)] + ["a-new/first"]
    before, after = dict(zip(old, shard_index(old, 7))), dict(zip(new, shard_index(new, 7)))
    assert all(after[i] == before[i] for i in new if i in before)
    # a fixed digest, not Python's salted hash(): the same shard in every process, on every machine
    assert shard_index(["chelsea", "coffee", "42"], 1000).tolist() == [
        int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "big") % 1000
        for k in ("chelsea", "coffee", "42")]


def test_shard_reads_give_the_items_of_the_whole_manifest_cut_by_shard_of(tmp_path, sample_dir):
    """A folder's manifest from `visfeat manifest`: every job's items equal those of the old manifest (headers, no
    shard column, read whole and cut by shard_of), in the same order, so existing shard stores resume and reuse."""
    from visfeat.cli import main

    old = build_manifest(sample_dir, scan_folder(sample_dir))
    old.to_parquet(tmp_path / "old.parquet", index=False)
    new = tmp_path / "new.parquet"
    assert main(["manifest", "--source", "folder", "--root", str(sample_dir), "--shards", "3", "--out", str(new)]) == 0
    assert manifest_shards(new) == 3 and manifest_shards(tmp_path / "old.parquet") is None and per_image_rows(new)
    assert list(pq.read_schema(new).names) == ["image_id", "path", "shard"]  # listed only: no header read
    for i in range(3):
        items = manifest_items(new, 3, i, sample_dir)
        assert items == manifest_items(tmp_path / "old.parquet", 3, i, sample_dir)
        assert [it.image_id for it in items] == shard_of(old, 3, i)["image_id"].tolist()
    with pytest.raises(DatasetError, match="cut into 3 shards, not 4"):
        read_shard(new, 0, 4)


def test_row_groups_hold_whole_shards_and_the_order_is_the_jobs(tmp_path):
    n, shards = 5000, 7
    df = pd.DataFrame({"image_id": [f"id{k:05d}" for k in range(n)][::-1], "path": [f"p{k}" for k in range(n)]})
    write_manifest(df, tmp_path / "m.parquet", shards)
    whole = pd.read_parquet(tmp_path / "m.parquet")
    assert whole["shard"].is_monotonic_increasing and whole["shard"].dtype == "int32"
    for i in range(shards):
        part = read_shard(tmp_path / "m.parquet", i)
        assert part["image_id"].tolist() == shard_of(df, shards, i)["image_id"].tolist()
        assert (part["shard"] == i).all()
    # an empty manifest and more shards than images: empty shards read as empty frames
    write_manifest(df.head(2), tmp_path / "few.parquet", 10)
    assert sum(len(read_shard(tmp_path / "few.parquet", i)) for i in range(10)) == 2
    write_manifest(df.head(0), tmp_path / "none.parquet", 2)
    assert read_shard(tmp_path / "none.parquet", 1).empty


class CountingFile(io.RawIOBase):
    """A real file that counts the bytes read from it: what a job touches of the manifest."""

    def __init__(self, path):
        self.f, self.read_bytes = open(path, "rb"), 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=os.SEEK_SET):
        return self.f.seek(offset, whence)

    def tell(self):
        return self.f.tell()

    def readinto(self, b):
        n = self.f.readinto(b)
        self.read_bytes += n
        return n

    def close(self):
        self.f.close()
        super().close()


def test_a_job_reads_only_its_rows_of_a_million_row_manifest(tmp_path):
    """1M rows in 1,000 shards: one job reads the footer and the row group holding its shard, nothing else."""
    n, shards, index = 1_000_000, 1000, 617
    ids = [f"photos/{k:07d}" for k in range(n)]
    write_manifest(pd.DataFrame({"image_id": ids, "path": [i + ".jpg" for i in ids]}), tmp_path / "m.parquet", shards)
    meta = pq.read_metadata(tmp_path / "m.parquet")
    col = meta.schema.names.index("shard")
    holding = [g for g in range(meta.num_row_groups) if meta.row_group(g).column(col).statistics.min <= index
               <= meta.row_group(g).column(col).statistics.max]
    assert len(holding) == 1 and meta.num_row_groups > 10  # the shard lies in one group of many
    f = CountingFile(tmp_path / "m.parquet")
    part = read_shard(f, index)
    assert part["image_id"].tolist() == sorted(i for i, s in zip(ids, shard_index(ids, shards)) if s == index)
    size = os.path.getsize(tmp_path / "m.parquet")
    group = sum(meta.row_group(holding[0]).column(c).total_compressed_size for c in range(meta.num_columns))
    assert f.read_bytes <= group + meta.serialized_size + (1 << 16), (f.read_bytes, group, size)
    assert f.read_bytes < size / 10


def test_tar_manifest_records_its_root_and_no_image_rows(tmp_path):
    from visfeat.sources.tars import tar_rows

    rows = tar_rows([str(tmp_path / "a/0.tar"), str(tmp_path / "a/b/1.tar")], str(tmp_path / "a"), [0, 1])
    write_manifest(rows, tmp_path / "m.parquet", 2, root=tmp_path / "a")
    assert not per_image_rows(tmp_path / "m.parquet") and manifest_root(tmp_path / "m.parquet") == str(tmp_path / "a")
    assert read_shard(tmp_path / "m.parquet", 1)["tar"].tolist() == [os.path.join("b", "1.tar")]
