"""Where an export writes its files: a local folder or `s3://bucket/prefix`, one file at a time, each appearing
only when complete, so a killed export never leaves a file a reader takes as whole.

- local: written as `.{name}.tmp` beside its final name, renamed into place on success (POSIX rename is atomic).
- s3: a multipart upload under the final key; S3 shows an object only once its upload completes, and a failure
  aborts the upload (a killed process leaves only an incomplete upload, which no listing shows). The client is
  boto3's own (`boto3.client("s3")`): endpoint and keys the standard way (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY, ~/.aws), nothing on the command line. Failures raise OSError naming endpoint and object.
Memory is one upload buffer (PART_BYTES), whatever the file's size.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

from visfeat.sources.buckets import bucket_problem

PART_BYTES = 8 << 20  # multipart upload part; S3 requires at least 5 MiB for all parts but the last


class Writable(Protocol):
    def write(self, data: bytes) -> int: ...
    def tell(self) -> int: ...


class LocalDestination:
    def __init__(self, root: str):
        self.url = root
        self.root = Path(root)

    @contextmanager
    def open(self, rel: str) -> Iterator[BinaryIO]:
        dest = self.root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        try:
            with open(tmp, "wb") as fh:
                yield fh
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def list(self, rel_dir: str) -> list[str]:
        d = self.root / rel_dir
        return sorted(p.name for p in d.iterdir() if p.is_file()) if d.is_dir() else []

    def remove(self, rel: str) -> None:
        (self.root / rel).unlink(missing_ok=True)


class _Upload:
    """A file-like writer feeding one multipart upload in PART_BYTES pieces."""

    def __init__(self, dest: "S3Destination", key: str):
        self.dest, self.key = dest, key
        self.buf = bytearray()
        self.parts: list[dict] = []
        self.upload_id: str | None = None
        self.pos = 0

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        self.buf += data
        self.pos += n
        while len(self.buf) >= PART_BYTES:
            self._send(bytes(self.buf[:PART_BYTES]))
            del self.buf[:PART_BYTES]
        return n

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False

    def _send(self, data: bytes) -> None:
        c, b = self.dest.client, self.dest.bucket
        with self.dest.errors(self.key):
            if self.upload_id is None:
                self.upload_id = c.create_multipart_upload(Bucket=b, Key=self.key)["UploadId"]
            n = len(self.parts) + 1
            r = c.upload_part(Bucket=b, Key=self.key, UploadId=self.upload_id, PartNumber=n, Body=data)
            self.parts.append({"ETag": r["ETag"], "PartNumber": n})

    def complete(self) -> None:
        c, b = self.dest.client, self.dest.bucket
        if self.upload_id is None:  # under one part: a single PUT, atomic as well
            with self.dest.errors(self.key):
                c.put_object(Bucket=b, Key=self.key, Body=bytes(self.buf))
            return
        if self.buf:
            self._send(bytes(self.buf))
        with self.dest.errors(self.key):
            c.complete_multipart_upload(Bucket=b, Key=self.key, UploadId=self.upload_id,
                                        MultipartUpload={"Parts": self.parts})

    def abort(self) -> None:
        if self.upload_id is not None:
            try:
                self.dest.client.abort_multipart_upload(Bucket=self.dest.bucket, Key=self.key,
                                                        UploadId=self.upload_id)
            except Exception:  # noqa: BLE001 - the first error is the one to report; S3 expires stale uploads
                pass


class S3Destination:
    def __init__(self, url: str):
        import boto3

        self.url = url.rstrip("/")
        bucket, _, prefix = self.url[len("s3://"):].partition("/")
        if not bucket:
            raise ValueError(f"{url}: expected s3://bucket/prefix")
        self.bucket, self.prefix = bucket, prefix
        self.client = boto3.client("s3")
        self.endpoint = self.client.meta.endpoint_url
        # wrong keys, a missing bucket, no server: one line before anything is written
        problem = bucket_problem(self.client, bucket, f"export destination {self.url}")
        if problem:
            raise OSError(problem)

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    @contextmanager
    def errors(self, key: str) -> Iterator[None]:
        """botocore's failures as one OSError naming the endpoint and the object (or the bucket)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as e:
            err = e.response.get("Error", {})
            raise OSError(f"S3 {self.endpoint}: s3://{self.bucket}/{key}: {err.get('Code', '')} "
                          f"{err.get('Message', '') or e}".rstrip()) from None
        except BotoCoreError as e:
            raise OSError(f"S3 {self.endpoint}: s3://{self.bucket}/{key}: {e}") from None

    @contextmanager
    def open(self, rel: str) -> Iterator[_Upload]:
        up = _Upload(self, self.key(rel))
        try:
            yield up
            up.complete()
        except BaseException:
            up.abort()
            raise

    def list(self, rel_dir: str) -> list[str]:
        prefix = self.key(rel_dir).rstrip("/") + "/"
        with self.errors(prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            return sorted(o["Key"][len(prefix):] for p in pages for o in p.get("Contents", [])
                          if "/" not in o["Key"][len(prefix):])

    def remove(self, rel: str) -> None:
        with self.errors(self.key(rel)):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(rel))


def destination(out: str) -> LocalDestination | S3Destination:
    """The destination an export's OUT names: `s3://bucket/prefix` or a local folder."""
    return S3Destination(out) if out.startswith("s3://") else LocalDestination(out)
