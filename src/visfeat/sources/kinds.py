"""Dataset source kinds: one class per kind of `source`, the one place that knows what a kind needs.

Each class declares its config keys (JSON-schema fragment, description, required, default, what must exist), its
workflow facts (the dataset root, where the report reads its images, the manifest job's inputs, the shard count,
captions, whether a rule prepares or downloads it, the `visfeat manifest` arguments) and builds its manifest. The
config schema, the config checks (workflow/config.py), each rule's arguments (workflow/args.py), Snakemake's
inputs and wildcard constraints (workflow/rules/common.smk) and `visfeat manifest` (cli.py) ask these classes, so
one more kind is one more class here plus its rows in config/README.md.

Built-in kinds are named by a config dataset's `source`; the registry kinds (`registry_keys` set) are what a
dataset of config/datasets.yaml is, told apart by which of their marker keys (`registry_keys[0]`) it has.

Light at import (the standard library, and sources/urls.py which is too): Snakemake's parse imports it; readers
are imported where a manifest is built."""
from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, ClassVar

from visfeat.sources.urls import LIST_FORMATS

Options = list[tuple[str, Any]]  # `--flag value` pairs, rendered by workflow/args.py render()


def is_url(path: str) -> bool:
    """A tar named in object storage (s3://bucket/key): Snakemake's storage plugin stages it for the job reading it."""
    return "://" in path


def url_root(urls: list[str]) -> str:
    """The deepest "folder" holding every URL (s3://bucket/cc12m for s3://bucket/cc12m/{00000..01242}.tar)."""
    import posixpath

    scheme = urls[0].split("://", 1)[0]
    return f"{scheme}://" + posixpath.commonpath([posixpath.dirname(u.split("://", 1)[1]) for u in urls])
SHOWN_IDS = 50  # ids named in a manifest job's log line; the rest are counted


class EntryError(ValueError):
    """A dataset entry's key is wrong: `key` names it (config.py prefixes `config: datasets.NAME.`)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Key:
    """One key of a dataset entry: what the schema says of it, and what the config check asks of its value."""

    name: str
    schema: dict  # JSON-schema fragment of its value (this kind's form)
    description: str
    required: bool = False
    default: Any = None  # used when the key is absent; not a schema default (other kinds would get it filled in)
    exists: str | None = None  # "file" or "folder": the path must exist when the config is loaded
    suffixes: tuple[str, ...] = ()  # the file name must end with one of these (any letter case)

    @property
    def text(self) -> str:
        """The description, with what the declaration adds (file types, default)."""
        kinds = f" ({', '.join(self.suffixes)})" if self.suffixes else ""
        return self.description + kinds + ("" if self.default is None else f"; default {self.default}")


@dataclass(frozen=True)
class ManifestRequest:
    """What `visfeat manifest` is given: its flags, by their argparse names (cli.py's `manifest` subparser)."""

    root: str
    out: str
    id_style: str = "path"
    no_exif: bool = False
    list: str | None = None
    folder: tuple[str, ...] = ()
    annotation: str | None = None
    split: tuple[str, ...] = ()
    missing_message: str | None = None
    tars: tuple[str, ...] = ()
    tars_per_shard: int = 1
    downloaded: str | None = None
    shards: int = 1

    @classmethod
    def from_args(cls, ns) -> ManifestRequest:
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls)})


def _first_ids(ids: list[str]) -> str:
    return " ".join(ids[:SHOWN_IDS]) + (" ..." if len(ids) > SHOWN_IDS else "")


def _none_listed(what: str) -> str:
    """The manifest log's warning for a source that lists no image: a warning, not an error, since a list, an
    annotation split or a set of tars may be empty on purpose (a folder with no image fails in scan_folder)."""
    return f"warning: no images to extract ({what}): this dataset's feature stores will hold 0 images"


class SourceKind(ABC):
    """A kind of dataset source. Class attributes and classmethods declare the kind; an instance is one dataset
    of the config with this kind (its name, its entry, the registry entry it uses, the workflow folders)."""

    name: ClassVar[str]
    keys: ClassVar[tuple[Key, ...]] = ()  # config keys, datasets.NAME.KEY, besides the shared ones (the YAML's)
    registry_keys: ClassVar[tuple[Key, ...]] = ()  # a registry kind's config/datasets.yaml keys, marker first
    captions: ClassVar[bool] = False  # its manifest has a `txt` caption per image (`text: {dataset: ...}`)
    prepared: ClassVar[bool] = False  # rule prepare_dataset makes its root (`visfeat prepare --source NAME`)
    downloads: ClassVar[bool] = False  # rule download_urls fetches its images first (img2dataset)
    remote = False  # its images are in object storage, staged per extraction job (a Webdataset of s3:// tars)
    manifest_source: ClassVar[str | None] = None  # `visfeat manifest --source` building it; None: the kind's name

    def __init__(self, dataset: str, entry: dict, resources: str = "resources", results: str = "results",
                 registry_entry: dict | None = None):
        self.dataset, self.entry, self.registry_entry = dataset, entry, registry_entry
        self.resources, self.results = resources, results

    def value(self, key: str) -> Any:
        """The entry's value of one of this kind's keys, or the key's declared default."""
        return self.entry.get(key, next((k.default for k in self.keys if k.name == key), None))

    def check(self, base_dir: str = ".", form_error: Callable[[dict, Any], str | None] | None = None) -> None:
        """The checks a union schema cannot make: this kind's required keys, their form (`form_error(schema,
        value)`: the schema validator's message, or None; passed in by the workflow layer, so the sources stay free
        of jsonschema in every env), files that must exist (paths relative to `base_dir`). Raises EntryError naming
        the key."""
        for k in self.keys:
            if k.required and k.name not in self.entry:
                raise EntryError(k.name, f"required for source {self.entry['source']}")
        for k in self.keys:
            if k.name not in self.entry:
                continue
            v = self.entry[k.name]
            err = form_error(k.schema, v) if form_error is not None else None
            if err is not None:
                raise EntryError(k.name, err)
            if k.suffixes and not v.lower().endswith(k.suffixes):
                *most, last = k.suffixes
                raise EntryError(k.name, f"{v} is not a {', '.join(most)} or {last} file")
            if k.exists and not (os.path.isfile if k.exists == "file" else os.path.isdir)(os.path.join(base_dir, v)):
                raise EntryError(k.name, f"{k.exists} {v} does not exist")  # join keeps an absolute v as it is

    @property
    def id_style(self) -> str:
        return self.entry.get("id_style") or (self.registry_entry or {}).get("id_style") or "path"

    @property
    def root(self) -> str:
        """The folder the manifest's paths are relative to (extraction's --root)."""
        return self.entry["path"]

    @property
    def image_root(self) -> str:
        """Where the report reads a store's images."""
        return self.root

    @property
    def local_tars(self) -> bool:
        """Its images are samples of tars on local disk, which a reader of its manifest opens in place (the
        export's captions and urls: `visfeat export --manifest`); tars in object storage are staged per job only."""
        return False

    def inputs(self) -> list[str]:
        """The manifest job's Snakemake inputs."""
        return [self.root]

    def shard_count(self) -> int:
        """Extraction jobs (shard stores), known without reading any data file."""
        return self.entry["shards"]

    def manifest_options(self) -> Options:
        """`visfeat manifest` arguments after --root and --id-style."""
        return [("--source", self.manifest_source or self.name)]

    def prepare_download(self) -> tuple[str, str] | None:
        """A prepared kind's download (URL, sha256) for `visfeat prepare`; None: nothing to download."""
        return None

    @classmethod
    @abstractmethod
    def build_manifest(cls, req: ManifestRequest) -> list[str]:
        """Write req.out; return the lines the manifest job prints (its log)."""


class FileKind(SourceKind):
    """Image files under a root: the manifest lists their ids and paths (no file is opened: the shard jobs read
    them); a listed file that is absent from its folder's listing is a row that extraction records as failed."""

    @classmethod
    @abstractmethod
    def pairs(cls, req: ManifestRequest) -> list[tuple[str, str]]:
        """[(image_id, path relative to the root)] of the dataset."""

    @classmethod
    def build_manifest(cls, req: ManifestRequest) -> list[str]:
        import pyarrow as pa

        from visfeat.sources.folder import absent
        from visfeat.sources.manifest import write_manifest

        root, pairs = Path(req.root), cls.pairs(req)
        ids, paths = [i for i, _ in pairs], [p for _, p in pairs]
        write_manifest(pa.table({"image_id": pa.array(ids, pa.string()), "path": pa.array(paths, pa.string())}),
                       req.out, req.shards)
        missing = [i for i, gone in zip(ids, absent(root, paths)) if gone]
        lines = [f"manifest: {len(pairs)} images under {root} ({len(missing)} missing) in {req.shards} shards "
                 f"-> {req.out}"]
        if missing:  # kept in the manifest: extraction records them as failed, by id
            lines.append(f"missing image files ({len(missing)}), by id: {_first_ids(missing)}")
        if not pairs:
            lines.append(_none_listed("0 listed"))
        return lines


class TarKind(SourceKind):
    """Webdataset tars read in place: the manifest lists the tars (relative to the root, the folder holding them;
    none is opened: each shard job scans its own), and the report reads each image from its tar through the
    manifest."""

    captions = True

    @property
    def local_tars(self) -> bool:
        return not self.remote

    @property
    def image_root(self) -> str:
        return f"{self.results}/{self.dataset}/manifest.parquet"

    @classmethod
    @abstractmethod
    def rows(cls, req: ManifestRequest) -> Any:
        """The manifest's rows, one per tar (tars.tar_rows), from the tar names alone."""

    @classmethod
    def build_manifest(cls, req: ManifestRequest) -> list[str]:
        from visfeat.sources.manifest import write_manifest

        df = cls.rows(req)
        shards = max(req.shards, int(df["shard"].max()) + 1 if len(df) else 1)  # urls: some shards may be empty
        write_manifest(df, req.out, shards, root=req.root)
        lines = [f"manifest: {len(df)} tars under {req.root} in {shards} shards -> {req.out}"]
        if df.empty:
            lines.append(_none_listed("0 tars"))
        return lines


def _scan_root(req: ManifestRequest) -> list[tuple[str, str]]:
    from visfeat.sources.folder import scan_folder

    return scan_folder(req.root, req.id_style)


# built-in kinds: a config dataset's `source` names one


class Sample(FileKind):
    name = "sample"
    prepared = True

    @property
    def root(self) -> str:
        return f"{self.resources}/datasets/{self.dataset}"

    @classmethod
    def pairs(cls, req: ManifestRequest) -> list[tuple[str, str]]:
        return _scan_root(req)


class Folder(FileKind):
    name = "folder"
    keys = (Key("path", {"type": "string"}, "the image folder (scanned recursively)", required=True,
                exists="folder"),)

    @classmethod
    def pairs(cls, req: ManifestRequest) -> list[tuple[str, str]]:
        if req.missing_message and not Path(req.root).is_dir():  # a sign-up dataset: say how to get it
            from visfeat.sources.folder import DatasetError

            raise DatasetError(f"image folder {req.root} does not exist.\n{req.missing_message}")
        return _scan_root(req)


class ImageList(FileKind):
    name = "list"
    keys = (Key("list", {"type": "string"}, "file with `path` or `image_id<TAB>path` lines", required=True,
                exists="file"),
            Key("path", {"type": "string"}, "the root that list paths are relative to", required=True,
                exists="folder"))

    def inputs(self) -> list[str]:
        return [self.entry["list"]]

    def manifest_options(self) -> Options:
        return [*super().manifest_options(), ("--list", self.entry["list"])]

    @classmethod
    def pairs(cls, req: ManifestRequest) -> list[tuple[str, str]]:
        from visfeat.sources.folder import read_image_list

        return read_image_list(req.list, req.id_style)


class Archive(FileKind):
    name = "archive"
    prepared = True
    keys = (Key("url", {"type": "string"}, "zip or tar URL", required=True),
            Key("sha256", {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "the archive's published checksum",
                required=True))

    @property
    def root(self) -> str:
        return f"{self.resources}/datasets/{self.dataset}"

    def prepare_download(self) -> tuple[str, str] | None:
        return self.entry["url"], self.entry["sha256"]

    @classmethod
    def pairs(cls, req: ManifestRequest) -> list[tuple[str, str]]:
        return _scan_root(req)


class Webdataset(TarKind):
    name = "webdataset"
    keys = (Key("path", {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]},
                "a brace pattern (/data/cc3m/{00000..00331}.tar), a list of tars, or a folder of .tar files",
                required=True),
            Key("tars_per_shard", {"type": "integer", "minimum": 1},
                "tars per shard (extraction job); `shards` is not used: the tar count decides", default=1))

    @cached_property
    def tars(self) -> list[str]:
        """The tars in shard order (a pattern expanded, a folder listed: no tar is opened)."""
        from visfeat.sources.tars import tar_paths

        return tar_paths(self.entry["path"])

    @cached_property  # asked once per extraction job when the workflow is planned
    def root(self) -> str:
        from visfeat.sources.tars import tar_root

        return url_root(self.tars) if self.remote else tar_root(self.tars)

    @property
    def remote(self) -> bool:
        """Tars in object storage: the manifest lists their names (nothing is downloaded), each extraction job gets
        its shard's tars staged by Snakemake's storage plugin (`shard_tars`, `staged_root`)."""
        return any(is_url(t) for t in self.tars)

    def inputs(self) -> list[str]:
        return [] if self.remote else self.tars

    def shard_tars(self, shard: int) -> list[str]:
        """The tars extraction job `shard` reads (the manifest's `tar_rows` assigns them the same way)."""
        n = self.value("tars_per_shard")
        return self.tars[shard * n:(shard + 1) * n]

    def staged_root(self, shard: int, staged: list[str]) -> str:
        """The root of a job's staged copies of its tars: the manifest's relative tar names resolve against it."""
        import posixpath

        rel = posixpath.relpath(self.shard_tars(shard)[0].split("://", 1)[1], self.root.split("://", 1)[1])
        return staged[0][:len(staged[0]) - len(rel)].rstrip("/") or "."

    def shard_count(self) -> int:
        return math.ceil(len(self.tars) / self.value("tars_per_shard"))

    def manifest_options(self) -> Options:
        patterns = self.entry["path"] if isinstance(self.entry["path"], list) else [self.entry["path"]]
        return [*super().manifest_options(), ("--tars-per-shard", self.value("tars_per_shard")),
                *(("--tars", t) for t in patterns)]

    @classmethod
    def rows(cls, req: ManifestRequest) -> Any:
        from visfeat.sources.tars import tar_paths, tar_rows

        tars = tar_paths(list(req.tars))
        return tar_rows(tars, req.root, [k // req.tars_per_shard for k in range(len(tars))])


class Urls(TarKind):
    name = "urls"
    downloads = True
    keys = (Key("urls", {"type": "string"}, "a list of image URLs (+ captions), downloaded by img2dataset into "
                "webdataset tars under resources/datasets/{dataset}/", required=True, exists="file",
                suffixes=tuple(LIST_FORMATS)),
            Key("url_col", {"type": "string"}, "the URL column", default="url"),
            Key("caption_col", {"type": "string"}, "the caption column (the manifest's txt; none when the list "
                "has no such column)", default="caption"),
            Key("img2dataset", {
                "type": "object", "additionalProperties": False,
                "properties": {
                    "executable": {"type": "string", "description": "the img2dataset command; default img2dataset "
                                   "on PATH (envs/img2dataset.yaml under --use-conda)"},
                    "urls_per_tar": {"type": "integer", "minimum": 1,
                                     "description": "URLs per tar (its number_sample_per_shard); default 10000"},
                    "timeout": {"type": "integer", "minimum": 1, "description": "seconds per URL; default 10"},
                    "retries": {"type": "integer", "minimum": 0, "description": "retries per URL; default 0"},
                    "processes": {"type": "integer", "minimum": 1, "description": "download processes; default 1"},
                    "threads": {"type": "integer", "minimum": 1,
                                "description": "download threads per process; default 256"}}},
                "how img2dataset downloads; each default is img2dataset's own"))

    @property
    def record(self) -> str:
        """The download rule's output: its record of the finished tars, beside img2dataset's tars (a failed
        download job keeps them: they are not its output)."""
        return f"{self.resources}/datasets/{self.dataset}/downloaded.tsv"

    @property
    def root(self) -> str:
        return str(Path(self.record).parent)

    def inputs(self) -> list[str]:
        return [self.record]

    def manifest_options(self) -> Options:
        return [*super().manifest_options(), ("--downloaded", self.record)]

    @classmethod
    def rows(cls, req: ManifestRequest) -> Any:
        """The tars spread over `shards` extraction shards in contiguous blocks (the tar count is unknown when the
        workflow is planned), each with the img2dataset parquet of its failed URLs."""
        from visfeat.sources.tars import img2dataset_parquet, img2dataset_tars, tar_rows

        tars = img2dataset_tars(req.downloaded)
        return tar_rows(tars, req.root, [k * req.shards // len(tars) for k in range(len(tars))],
                        [img2dataset_parquet(t) for t in tars])


# registry kinds: a dataset of config/datasets.yaml, used by its name as a config dataset's `source`

_ARCHIVES = Key("archives", {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "the registry archives holding its files (downloaded into resources/archives/{archive}/)",
                required=True)
_REGISTRY_PATH = Key("path", {"type": "string"}, "the folder holding its images instead (default: the sign-up "
                     "dataset's local folder, or resources/archives/)")


class RegistryKind(FileKind):
    """Files inside the registry's archives, under resources/archives/ (or `path`)."""

    keys = (_REGISTRY_PATH,)

    @property
    def root(self) -> str:
        return self.entry.get("path") or f"{self.resources}/archives"

    def inputs(self) -> list[str]:
        return [f"{self.resources}/archives/{a}" for a in self.registry_entry["archives"]]


class Local(RegistryKind):
    """A sign-up dataset: a local folder, with instructions printed when it is missing."""

    name = "local"
    manifest_source = "folder"  # a folder's manifest, with the instructions when it is missing
    pairs = Folder.pairs
    registry_keys = (Key("local", {"type": "string"}, "the folder its images are unpacked into", required=True),
                     Key("instructions", {"type": "string"}, "how to get the images (printed when the folder is "
                         "missing)", required=True))

    @property
    def root(self) -> str:
        return self.entry.get("path") or self.registry_entry["local"]

    def inputs(self) -> list[str]:
        return []  # the folder is checked by the manifest job itself, so `snakemake -n` plans without it

    def manifest_options(self) -> Options:
        return [*super().manifest_options(), ("--missing-message", self.registry_entry["instructions"])]


class Annotation(RegistryKind):
    """The images of a COCO annotation (or image-info) file."""

    name = "annotation"
    registry_keys = (Key("annotation", {"type": "string"}, "the COCO annotation file, under resources/archives/",
                         required=True),
                     Key("images", {"type": "string"}, "the folder of its images, under resources/archives/",
                         required=True),
                     _ARCHIVES)

    def manifest_options(self) -> Options:
        return [*super().manifest_options(), ("--annotation", self.registry_entry["annotation"]),
                ("--folder", self.registry_entry["images"])]

    @classmethod
    def pairs(cls, req: ManifestRequest) -> list[tuple[str, str]]:
        from visfeat.sources.splits import pairs_from_coco_annotation

        return pairs_from_coco_annotation(Path(req.root) / req.annotation, req.folder[0], req.id_style)


class Karpathy(RegistryKind):
    """Karpathy's splits (dataset_coco.json)."""

    name = "karpathy"
    registry_keys = (Key("karpathy", {"type": "string"}, "Karpathy's dataset_*.json, under resources/archives/",
                         required=True),
                     Key("splits", {"type": "array", "items": {"type": "string"}, "minItems": 1},
                         "the file's splits to keep (train, restval, val, test)", required=True),
                     Key("filepaths", {"type": "object", "additionalProperties": {"type": "string"}},
                         "the file's `filepath` -> its folder under resources/archives/", required=True),
                     _ARCHIVES)

    def manifest_options(self) -> Options:
        reg = self.registry_entry
        return [*super().manifest_options(), ("--annotation", reg["karpathy"]),
                *(("--split", split) for split in reg["splits"]),
                *(("--folder", f"{name}={folder}") for name, folder in reg["filepaths"].items())]

    @classmethod
    def pairs(cls, req: ManifestRequest) -> list[tuple[str, str]]:
        from visfeat.sources.splits import pairs_from_karpathy

        folders = dict(f.split("=", 1) for f in req.folder)
        return pairs_from_karpathy(Path(req.root) / req.annotation, list(req.split), folders)


class Folders(RegistryKind):
    """Every image of some folders inside the archives (Visual Genome's two parts)."""

    name = "folders"
    registry_keys = (Key("folders", {"type": "array", "items": {"type": "string"}, "minItems": 1},
                         "image folders under resources/archives/", required=True),
                     _ARCHIVES)

    def manifest_options(self) -> Options:
        return [*super().manifest_options(), *(("--folder", f) for f in self.registry_entry["folders"])]

    @classmethod
    def pairs(cls, req: ManifestRequest) -> list[tuple[str, str]]:
        from visfeat.sources.folder import pairs_from_folders

        return pairs_from_folders(req.root, list(req.folder), req.id_style)


SOURCE_KINDS: dict[str, type[SourceKind]] = {
    k.name: k for k in (Sample, Folder, ImageList, Archive, Webdataset, Urls, Local, Annotation, Karpathy, Folders)}
BUILTIN_KINDS = {n: k for n, k in SOURCE_KINDS.items() if not k.registry_keys}
REGISTRY_KINDS = {n: k for n, k in SOURCE_KINDS.items() if k.registry_keys}
MANIFEST_SOURCES = [n for n, k in SOURCE_KINDS.items() if k.manifest_source is None]  # `visfeat manifest --source`


def registry_kind(entry: dict) -> type[SourceKind]:
    """The kind of a registry dataset: the one whose marker key it has."""
    markers = {k.registry_keys[0].name: k for k in REGISTRY_KINDS.values()}
    found = [m for m in markers if m in entry]
    if len(found) != 1:
        raise EntryError("", f"give exactly one of {', '.join(markers)} (it has {', '.join(found) or 'none'})")
    return markers[found[0]]


def check_registry_entry(entry: dict) -> None:
    """A registry dataset's kind and its required keys (the schema checks the form). Raises EntryError."""
    kind = registry_kind(entry)
    for k in kind.registry_keys:
        if k.required and k.name not in entry:
            raise EntryError(k.name, f"required for a registry dataset with `{kind.registry_keys[0].name}`")


def dataset_source(cfg: dict, registry: dict, dataset: str) -> SourceKind:
    """Dataset `dataset` of a validated config as an instance of its kind: its registry dataset's kind, or the
    built-in kind its `source` names (a registry name wins, as a name is looked up there first)."""
    entry = cfg["datasets"][dataset]
    src = entry["source"]
    reg = registry.get("datasets", {}).get(src)
    if reg is not None:
        kind = registry_kind(reg)
    elif src in BUILTIN_KINDS:
        kind = BUILTIN_KINDS[src]
    else:
        raise EntryError("source", f"unknown source {src!r}; built in: {', '.join(BUILTIN_KINDS)}; registry: "
                                   f"{', '.join(registry.get('datasets', {}))}")
    return kind(dataset, entry, cfg.get("resources", "resources"), cfg.get("results", "results"), reg)


def _properties(attr: str) -> dict[str, dict]:
    """Schema properties of every kind's `attr` keys. A key several kinds declare is one property accepting each
    kind's form, its description naming the kinds (each kind's own form is checked by SourceKind.check)."""
    uses: dict[str, list[tuple[str, Key]]] = {}
    for kind in SOURCE_KINDS.values():
        for k in getattr(kind, attr):
            uses.setdefault(k.name, []).append((kind.name, k))
    out = {}
    for name, declared in uses.items():
        forms = []
        for _, k in declared:  # an anyOf's members count as forms of their own
            for form in k.schema.get("anyOf", [k.schema]):
                if form not in forms:
                    forms.append(form)
        texts: dict[str, list[str]] = {}
        for kind_name, k in declared:
            texts.setdefault(k.text, []).append(kind_name)
        description = "; ".join(f"{', '.join(kinds)}: {text}" for text, kinds in texts.items())
        out[name] = {**(forms[0] if len(forms) == 1 else {"anyOf": forms}), "description": description}
    return out


def config_properties() -> dict[str, dict]:
    """The kinds' keys of a config dataset entry (`datasets.NAME`), as JSON-schema properties."""
    return _properties("keys")


def registry_properties() -> dict[str, dict]:
    """The registry kinds' keys of a config/datasets.yaml dataset, as JSON-schema properties."""
    return _properties("registry_keys")
