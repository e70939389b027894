"""Registry of official weight files and the one way to resolve a preset's weights to a local path.

Weights live under `resources/weights/{preset}/{filename}`. A file placed there by the user (or a path given
explicitly) is used as is; otherwise `fetch` downloads it (resumable, sha256-checked): the workflow's weights
rule and `visfeat fetch-weights` call it, never an extraction (jobs stay off the network). A missing file's error
names the file, where to put it and the command that fetches it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WeightFile:
    filename: str
    url: str
    sha256: str | None = None  # a prefix is checked as one (torchvision publishes 8 hex digits in its file names)
    size: int | None = None  # bytes, where published


class WeightsMissing(FileNotFoundError):
    pass


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def default_path(preset: str, wf: WeightFile, root: str | os.PathLike = "resources/weights") -> Path:
    return Path(root) / preset / wf.filename


def place_message(preset: str, wf: WeightFile, dest: Path, fetch_command: bool = True) -> str:
    """How to provide a missing weights file: the command that fetches it (left out where that command has just
    failed), placing it by hand, or another file."""
    sha = f" (sha256 {'' if len(wf.sha256) == 64 else 'starting '}{wf.sha256})" if wf.sha256 else ""
    fetch_it = f"fetch it with `visfeat fetch-weights --preset {preset} --dest {dest}`, or " if fetch_command else ""
    return (
        f"weights for preset {preset!r} are missing: {fetch_it}place {wf.filename}{sha} at {dest} "
        f"(download it from {wf.url} on a machine with internet), or pass --weights FILE / set "
        f"extractors.<name>.weights in the config"
    )


def fetch(preset: str, wf: WeightFile, dest: str | os.PathLike, timeout: float = 60.0, retries: int = 5) -> Path:
    """Download `wf` to `dest` (resumable, verified). Raises WeightsMissing with placement instructions offline."""
    from visfeat.sources.download import DownloadError, download

    dest = Path(dest)
    if dest.exists():
        verify(wf, dest)
        return dest
    try:
        download(wf.url, dest, sha256=wf.sha256, timeout=timeout, retries=retries)
    except DownloadError as e:
        raise WeightsMissing(f"{e}\n{place_message(preset, wf, dest, fetch_command=False)}") from None
    return dest


def verify(wf: WeightFile, path: Path) -> str:
    digest = sha256_of(path)
    if wf.sha256 and not digest.startswith(wf.sha256):
        raise ValueError(f"{path}: sha256 {digest} does not match the published {wf.sha256} for {wf.filename}")
    return digest


def resolve_weights(preset, weights: str | os.PathLike | None, root: str | os.PathLike = "resources/weights") -> tuple[str, str]:
    """(path, sha256) of the file to load: `weights` if given, else the preset's default location."""
    wf = preset.weights[0]
    path = Path(weights) if weights else default_path(preset.name, wf, root)
    if not path.exists():
        if weights:
            raise WeightsMissing(f"weights file {path} does not exist")
        raise WeightsMissing(place_message(preset.name, wf, path))
    return str(path), sha256_of(path)
