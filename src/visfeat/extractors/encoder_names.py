"""The open_clip and timm names of the pinned library versions, read from data/encoder_names.json (written by
scripts/encoder_names.py), so that a misspelled model or tag fails at config validation without importing torch,
and the workflow knows each name's hub file before any job runs.
"""
from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAMES_FILE = Path(__file__).with_name("data") / "encoder_names.json"

# the weight files each library looks for on the hub, safetensors first: open_clip/constants.py HF_WEIGHTS_NAME,
# HF_SAFE_WEIGHTS_NAME (order: open_clip/pretrained.py download_pretrained_from_hf); timm/models/_hub.py
# HF_WEIGHTS_NAME, HF_SAFE_WEIGHTS_NAME (order: load_state_dict_from_hf)
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TIMM_FILES = ("model.safetensors", "pytorch_model.bin")
# a Hugging Face tokenizer's files, fetched beside an open_clip model's weights where its text tower uses one
# (the hub repos hold some of them: transformers AutoTokenizer.from_pretrained reads those there)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


@functools.lru_cache(maxsize=1)
def names() -> dict[str, Any]:
    return json.loads(NAMES_FILE.read_text(encoding="utf-8"))


def library_of(library: str) -> str:
    """"open_clip" or "timm" (the preset name "openclip" is accepted for the first)."""
    lib = {"openclip": "open_clip", "open_clip": "open_clip", "timm": "timm"}.get(library)
    if lib is None:
        raise ValueError(f"library {library!r} unknown; libraries: open_clip, timm")
    return lib


def _closest(word: str, pool: list[str], n: int = 5) -> str:
    close = difflib.get_close_matches(word, pool, n=n, cutoff=0.5)
    return ", ".join(close) if close else "none close"


def openclip_tag(model: str, tag: str) -> dict[str, Any]:
    """The (model, tag) entry: hub location and preprocessing; ValueError naming the closest valid names."""
    models = names()["open_clip"]
    if model not in models:
        raise ValueError(f"unknown open_clip model {model!r}; closest: {_closest(model, list(models))}")
    tags = models[model]
    if not tags:
        raise ValueError(f"open_clip model {model!r} has no pretrained tags (architecture only); models with the "
                         f"closest names that have tags: {_closest(model, [m for m, t in models.items() if t])}")
    if tag not in tags:
        raise ValueError(f"model {model!r} has no tag {tag!r}; tags: {', '.join(sorted(tags))}")
    return tags[tag]


def timm_name(name: str) -> str:
    """`name` ("arch.tag") if timm has pretrained weights by that name; ValueError naming the closest."""
    known = names()["timm"]["names"]
    if name in set(known):
        return name
    arch = name.split(".")[0]
    tags = [n.split(".", 1)[1] for n in known if n.split(".")[0] == arch]
    if tags and "." not in name:
        raise ValueError(f"timm model {name!r} needs its pretrained tag ({name}.TAG); tags: {', '.join(tags)}")
    if tags:
        raise ValueError(f"timm model {arch!r} has no tag {name.split('.', 1)[1]!r}; tags: {', '.join(tags)}")
    raise ValueError(f"unknown timm model {name!r}; closest: {_closest(name, known)}")


@dataclass(frozen=True)
class HubLocation:
    """Where a (library, model, tag) weight file lives on the Hugging Face Hub. `files`: the names the library
    tries, in its order (the workflow fetches the first); `url`: a non-hub download (a few timm names only)."""

    repo: str
    revision: str
    files: tuple[str, ...]
    url: str = ""
    tokenizer: str = ""  # the hub repo of an open_clip text tower's Hugging Face tokenizer


def hub_location(library: str, model: str, tag: str | None) -> HubLocation:
    """From the name list; a timm `model` may carry its tag ("arch.tag", tag None)."""
    if library_of(library) == "open_clip":
        entry = openclip_tag(model, tag or "")
        hf_hub, tokenizer = entry.get("hf_hub", ""), entry.get("tokenizer", "")
        # open_clip/pretrained.py download_pretrained: "org/repo/" = the default file, "org/repo/file" = that
        # file, tried after its safetensors alternative (_get_safe_alternatives)
        repo, _, file = hf_hub.rstrip().rpartition("/")
        if not file or file == OPEN_CLIP_FILES[1]:
            files = OPEN_CLIP_FILES
        elif file.endswith((".bin", ".pth")):
            files = (file[:-4] + ".safetensors", file)
        else:
            files = (file,)
        if not repo:
            return HubLocation("", "", (), entry["url"], tokenizer)
        return HubLocation(repo, "main", files, tokenizer=tokenizer)
    name = timm_name(model if tag is None else f"{model.split('.')[0]}.{tag}")
    t = names()["timm"]
    if name in t["url"]:
        return HubLocation("", "", (), t["url"][name])
    hub_id = t["hf_hub_id"].get(name, f"timm/{name}")
    repo, _, revision = hub_id.partition("@")  # timm/models/_hub.py hf_split: "repo@revision"
    return HubLocation(repo, revision or "main", TIMM_FILES)


def _check_layers(options: dict[str, Any]) -> None:
    layers = options.get("layers", [])
    if not isinstance(layers, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                         for i in layers):
        raise ValueError(f"layers must be a list of integers (layer indices as the library counts them, negative "
                         f"from the end), got {layers!r}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers {list(layers)} names a layer twice")


def check_openclip(options: dict[str, Any]) -> None:
    """Preset `openclip`'s check: model and pretrained tag exist in the pinned open_clip; layers are ints."""
    openclip_tag(options["model"], options["pretrained"])
    _check_layers(options)


def check_timm(options: dict[str, Any]) -> None:
    """Preset `timm`'s check: the model is a pretrained timm name with its tag; layers are ints."""
    timm_name(options["model"])
    _check_layers(options)
