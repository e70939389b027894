"""extractors/registry.py: a preset option's value has its default's type and an unknown key says what was meant,
wherever options come in (the config, `visfeat extract --set`, the Python API), each as one line naming the key."""
import pytest
from conftest import REPO

from visfeat.cli import main
from visfeat.engine.request import OPTIONS, config_keys
from visfeat.extractors.registry import OptionError, check_options, load_extractor, resolve_options
from visfeat.workflow.config import ConfigError, validate_config

SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")
FLAGS = {o.name: o.flag for o in OPTIONS}

# (preset, key, value of another type than its default's, what the message says it must be)
WRONG_TYPES = [
    ("effnet-lite0", "exif", "flase", "true or false"),  # YAML reads the typo as a string
    ("effnet-lite0", "exif", 1, "true or false"),
    ("effnet-lite0", "image_size", "224", "an integer"),
    ("effnet-lite0", "image_size", True, "an integer"),  # a bool is an int to Python, not to a config
    ("effnet-lite0", "image_size", 224.5, "an integer"),
    ("butd-r101-36", "conf_thresh", "0.2", "a number"),
    ("butd-r101-36", "selection", 3, "a string"),
    ("butd-r101-36", "pixel_mean", 102.9, "a list"),
    ("vissl-rn50-trunk", "feature_eval_settings", ["EVAL_MODE_ON"], "a mapping"),
]
# values of the default's kind, as a config or a Python caller writes them
RIGHT_TYPES = [
    ("effnet-lite0", {"exif": False, "image_size": 192, "decode": "draft"}),
    ("butd-r101-36", {"conf_thresh": 0, "pixel_mean": (102, 115.9, 122.7)}),  # an int for a float, a tuple for a list
    ("gridfeats-r50", {"pool": "avg"}),  # a None default: the preset itself judges the value
]


def config(preset: str, **options) -> dict:
    return {"datasets": {"s": {"source": "sample"}}, "extractors": {"inst": {"preset": preset, **options}},
            "features": []}


@pytest.mark.parametrize("preset, key, value, kind", WRONG_TYPES, ids=[f"{k}={v!r}" for _, k, v, _ in WRONG_TYPES])
def test_a_value_of_another_type_fails_naming_the_key(preset, key, value, kind):
    with pytest.raises(OptionError) as e:
        check_options(preset, {key: value})
    assert e.value.key == key and str(e.value).startswith(f"preset {preset} option {key}: {value!r} is not {kind}")
    with pytest.raises(ConfigError) as e:
        validate_config(config(preset, **{key: value}), SCHEMA)
    assert str(e.value).startswith(f"config: extractors.inst.{key}: {value!r} is not {kind} (default ")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("preset, options", RIGHT_TYPES, ids=[p for p, _ in RIGHT_TYPES])
def test_values_of_the_defaults_kind_pass(preset, options):
    resolved = resolve_options(preset, options)
    assert {k: resolved[k] for k in options} == options
    validate_config(config(preset, **options), SCHEMA)


def test_an_unknown_key_suggests_the_closest_preset_or_instance_option():
    with pytest.raises(ConfigError) as e:
        validate_config(config("clip-rn50", image_sise=3), SCHEMA)
    msg = str(e.value)
    assert msg.startswith("config: extractors.inst.image_sise: unknown key (did you mean image_size? preset options: ")
    assert msg.endswith(f"; instance options: {', '.join(config_keys())})") and "batch_size" in config_keys()
    assert "\n" not in msg
    with pytest.raises(ConfigError, match=r"extractors\.inst\.batch_sise: unknown key \(did you mean batch_size\? "):
        validate_config(config("clip-rn50", batch_sise=3), SCHEMA)
    with pytest.raises(ConfigError, match=r"extractors\.inst\.zzz: unknown key \(preset options: "):
        validate_config(config("clip-rn50", zzz=3), SCHEMA)  # nothing close: no suggestion


def test_an_instance_option_among_the_preset_options_points_to_its_flag():
    with pytest.raises(OptionError, match=r"^batch_size is an instance option, not a preset option: use --batch-size 4$"):
        check_options("effnet-lite0", {"batch_size": 4}, FLAGS)
    with pytest.raises(OptionError, match=r"^amp is an instance option, not a preset option: use --amp$"):
        check_options("effnet-lite0", {"amp": True}, FLAGS)


def test_the_python_api_checks_types_and_an_unknown_option_is_still_a_key_error():
    with pytest.raises(OptionError, match="option exif: 'no' is not true or false"):
        load_extractor("effnet-lite0", device="cpu", exif="no")
    with pytest.raises(KeyError, match="option image_sise: unknown key"):  # as before the types were checked
        load_extractor("effnet-lite0", device="cpu", image_sise=3)


@pytest.mark.parametrize("setting, message", [
    ("exif=flase", "visfeat extract: error: preset effnet-lite0 option exif: 'flase' is not true or false (default True)"),
    ("batch_size=4", "visfeat extract: error: batch_size is an instance option, not a preset option: use --batch-size 4"),
    ("image_sise=3", "visfeat extract: error: preset effnet-lite0 option image_sise: unknown key (did you mean "
                     "image_size? "),
])
def test_extract_set_fails_in_one_line_before_reading_images(setting, message, tmp_path, capsys):
    code = main(["extract", "--preset", "effnet-lite0", "--images", str(tmp_path / "no-such-folder"), "--out",
                 str(tmp_path / "o.h5"), "--set", setting])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message) and err.count("\n") == 1
