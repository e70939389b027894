"""extractors/vocab: the class names a classifier's logits are read with ship with visfeat, one per logit."""
import pytest

from visfeat.extractors.registry import get_preset, presets
from visfeat.extractors.vocab import load, logit_words


def test_each_declared_logit_name_list_names_every_logit():
    declared = [p for p in map(get_preset, presets()) if p.logit_names]
    assert "effnet-lite0" in {p.name for p in declared}
    for p in declared:
        (logits,) = [f for f in p.outputs if f.name == "logits"]
        assert len(load(p.logit_names)) == p.sizes.get(logits.shape[0], logits.shape[0]), p.name
    assert logit_words("effnet-lite0")[285] == "Egyptian cat" and logit_words("clip-rn50") is None


def test_imagenet_names_are_timms():
    """The shipped list is timm's ImageNet-1k descriptions, in class order (copied: the report runs without timm)."""
    timm_data = pytest.importorskip("timm.data")
    info = timm_data.ImageNetInfo("imagenet-1k")
    assert list(load("imagenet1k_classes.txt")) == [info.index_to_description(k) for k in range(1000)]
