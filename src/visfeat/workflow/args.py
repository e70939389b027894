"""The arguments each workflow rule gives its `visfeat` subcommand, read from the validated config and the dataset
registry. Plain Python rather than Snakefile code, so workflow/rules/common.smk keeps only input functions and
targets, and the printed commands (`snakemake -n -p`) stay complete: each one can be run by hand."""
from __future__ import annotations

import json
import os
import shlex
import urllib.parse
from typing import Any

from visfeat.sources.tars import tar_paths
from visfeat.workflow.config import preset_options, published_entry

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz")

Options = list[tuple[str, Any]]


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
        self._tars: dict[str, list[str]] = {}
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

    # datasets

    def registry_entry(self, dataset: str) -> dict | None:
        """The registry entry a dataset uses as its source, or None for the built-in sources."""
        return self.registry["datasets"].get(self.config["datasets"][dataset]["source"])

    def dataset_root(self, dataset: str) -> str:
        d, reg = self.config["datasets"][dataset], self.registry_entry(dataset)
        if reg is not None:
            return d.get("path") or reg.get("local") or f"{self.resources}/archives"
        if d["source"] in ("sample", "archive"):
            return f"{self.resources}/datasets/{dataset}"
        if d["source"] in ("webdataset", "urls"):  # the manifest holds each tar's absolute path
            return "."
        return d["path"]

    def image_root(self, dataset: str) -> str:
        """Where the report reads a store's images: the dataset root, or for a tar source its manifest (each
        image is read in place from its tar)."""
        if self.config["datasets"][dataset]["source"] in ("webdataset", "urls"):
            return f"{self.results}/{dataset}/manifest.parquet"
        return self.dataset_root(dataset)

    def tars(self, dataset: str) -> list[str]:
        """A webdataset source's tars, in shard order (a pattern expanded, a folder listed: no tar is opened)."""
        if dataset not in self._tars:
            self._tars[dataset] = tar_paths(self.config["datasets"][dataset]["path"])
        return self._tars[dataset]

    def downloaded(self, dataset: str) -> str:
        """A urls source's record of its finished tars (the download rule's output), written beside img2dataset's
        tars in resources/datasets/{dataset}/ (a failed download job keeps them: they are not its output)."""
        return f"{self.resources}/datasets/{dataset}/downloaded.tsv"

    def shard_count(self, dataset: str) -> int:
        """How many extraction jobs (shard stores) a dataset has, known without reading any data file: `shards`, or
        for a webdataset source one per `tars_per_shard` tars."""
        d = self.config["datasets"][dataset]
        if d["source"] == "webdataset":
            return -(-len(self.tars(dataset)) // d.get("tars_per_shard", 1))
        return d["shards"]

    def id_style(self, dataset: str) -> str:
        reg = self.registry_entry(dataset) or {}
        return self.config["datasets"][dataset].get("id_style") or reg.get("id_style") or "path"

    def manifest(self, dataset: str) -> str:
        """visfeat manifest: which source kind, the root, and how the split is chosen."""
        d, reg = self.config["datasets"][dataset], self.registry_entry(dataset)
        opts: Options = [("--root", self.dataset_root(dataset)), ("--id-style", self.id_style(dataset))]
        if reg is None and d["source"] == "webdataset":
            opts += [("--source", "webdataset"), ("--tars-per-shard", d.get("tars_per_shard", 1))]
            opts += [("--tars", t) for t in (d["path"] if isinstance(d["path"], list) else [d["path"]])]
        elif reg is None and d["source"] == "urls":
            opts += [("--source", "urls"), ("--downloaded", self.downloaded(dataset)), ("--shards", d["shards"])]
        elif reg is None:
            opts += [("--source", d["source"]), ("--list", d.get("list") if d["source"] == "list" else None)]
        elif "local" in reg:
            opts += [("--source", "folder"), ("--missing-message", reg["instructions"])]
        elif "annotation" in reg:
            opts += [("--source", "annotation"), ("--annotation", reg["annotation"]), ("--folder", reg["images"])]
        elif "karpathy" in reg:
            opts += [("--source", "karpathy"), ("--annotation", reg["karpathy"])]
            opts += [("--split", s) for s in reg["splits"]]
            opts += [("--folder", f"{k}={v}") for k, v in reg["filepaths"].items()]
        else:
            opts += [("--source", "folders")] + [("--folder", f) for f in reg["folders"]]
        return render(opts)

    # downloads: the three kinds share one form

    def _download(self, kept_dir: str, url: str, sha256: str | None = None, size: int | None = None,
                  fallback: str = "archive") -> Options:
        """visfeat prepare --source archive: the URL, where the download is kept (resumable beside it), checks."""
        kept = f"{self.resources}/downloads/{kept_dir}/{_file_name(url, fallback)}"
        return [("--url", url), ("--archive", kept), ("--sha256", sha256 or None), ("--size", size or None)]

    def prepare(self, dataset: str) -> str:
        """A `sample` or `archive` dataset (config `datasets`)."""
        d = self.config["datasets"][dataset]
        if d["source"] == "sample":
            return render([("--source", "sample")])
        return render([("--source", "archive"), *self._download(dataset, d["url"], d["sha256"])])

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
                       ("--img2dataset", i.get("executable", "img2dataset")), ("--url-col", d.get("url_col", "url")),
                       ("--caption-col", d.get("caption_col", "caption")),
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
        """visfeat extract: the instance's preset and options; `weights`, `boxes`: the rule's inputs."""
        inst = self.config["extractors"][extractor]
        opts: Options = [("--preset", inst["preset"]), ("--name", extractor), ("--weights", _first(weights)),
                         ("--batch-size", inst["batch_size"]), ("--workers", inst["workers"]),
                         ("--dtype", inst["dtype"]), ("--compression", inst["compression"]),
                         ("--boxes", _first(boxes)), ("--amp", inst["amp"]),
                         ("--device", None if inst["device"] == "auto" else inst["device"])]
        opts += [("--set", f"{k}={json.dumps(v)}") for k, v in preset_options(inst).items()]
        return render(opts)

    def extract_job(self, dataset: str, extractor: str, weights: str | list[str], boxes: str | list[str]) -> str:
        """The workflow's extraction job: the instance's options, how many shards the manifest is cut into, and the
        root its paths resolve against (the job's own --shard is its wildcard)."""
        return " ".join([self.extract(extractor, weights, boxes),
                         render([("--shards", self.shard_count(dataset)), ("--root", self.dataset_root(dataset))])])

    def merge(self, dataset: str, extractor: str) -> str:
        """visfeat merge: the shard stores as a folder and a count, not one argument each, so the command line stays
        short whatever the shard count (the rule's input still lists every store, for the DAG); `merge: virtual`
        maps the fields onto the shard stores instead of copying them (virtual_merge.py)."""
        return render([("--shard-dir", f"{self.results}/{dataset}/{extractor}/shards"),
                       ("--shards", self.shard_count(dataset)),
                       ("--mode", self.config["datasets"][dataset].get("merge", "copy"))])

    # k-means and reports

    def kmeans_train(self, kmeans: str) -> str:
        km = self.config["kmeans"][kmeans]
        return render([("--name", kmeans), ("--field", km["field"]), ("--k", km["k"]), ("--niter", km["niter"]),
                       ("--seed", km["seed"]), ("--gpu", km["gpu"]),
                       ("--max-train-vectors", km.get("max_train_vectors") or None)])

    def report_features(self, dataset: str, extractor: str) -> str:
        """Figures of one store; the extraction logs (rule extract's, as a folder and a count) give the throughput
        per shard."""
        return render([("--root", self.image_root(dataset)),
                       ("--out-dir", f"{self.results}/report/{dataset}/{extractor}"),
                       ("--weights-root", f"{self.resources}/weights"),
                       ("--log-dir", f"logs/extract/{dataset}/{extractor}"), ("--shards", self.shard_count(dataset))])

    def report_kmeans(self, kmeans: str) -> str:
        """Figures of one k-means job; the codes of its first `assign` dataset, when it has one."""
        km = self.config["kmeans"][kmeans]
        opts: Options = [("--out-dir", f"{self.results}/report/kmeans/{kmeans}")]
        if km["assign"]:
            d = km["assign"][0]
            opts += [("--store", f"{self.results}/kmeans/{kmeans}/{d}.h5"), ("--root", self.image_root(d))]
        return render(opts)
