"""What a preset declares (visfeat/extractors/preset.py) against what its built extractor does, for every preset on
the tiny weights of tests/test_presets.py: the capability flags (`takes_boxes`, `text`) that config checks and the
workflow read without building anything, and the base constructor's attributes (`weights_sha256` enters the reuse
signature, so it must be the loaded file's sha256 for every family).
"""
from __future__ import annotations

import numpy as np
import pytest
from test_presets import (images, options_for, tiny_encoders, tiny_openclip, tiny_vissl,  # noqa: F401  (fixtures:
                          weights_for)  # the tiny weights, two images)

import visfeat
from visfeat.extractors.preset import CAPABILITIES, ENVS, Field, Preset, register
from visfeat.extractors.registry import PRESETS, get_preset, presets
from visfeat.extractors.weights import sha256_of


def weights_sha256(name: str, weights: str | None) -> str:
    """The sha256 the extractor must carry: of the file given, or of the packaged one (effnet-lite0)."""
    if weights is None:
        from visfeat.extractors.effnet import packaged_weights

        weights = packaged_weights()
    return sha256_of(weights)


@pytest.mark.parametrize("name", presets())
def test_built_extractor_does_what_the_preset_declares(name, tiny_clip, tiny_vissl, tiny_encoders,  # noqa: F811
                                                       images):  # noqa: F811
    p = get_preset(name)
    weights = weights_for(name, tiny_clip, tiny_vissl, tiny_encoders)
    ex = visfeat.load_extractor(name, weights=weights, device="cpu", **options_for(name))
    assert (ex.preset, ex.weights_sha256, ex.amp, ex.device.type) == (name, weights_sha256(name, weights), False, "cpu")

    batch = ex.collate([ex.preprocess(im) for im in images])
    batch["image_id"] = ["a", "b"]
    given = {"a": np.asarray([[2, 3, 30, 40], [0, 0, 64, 48]], np.float32),
             "b": np.asarray([[5, 5, 20, 60]], np.float32)}
    if p.takes_boxes:
        ex.set_given_boxes(given)
        outs = ex.forward(batch)
        for image_id, out in zip(batch["image_id"], outs):
            np.testing.assert_allclose(out["boxes"], given[image_id], rtol=1e-5, atol=1e-3, err_msg=name)
            assert len(out["features"]) == len(given[image_id]) == int(out["num_boxes"]), name
    else:
        with pytest.raises(ValueError, match=f"preset {name} does not take given boxes"):
            ex.set_given_boxes(given)

    assert hasattr(ex, "encode_text") == p.text, name
    if p.text:
        emb = ex.encode_text(["A photo of a cat.", "two dogs"])
        assert emb.shape == (2, ex.fields()[0].shape[0]) and emb.dtype == np.float32, name  # the global space


def test_capabilities_are_the_bool_fields():
    """`visfeat presets` prints `capabilities`; a new flag joins it by being a bool field."""
    assert CAPABILITIES == ("takes_boxes", "text")
    assert get_preset("butd-r101-36").capabilities == ("takes_boxes",)
    assert get_preset("clip-rn50").capabilities == ("text",)
    assert get_preset("gridfeats-r50").capabilities == get_preset("grid8-x152").capabilities == ()


def test_register_refuses_an_unknown_env():
    bad = Preset(name="no-such-env", env="detectron", builder="none:none", summary="-",
                 outputs=(Field("global", (8,)),), source="-", license="-", citation="-")
    with pytest.raises(ValueError, match=f"env 'detectron' unknown; envs: {', '.join(ENVS)}"):
        register(bad)
    assert "no-such-env" not in PRESETS


@pytest.mark.parametrize("sha", [None, ""])
def test_an_extractor_without_weights_sha256_is_refused(sha):
    """The base constructor is where every family gets `weights_sha256`; none can be built without one."""
    from visfeat.extractors.effnet import EffnetLite0, load_lite0, packaged_weights
    from visfeat.extractors.registry import resolve_options

    with pytest.raises(ValueError, match="weights_sha256 must name the weights"):
        EffnetLite0("effnet-lite0", resolve_options("effnet-lite0"), sha, "cpu", False, load_lite0(packaged_weights()))
