"""The torch-free name list (extractors/data/encoder_names.json) is what the installed open_clip and timm know,
and a misspelled model or tag fails at config validation, naming the closest valid names, without torch."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import REPO

from visfeat.extractors import encoder_names
from visfeat.workflow.config import ConfigError, validate_config

SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")
SCRIPT = REPO / "scripts" / "encoder_names.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("encoder_names_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_list_is_the_installed_libraries(script):
    """A version bump of open_clip_torch or timm fails here until `python scripts/encoder_names.py` is rerun.
    Generated in a fresh interpreter: other test modules register tiny models with both libraries (process-wide),
    which a list made in this process would include, depending on the order the tests ran in."""
    import open_clip
    import timm

    p = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert encoder_names.names()["versions"] == {"open_clip_torch": open_clip.__version__, "timm": timm.__version__}
    assert script.dumps(encoder_names.names()) == encoder_names.NAMES_FILE.read_text(encoding="utf-8")


def test_the_list_ships_as_package_data():
    """pyproject.toml's package-data covers the file (an installed visfeat validates names too)."""
    text = (REPO / "pyproject.toml").read_text()
    assert '"extractors/data/*.json"' in text
    assert encoder_names.NAMES_FILE.parent.name == "data"


def test_preprocessing_of_a_tag_is_the_librarys():
    """The SigLIP 2 tag's preprocessing (the open_clip #1068 trap: not the model config's defaults)."""
    from open_clip.pretrained import get_pretrained_cfg

    entry = encoder_names.openclip_tag("ViT-B-16-SigLIP2", "webli")
    cfg = get_pretrained_cfg("ViT-B-16-SigLIP2", "webli")
    assert (entry["mean"], entry["std"]) == (list(cfg["mean"]), list(cfg["std"])) == ([0.5] * 3, [0.5] * 3)
    assert (entry["interpolation"], entry["resize_mode"], entry["size"]) == ("bicubic", "squash", 224)


@pytest.mark.parametrize("library, model, tag, repo, files", [
    ("open_clip", "ViT-B-16-SigLIP2", "webli", "timm/ViT-B-16-SigLIP2",
     ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")),
    ("openclip", "EVA02-L-14-336", "merged2b_s6b_b61k", "timm/eva02_large_patch14_clip_336.merged2b_s6b_b61k",
     ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")),
    ("open_clip", "ViTamin-B", "datacomp1b", "jienengchen/ViTamin-B", ("pytorch_model.safetensors", "pytorch_model.bin")),
    ("timm", "vit_base_patch14_dinov2.lvd142m", None, "timm/vit_base_patch14_dinov2.lvd142m",
     ("model.safetensors", "pytorch_model.bin")),
    ("timm", "vit_base_patch14_dinov2", "lvd142m", "timm/vit_base_patch14_dinov2.lvd142m",
     ("model.safetensors", "pytorch_model.bin")),
    ("timm", "fastvit_mci0.apple_mclip", None, "apple/mobileclip_s0_timm", ("model.safetensors", "pytorch_model.bin")),
])
def test_hub_location_as_the_library_looks_it_up(library, model, tag, repo, files):
    loc = encoder_names.hub_location(library, model, tag)
    assert (loc.repo, loc.files, loc.revision) == (repo, files, "main")


def test_timm_names_without_hub_keep_their_url():
    loc = encoder_names.hub_location("timm", "gcvit_tiny.in1k", None)
    assert loc.repo == "" and loc.url.endswith(".pth")


@pytest.mark.parametrize("preset, options, message", [
    ("openclip", {"model": "ViT-B-16-SigLP2"}, "unknown open_clip model 'ViT-B-16-SigLP2'; closest: ViT-B-16-SigLIP2"),
    ("openclip", {"model": "ViT-B-16-SigLIP", "pretrained": "webly"}, "model 'ViT-B-16-SigLIP' has no tag 'webly'; "
                                                                      "tags: webli"),
    ("openclip", {"model": "ViT-S-16", "pretrained": "x"}, "open_clip model 'ViT-S-16' has no pretrained tags"),
    ("openclip", {"layers": [3, "4"]}, "layers must be a list of integers"),
    ("openclip", {"layers": [3, 3]}, "names a layer twice"),
    ("timm", {"model": "vit_base_patch14_dinov3.lvd1689m"}, "unknown timm model 'vit_base_patch14_dinov3.lvd1689m'; "
                                                            "closest: vit_base_patch16_dinov3.lvd1689m"),
    ("timm", {"model": "vit_base_patch14_dinov2"}, "needs its pretrained tag (vit_base_patch14_dinov2.TAG); "
                                                   "tags: lvd142m"),
    ("timm", {"model": "vit_base_patch14_dinov2.lvd"}, "timm model 'vit_base_patch14_dinov2' has no tag 'lvd'"),
    ("timm", {"layers": [True]}, "layers must be a list of integers"),
])
def test_misspelled_names_fail_at_config_validation(preset, options, message):
    cfg = {"datasets": {"s": {"source": "sample"}}, "extractors": {"x": {"preset": preset, **options}},
           "features": [{"datasets": ["s"], "extractors": ["x"]}]}
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, SCHEMA)
    assert str(e.value).startswith("config: extractors.x") and message in str(e.value), str(e.value)


def test_valid_names_pass_and_the_check_is_torch_free():
    """The config check of both generic presets runs without importing torch (Snakemake parses with it)."""
    code = (
        "import sys; from visfeat.workflow.config import validate_config;"
        "cfg = {'datasets': {'s': {'source': 'sample'}}, 'extractors': {"
        "'o': {'preset': 'openclip', 'model': 'PE-Core-L-14-336', 'pretrained': 'meta', 'layers': [-2, 6]},"
        "'t': {'preset': 'timm', 'model': 'vit_large_patch14_reg4_dinov2.lvd142m'}},"
        "'features': [{'datasets': ['s'], 'extractors': ['o', 't']}]};"
        f"validate_config(cfg, {SCHEMA!r});"
        "print(sorted(m for m in ('torch', 'open_clip', 'timm', 'h5py') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_the_list_is_compact():
    """Committed: one tag or name per line, no pretty-printing (a version bump stays a readable diff)."""
    text = encoder_names.NAMES_FILE.read_text(encoding="utf-8")
    assert len(text) < 160_000
    assert json.loads(text)["timm"]["names"] == sorted(json.loads(text)["timm"]["names"])


def test_the_named_presets_to_register_are_real_names_with_their_dims(script):
    """scripts/encoder_names.py NAMED_PRESETS (registered once their hub revision and sha256 are read): each
    (model, tag) exists, and `global`'s width and the input size are the pinned library's."""
    import open_clip
    import timm
    import torch

    for name, (library, model, tag, dim, size, _, _) in script.NAMED_PRESETS.items():
        if library == "open_clip":
            entry = encoder_names.openclip_tag(model, tag)
            assert (open_clip.get_model_config(model)["embed_dim"], entry["size"]) == (dim, size), name
        else:
            full = encoder_names.timm_name(f"{model}.{tag}")
            with torch.device("meta"):
                m = timm.create_model(full, pretrained=False)
            assert (m.num_features, timm.get_pretrained_cfg(full).input_size[1]) == (dim, size), name
        assert encoder_names.hub_location(library, model, tag).repo, name
