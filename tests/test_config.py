import pytest
from conftest import REPO

from visfeat.workflow.config import ConfigError, validate_config

SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")


def _cfg(**over):
    c = {"datasets": {"s": {"source": "sample"}}, "extractors": {"effnet-lite0": {}},
         "features": [{"datasets": ["s"], "extractors": ["effnet-lite0"]}]}
    c.update(over)
    return c


def test_defaults_filled():
    c = validate_config(_cfg(), SCHEMA)
    assert c["datasets"]["s"]["shards"] == 1 and c["dataset_registry"] == "config/datasets.yaml"
    assert c["extractors"]["effnet-lite0"]["batch_size"] == 8 and c["extractors"]["effnet-lite0"]["preset"] == "effnet-lite0"
    assert c["results"] == "results" and c["kmeans"] == {}


@pytest.mark.parametrize("over, message", [
    ({"datasets": {"s": {"source": "sample", "shard": 2}}}, "config: datasets.s.shard: unknown key"),
    ({"datasets": {"s": {"source": "sample", "shards": "two"}}}, "config: datasets.s.shards: 'two' is not of type 'integer'"),
    ({"extractors": {"x": {"preset": "clip-rn5"}}, "features": []}, "config: extractors.x.preset: unknown preset 'clip-rn5'"),
    ({"extractors": {"clip-rn50": {"image_sise": 3}}, "features": []}, "config: extractors.clip-rn50.image_sise: unknown key"),
    ({"datasets": {"s": {"source": "folder", "path": "/no/such/folder"}}}, "config: datasets.s.path: folder /no/such/folder does not exist"),
    ({"features": [{"datasets": ["nope"], "extractors": ["effnet-lite0"]}]}, "config: features.0.datasets: 'nope' is not defined"),
    ({"bogus": 1}, "config: bogus: unknown key"),
    ({"datasets": {"s": {"source": "coco_val2041"}}}, "config: datasets.s.source: unknown source 'coco_val2041'"),
    # given boxes are a capability of the region presets, not of the detector env's grid presets
    ({"extractors": {"gridfeats-r50": {"boxes": "b.npz"}}, "features": []},
     "config: extractors.gridfeats-r50.boxes: preset gridfeats-r50 takes no boxes"),
    ({"extractors": {"grid8-x152": {"boxes": "b.npz"}}, "features": []},
     "config: extractors.grid8-x152.boxes: preset grid8-x152 takes no boxes"),
])
def test_bad_config_one_clear_line(over, message):
    with pytest.raises(ConfigError) as e:
        validate_config(_cfg(**over), SCHEMA)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_workflow_args_from_the_validated_config():
    from visfeat.workflow.args import WorkflowArgs

    reg = {"datasets": {}, "archives": {}}
    c = validate_config(_cfg(extractors={"effnet-lite0": {"amp": True, "device": "cpu", "exif": False}}), SCHEMA)
    args = WorkflowArgs(c, reg)
    assert args.extract("effnet-lite0", [], []) == ("--preset effnet-lite0 --name effnet-lite0 --batch-size 8 "
                                                    "--workers auto --dtype float32 --compression none --amp "
                                                    "--device cpu --set exif=false")
    assert args.manifest("s") == "--root resources/datasets/s --id-style path --source sample --shards 1"
    assert args.weights_url("clip-rn50", "RN50.pt") == ""
