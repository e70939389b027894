"""The arguments each workflow rule gives its `visfeat` subcommand, read from the validated config and the dataset
registry. Plain Python rather than Snakefile code, so workflow/rules/common.smk keeps only input functions and
targets, and the printed commands (`snakemake -n -p`) stay complete: each one can be run by hand."""
from __future__ import annotations

import json
import os
import shlex
import urllib.parse

from visfeat.sources.kinds import Options, SourceKind, dataset_source
from visfeat.workflow.config import preset_options, published_entry

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz")


def render(options: Options) -> str:
    """`--flag value` pairs as one shell-quoted string, in order: None or False omitted, True a bare flag."""
    out = []
    for flag, value in options:
        if value is None or value is False:
            continue
        out.append(flag if value is True else f"{flag} {shlex.quote(str(value))}")
    return " ".join(out)


def _first(paths: str | list[str]) -> str | None:
    """A rule's optional single-file input: Snakemake gives a string, or a (possibly empty) list."""
    return paths if isinstance(paths, str) else next(iter(paths), None)


def _file_name(url: str, fallback: str) -> str:
    return os.path.basename(urllib.parse.urlparse(url).path) or fallback


class WorkflowArgs:
    """The validated config + registry, answering what each job is given. Paths are relative to the workflow
    directory, as Snakemake's are."""

    def __init__(self, config: dict, registry: dict):
        self.config, self.registry = config, registry
        self._sources: dict[str, SourceKind] = {}
        self.results, self.resources = config["results"], config["resources"]
        self.published = {**registry.get("published", {}), **config.get("published", {})}
        # dataset/extractor -> the published entry standing for it (features entries with `source: published`)
        self.published_pairs = {
            f"{d}/{e}": published_entry(config, registry, d, e)[0]
            for entry in config["features"]
            if entry.get("source", "extract") == "published"
            for d in entry["datasets"]
            for e in entry["extractors"]
        }

    # datasets: each answered by the dataset's source kind (sources/kinds.py)

    def source(self, dataset: str) -> SourceKind:
        """The dataset as an instance of its source kind (one per dataset: a webdataset lists its tars once)."""
        if dataset not in self._sources:
            self._sources[dataset] = dataset_source(self.config, self.registry, dataset)
        return self._sources[dataset]

    def registry_entry(self, dataset: str) -> dict | None:
        """The registry entry a dataset uses as its source, or None for the built-in sources."""
        return self.source(dataset).registry_entry

    def dataset_root(self, dataset: str) -> str:
        return self.source(dataset).root

    def image_root(self, dataset: str) -> str:
        """Where the report reads a store's images: the dataset root, or for a tar source its manifest (each
        image is read in place from its tar)."""
        return self.source(dataset).image_root

    def tars(self, dataset: str) -> list[str]:
        """A webdataset source's tars, in shard order (a pattern expanded, a folder listed: no tar is opened)."""
        return self.source(dataset).tars

    def downloaded(self, dataset: str) -> str:
        """A urls source's record of its finished tars (the download rule's output)."""
        return self.source(dataset).record

    def shard_count(self, dataset: str) -> int:
        """How many extraction jobs (shard stores) a dataset has, known without reading any data file."""
        return self.source(dataset).shard_count()

    def id_style(self, dataset: str) -> str:
        return self.source(dataset).id_style

    def manifest(self, dataset: str) -> str:
        """visfeat manifest: which source kind, the root, how the split is chosen, and the shard count it cuts the
        manifest into (a change of count is a change of params: the manifest is rebuilt)."""
        src = self.source(dataset)
        return render([("--root", src.root), ("--id-style", src.id_style), *src.manifest_options(),
                       ("--shards", src.shard_count())])

    # downloads: the three kinds share one form

    def _download(self, kept_dir: str, url: str, sha256: str | None = None, size: int | None = None,
                  fallback: str = "archive") -> Options:
        """visfeat prepare --source archive: the URL, where the download is kept (resumable beside it), checks."""
        kept = f"{self.resources}/downloads/{kept_dir}/{_file_name(url, fallback)}"
        return [("--url", url), ("--archive", kept), ("--sha256", sha256 or None), ("--size", size or None)]

    def prepare(self, dataset: str) -> str:
        """A dataset whose kind is `prepared` (sample photos copied, or an archive downloaded and unpacked)."""
        src = self.source(dataset)
        download = src.prepare_download()
        return render([("--source", src.name), *(self._download(dataset, *download) if download else [])])

    def download_archive(self, archive: str) -> str:
        """A registry archive (config/datasets.yaml `archives`)."""
        a = self.registry["archives"][archive]
        return render(self._download(archive, a["url"], a.get("sha256"), a.get("size")))

    def download_urls(self, dataset: str) -> str:
        """visfeat download-urls: a urls source's list, columns and img2dataset settings (each default img2dataset's
        own); the rule adds --record (its output), beside which img2dataset writes the tars."""
        d = self.config["datasets"][dataset]
        i = d.get("img2dataset", {})
        return render([("--urls", d["urls"]), ("--out-dir", os.path.dirname(self.downloaded(dataset))),
                       ("--img2dataset", i.get("executable", "img2dataset")), ("--url-col", self.source(dataset).value("url_col")),
                       ("--caption-col", self.source(dataset).value("caption_col")),
                       ("--urls-per-tar", i.get("urls_per_tar", 10000)), ("--timeout", i.get("timeout", 10)),
                       ("--retries", i.get("retries", 0)), ("--processes", i.get("processes", 1)),
                       ("--threads", i.get("threads", 256))])

    def download_published(self, published: str) -> str:
        """A published feature file; one that is no archive is placed as it is."""
        p = self.published[published]
        plain = not _file_name(p["url"], "download").lower().endswith(ARCHIVE_SUFFIXES)
        opts = self._download(f"published/{published}", p["url"], p.get("sha256"), p.get("size"), "download")
        return render([*opts, ("--plain", plain)])

    def import_published(self, pair: str) -> str:
        dataset, extractor = pair.split("/", 1)
        p = self.published[self.published_pairs[pair]]
        return render([("--format", p["format"]), ("--preset", self.config["extractors"][extractor]["preset"]),
                       ("--url", p["url"]), ("--id-style", self.id_style(dataset)), ("--member", p.get("member"))])

    # extraction

    def weights_url(self, preset: str, filename: str) -> str:
        """--url for a site mirror serving {mirror}/{preset}/{file}; nothing = the official URL."""
        mirror = self.config.get("weights_mirror")
        return render([("--url", f"{mirror.rstrip('/')}/{preset}/{filename}" if mirror else None)])

    def extract(self, extractor: str, weights: str | list[str], boxes: str | list[str]) -> str:
        """visfeat extract: the instance's options (engine/request.py OPTIONS) and preset options; the name is the
        instance's key; `weights`, `boxes`: the rule's inputs (a configured file, or the fetched one; boxes with
        {dataset} filled)."""
        from visfeat.engine.request import command_args

        inst = self.config["extractors"][extractor]
        opts = command_args({**inst, "name": extractor, "weights": _first(weights), "boxes": _first(boxes)})
        opts += [("--set", f"{k}={json.dumps(v)}") for k, v in preset_options(inst).items()]
        return render(opts)

    def extract_instance(self, extractor: str) -> str:
        """The instance's whole config entry, canonical JSON: the extract rule's plain param. Snakemake's params
        rerun trigger skips params derived from the input (as the job's `args` is), so without it a changed option
        (`amp`, a preset option) would not rerun the job; the job itself then reuses every row whose signature is
        unchanged (engine/run.py), so a change that does not touch the features costs no forward."""
        return json.dumps(self.config["extractors"][extractor], sort_keys=True, default=str)

    def text(self, extractor: str) -> str:
        """visfeat text: the instance's preset options (a generic preset's model and tag pick its text tower)."""
        inst = self.config["extractors"][extractor]
        return render([("--set", f"{k}={json.dumps(v)}") for k, v in preset_options(inst).items()])

    def extract_job(self, dataset: str, extractor: str, weights: str | list[str], boxes: str | list[str],
                    shard: int = 0, staged: list[str] = ()) -> str:
        """The workflow's extraction job: the instance's options, how many shards the manifest is cut into, and the
        root its paths resolve against (the job's own --shard is its wildcard); `staged`: the local copies of the
        shard's tars when they are in object storage (their root is then the job's root)."""
        src = self.source(dataset)
        root = src.staged_root(shard, list(staged)) if staged else src.root
        return " ".join([self.extract(extractor, weights, boxes),
                         render([("--shards", self.shard_count(dataset)), ("--root", root)])])

    def merge(self, dataset: str, extractor: str, shards: list[str] = ()) -> str:
        """visfeat merge: the shard stores as a folder and a count, not one argument each, so the command line stays
        short whatever the shard count (the rule's input still lists every store, for the DAG); `merge: virtual`
        maps the fields onto the shard stores instead of copying them (store/merge.py `merge_virtual`)."""
        # the folder of the rule's own inputs when given: with a storage provider they are staged elsewhere
        shard_dir = os.path.dirname(shards[0]) if shards else f"{self.results}/{dataset}/{extractor}/shards"
        return render([("--shard-dir", shard_dir),
                       ("--shards", self.shard_count(dataset)),
                       ("--mode", self.merge_mode(dataset))])

    def merge_mode(self, dataset: str) -> str:
        """`copy` or `virtual` (the dataset's `merge` option)."""
        return self.config["datasets"][dataset].get("merge", "copy")

    # exports

    def export_embeddings(self, manifest: str | list[str] = ()) -> str:
        """visfeat export --format embedding-reader: `manifest`, the rule's input where the dataset's tars are on
        local disk (SourceKind.local_tars; common.smk get_export_input), gives each image its caption and url."""
        return render([("--manifest", _first(manifest))])

    # k-means and reports

    def kmeans_train(self, kmeans: str) -> str:
        km = self.config["kmeans"][kmeans]
        return render([("--name", kmeans), ("--field", km["field"]), ("--k", km["k"]), ("--niter", km["niter"]),
                       ("--seed", km["seed"]), ("--gpu", km["gpu"]),
                       ("--max-train-vectors", km.get("max_train_vectors") or None)])

    def report_features(self, dataset: str, extractor: str, out_dir: str | None = None) -> str:
        """Figures of one store; rule extract's logs folder (and the shard count) gives the throughput per shard:
        each job's `{i}.stats.json` beside its `{i}.log` (engine/stats.py `throughput`)."""
        return render([("--root", self.image_root(dataset)),
                       ("--out-dir", out_dir or f"{self.results}/report/{dataset}/{extractor}"),
                       ("--weights-root", f"{self.resources}/weights"),
                       ("--log-dir", f"logs/extract/{dataset}/{extractor}"), ("--shards", self.shard_count(dataset))])

    def report_kmeans(self, kmeans: str, out_dir: str | None = None, codes: str | None = None) -> str:
        """Figures of one k-means job; the codes of its first `assign` dataset, when it has one. `out_dir`, `codes`:
        the rule's own output folder and input, which a storage provider puts elsewhere than the config says."""
        km = self.config["kmeans"][kmeans]
        opts: Options = [("--out-dir", out_dir or f"{self.results}/report/kmeans/{kmeans}")]
        if km["assign"]:
            d = km["assign"][0]
            opts += [("--store", codes or f"{self.results}/kmeans/{kmeans}/{d}.h5"), ("--root", self.image_root(d))]
        return render(opts)
