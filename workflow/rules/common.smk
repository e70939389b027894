# Config validation and input functions. Every rule calls the package through `python -m visfeat` with src/ on
# PYTHONPATH, inside the rule's conda env.
import json
import os
import urllib.parse
import shlex
import sys
from pathlib import Path

VISFEAT_SRC = str(Path(workflow.basedir) / "src")
if VISFEAT_SRC not in sys.path:
    sys.path.insert(0, VISFEAT_SRC)

from visfeat.config import ConfigError, load_registry, preset_options, published_entry, validate_config
from visfeat.extractors.registry import get_preset


def _registry_path():
    p = Path(config.get("dataset_registry", "config/datasets.yaml"))
    return p if p.is_absolute() or p.exists() else Path(workflow.basedir) / p


try:
    REGISTRY = load_registry(str(_registry_path()))
    config = validate_config(
        config, str(Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"), registry=REGISTRY
    )
except ConfigError as e:
    raise WorkflowError(str(e)) from None
ARCHIVES = REGISTRY["archives"]

R = config["results"]
RES = config["resources"]
DATASETS = config["datasets"]
EXTRACTORS = config["extractors"]
VISFEAT = f"PYTHONPATH={shlex.quote(VISFEAT_SRC)}${{PYTHONPATH:+:$PYTHONPATH}} python -m visfeat"
ENV_OF_FAMILY = {
    "clip": "../../envs/clip.yaml",
    "timm": "../../envs/timm.yaml",
    "detector": "../../envs/detector.yaml",
}


def _alternatives(names):
    import re

    return "|".join(re.escape(n) for n in names) or "(?!x)x"


wildcard_constraints:
    dataset=_alternatives(DATASETS),
    extractor=_alternatives(EXTRACTORS),
    prepared=_alternatives([d for d, v in DATASETS.items() if v["source"] in ("sample", "archive")]),
    archive=_alternatives(ARCHIVES),
    kmeans=_alternatives(config["kmeans"]),
    i=r"\d+",


def registry_entry(dataset):
    """The registry entry a dataset uses as its source, or None for the built-in sources."""
    return REGISTRY["datasets"].get(DATASETS[dataset]["source"])


def dataset_root(dataset):
    d, reg = DATASETS[dataset], registry_entry(dataset)
    if reg is not None:
        return d.get("path") or reg.get("local") or f"{RES}/archives"
    if d["source"] in ("sample", "archive"):
        return f"{RES}/datasets/{dataset}"
    return d["path"]


def id_style(dataset):
    reg = registry_entry(dataset) or {}
    return DATASETS[dataset].get("id_style") or reg.get("id_style") or "path"


def manifest_args(wildcards):
    """visfeat manifest arguments: which source kind, the root, and how the split is chosen."""
    ds = wildcards.dataset
    d, reg = DATASETS[ds], registry_entry(ds)
    q = shlex.quote
    args = [f"--root {q(dataset_root(ds))}", f"--id-style {id_style(ds)}"]
    if reg is None:
        args.append(f"--source {d['source']}")
        if d["source"] == "list":
            args.append(f"--list {q(d['list'])}")
    elif "local" in reg:
        args += ["--source folder", f"--missing-message {q(reg['instructions'])}"]
    elif "annotation" in reg:
        args += ["--source annotation", f"--annotation {q(reg['annotation'])}", f"--folder {q(reg['images'])}"]
    elif "karpathy" in reg:
        args += ["--source karpathy", f"--annotation {q(reg['karpathy'])}"]
        args += [f"--split {s}" for s in reg["splits"]]
        args += [f"--folder {q(f'{k}={v}')}" for k, v in reg["filepaths"].items()]
    else:
        args += ["--source folders"] + [f"--folder {q(f)}" for f in reg["folders"]]
    return " ".join(args)


def archive_args(wildcards):
    a = ARCHIVES[wildcards.archive]
    name = os.path.basename(urllib.parse.urlparse(a["url"]).path) or "archive"
    args = [f"--url {shlex.quote(a['url'])}", f"--archive {shlex.quote(f'{RES}/downloads/{wildcards.archive}/{name}')}"]
    if a.get("sha256"):
        args.append(f"--sha256 {a['sha256']}")
    if a.get("size"):
        args.append(f"--size {a['size']}")
    return " ".join(args)


def prepare_args(wildcards):
    d = DATASETS[wildcards.prepared]
    if d["source"] == "sample":
        return "--source sample"
    name = os.path.basename(urllib.parse.urlparse(d["url"]).path) or "archive"
    archive = f"{RES}/downloads/{wildcards.prepared}/{name}"
    return f"--source archive --url {shlex.quote(d['url'])} --sha256 {d['sha256']} --archive {shlex.quote(archive)}"


def get_dataset_input(wildcards):
    d, reg = DATASETS[wildcards.dataset], registry_entry(wildcards.dataset)
    if reg is not None:  # a local sign-up folder is checked by the job itself, so -n plans without it
        return [] if "local" in reg else [f"{RES}/archives/{a}" for a in reg["archives"]]
    if d["source"] == "list":
        return [d["list"]]
    return [dataset_root(wildcards.dataset)]


def get_shard_lists(wildcards):
    n = DATASETS[wildcards.dataset]["shards"]
    return [f"{R}/{wildcards.dataset}/shards/{i}.txt" for i in range(n)]


def get_shard_stores(wildcards):
    n = DATASETS[wildcards.dataset]["shards"]
    return [f"{R}/{wildcards.dataset}/{wildcards.extractor}/shards/{i}.h5" for i in range(n)]


def preset_of(extractor):
    return get_preset(EXTRACTORS[extractor]["preset"])


def get_weights(wildcards):
    """The weights file an extractor instance loads: a configured path, the fetched file, or none (shipped)."""
    inst = EXTRACTORS[wildcards.extractor]
    if "weights" in inst:
        return [inst["weights"]]
    p = preset_of(wildcards.extractor)
    return [f"{RES}/weights/{p.name}/{wf.filename}" for wf in p.weights]


def get_boxes(wildcards):
    """Forced-boxes mode: the instance's `boxes` file for this dataset (`{dataset}` in the path is filled)."""
    inst = EXTRACTORS[wildcards.extractor]
    return [inst["boxes"].replace("{dataset}", wildcards.dataset)] if "boxes" in inst else []


def get_extract_env(wildcards):
    return ENV_OF_FAMILY[preset_of(wildcards.extractor).family]


def extract_args(wildcards, input):
    inst = EXTRACTORS[wildcards.extractor]
    args = [f"--preset {shlex.quote(inst['preset'])}", f"--name {shlex.quote(wildcards.extractor)}"]
    weights = [input.weights] if isinstance(input.weights, str) else list(input.weights)
    if weights:
        args.append(f"--weights {shlex.quote(weights[0])}")
    args += [f"--batch-size {inst['batch_size']}", f"--workers {inst['workers']}", f"--dtype {inst['dtype']}",
             f"--compression {inst['compression']}"]
    if input.boxes:
        args.append(f"--boxes {shlex.quote(input.boxes if isinstance(input.boxes, str) else input.boxes[0])}")
    if inst["amp"]:
        args.append("--amp")
    if inst["device"] != "auto":
        args.append(f"--device {inst['device']}")
    for k, v in preset_options(inst).items():
        args.append(f"--set {shlex.quote(f'{k}={json.dumps(v)}')}")
    return " ".join(args)


REPORT_FIGURES = ("samples", "norms", "classes", "failures", "throughput")


def get_all_features():
    out = []
    for entry in config["features"]:
        for d in entry["datasets"]:
            for e in entry["extractors"]:
                out.append(f"{R}/{d}/{e}.h5")
                out += [f"{R}/report/{d}/{e}/{fig}.png" for fig in REPORT_FIGURES]
    for name, t in config["text"].items():
        out += [f"{R}/text/{name}/{e}.h5" for e in t["extractors"]]
    return list(dict.fromkeys(out))


def weights_url_arg(wildcards):
    """--url for a site mirror serving {mirror}/{preset}/{file}; nothing = the official URL."""
    mirror = config.get("weights_mirror")
    if not mirror:
        return ""
    url = f"{mirror.rstrip('/')}/{wildcards.preset}/{wildcards.filename}"
    return f"--url {shlex.quote(url)}"


def get_all_weights():
    out = []
    for name, inst in EXTRACTORS.items():
        if "weights" not in inst:
            p = preset_of(name)
            out += [f"{RES}/weights/{p.name}/{wf.filename}" for wf in p.weights]
    return list(dict.fromkeys(out))


def features_of(dataset):
    """The stores all_features builds for one dataset (the features_<dataset> target)."""
    return [f for f in get_all_features() if f.startswith(f"{R}/{dataset}/")]


def get_kmeans_train_stores(wildcards):
    km = config["kmeans"][wildcards.kmeans]
    return [f"{R}/{d}/{km['extractor']}.h5" for d in km["train"]]


def kmeans_train_args(wildcards):
    km = config["kmeans"][wildcards.kmeans]
    args = [f"--name {wildcards.kmeans}", f"--field {km['field']}", f"--k {km['k']}", f"--niter {km['niter']}",
            f"--seed {km['seed']}", f"--gpu {km['gpu']}"]
    if km.get("max_train_vectors"):
        args.append(f"--max-train-vectors {km['max_train_vectors']}")
    return " ".join(args)


def get_kmeans_outputs():
    out = []
    for name, km in config["kmeans"].items():
        out.append(f"{R}/kmeans/{name}/centroids.h5")
        out += [f"{R}/report/kmeans/{name}/{fig}.png" for fig in ("objective", "cluster_sizes", "codes")]
        out += [f"{R}/kmeans/{name}/{d}.h5" for d in km["assign"]]
    return out


def check_kmeans_sizes():
    """Refuse at start a k larger than the training vectors, where the training stores already exist."""
    from visfeat.kmeans import count_vectors

    for name, km in config["kmeans"].items():
        paths = [f"{R}/{d}/{km['extractor']}.h5" for d in km["train"]]
        if all(os.path.exists(p) for p in paths):
            n = count_vectors(paths, km["field"])
            if km["k"] > n:
                raise WorkflowError(f"config: kmeans.{name}.k: k={km['k']} is larger than the {n} training vectors "
                                    f"available ({km['field']} of {', '.join(km['train'])}): choose k <= {n}")


check_kmeans_sizes()


def report_feature_args(wildcards):
    n = DATASETS[wildcards.dataset]["shards"]
    logs = [f"logs/extract/{wildcards.dataset}/{wildcards.extractor}/{i}.log" for i in range(n)]
    out_dir = f"{R}/report/{wildcards.dataset}/{wildcards.extractor}"
    return " ".join(
        [f"--root {shlex.quote(dataset_root(wildcards.dataset))}", f"--out-dir {shlex.quote(out_dir)}",
         f"--weights-root {shlex.quote(f'{RES}/weights')}"]
        + [f"--log {shlex.quote(p)}" for p in logs]
    )


def get_report_kmeans_input(wildcards):
    km = config["kmeans"][wildcards.kmeans]
    inputs = {"centroids": f"{R}/kmeans/{wildcards.kmeans}/centroids.h5"}
    if km["assign"]:
        inputs["codes"] = f"{R}/kmeans/{wildcards.kmeans}/{km['assign'][0]}.h5"
    return inputs


def report_kmeans_args(wildcards):
    km = config["kmeans"][wildcards.kmeans]
    args = [f"--out-dir {shlex.quote(f'{R}/report/kmeans/{wildcards.kmeans}')}"]
    if km["assign"]:
        d = km["assign"][0]
        args += [f"--store {shlex.quote(f'{R}/kmeans/{wildcards.kmeans}/{d}.h5')}",
                 f"--root {shlex.quote(dataset_root(d))}"]
    return " ".join(args)


# Published feature files (config `published`), used for the features entries with `source: published`.
PUBLISHED = {**REGISTRY.get("published", {}), **config.get("published", {})}
PUBLISHED_PAIRS = {
    f"{d}/{e}": published_entry(config, REGISTRY, d, e)[0]
    for entry in config["features"]
    if entry.get("source", "extract") == "published"
    for d in entry["datasets"]
    for e in entry["extractors"]
}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz")


def download_published_args(wildcards):
    p = PUBLISHED[wildcards.published]
    name = os.path.basename(urllib.parse.urlparse(p["url"]).path) or "download"
    kept = f"{RES}/downloads/published/{wildcards.published}/{name}"
    args = [f"--url {shlex.quote(p['url'])}", f"--archive {shlex.quote(kept)}"]
    if p.get("sha256"):
        args.append(f"--sha256 {p['sha256']}")
    if p.get("size"):
        args.append(f"--size {p['size']}")
    if not name.lower().endswith(ARCHIVE_SUFFIXES):
        args.append("--plain")
    return " ".join(args)


def get_published_download(wildcards):
    return f"{RES}/published/{PUBLISHED_PAIRS[wildcards.pair]}"


def import_args(wildcards):
    p = PUBLISHED[PUBLISHED_PAIRS[wildcards.pair]]
    extractor = wildcards.pair.split("/", 1)[1]
    dataset = wildcards.pair.split("/", 1)[0]
    args = [f"--format {p['format']}", f"--preset {shlex.quote(EXTRACTORS[extractor]['preset'])}",
            f"--url {shlex.quote(p['url'])}", f"--id-style {id_style(dataset)}"]
    if p.get("member"):
        args.append(f"--member {shlex.quote(p['member'])}")
    return " ".join(args)
