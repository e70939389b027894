# The validated config, input functions and targets. Each rule's shell line is `visfeat(...)`: the package's
# command with src/ on PYTHONPATH, inside the rule's conda env; what the config says each command is given is
# src/visfeat/workflow/args.py (ARGS). Nothing here reads a data file: parsing stays fast and side-effect free.
import os
import sys
import shlex
from pathlib import Path

VISFEAT_SRC = str(Path(workflow.basedir) / "src")
if VISFEAT_SRC not in sys.path:
    sys.path.insert(0, VISFEAT_SRC)

from visfeat.workflow.config import ConfigError, load_registry, preset_options, validate_config
from visfeat.extractors.hub import preset_file
from visfeat.extractors.registry import get_preset, resolve_options
from visfeat.workflow.args import WorkflowArgs


def _registry_path():
    p = Path(config.get("dataset_registry", "config/datasets.yaml"))
    return p if p.is_absolute() or p.exists() else Path(workflow.basedir) / p


try:
    REGISTRY = load_registry(
        str(_registry_path()), str(Path(workflow.basedir) / "workflow/schemas/datasets.schema.yaml")
    )
    config = validate_config(
        config, str(Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"), registry=REGISTRY
    )
except ConfigError as e:
    raise WorkflowError(str(e)) from None

ARGS = WorkflowArgs(config, REGISTRY)
R = config["results"]
RES = config["resources"]
DATASETS = config["datasets"]
EXTRACTORS = config["extractors"]


def _s3_locations():
    """Every s3:// location this run uses, with where the run names it: the default storage prefix
    (--default-storage-provider s3) and the tars of datasets in object storage."""
    out = {}
    if workflow.storage_settings.default_storage_provider == "s3":
        out[workflow.storage_settings.default_storage_prefix] = "--default-storage-prefix"
    for d in DATASETS:
        if ARGS.source(d).remote:
            out.update({t: f"dataset {d}" for t in ARGS.source(d).tars if t.startswith("s3://")})
    return out


def _s3_client(url):
    """The boto3 client of Snakemake's S3 storage plugin for `url`: its endpoint and keys, as the jobs get them."""
    from snakemake.io import get_flag_value

    return get_flag_value(storage(url), "storage_object").provider.s3c.meta.client


if _s3_locations():  # wrong keys or a missing bucket: one line now, not a traceback at the first upload
    from visfeat.workflow.s3check import check_buckets

    _problem = check_buckets(_s3_client, _s3_locations())
    if _problem:
        raise WorkflowError(_problem)


# HF_HUB_OFFLINE: jobs never reach the hub through the libraries (open_clip, timm); weights come from the
# fetch_weights localrule, which downloads with visfeat's own downloader
_VISFEAT = f"HF_HUB_OFFLINE=1 PYTHONPATH={shlex.quote(VISFEAT_SRC)}${{PYTHONPATH:+:$PYTHONPATH}} python -m visfeat"


# a progress line of engine/run.py's _Progress: "[name] 704/2000 images (35.2%) ..."
PROGRESS_LINE = r"^\[[^]]*\] [0-9]+/[0-9]+ images "


def visfeat(command, log="{log}", progress=False):
    """A rule's shell line: `visfeat COMMAND`, all its output in the rule's log, whose last lines are printed when
    the job fails (Snakemake itself prints only the log's name). `log`: that log's placeholder where the rule names
    its logs (`{log.log}`: a plain `{log}` would be all of them). `progress`: the job's progress lines also reach
    the Snakemake console (tee into the log; Snakemake's bash prefix `set -euo pipefail` keeps the command's exit
    status through the pipe)."""
    prefix = _VISFEAT.replace("{", "{{").replace("}", "}}")  # literal braces, not Snakemake placeholders
    if progress:
        return (f"{prefix} {command} 2>&1 | tee {log} | (grep --line-buffered -E "
                f"'{PROGRESS_LINE}' >&2 || true) || (tail -n 3 {log} >&2; exit 1)")
    return f"{prefix} {command} > {log} 2>&1 || (tail -n 3 {log} >&2; exit 1)"


def _alternatives(names):
    import re

    return "|".join(re.escape(n) for n in names) or "(?!x)x"


wildcard_constraints:
    dataset=_alternatives(DATASETS),
    extractor=_alternatives(EXTRACTORS),
    prepared=_alternatives([d for d in DATASETS if ARGS.source(d).prepared]),
    urls=_alternatives([d for d in DATASETS if ARGS.source(d).downloads]),
    archive=_alternatives(REGISTRY["archives"]),
    kmeans=_alternatives(config["kmeans"]),
    i=r"\d+",


# input functions


def get_dataset_input(wildcards):
    """What the manifest job reads: the dataset's source kind says (src/visfeat/sources/kinds.py `inputs`)."""
    return ARGS.source(wildcards.dataset).inputs()


def get_shard_stores(wildcards):
    n = ARGS.shard_count(wildcards.dataset)
    return [f"{R}/{wildcards.dataset}/{wildcards.extractor}/shards/{i}.h5" for i in range(n)]


def preset_weights(extractor):
    """The weights files an extractor instance loads: a configured path, the fetched files, or none (shipped)."""
    inst = EXTRACTORS[extractor]
    if "weights" in inst:
        return [inst["weights"]]
    p = get_preset(inst["preset"])
    hub = preset_file(p.name, resolve_options(p.name, preset_options(inst)), f"{RES}/weights")
    if hub:  # a hub-named preset (openclip, timm): the hub file of its model/tag options (extractors/hub.py)
        return [hub]
    return [f"{RES}/weights/{p.name}/{wf.filename}" for wf in p.weights]


def get_weights(wildcards):
    return preset_weights(wildcards.extractor)


def get_boxes(wildcards):
    """Forced-boxes mode: the instance's `boxes` file for this dataset (`{dataset}` in the path is filled)."""
    inst = EXTRACTORS[wildcards.extractor]
    return [inst["boxes"].replace("{dataset}", wildcards.dataset)] if "boxes" in inst else []


def get_extract_input(wildcards):
    """An extraction job reads its shard straight from the manifest; plus the weights and given boxes it loads, and
    for tars in object storage its shard's tars, staged by Snakemake's storage plugin (`tars`)."""
    src = ARGS.source(wildcards.dataset)
    tars = [storage(t) for t in src.shard_tars(int(wildcards.i))] if src.remote else []
    return {"manifest": f"{R}/{wildcards.dataset}/manifest.parquet", "weights": get_weights(wildcards),
            "boxes": get_boxes(wildcards), "tars": tars}


def get_extract_env(wildcards):
    """The conda env the preset declares (`Preset.env`, one of envs/*.yaml)."""
    return f"../../envs/{get_preset(EXTRACTORS[wildcards.extractor]['preset']).env}.yaml"


def get_captions(wildcards):
    t = config["text"][wildcards.name]
    return f"{R}/{t['dataset']}/manifest.parquet" if "dataset" in t else t["captions"]


def get_export_input(wildcards):
    """The store, and where the dataset's tars are on local disk (sources/kinds.py `local_tars`) its manifest: the
    export reads each image's caption and url from its tar. Tars in object storage are not staged for an export."""
    src = ARGS.source(wildcards.dataset)
    return {"store": f"{R}/{wildcards.dataset}/{wildcards.extractor}.h5",
            "manifest": [f"{R}/{wildcards.dataset}/manifest.parquet"] if src.local_tars else []}


def get_kmeans_train_stores(wildcards):
    km = config["kmeans"][wildcards.kmeans]
    return [f"{R}/{d}/{km['extractor']}.h5" for d in km["train"]]


def get_report_kmeans_input(wildcards):
    km = config["kmeans"][wildcards.kmeans]
    inputs = {"centroids": f"{R}/kmeans/{wildcards.kmeans}/centroids.h5"}
    if km["assign"]:
        inputs["codes"] = f"{R}/kmeans/{wildcards.kmeans}/{km['assign'][0]}.h5"
    return inputs


def get_published_download(wildcards):
    return f"{RES}/published/{ARGS.published_pairs[wildcards.pair]}"


# targets

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


def features_of(dataset):
    """The stores all_features builds for one dataset (the features_<dataset> target)."""
    return [f for f in get_all_features() if f.startswith(f"{R}/{dataset}/")]


def has_global(extractor):
    """The extractor's preset declares a fixed 1-D `global` vector (what `visfeat export --format embedding-reader`
    exports)."""
    return any(f.name == "global" and len(f.shape) == 1 and not f.ragged
               for f in get_preset(EXTRACTORS[extractor]["preset"]).outputs)


def get_exports():
    """The `exports` target: clip-retrieval's layout of every configured store with a global vector and of every
    text store."""
    out = []
    for entry in config["features"]:
        out += [f"{R}/exports/{d}/{e}" for d in entry["datasets"] for e in entry["extractors"] if has_global(e)]
    for name, t in config["text"].items():
        out += [f"{R}/exports/text/{name}/{e}" for e in t["extractors"]]
    return list(dict.fromkeys(out))


def get_all_weights():
    return list(dict.fromkeys(w for name, inst in EXTRACTORS.items() if "weights" not in inst
                              for w in preset_weights(name)))


def get_kmeans_outputs():
    """Every k-means job's files. A k larger than the training vectors fails in kmeans_train, which counts them."""
    out = []
    for name, km in config["kmeans"].items():
        out.append(f"{R}/kmeans/{name}/centroids.h5")
        out += [f"{R}/report/kmeans/{name}/{fig}.png" for fig in ("objective", "cluster_sizes", "codes")]
        out += [f"{R}/kmeans/{name}/{d}.h5" for d in km["assign"]]
    return out


def print_run_summary(dag):
    """What this run wrote, so its end says more than "N of N steps done": each feature store a finished job made
    (a shard only when it was itself a target), with its image count and failed ids (visfeat/store/summary.py).
    Stores are opened only here, after the run: parsing the workflow stays free of h5py."""
    import os

    written = sorted(
        {
            f
            for job in dag.finished_jobs
            if job.rule.name in ("merge", "import_published", "kmeans_assign")
            or (job.rule.name == "extract" and job in dag.targetjobs)
            for f in job.output
            if f.endswith(".h5") and os.path.exists(f)
        }
    )
    try:
        from visfeat.store.summary import read_summary

        lines = [read_summary(f).line() for f in written]
    except ImportError:  # Snakemake's own env lacks h5py (only the rules' conda envs have it): the paths alone
        lines = [f"{f} (visfeat inspect {f})" for f in written]
    if lines:
        print("visfeat: this run wrote\n" + "\n".join(f"  {line}" for line in lines))
