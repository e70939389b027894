"""What S3 adds to one extraction job: staging its tar in (the plugin's `download_file`), uploading its shard store
out (`upload_file`), against reading the tar's members in place with ranged GETs (the alternative not built).
A local SeaweedFS server (tests/helpers/s3.py), so the figures are the client + protocol cost without a network;
add the link's bandwidth for a real bucket.

    python bench/s3_staging.py [--tar-mb 256] [--store-mb 40] [--members 200]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    from helpers.s3 import S3Server, make_bucket

    ap = argparse.ArgumentParser()
    ap.add_argument("--tar-mb", type=int, default=256)  # an img2dataset tar of 10k images at 256 px is ~250 MB
    ap.add_argument("--store-mb", type=int, default=40)
    ap.add_argument("--members", type=int, default=200)  # ranged GETs of one ~25 KB JPEG each
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, S3Server(Path(d) / "s3") as server:
        c = server.client()
        make_bucket(server, "bench")
        tar, store = Path(d) / "0.tar", Path(d) / "0.h5"
        tar.write_bytes(os.urandom(a.tar_mb << 20))
        store.write_bytes(os.urandom(a.store_mb << 20))
        c.upload_file(str(tar), "bench", "cc/0.tar")
        t = time.perf_counter()
        c.download_file("bench", "cc/0.tar", str(Path(d) / "staged.tar"))
        down = time.perf_counter() - t
        t = time.perf_counter()
        c.upload_file(str(store), "bench", "run/0.h5")
        up = time.perf_counter() - t
        t = time.perf_counter()
        step = (a.tar_mb << 20) // a.members
        for k in range(a.members):
            c.get_object(Bucket="bench", Key="cc/0.tar", Range=f"bytes={k * step}-{k * step + 25_000}")["Body"].read()
        ranged = (time.perf_counter() - t) / a.members
        t = time.perf_counter()
        with open(Path(d) / "staged.tar", "rb") as f:
            for k in range(a.members):
                f.seek(k * step)
                f.read(25_000)
        local = (time.perf_counter() - t) / a.members
    print(f"stage in  {a.tar_mb} MB tar:   {down:.2f} s ({a.tar_mb / down:.0f} MB/s)")
    print(f"upload    {a.store_mb} MB store: {up:.2f} s ({a.store_mb / up:.0f} MB/s)")
    print(f"ranged GET of one 25 KB member: {ranged * 1e3:.2f} ms (local read of a staged member {local * 1e3:.3f} ms)")


if __name__ == "__main__":
    main()
