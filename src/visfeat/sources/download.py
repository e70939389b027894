"""Resumable, checksummed HTTP downloads.

The partial file lives beside the destination (`dest + '.part'`), never at a path Snakemake declares as output,
so a killed or failed job keeps what it downloaded and the next try continues with an HTTP Range request.
The destination appears (atomic rename) only after the sha256 matched.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path


class DownloadError(OSError):
    pass


class ChecksumError(DownloadError):
    pass


def _hash_file(path: Path) -> "hashlib._Hash":
    h = hashlib.sha256()
    if path.exists():
        with open(path, "rb") as f:
            while b := f.read(1 << 20):
                h.update(b)
    return h


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    chunk: int = 1 << 20,
    size: int | None = None,
) -> Path:
    """`size` (bytes, where published) enables a free-disk check first: the rest of the download plus room to
    unpack it."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if size:
        have = part.stat().st_size if part.exists() else 0
        need = (size - have) + size  # the archive, then its unpacked tree
        free = shutil.disk_usage(dest.parent).free
        if need > free:
            raise DownloadError(f"not enough free disk under {dest.parent} for {url}: need ~{need / 1e9:.1f} GB "
                                f"(the rest of a {size / 1e9:.1f} GB archive and room to unpack it), "
                                f"{free / 1e9:.1f} GB free")
    last_err: Exception | None = None
    for attempt in range(retries):
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"User-Agent": "visfeat"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                if have and resp.status != 206:  # server ignored Range: start over
                    have = 0
                    part.unlink(missing_ok=True)
                total = resp.headers.get("Content-Length")
                with open(part, "ab") as f:
                    while b := resp.read(chunk):
                        f.write(b)
                if total is not None and part.stat().st_size < have + int(total):
                    raise DownloadError(f"connection closed after {part.stat().st_size} bytes")
            break
        except urllib.error.HTTPError as e:
            if e.code == 416:  # range not satisfiable: we already have the whole file
                break
            last_err = e
            if 400 <= e.code < 500:
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            last_err = e
            if isinstance(e.reason, socket.gaierror):  # no DNS: offline, retrying will not help
                raise DownloadError(f"could not download {url}: {e.reason} (offline?)") from None
        except (OSError, DownloadError) as e:
            last_err = e
        if attempt + 1 < retries:
            time.sleep(backoff * 2**attempt)
    else:
        raise DownloadError(f"could not download {url} after {retries} tries: {last_err}")
    if sha256:
        actual = _hash_file(part).hexdigest()
        if not actual.startswith(sha256):  # a published prefix (torchvision file names) is checked as one
            bad = part.with_name(dest.name + ".corrupt")
            os.replace(part, bad)
            raise ChecksumError(f"{url}: sha256 mismatch: expected {sha256}, got {actual} (moved aside to {bad})")
    os.replace(part, dest)
    return dest


def place(path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """A downloaded file that is not an archive: into the folder `dest` (copied to a temporary sibling first, so
    `dest` appears complete or not at all)."""
    path, dest = Path(path), Path(dest)
    tmp = dest.with_name(f".{dest.name}.placing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(path, tmp / path.name)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def unpack(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack a zip/tar archive into `dest` atomically: into a temporary sibling, renamed when complete.

    A killed unpack leaves only the temporary folder (removed on the next try), never a half tree at `dest`.
    """
    import tarfile
    import zipfile

    archive, dest = Path(archive), Path(dest)
    tmp = dest.with_name(f".{dest.name}.unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            t.extractall(tmp, filter="data")
    else:
        shutil.rmtree(tmp)
        raise DownloadError(f"{archive}: not a zip or tar archive")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest
