"""Weights of the presets whose options name a hub model (`openclip`, `timm`): where the file lives on disk, and
fetching it from the Hugging Face Hub with visfeat's own downloader (resumable, sha256-checked).

The file is the hub file itself (safetensors or a state dict), kept at `{root}/{preset}/{model}/{tag}/{file}`
(timm: "arch.tag" split at its first dot). Building an extractor only reads that file, never the network; the
fetch (the workflow's `fetch_weights` localrule, `visfeat fetch-weights`) is the one step that downloads. Generic
names pin no revision: the fetch resolves "main" to its commit through the hub API, downloads that commit's file
and records the commit and the file's sha256 in `{file}.hub.json` beside it; loading checks the sha256 again.
An open_clip model whose text tower uses a Hugging Face tokenizer gets that tokenizer's files in the same folder.
"""
from __future__ import annotations

import datetime
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from visfeat.extractors.encoder_names import TOKENIZER_FILES, HubLocation, hub_location, library_of
from visfeat.extractors.named_encoders import NAMED, HubPin
from visfeat.extractors.weights import WeightsMissing, sha256_of

# preset -> the library whose names its options give (its `model`, and open_clip's `pretrained` tag); the generic
# families first (a file's path is under the family's name), then each named encoder of a family
HUB_PRESETS = {"openclip": "open_clip", "timm": "timm"}
HUB_PRESETS.update({name: HUB_PRESETS[n.family] for name, n in NAMED.items()})
DEFAULT_ENDPOINT = "https://huggingface.co"  # huggingface_hub/constants.py ENDPOINT (HF_ENDPOINT overrides it)


def endpoint() -> str:
    """The hub's address: HF_ENDPOINT as the hub client reads it (a mirror, or 127.0.0.1 in tests)."""
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def model_tag(library: str, model: str, tag: str | None) -> tuple[str, str]:
    """(model, tag) as the path writes them: a timm name "arch.tag" is split at its first dot."""
    if library_of(library) == "timm" and tag is None:
        arch, _, tag = model.partition(".")
        return arch, tag
    return model, tag or ""


def default_path(library: str, model: str, tag: str | None, root: str | os.PathLike = "resources/weights",
                 file: str | None = None) -> Path:
    """Where the fetched file of (library, model, tag) lives: the library's first file name unless `file`."""
    lib = library_of(library)
    preset = next(p for p, l in HUB_PRESETS.items() if l == lib)
    m, t = model_tag(lib, model, tag)
    return Path(root) / preset / m / t / (file or _files(hub_location(lib, model, tag))[0])


def preset_file(preset: str, options: dict[str, Any], root: str | os.PathLike = "resources/weights") -> str | None:
    """The file a hub-named preset instance loads with these resolved options; None for every other preset."""
    if preset not in HUB_PRESETS:
        return None
    return str(default_path(HUB_PRESETS[preset], options["model"], options.get("pretrained"), root))


def pinned(library: str, model: str, tag: str | None) -> HubPin | None:
    """The pinned hub file of (library, model, tag) where a named encoder has that model: the generic family
    given the same model fetches the same commit and checks the same sha256."""
    lib = library_of(library)
    want = model_tag(lib, model, tag)
    return next((n.pin for n in NAMED.values() if HUB_PRESETS[n.family] == lib
                 and model_tag(lib, n.options["model"], n.options.get("pretrained")) == want), None)


def record_path(path: str | os.PathLike) -> Path:
    """The fetch's record beside the file: repo, file, resolved revision, sha256."""
    path = Path(path)
    return path.with_name(path.name + ".hub.json")


def _files(loc: HubLocation) -> tuple[str, ...]:
    return loc.files or (loc.url.rsplit("/", 1)[-1],)


def _source(loc: HubLocation, file: str, revision: str | None = None) -> str:
    if not loc.repo:
        return loc.url
    return f"{endpoint()}/{loc.repo}/resolve/{revision or loc.revision}/{file}"


def missing_message(library: str, model: str, tag: str | None, dest: Path) -> str:
    """What to do when the file is not there (offline): the repo, file, revision and the path to place it at."""
    lib = library_of(library)
    loc = hub_location(lib, model, tag)
    m, t = model_tag(lib, model, tag)
    what = f"{lib} model {m!r} tag {t!r}"
    pin = pinned(lib, model, tag)
    if pin and pin.file == dest.name:
        where = (f"the Hugging Face Hub repo {pin.repo}, file {pin.file}, revision {pin.revision} (pinned: sha256 "
                 f"{pin.sha256}); {pin.url(endpoint())}")
    elif loc.repo:
        other = [f for f in loc.files if f != dest.name]
        where = (f"the Hugging Face Hub repo {loc.repo}, file {dest.name}, revision {loc.revision} (not pinned for "
                 f"generic names: the fetch records the commit and sha256){' (or ' + other[0] + ')' if other else ''}"
                 f"; {_source(loc, dest.name)}")
    else:
        where = f"{loc.url} (not on the hub)"
    preset = next(p for p, l in HUB_PRESETS.items() if l == lib)
    return (f"weights for {what} are missing: place the file from {where} at {dest} (on a machine with internet: "
            f"visfeat fetch-weights --preset {preset} --dest {dest}), or pass --weights FILE / set "
            f"extractors.<name>.weights to a local file in the hub file's layout (safetensors or a state dict)")


def weights_file(library: str, model: str, tag: str | None, weights: str | None,
                 root: str = "resources/weights") -> tuple[str, str]:
    """(local file, its sha256): `weights` as given, else the file fetched for (library, model, tag) under
    root; raises extractors.weights.WeightsMissing naming the hub repo, file, revision and where to put it."""
    if weights:
        if not Path(weights).is_file():
            raise WeightsMissing(f"weights file {weights} does not exist")
        return str(weights), sha256_of(weights)
    loc = hub_location(library, model, tag)
    for file in _files(loc):
        path = default_path(library, model, tag, root, file)
        if path.is_file():
            digest = sha256_of(path)
            rec, pin = record_path(path), pinned(library, model, tag)
            want = (json.loads(rec.read_text())["sha256"] if rec.is_file()
                    else pin.sha256 if pin and pin.file == file else None)  # a pinned file placed by hand
            if want and want != digest:
                whose = f"the fetched file's {want} ({rec})" if rec.is_file() else f"the pinned {want}"
                raise ValueError(f"{path}: sha256 {digest} differs from {whose}; delete it and fetch again")
            return str(path), digest
    raise WeightsMissing(missing_message(library, model, tag, default_path(library, model, tag, root)))


def resolve_revision(repo: str, revision: str, timeout: float = 30.0) -> str:
    """The commit `revision` names now (the hub API huggingface_hub's model_info reads); the revision itself
    where the endpoint has no API (a plain mirror)."""
    url = f"{endpoint()}/api/models/{repo}/revision/{revision}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "visfeat"}),
                                    timeout=timeout) as r:
            return json.loads(r.read())["sha"]
    except (OSError, ValueError, KeyError, urllib.error.URLError):
        return revision


def fetch(library: str, model: str, tag: str | None, dest: str | os.PathLike | None = None,
          root: str | os.PathLike = "resources/weights", url: str | None = None, sha256: str | None = None,
          timeout: float = 60.0, retries: int = 5) -> Path:
    """Download the hub file of (library, model, tag) to `dest` (default: its path under root), resumable and
    verified where `sha256` is known, and write its record. A file already there is verified against its record.
    `url`: a mirror's address for the file. A named encoder's file is fetched at its pinned commit and checked
    against its pinned sha256 (`pinned`). Raises WeightsMissing with placement instructions when it fails."""
    from visfeat.sources.download import DownloadError, download

    lib = library_of(library)
    loc = hub_location(lib, model, tag)
    dest = Path(dest) if dest else default_path(lib, model, tag, root)
    if loc.repo and dest.name not in loc.files:
        raise ValueError(f"{dest.name}: not a file {lib} loads from {loc.repo} (files: {', '.join(loc.files)})")
    rec = record_path(dest)
    pin = pinned(lib, model, tag)
    pin = pin if pin and pin.file == dest.name else None
    sha256 = sha256 or (pin.sha256 if pin else None)
    if dest.is_file():
        want = sha256 or (json.loads(rec.read_text())["sha256"] if rec.is_file() else None)
        if want and not sha256_of(dest).startswith(want):
            raise ValueError(f"{dest}: sha256 differs from {want}; delete it and fetch again")
        return dest
    requested = pin.revision if pin else loc.revision
    revision = requested if pin or url or not loc.repo else resolve_revision(loc.repo, loc.revision)
    src = url or _source(loc, dest.name, revision)
    try:
        download(src, dest, sha256=sha256, timeout=timeout, retries=retries)
        try:
            tokenizer = (_fetch_tokenizer(loc, dest.parent, url, timeout, retries, pin.tokenizer_revision if pin
                                          else None) if loc.tokenizer else None)
        except DownloadError:
            dest.unlink()  # complete only with its tokenizer: the next fetch tries both again
            raise
    except DownloadError as e:
        raise WeightsMissing(f"{e}\n{missing_message(lib, model, tag, dest)}") from None
    m, t = model_tag(lib, model, tag)
    rec.write_text(json.dumps({
        "library": lib, "model": m, "tag": t, "repo": loc.repo, "file": dest.name, "url": src,
        "revision": revision, "requested_revision": requested, "sha256": sha256_of(dest),
        **({"tokenizer": tokenizer} if tokenizer else {}),
        "fetched": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}, indent=1) + "\n")
    return dest


def _fetch_tokenizer(loc: HubLocation, folder: Path, mirror: str | None, timeout: float,
                     retries: int, pinned_revision: str | None = None) -> dict[str, Any]:
    """The text tower's Hugging Face tokenizer files into the weights' folder (openclip.py reads them there), so
    `visfeat text` runs offline. Each repo holds some of TOKENIZER_FILES: the ones it lacks (HTTP 404) are
    skipped; none at all is an error. `pinned_revision`: a named encoder's tokenizer commit."""
    from visfeat.sources.download import DownloadError, download

    revision = pinned_revision or (loc.revision if mirror else resolve_revision(loc.tokenizer, "main"))
    got = {}
    for file in TOKENIZER_FILES:
        src = f"{mirror.rsplit('/', 1)[0]}/{file}" if mirror else f"{endpoint()}/{loc.tokenizer}/resolve/{revision}/{file}"
        try:
            got[file] = sha256_of(download(src, folder / file, timeout=timeout, retries=retries))
        except DownloadError as e:
            if "HTTP 404" not in str(e):
                raise
    if not got:
        raise DownloadError(f"the tokenizer repo {loc.tokenizer} (revision {revision}) has none of "
                            f"{', '.join(TOKENIZER_FILES)}")
    return {"repo": loc.tokenizer, "revision": revision, "sha256": got}


def fetch_preset_file(preset: str, dest: str | os.PathLike, url: str | None = None) -> Path:
    """The workflow's fetch: (model, tag, file) read back from a path `default_path` wrote; a named encoder's
    own model and tag wherever `dest` is."""
    dest = Path(dest)
    lib = HUB_PRESETS[preset]
    if preset in NAMED:
        model, tag = NAMED[preset].options["model"], NAMED[preset].options.get("pretrained")
    else:
        model, tag = dest.parent.parent.name, dest.parent.name
        if lib == "timm":
            model, tag = f"{model}.{tag}", None
    return fetch(lib, model, tag, dest, url=url)
