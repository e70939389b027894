"""The extractor-instance options and the `visfeat extract` request.

`OPTIONS` is the one declaration of an instance option (preset, weights, batch size, ...). The config schema's
`extractors.<name>` properties (workflow/config.py), the `extract` command's flags (cli.py), the workflow's
command line for an instance (workflow/args.py) and the request digest all derive from it, so an option cannot be
left out of one of them: one left out of the digest would let an incremental rerun keep stale rows.

Imports nothing heavy, even lazily: Snakemake imports it (through visfeat.workflow) while parsing, and so does
every `visfeat` command (the parser); engine/run.py `extract` runs a request."""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from visfeat.engine.cores import AUTO
from visfeat.version import __version__

_JSON_TYPES = {str: "string", int: "integer", bool: "boolean"}


@dataclass(frozen=True)
class InstanceOption:
    """One option of an extractor instance: config key `name`, command-line flag `--name-with-dashes`."""

    name: str
    type: type = str
    default: Any = None  # the flag's default, and the config's unless `unset` is given
    help: str | None = None  # the flag's help
    choices: tuple[str, ...] | None = None
    digest: bool = False  # decides the stored rows: the request digest holds its value
    digest_key: str | None = None  # its key in the digest where not `name`: stores written before stay current
    schema: dict = field(default_factory=dict)  # JSON-schema keywords beyond type, default and choices
    config: bool = True  # a key of a config `extractors:` entry (the instance name is the entry's own key)
    unset: str | None = None  # the config value standing for the flag left out (device: auto)
    required: bool = False  # the flag must be given (a config entry's preset defaults to the instance name)
    auto: bool = False  # also takes `auto` (cores.AUTO), a value the job picks when it runs (workers: cores.py)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


# In the order the workflow writes them on the command line. `weights` and `boxes` are no digest options: the
# digest holds the weights file's sha256 and the boxes' own digest, so a file moved keeps its rows.
OPTIONS: tuple[InstanceOption, ...] = (
    InstanceOption("preset", required=True, digest=True),
    InstanceOption("name", config=False, digest=True,
                   help="extractor instance name stored in the file (default: the preset)"),
    InstanceOption("weights", help="weights file (default: resources/weights/{preset}/ or the shipped file)",
                   schema={"description": "a local weights file used as is (default: resources/weights/{preset}/)"}),
    InstanceOption("batch_size", int, 8, schema={"minimum": 1}),
    InstanceOption("workers", int, AUTO, help="DataLoader workers decoding images (auto: 0 on up to 4 cores, "
                   "else all but 2 of the cores the job may use)", schema={"minimum": 0}, auto=True),
    InstanceOption("dtype", default="float32", choices=("float32", "float16"), help="storage dtype", digest=True,
                   digest_key="storage_dtype"),
    InstanceOption("compression", default="none", choices=("none", "gzip", "lzf"), digest=True),
    InstanceOption("boxes", help="given boxes per image id (forced-boxes mode, region presets)",
                   schema={"description": "region presets: given boxes file per dataset ({dataset} is filled), "
                                          "forced-boxes mode"}),
    InstanceOption("amp", bool, False, help="autocast: float16 on CUDA, bfloat16 on the CPU", digest=True),
    InstanceOption("device", choices=("cpu", "cuda"), unset="auto", help="default: cuda when present"),
)


def config_keys() -> tuple[str, ...]:
    """The keys of a config `extractors:` entry that are not preset options."""
    return tuple(o.name for o in OPTIONS if o.config)


def schema_properties() -> dict[str, dict]:
    """The JSON-schema properties of a config `extractors:` entry (workflow/config.py puts them in the schema)."""
    out = {}
    for o in (o for o in OPTIONS if o.config):
        prop: dict[str, Any] = {"type": _JSON_TYPES[o.type]}
        if o.auto:  # the keywords of `type` hold for its values only (minimum: numbers): the one string is auto
            prop = {"type": [prop["type"], "string"], "pattern": f"^{AUTO}$"}
        if o.choices:
            prop["enum"] = [o.unset, *o.choices] if o.unset is not None else list(o.choices)
        default = o.default if o.unset is None else o.unset
        if default is not None:
            prop["default"] = default
        out[o.name] = {**prop, **o.schema}
    return out


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The `extract` command's flag of every option (a bool option is a switch, off unless given)."""
    for o in OPTIONS:
        if o.type is bool:
            parser.add_argument(o.flag, action="store_true", help=o.help)
        else:
            parser.add_argument(o.flag, type=_or_auto(o.type) if o.auto else o.type, default=o.default,
                                choices=o.choices, required=o.required, help=o.help)


def _or_auto(kind: type):
    """A flag's type taking `auto` besides values of `kind` (argparse names it in its error)."""
    def parse(text: str):
        return AUTO if text == AUTO else kind(text)

    parse.__name__ = f"{kind.__name__} or {AUTO}"
    return parse


def command_args(values: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(flag, value) of every option, from an instance's values by option name (workflow/args.py renders them):
    an absent value, or the `unset` one, gives no flag."""
    return [(o.flag, None if values.get(o.name) == o.unset else values.get(o.name)) for o in OPTIONS]


def request_digest(values: Mapping[str, Any], preset_options: Mapping[str, Any], weights_sha256: str,
                   given_boxes: str | None) -> str:
    """What a command asked for, known without building the model: the digest options' values, the resolved
    preset options, the weights file's sha256 and the given boxes' digest. A previous store made by the same
    request has the signature this one would have, so a rerun with nothing to extract never loads the model;
    visfeat's version stands for the code that builds it."""
    return hashlib.sha256(json.dumps({
        **{o.digest_key or o.name: values[o.name] for o in OPTIONS if o.digest},
        "options": dict(preset_options), "weights": weights_sha256, "given_boxes": given_boxes,
        "visfeat": __version__,
    }, sort_keys=True, default=str).encode()).hexdigest()


class RequestError(SystemExit):
    """A request that cannot run: uncaught, the command prints this one line and exits with status 1."""


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """`--set KEY=VALUE` preset options, each value read as YAML."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise RequestError(f"--set expects KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


@dataclass(frozen=True)
class ExtractRequest:
    """What `visfeat extract` is asked: one source of items (a folder, a list file or a manifest shard), the
    instance options by name (`OPTIONS`; missing ones take their default, the name defaults to the preset), the
    preset options and the output store. Checked when made: a bad combination fails before an image is read."""

    out: str
    options: Mapping[str, Any]
    preset_options: Mapping[str, Any] = field(default_factory=dict)
    images: str | None = None
    list_file: str | None = None
    manifest: str | None = None
    shard: int | None = None
    shards: int | None = None
    root: str | None = None

    def __post_init__(self) -> None:
        if sum(map(bool, (self.images, self.list_file, self.manifest))) != 1:
            raise RequestError("give exactly one of --images DIR, --list FILE or --manifest FILE")
        if self.manifest and (self.shard is None) != (self.shards is None):
            raise RequestError("--manifest: give both --shard I and --shards N, or neither (the whole manifest)")
        unknown = sorted(set(self.options) - {o.name for o in OPTIONS})
        if unknown:
            raise ValueError(f"unknown instance options {unknown}; known: {[o.name for o in OPTIONS]}")
        options = {o.name: o.default for o in OPTIONS} | dict(self.options)
        missing = [o.name for o in OPTIONS if o.required and options[o.name] is None]
        if missing:
            raise ValueError(f"instance options required: {missing}")
        options["name"] = options["name"] or options["preset"]
        object.__setattr__(self, "options", MappingProxyType(options))
        object.__setattr__(self, "preset_options", MappingProxyType(dict(self.preset_options)))

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> ExtractRequest:
        """The request of a parsed `visfeat extract` command line."""
        return cls(out=a.out, options={o.name: getattr(a, o.name) for o in OPTIONS}, preset_options=parse_set(a.set),
                   images=a.images, list_file=a.list, manifest=a.manifest, shard=a.shard, shards=a.shards,
                   root=a.root)

    def digest(self, given_boxes: str | None = None) -> str:
        """`request_digest` of this request, with its given boxes' digest (sources.given_boxes.digest; None
        without --boxes); "" where it cannot tell without building the model (the builder then reports it)."""
        from visfeat.extractors.registry import get_preset, resolve_options
        from visfeat.extractors.weights import resolve_weights, sha256_of

        preset, weights = self.options["preset"], self.options["weights"]
        try:
            p = get_preset(preset)
            options = resolve_options(preset, dict(self.preset_options))
            sha = sha256_of(weights) if weights else resolve_weights(p, None)[1] if p.weights else "packaged"
        except Exception:
            return ""
        return request_digest(self.options, options, sha, given_boxes)
