"""Workflow config validation: the JSON schema plus the checks a schema can't express, each failing with one line
that names the key (`config: extractors.clip.preset: unknown preset 'clip-rn5'; known: ...`)."""
from __future__ import annotations

import copy
import os
from typing import Any

import yaml

from visfeat.engine.request import config_keys, schema_properties
from visfeat.sources import kinds


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


BUILTIN_SOURCES = tuple(kinds.BUILTIN_KINDS)
CAPTIONED_SOURCES = tuple(n for n, k in kinds.SOURCE_KINDS.items() if k.captions)  # a `txt` caption per image
# the schemas beside this checkout's workflow (Snakemake passes its own)
SCHEMAS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "workflow", "schemas")


def _schema_error(schema: dict, instance: Any) -> str | None:
    """The most relevant schema error as `KEY: message` (an unexpected key named as `KEY: unknown key`)."""
    import jsonschema

    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    e = jsonschema.exceptions.best_match(errors)
    if e.validator == "additionalProperties":
        extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
        return f"{_key(list(e.absolute_path) + extra[:1])}: unknown key"
    return f"{_key(e.absolute_path)}: {e.message}"


def _form_error(schema: dict, value: Any) -> str | None:
    """A source key's own form (sources/kinds.py `Key.schema`): the validator's message, or None."""
    import jsonschema

    e = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(schema).iter_errors(value))
    return None if e is None else e.message


def load_registry_schema(path: str) -> dict:
    """The registry schema: the YAML, with the registry kinds' keys (sources/kinds.py) and the config's
    `published` entry (config.schema.yaml beside it), so each is declared once."""
    with open(path) as f:
        schema = yaml.safe_load(f)
    entry = schema["properties"]["datasets"]["additionalProperties"]
    entry["properties"] = {**entry.get("properties", {}), **kinds.registry_properties()}
    with open(os.path.join(os.path.dirname(path), "config.schema.yaml")) as f:
        schema["properties"]["published"]["additionalProperties"] = \
            yaml.safe_load(f)["properties"]["published"]["additionalProperties"]
    return schema


def load_registry(path: str, schema_path: str | None = None) -> dict:
    """The dataset registry, validated (schema, each dataset's kind, names it refers to); a problem is one line
    naming the key (`config/datasets.yaml: datasets.coco_val2014.archives: ...`)."""
    with open(path) as f:
        reg = yaml.safe_load(f)
    err = _schema_error(load_registry_schema(schema_path or os.path.join(SCHEMAS, "datasets.schema.yaml")), reg)
    if err:
        raise ConfigError(f"{path}: {err}")
    for name, d in reg["datasets"].items():
        if name in kinds.BUILTIN_KINDS:
            raise ConfigError(f"{path}: datasets.{name}: the name of a built-in source kind")
        try:
            kinds.check_registry_entry(d)
        except kinds.EntryError as e:
            raise ConfigError(f"{path}: {_key(['datasets', name, e.key][:3 if e.key else 2])}: {e}") from None
        for a in d.get("archives", []):
            if a not in reg["archives"]:
                raise ConfigError(f"{path}: datasets.{name}.archives: unknown archive {a!r}")
    for name, p in reg.get("published", {}).items():
        if p["dataset"] not in reg["datasets"]:
            raise ConfigError(f"{path}: published.{name}.dataset: {p['dataset']!r} is not a dataset of the registry")
    return reg


def validate_config(config: dict, schema_path: str, base_dir: str = ".", registry: dict | None = None) -> dict:
    """Validate, fill defaults, check cross-references and paths; return the filled config. `registry`: the
    dataset registry, whose names are valid `source`s."""
    schema = load_schema(schema_path)
    cfg = copy.deepcopy(config)
    for k, sub in schema.get("properties", {}).items():
        if k not in cfg and "default" in sub:
            cfg[k] = copy.deepcopy(sub["default"])
    err = _schema_error(schema, cfg)
    if err:
        raise ConfigError(f"config: {err}")
    cfg = _fill_defaults(schema, cfg)
    _check_semantics(cfg, base_dir, registry or {"datasets": {}, "archives": {}})
    return cfg


def load_schema(path: str) -> dict:
    """The config schema: the YAML, with an extractor instance's option properties from their one declaration
    (engine/request.py OPTIONS)."""
    with open(path) as f:
        schema = yaml.safe_load(f)
    inst = schema["properties"]["extractors"]["additionalProperties"]
    inst["properties"] = {**inst.get("properties", {}), **schema_properties()}
    dataset = schema["properties"]["datasets"]["additionalProperties"]  # the kinds' keys (sources/kinds.py)
    dataset["properties"] = {**dataset.get("properties", {}), **kinds.config_properties()}
    return schema


def _check_semantics(cfg: dict, base_dir: str, registry: dict) -> None:
    from visfeat.extractors.registry import OptionError, check_options as check_preset_options, get_preset

    def path_of(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(base_dir, p)

    for name in cfg["datasets"]:  # each dataset's kind checks its keys (sources/kinds.py)
        try:
            kinds.dataset_source(cfg, registry, name).check(base_dir, _form_error)
        except kinds.EntryError as e:
            raise ConfigError(f"config: datasets.{name}.{e.key}: {e}") from None

    for name, inst in cfg["extractors"].items():
        inst.setdefault("preset", name)
        try:
            p = get_preset(inst["preset"])
        except KeyError as e:
            raise ConfigError(f"config: extractors.{name}.preset: {e.args[0]}") from None
        if "boxes" in inst and not p.takes_boxes:
            raise ConfigError(f"config: extractors.{name}.boxes: preset {p.name} takes no boxes (forced-boxes mode "
                              "is for region presets)")
        if "weights" in inst and not os.path.isfile(path_of(inst["weights"])):
            raise ConfigError(f"config: extractors.{name}.weights: file {inst['weights']} does not exist")
        try:  # the preset options' keys and value types (registry), then the preset's own check, torch-free
            check_preset_options(p.name, preset_options(inst), {k: k for k in config_keys()})
        except OptionError as e:
            raise ConfigError(f"config: extractors.{name}.{e.key}: {e.problem}") from None
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
            if not kinds.dataset_source(cfg, registry, t["dataset"]).captions:
                raise ConfigError(f"config: text.{name}.dataset: {t['dataset']!r} has no captions (source "
                                  f"{d.get('source')!r}; captions come with {', '.join(CAPTIONED_SOURCES)} sources)")
        elif not os.path.isfile(path_of(t["captions"])):
            raise ConfigError(f"config: text.{name}.captions: file {t['captions']} does not exist")
        for e in t["extractors"]:
            if e not in cfg["extractors"]:
                raise ConfigError(f"config: text.{name}.extractors: {e!r} is not defined under extractors")
            if not get_preset(cfg["extractors"][e]["preset"]).text:
                raise ConfigError(f"config: text.{name}.extractors: {e!r} is not a CLIP extractor (its preset has "
                                  "no text tower)")


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
    return {k: v for k, v in inst.items() if k not in config_keys()}
