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

from visfeat.config import ConfigError, preset_options, validate_config
from visfeat.extractors.registry import get_preset

try:
    config = validate_config(config, str(Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"))
except ConfigError as e:
    raise WorkflowError(str(e)) from None

R = config["results"]
RES = config["resources"]
DATASETS = config["datasets"]
EXTRACTORS = config["extractors"]
VISFEAT = f"PYTHONPATH={shlex.quote(VISFEAT_SRC)}${{PYTHONPATH:+:$PYTHONPATH}} python -m visfeat"
ENV_OF_FAMILY = {"clip": "../../envs/clip.yaml", "timm": "../../envs/timm.yaml"}


def _alternatives(names):
    import re

    return "|".join(re.escape(n) for n in names) or "(?!x)x"


wildcard_constraints:
    dataset=_alternatives(DATASETS),
    extractor=_alternatives(EXTRACTORS),
    prepared=_alternatives([d for d, v in DATASETS.items() if v["source"] in ("sample", "archive")]),
    i=r"\d+",


def dataset_root(dataset):
    d = DATASETS[dataset]
    if d["source"] in ("sample", "archive"):
        return f"{RES}/datasets/{dataset}"
    return d["path"]


def prepare_args(wildcards):
    d = DATASETS[wildcards.prepared]
    if d["source"] == "sample":
        return "--source sample"
    name = os.path.basename(urllib.parse.urlparse(d["url"]).path) or "archive"
    archive = f"{RES}/downloads/{wildcards.prepared}/{name}"
    return f"--source archive --url {shlex.quote(d['url'])} --sha256 {d['sha256']} --archive {shlex.quote(archive)}"


def get_dataset_input(wildcards):
    d = DATASETS[wildcards.dataset]
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
    if inst["amp"]:
        args.append("--amp")
    if inst["device"] != "auto":
        args.append(f"--device {inst['device']}")
    for k, v in preset_options(inst).items():
        args.append(f"--set {shlex.quote(f'{k}={json.dumps(v)}')}")
    return " ".join(args)


def get_all_features():
    out = []
    for entry in config["features"]:
        for d in entry["datasets"]:
            for e in entry["extractors"]:
                out.append(f"{R}/{d}/{e}.h5")
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
