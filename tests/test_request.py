"""engine/request.py: every extractor-instance option reaches each place that derives from its one declaration
(the config schema, the `extract` flags, the workflow's command line, the request digest), checked for every
option of the table and for options added to it here, and the request rejects bad combinations as the command
always has."""
import hashlib
import json
import shlex
import shutil

import pytest
from conftest import REPO

from visfeat.cli import build_parser, main
from visfeat.engine import request as options_table
from visfeat.engine.request import ExtractRequest, InstanceOption, RequestError
from visfeat.workflow.config import ConfigError, load_schema, preset_options, validate_config

SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")
DETECTOR = "butd-r101-36"  # a region preset: it takes every instance option, boxes included
# options added to the table by a test: each consumer must pick them up with no change of its own
FAKES = (InstanceOption("fake_level", int, 3, help="a test option", digest=True, schema={"minimum": 0}),
         InstanceOption("fake_note", default="plain", choices=("plain", "fancy"), help="a test option"))
CASES = [*options_table.OPTIONS, *FAKES]
NOT_OF_TYPE = {str: 5, int: "five", bool: "yes"}


@pytest.fixture
def files(tmp_path):
    (tmp_path / "w1.pt").write_bytes(b"weights one")
    (tmp_path / "w2.pt").write_bytes(b"weights two")
    shutil.copy(tmp_path / "w1.pt", tmp_path / "w1-copy.pt")
    (tmp_path / "list.txt").write_text("a\ta.jpg\nb\tb.jpg\n")
    (tmp_path / "boxes.json").write_text(json.dumps({"a": [[0, 0, 4, 4]], "b": []}))
    return tmp_path


@pytest.fixture
def option(request, monkeypatch):
    o = request.param
    if o in FAKES:
        monkeypatch.setattr(options_table, "OPTIONS", options_table.OPTIONS + (o,))
    return o


def other_value(o: InstanceOption, files) -> object:
    """A value of `o` other than its default (a real preset, an existing weights file)."""
    special = {"preset": "clip-vit-b32", "name": "other", "weights": str(files / "w1-copy.pt"),
               "boxes": str(files / "boxes.json")}
    if o.name in special:
        return special[o.name]
    if o.type is bool:
        return not o.default
    if o.type is int:
        return (0 if o.auto else o.default) + 3
    return next(c for c in o.choices if c != o.default) if o.choices else "x"


def argv(values: dict) -> list[str]:
    out = []
    for name, v in values.items():
        flag = "--" + name.replace("_", "-")
        out += [flag] if v is True else [] if v is False else [flag, str(v)]
    return out


def parse(*args: str, **values):
    return build_parser().parse_args(["extract", *args, *argv(values)])


def config(inst: dict) -> dict:
    return {"datasets": {"s": {"source": "sample"}}, "extractors": {"inst": inst}, "features": []}


parametrized = pytest.mark.parametrize("option", CASES, ids=[o.name for o in CASES], indirect=True)


@parametrized
def test_every_option_is_in_the_config_schema(option, files):
    props = load_schema(SCHEMA)["properties"]["extractors"]["additionalProperties"]["properties"]
    if not option.config:  # the instance name is the entry's own key, no key inside it
        assert option.name not in props and option.name not in options_table.config_keys()
        return
    json_type = {str: "string", int: "integer", bool: "boolean"}[option.type]
    assert props[option.name]["type"] == ([json_type, "string"] if option.auto else json_type)  # auto: the string
    filled = validate_config(config({"preset": DETECTOR}), SCHEMA)["extractors"]["inst"]
    default = option.default if option.unset is None else option.unset
    assert props[option.name].get("default") == default
    if option.name != "preset":  # a config entry's preset defaults to the instance name, not to a schema default
        assert filled.get(option.name) == default
    assert option.name not in preset_options(filled)
    value = other_value(option, files)
    inst = {"preset": DETECTOR, option.name: value}
    assert validate_config(config(inst), SCHEMA, base_dir=str(files))["extractors"]["inst"][option.name] == value
    with pytest.raises(ConfigError) as e:
        validate_config(config({**inst, option.name: NOT_OF_TYPE[option.type]}), SCHEMA, base_dir=str(files))
    assert str(e.value).startswith(f"config: extractors.inst.{option.name}: ") and "unknown key" not in str(e.value)


@parametrized
def test_every_option_is_an_extract_flag(option, files):
    if option.required:
        with pytest.raises(SystemExit):
            parse("--images", "d", "--out", "o.h5", **{"preset": DETECTOR, option.name: False})
    else:
        assert getattr(parse("--images", "d", "--out", "o.h5", preset=DETECTOR), option.name) == option.default
    value = other_value(option, files)
    assert getattr(parse("--images", "d", "--out", "o.h5", **{"preset": DETECTOR, option.name: value}),
                   option.name) == value


@parametrized
def test_every_option_set_in_a_config_reaches_the_extract_command(option, files):
    """The workflow's command line for an instance parses back, through the `extract` flags, into a request
    holding the instance's value."""
    from visfeat.workflow.args import WorkflowArgs

    value = other_value(option, files)
    inst = {"preset": DETECTOR, **({option.name: value} if option.config else {})}
    cfg = validate_config(config(inst), SCHEMA, base_dir=str(files))
    inst = cfg["extractors"]["inst"]
    weights = [inst["weights"]] if "weights" in inst else []  # the rule's inputs (workflow/rules/common.smk)
    boxes = [inst["boxes"].replace("{dataset}", "s")] if "boxes" in inst else []
    line = WorkflowArgs(cfg, {"datasets": {}, "archives": {}}).extract("inst", weights, boxes)
    assert option.flag in line.split() or value == option.default
    got = ExtractRequest.from_args(parse(*shlex.split(line), "--images", "d", "--out", "o.h5")).options
    assert got[option.name] == ("inst" if option.name == "name" else value)


def test_a_config_left_at_its_defaults_gives_the_flags_defaults(files):
    """device `auto` is the flag left out: cuda when present."""
    from visfeat.workflow.args import WorkflowArgs

    cfg = validate_config(config({"preset": DETECTOR}), SCHEMA)
    line = WorkflowArgs(cfg, {"datasets": {}, "archives": {}}).extract("inst", [], [])
    assert "--device" not in line
    got = ExtractRequest.from_args(parse(*shlex.split(line), "--images", "d", "--out", "o.h5")).options
    assert dict(got) == {**{o.name: o.default for o in options_table.OPTIONS}, "preset": DETECTOR, "name": "inst"}


@parametrized
def test_the_digest_holds_exactly_the_digest_options(option, files):
    base = {"preset": "effnet-lite0", "weights": str(files / "w1.pt")}
    digest = ExtractRequest.from_args(parse("--images", str(files), "--out", "o.h5", **base)).digest()
    assert digest
    changed = ExtractRequest.from_args(parse("--images", str(files), "--out", "o.h5",
                                             **{**base, option.name: other_value(option, files)})).digest()
    assert (changed != digest) == option.digest


def test_the_digest_holds_the_weights_and_boxes_contents_and_the_preset_options(files):
    def digest(*args, boxes=None, **values):
        values = {"preset": DETECTOR, "weights": str(files / "w1.pt"), **values}
        req = ExtractRequest.from_args(parse("--images", str(files), "--out", "o.h5", *args, **values))
        return req.digest(None if boxes is None else boxes_digest(boxes))

    from visfeat.sources.given_boxes import digest as boxes_digest, read_boxes

    boxes = read_boxes(files / "boxes.json")
    base = digest()
    assert digest(weights=str(files / "w2.pt")) != base
    assert digest(boxes=boxes) != base
    assert digest(boxes={**boxes, "b": boxes["a"]}) != digest(boxes=boxes)
    assert digest("--set", "max_boxes=20") != base == digest("--set", "max_boxes=36")  # the resolved options


def test_the_digest_of_a_request_is_the_one_stores_written_before_hold(files):
    """Same keys and values as before the options had one declaration: those stores stay up to date."""
    from visfeat.extractors.registry import resolve_options
    from visfeat.extractors.weights import sha256_of
    from visfeat.version import __version__

    a = parse("--images", str(files), "--out", "o.h5", "--set", "image_size=64", preset="effnet-lite0",
              weights=str(files / "w1.pt"), amp=True, dtype="float16", compression="gzip", workers=0)
    before = hashlib.sha256(json.dumps({
        "preset": "effnet-lite0", "options": resolve_options("effnet-lite0", {"image_size": 64}),
        "weights": sha256_of(files / "w1.pt"), "amp": True, "storage_dtype": "float16", "name": "effnet-lite0",
        "compression": "gzip", "given_boxes": None, "visfeat": __version__,
    }, sort_keys=True, default=str).encode()).hexdigest()
    assert ExtractRequest.from_args(a).digest() == before


def test_an_unknown_preset_or_missing_weights_give_no_digest(files):
    assert ExtractRequest.from_args(parse("--images", "d", "--out", "o.h5", preset="clip-rn5")).digest() == ""
    assert ExtractRequest.from_args(parse("--images", "d", "--out", "o.h5", preset="clip-vit-b32",
                                          weights=str(files / "nope.pt"))).digest() == ""


@pytest.mark.parametrize("args, message", [
    (["--images", "d", "--list", "l.txt"], "give exactly one of --images DIR, --list FILE or --manifest FILE"),
    ([], "give exactly one of --images DIR, --list FILE or --manifest FILE"),
    (["--manifest", "m.parquet", "--shard", "1"],
     "--manifest: give both --shard I and --shards N, or neither (the whole manifest)"),
    (["--images", "d", "--set", "image_size"], "--set expects KEY=VALUE, got 'image_size'"),
])
def test_bad_combinations_are_rejected_with_the_commands_messages(args, message):
    a = parse(*args, "--out", "o.h5", preset="effnet-lite0")
    with pytest.raises(RequestError) as e:
        ExtractRequest.from_args(a)
    assert e.value.code == message
    with pytest.raises(SystemExit) as e:  # what the command prints, exit status 1
        main(["extract", *args, "--out", "o.h5", "--preset", "effnet-lite0"])
    assert e.value.code == message


def test_given_boxes_must_cover_every_item(files):
    from visfeat.engine.run import given_boxes, request_items

    (files / "few.json").write_text(json.dumps({"a": []}))
    req = ExtractRequest.from_args(parse("--list", str(files / "list.txt"), "--out", "o.h5", preset=DETECTOR,
                                         boxes=str(files / "few.json")))
    items = request_items(req)
    assert [it.image_id for it in items] == ["a", "b"]
    with pytest.raises(RequestError) as e:
        given_boxes(req, items)
    assert e.value.code == f"--boxes: {files / 'few.json'}: no boxes for 1 of 2 images, e.g. b"
    req = ExtractRequest(out="o.h5", list_file=str(files / "list.txt"),
                         options={"preset": DETECTOR, "boxes": str(files / "boxes.json")})
    assert set(given_boxes(req, items)) == {"a", "b"}


def test_a_request_is_frozen_and_complete():
    req = ExtractRequest(out="o.h5", images="d", options={"preset": "effnet-lite0"})
    assert req.options["name"] == "effnet-lite0" and req.options["batch_size"] == 8
    with pytest.raises(TypeError):
        req.options["batch_size"] = 2
    with pytest.raises(ValueError, match="unknown instance options"):
        ExtractRequest(out="o.h5", images="d", options={"preset": "effnet-lite0", "batch": 2})
    with pytest.raises(ValueError, match=r"instance options required: \['preset'\]"):
        ExtractRequest(out="o.h5", images="d", options={"batch_size": 2})


def test_every_config_option_is_explained_in_config_readme():
    """config/README.md's `extractors` table names every option a config entry may set."""
    text = (REPO / "config/README.md").read_text()
    section = text[text.index("## `extractors`"):text.index("## `features`")]
    missing = [o.name for o in options_table.OPTIONS if o.config and f"| `{o.name}` |" not in section]
    assert not missing, f"config/README.md's extractors table lacks {missing}"


def test_workers_default_to_auto_and_take_auto_or_a_count():
    """`auto`: the job picks its decoding workers from its cores when it runs (engine/cores.py)."""
    assert parse("--images", "d", "--out", "o.h5", preset=DETECTOR).workers == "auto"
    assert parse("--images", "d", "--out", "o.h5", preset=DETECTOR, workers="auto").workers == "auto"
    assert parse("--images", "d", "--out", "o.h5", preset=DETECTOR, workers=3).workers == 3
    with pytest.raises(SystemExit):
        parse("--images", "d", "--out", "o.h5", preset=DETECTOR, workers="many")
    assert validate_config(config({"preset": DETECTOR}), SCHEMA)["extractors"]["inst"]["workers"] == "auto"
    for good in ("auto", 0, 5):
        assert validate_config(config({"preset": DETECTOR, "workers": good}), SCHEMA)["extractors"]["inst"]["workers"] == good
    for bad in ("many", -1, True, 2.5):
        with pytest.raises(ConfigError, match=r"^config: extractors\.inst\.workers: "):
            validate_config(config({"preset": DETECTOR, "workers": bad}), SCHEMA)
