"""Workflow config validation: the JSON schema plus the checks a schema can't express, each failing with one line
that names the key (`config: extractors.clip.preset: unknown preset 'clip-rn5'; known: ...`)."""
from __future__ import annotations

import copy
import os
from typing import Any

import yaml

# keys of an extractor instance that are not preset options
INSTANCE_KEYS = ("preset", "weights", "boxes", "batch_size", "workers", "amp", "device", "dtype", "compression")


class ConfigError(ValueError):
    pass


def _fill_defaults(schema: dict, value: Any) -> Any:
    if isinstance(value, dict) and schema.get("type") == "object":
        for k, sub in schema.get("properties", {}).items():
            if k not in value and "default" in sub:
                value[k] = copy.deepcopy(sub["default"])
        for k, v in value.items():
            sub = schema.get("properties", {}).get(k, schema.get("additionalProperties"))
            if isinstance(sub, dict):
                value[k] = _fill_defaults(sub, v)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [_fill_defaults(schema["items"], v) for v in value]
    return value


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


BUILTIN_SOURCES = ("sample", "folder", "list", "archive", "webdataset", "urls")
CAPTIONED_SOURCES = ("webdataset", "urls")  # sources whose manifest has a `txt` caption per image


def load_registry(path: str) -> dict:
    with open(path) as f:
        reg = yaml.safe_load(f)
    for name, d in reg["datasets"].items():
        for a in d.get("archives", []):
            if a not in reg["archives"]:
                raise ConfigError(f"{path}: datasets.{name}: unknown archive {a!r}")
    return reg


def validate_config(config: dict, schema_path: str, base_dir: str = ".", registry: dict | None = None) -> dict:
    """Validate, fill defaults, check cross-references and paths; return the filled config. `registry`: the
    dataset registry, whose names are valid `source`s."""
    import jsonschema

    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    cfg = copy.deepcopy(config)
    for k, sub in schema.get("properties", {}).items():
        if k not in cfg and "default" in sub:
            cfg[k] = copy.deepcopy(sub["default"])
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        e = jsonschema.exceptions.best_match(errors)
        if e.validator == "additionalProperties":
            extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
            raise ConfigError(f"config: {_key(list(e.absolute_path) + extra[:1])}: unknown key")
        raise ConfigError(f"config: {_key(e.absolute_path)}: {e.message}")
    cfg = _fill_defaults(schema, cfg)
    _check_semantics(cfg, base_dir, registry or {"datasets": {}, "archives": {}})
    return cfg


def _check_semantics(cfg: dict, base_dir: str, registry: dict) -> None:
    from visfeat.extractors.registry import COMMON_OPTIONS, check_options as check_preset_options, get_preset

    def path_of(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(base_dir, p)

    for name, d in cfg["datasets"].items():
        src = d["source"]
        if src not in BUILTIN_SOURCES and src not in registry["datasets"]:
            raise ConfigError(f"config: datasets.{name}.source: unknown source {src!r}; built in: "
                              f"{', '.join(BUILTIN_SOURCES)}; registry: {', '.join(registry['datasets'])}")
        need = {"folder": ["path"], "list": ["list", "path"], "archive": ["url", "sha256"],
                "webdataset": ["path"], "urls": ["urls"]}.get(src, [])
        for k in need:
            if k not in d:
                raise ConfigError(f"config: datasets.{name}.{k}: required for source {src}")
        if src == "folder" and not os.path.isdir(path_of(d["path"])):
            raise ConfigError(f"config: datasets.{name}.path: folder {d['path']} does not exist")
        if src == "urls":
            if not d["urls"].lower().endswith((".parquet", ".csv", ".tsv")):
                raise ConfigError(f"config: datasets.{name}.urls: {d['urls']} is not a .parquet, .csv or .tsv file")
            if not os.path.isfile(path_of(d["urls"])):
                raise ConfigError(f"config: datasets.{name}.urls: file {d['urls']} does not exist")
        if src == "list":
            if not os.path.isfile(path_of(d["list"])):
                raise ConfigError(f"config: datasets.{name}.list: file {d['list']} does not exist")
            if not os.path.isdir(path_of(d["path"])):
                raise ConfigError(f"config: datasets.{name}.path: folder {d['path']} does not exist")

    for name, inst in cfg["extractors"].items():
        inst.setdefault("preset", name)
        try:
            p = get_preset(inst["preset"])
        except KeyError as e:
            raise ConfigError(f"config: extractors.{name}.preset: {e.args[0]}") from None
        allowed = {**COMMON_OPTIONS, **p.options}
        for k in inst:
            if k not in INSTANCE_KEYS and k not in allowed:
                raise ConfigError(f"config: extractors.{name}.{k}: unknown key (preset {p.name} options: "
                                  f"{', '.join(sorted(allowed))})")
        if "boxes" in inst and p.family != "detector":
            raise ConfigError(f"config: extractors.{name}.boxes: preset {p.name} takes no boxes (forced-boxes mode "
                              "is for region presets)")
        if "weights" in inst and not os.path.isfile(path_of(inst["weights"])):
            raise ConfigError(f"config: extractors.{name}.weights: file {inst['weights']} does not exist")
        try:  # the preset's own check of its option values (e.g. VISSL's pooling ops), torch-free
            check_preset_options(p.name, {k: v for k, v in inst.items() if k not in INSTANCE_KEYS})
        except ValueError as e:
            raise ConfigError(f"config: extractors.{name}: {e}") from None

    for k, entry in enumerate(cfg["features"]):
        for d in entry["datasets"]:
            if d not in cfg["datasets"]:
                raise ConfigError(f"config: features.{k}.datasets: {d!r} is not defined under datasets")
        for e in entry["extractors"]:
            if e not in cfg["extractors"]:
                raise ConfigError(f"config: features.{k}.extractors: {e!r} is not defined under extractors")

    for name, p_ in cfg.get("published", {}).items():
        if ("extractor" in p_) == ("preset" in p_):
            raise ConfigError(f"config: published.{name}: give exactly one of extractor or preset")
    for k, entry in enumerate(cfg["features"]):
        if entry.get("source", "extract") == "published":
            for d in entry["datasets"]:
                for e in entry["extractors"]:
                    if published_entry(cfg, registry, d, e) is None:
                        raise ConfigError(f"config: features.{k}.source: published, but no `published` entry has "
                                          f"dataset {d!r} and extractor {e!r} (config or registry)")

    for name, km in cfg.get("kmeans", {}).items():
        if km["extractor"] not in cfg["extractors"]:
            raise ConfigError(f"config: kmeans.{name}.extractor: {km['extractor']!r} is not defined under extractors")
        for key in ("train", "assign"):
            for d in km[key]:
                if d not in cfg["datasets"]:
                    raise ConfigError(f"config: kmeans.{name}.{key}: {d!r} is not defined under datasets")

    for name, t in cfg.get("text", {}).items():
        if "dataset" in t:
            d = cfg["datasets"].get(t["dataset"])
            if d is None:
                raise ConfigError(f"config: text.{name}.dataset: {t['dataset']!r} is not defined under datasets")
            if d.get("source") not in CAPTIONED_SOURCES:
                raise ConfigError(f"config: text.{name}.dataset: {t['dataset']!r} has no captions (source "
                                  f"{d.get('source')!r}; captions come with {', '.join(CAPTIONED_SOURCES)} sources)")
        elif not os.path.isfile(path_of(t["captions"])):
            raise ConfigError(f"config: text.{name}.captions: file {t['captions']} does not exist")
        for e in t["extractors"]:
            if e not in cfg["extractors"]:
                raise ConfigError(f"config: text.{name}.extractors: {e!r} is not defined under extractors")
            if get_preset(cfg["extractors"][e]["preset"]).family != "clip":
                raise ConfigError(f"config: text.{name}.extractors: {e!r} is not a CLIP extractor")


def published_entry(cfg: dict, registry: dict, dataset: str, extractor: str) -> tuple[str, dict] | None:
    """The published file standing for `dataset` x `extractor`: a config `published` entry naming them, or a
    registry entry for the dataset's registry source and the extractor's preset whose `options` the instance
    has (config entries first)."""
    src = cfg["datasets"][dataset].get("source")
    inst = cfg["extractors"][extractor]
    entries = {**registry.get("published", {}), **cfg.get("published", {})}
    for name in [*cfg.get("published", {}), *registry.get("published", {})]:
        p = entries[name]
        if p["dataset"] not in (dataset, src):
            continue
        if p.get("extractor") == extractor or (
                p.get("preset") == inst["preset"]
                and all(inst.get(k, _preset_default(inst["preset"], k)) == v for k, v in p.get("options", {}).items())):
            return name, p
    return None


def _preset_default(preset: str, key: str):
    from visfeat.extractors.registry import resolve_options

    return resolve_options(preset).get(key)


def preset_options(inst: dict) -> dict:
    """The preset options of an extractor instance (everything but the instance keys)."""
    return {k: v for k, v in inst.items() if k not in INSTANCE_KEYS}
