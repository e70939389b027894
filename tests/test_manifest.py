"""sources/manifest.py: the manifest's image headers, and shard membership by a stable hash of the id."""
import hashlib

import pandas as pd

from visfeat.sources.folder import scan_folder
from visfeat.sources.manifest import build_manifest, shard_index, shard_of, write_shard
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
