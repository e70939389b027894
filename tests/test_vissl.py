"""VISSL-style trunk/head features (visfeat/extractors/vissl.py) against a direct torchvision forward with torch
pooling built here; checkpoints in torchvision and VISSL model-zoo layouts; the vissl-npy exporter and our
ExtractedFeaturesLoader. Weights are a seeded random ResNet-50 (BN statistics randomised, so a mis-mapped key
shows), saved once per session in both layouts; photos are scikit-image's."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision import transforms as T

import visfeat
from visfeat.cli import main as cli_main
from visfeat.interop.vissl_features import ExtractedFeaturesLoader

PHOTOS = ["chelsea.png", "rocket.jpg", "coffee.png", "camera.png"]
LAYER_SHAPES = {  # /work reference: the docs' map at 224 px
    "conv1": (64, 12, 12), "res2": (256, 6, 6), "res3": (512, 4, 4), "res4": (1024, 3, 3), "res5": (2048, 2, 2),
    "res5avg": (2048, 1, 1),
}
TOL = 1e-5
TRUNK_ONLY = {"EVAL_MODE_ON": True, "FREEZE_TRUNK_ONLY": True, "EXTRACT_TRUNK_FEATURES_ONLY": True}
WITH_HEAD = {"EVAL_MODE_ON": True, "FREEZE_TRUNK_AND_HEAD": True, "EVAL_TRUNK_AND_HEAD": True}


@pytest.fixture(scope="session")
def rn50(tmp_path_factory):
    """A random ResNet-50 + SimCLR-shaped head, as a torchvision state dict and a VISSL model-zoo checkpoint."""
    d = tmp_path_factory.mktemp("vissl")
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    sd = model.state_dict()
    heads = {
        "0.clf.0.weight": 0.02 * torch.randn(2048, 2048, generator=g), "0.clf.0.bias": 0.1 * torch.randn(2048, generator=g),
        "1.clf.0.weight": 0.02 * torch.randn(128, 2048, generator=g), "1.clf.0.bias": 0.1 * torch.randn(128, generator=g),
    }
    tv = d / "resnet50.pth"
    torch.save(sd, tv)
    zoo = d / "model_final_checkpoint_phase799.torch"
    trunk = {f"_feature_blocks.{k}": v for k, v in sd.items() if not k.startswith("fc.")}
    torch.save({"classy_state_dict": {"base_model": {"model": {"trunk": trunk, "heads": heads}, "meta": {}},
                                      "train_phase_idx": 799}, "phase_idx": 799, "iteration": 1}, zoo)
    return {"tv": str(tv), "zoo": str(zoo), "heads": heads}


@pytest.fixture(scope="session")
def images(sample_dir):
    return [Image.open(sample_dir / p).convert("RGB") for p in PHOTOS]


@pytest.fixture(scope="session")
def reference(rn50, images):
    """Direct torchvision forward on VISSL's transforms: every layer VISSL names, unpooled."""
    model = torchvision.models.resnet50()
    model.load_state_dict(torch.load(rn50["tv"], weights_only=True))
    model.eval()
    tf = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BILINEAR, antialias=True), T.CenterCrop(224),
                    T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    x = torch.stack([tf(im) for im in images])
    got = {}
    hooks = [getattr(model, mod).register_forward_hook(lambda m, i, o, n=name: got.setdefault(n, o))
             for mod, name in [("relu", "conv1"), ("maxpool", "res1"), ("layer1", "res2"), ("layer2", "res3"),
                               ("layer3", "res4"), ("layer4", "res5"), ("avgpool", "res5avg")]]
    with torch.no_grad():
        got["logits"] = model(x)
    for h in hooks:
        h.remove()
    return got


def run(preset, weights, images, **options):
    ex = visfeat.load_extractor(preset, weights=weights, device="cpu", **options)
    outs = ex.forward(ex.collate([ex.preprocess(im) for im in images]))
    return ex, {f.name: np.stack([o[f.name] for o in outs]) for f in ex.fields()}


def close(a, b):
    b = b.numpy() if torch.is_tensor(b) else b
    assert a.shape == b.shape, (a.shape, b.shape)
    assert float(np.abs(a - b).max()) <= TOL * max(1.0, float(np.abs(b).max()))  # float32 rounding, relative


def test_layers_equal_torchvision_in_both_checkpoint_layouts(rn50, images, reference):
    ref = {  # the docs' five-layer map with torch's own pooling
        "conv1": F.avg_pool2d(reference["conv1"], (10, 10), 10, 4), "res2": F.avg_pool2d(reference["res2"], 16, 8, 0),
        "res3": F.avg_pool2d(reference["res3"], 13, 5, 0), "res4": F.avg_pool2d(reference["res4"], 8, 3, 0),
        "res5": F.avg_pool2d(reference["res5"], 6, 1, 0), "res5avg": reference["res5avg"],
    }
    by_layout = {}
    for layout in ("tv", "zoo"):
        ex, out = run("vissl-rn50-layers", rn50[layout], images)
        assert {f.name: f.shape for f in ex.fields()} == LAYER_SHAPES
        for name, r in ref.items():
            close(out[name], r)
        by_layout[layout] = out
    for name in ref:
        assert np.array_equal(by_layout["tv"][name], by_layout["zoo"][name])


def test_every_pool_op_and_flatten(rn50, images, reference):
    fes = {**TRUNK_ONLY, "SHOULD_FLATTEN_FEATS": True, "LINEAR_EVAL_FEAT_POOL_OPS_MAP": [
        ["conv1", ["MaxPool2d", [3, 2, 1]]],
        ["res1", ["Identity", []]],
        ["res3", ["AdaptiveAvgPool2d", [[2, 2]]]],
        ["res4", ["AdaptiveMaxPool2d", [1]]],
        ["res5", ["AvgPool2d", [[3, 3], 2, 1, False, False]]],  # ceil_mode, count_include_pad positional
    ]}
    ex, out = run("vissl-rn50-layers", rn50["tv"], images, feature_eval_settings=fes)
    n = len(images)
    close(out["conv1"], F.max_pool2d(reference["conv1"], 3, 2, 1).reshape(n, -1))
    close(out["res1"], reference["res1"].reshape(n, -1))
    close(out["res3"], F.adaptive_avg_pool2d(reference["res3"], 2).reshape(n, -1))
    close(out["res4"], F.adaptive_max_pool2d(reference["res4"], 1).reshape(n, -1))
    close(out["res5"], F.avg_pool2d(reference["res5"], 3, 2, 1, count_include_pad=False).reshape(n, -1))


def test_trunk_preset_is_vissl_heads_layer(rn50, images, reference):
    ex, out = run("vissl-rn50-trunk", rn50["zoo"], images)
    assert [(f.name, f.shape) for f in ex.fields()] == [("heads", (2048,))]  # VISSL names the trunk output heads
    close(out["heads"], reference["res5avg"].flatten(1))


def test_simclr_head_shipped_and_docs_variants(rn50, images, reference):
    h = rn50["heads"]
    f = reference["res5avg"].flatten(1)
    with torch.no_grad():
        l1 = F.linear(f, h["0.clf.0.weight"], h["0.clf.0.bias"])
        shipped = F.linear(F.relu(l1), h["1.clf.0.weight"], h["1.clf.0.bias"])
        docs = F.linear(l1, h["1.clf.0.weight"], h["1.clf.0.bias"])
    ex, out = run("vissl-rn50-simclr-head", rn50["zoo"], images)
    assert [(f.name, f.shape) for f in ex.fields()] == [("heads", (128,))]
    close(out["heads"], shipped)
    docs_head = [["mlp", {"dims": [2048, 2048], "use_relu": True}], ["mlp", {"dims": [2048, 128]}]]
    _, out_docs = run("vissl-rn50-simclr-head", rn50["zoo"], images, head_params=docs_head)
    close(out_docs["heads"], docs)
    assert not np.allclose(out_docs["heads"], out["heads"], atol=1e-3)
    with pytest.raises(KeyError, match="head"):  # a torchvision file has no SimCLR head
        visfeat.load_extractor("vissl-rn50-simclr-head", weights=rn50["tv"], device="cpu")
    # a single-Linear head takes a torchvision file's fc (rn50_supervised.yaml): the classifier's logits
    _, out_fc = run("vissl-rn50-simclr-head", rn50["tv"], images, head_params=[["mlp", {"dims": [2048, 1000]}]])
    close(out_fc["heads"], reference["logits"])


def test_timm_backbone_features_only(rn50, images):
    _, tv = run("vissl-rn50-layers", rn50["tv"], images)
    ex, out = run("vissl-rn50-layers", rn50["zoo"], images, backbone="timm:resnet50")  # timm has torchvision's keys
    assert {f.name: f.shape for f in ex.fields()} == LAYER_SHAPES
    for name in LAYER_SHAPES:
        np.testing.assert_allclose(out[name], tv[name], rtol=1e-4, atol=1e-4)
    with pytest.raises(KeyError, match="do not fit timm resnet18"):
        visfeat.load_extractor("vissl-rn50-layers", weights=rn50["tv"], device="cpu", backbone="timm:resnet18")


@pytest.mark.parametrize("fes, message", [
    ({**TRUNK_ONLY, "LINEAR_EVAL_FEAT_POOL_OPS_MAP": [["res4", ["AvgPool3d", [2]]]]},
     "layer 'res4'.*unknown pooling op 'AvgPool3d'.*AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d, Identity"),
    ({**TRUNK_ONLY, "LINEAR_EVAL_FEAT_POOL_OPS_MAP": [["res6", ["Identity", []]]]}, "res6.*not layers.*res5avg"),
    ({**TRUNK_ONLY, "LINEAR_EVAL_FEAT_POOL_OPS_MAP": [["res2", ["AvgPool2d", [1, 2, 3, 4, 5, 6, 7, 8]]]]},
     "layer 'res2': AvgPool2d"),
    ({**TRUNK_ONLY, "LINEAR_EVAL_FEAT_POOL_OPS_MAP": [["res2", ["AvgPool2d", "oops"]]]}, "must be a list"),
    ({"EXTRACT_TRUNK_FEATURES_ONLY": True, "LINEAR_EVAL_FEAT_POOL_OPS_MAP": [["res2", ["Identity", []]]]},
     "VISSL would ignore it"),
    ({**TRUNK_ONLY, "SHOULD_FLATTEN": True}, "unknown key.*SHOULD_FLATTEN"),
])
def test_bad_settings_fail_clearly(rn50, fes, message):
    with pytest.raises(ValueError, match=message):
        visfeat.load_extractor("vissl-rn50-layers", weights=rn50["tv"], device="cpu", feature_eval_settings=fes)


def test_cli_extract_export_and_loader(rn50, sample_dir, tmp_path, reference, capsys):
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{p.split('.')[0]}\t{sample_dir / p}\n" for p in PHOTOS))
    out = tmp_path / "layers.h5"
    assert cli_main(["extract", "--preset", "vissl-rn50-layers", "--weights", rn50["tv"], "--list", str(lst),
                     "--out", str(out), "--device", "cpu", "--workers", "0", "--batch-size", "4"]) == 0
    s = visfeat.open(out)
    ids = [p.split(".")[0] for p in PHOTOS]
    assert sorted(s.ids) == sorted(ids)
    close(np.stack([s[i]["res4"] for i in ids]), F.avg_pool2d(reference["res4"], 8, 3, 0))
    # --set takes YAML/JSON values; a bad op fails with the layer and op named
    bad = '{"EVAL_MODE_ON": true, "FREEZE_TRUNK_ONLY": true, "LINEAR_EVAL_FEAT_POOL_OPS_MAP": [["res5", ["Pool", []]]]}'
    assert cli_main(["extract", "--preset", "vissl-rn50-layers", "--weights", rn50["tv"], "--list", str(lst),
                     "--out", str(tmp_path / "bad.h5"), "--set", f"feature_eval_settings={bad}"]) == 2
    assert "unknown pooling op 'Pool'" in capsys.readouterr().err

    npy = tmp_path / "npy"
    assert cli_main(["export", "--format", "vissl-npy", str(out), str(npy), "--split", "val"]) == 0
    names = sorted(p.name for p in npy.iterdir())
    assert names == sorted([f"rank0_chunk0_val_{layer}_{kind}.npy" for layer in LAYER_SHAPES
                            for kind in ("features", "targets", "inds")] + ["val_image_ids.txt"])
    order = (npy / "val_image_ids.txt").read_text().split()
    assert order == s.ids
    for layer in LAYER_SHAPES:
        stored = np.stack([s[i][layer] for i in order])
        for src in (npy, out):  # the VISSL files and the store itself
            got = ExtractedFeaturesLoader.load_features(str(src), "val", layer)
            assert np.array_equal(got["features"], stored) and got["features"].dtype == np.float32
            assert np.array_equal(got["inds"], np.arange(4)) and got["inds"].dtype == np.int64
            assert got["targets"].shape == (4, 1) and np.array_equal(got["targets"][:, 0], np.arange(4))
            flat = ExtractedFeaturesLoader.load_features(str(src), "val", layer, flatten_features=True)
            assert np.array_equal(flat["features"], stored.reshape(4, -1))
    # reservoir sampling: reproducible per seed, rows equal the store's, the same from either source
    a = ExtractedFeaturesLoader.sample_features(str(npy), "val", "res5", num_samples=2, seed=3)
    b = ExtractedFeaturesLoader.sample_features(str(npy), "val", "res5", num_samples=2, seed=3)
    c = ExtractedFeaturesLoader.sample_features(str(out), "val", "res5", num_samples=2, seed=3, flatten_features=True)
    assert len(a["inds"]) == 2 and list(a["inds"]) == sorted(a["inds"])
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(c["inds"], a["inds"]) and np.array_equal(c["features"], a["features"].reshape(2, -1))
    for k, i in enumerate(a["inds"]):
        assert np.array_equal(a["features"][k], s.row(int(i))["res5"])
    seen = {tuple(ExtractedFeaturesLoader.sample_features(str(npy), "val", "res5", 2, seed)["inds"]) for seed in range(12)}
    assert len(seen) > 1
    every = ExtractedFeaturesLoader.sample_features(str(npy), "val", "res5", num_samples=-1, seed=0)
    assert np.array_equal(every["inds"], np.arange(4))
    with pytest.raises(ValueError, match="No features found for test res5"):
        ExtractedFeaturesLoader.load_features(str(npy), "test", "res5")


def test_loader_merges_shards_by_index(tmp_path):
    """Two ranks, chunks out of order, one index in two shards (the later shard's row wins, as in VISSL)."""
    shards = {"rank0_chunk0": [4, 0], "rank0_chunk1": [2], "rank1_chunk0": [1, 3, 2]}
    for prefix, inds in shards.items():
        inds = np.array(inds, dtype=np.int64)
        feats = np.stack([np.full((2, 1, 1), 10 * i + int(prefix[4]), np.float32) for i in inds])
        np.save(tmp_path / f"{prefix}_train_heads_features.npy", feats)
        np.save(tmp_path / f"{prefix}_train_heads_targets.npy", (inds + 100).reshape(-1, 1))
        np.save(tmp_path / f"{prefix}_train_heads_inds.npy", inds)
    np.save(tmp_path / "rank0_chunk0_train_heads2_features.npy", np.zeros((1, 2)))  # another layer: ignored
    got = ExtractedFeaturesLoader.load_features(str(tmp_path), "train", "heads", flatten_features=True)
    assert list(got["inds"]) == [0, 1, 2, 3, 4]
    assert list(got["targets"][:, 0]) == [100, 101, 102, 103, 104]
    assert list(got["features"][:, 0]) == [0, 11, 21, 31, 40]  # index 2: rank1's row (after rank0_chunk1)
    s = ExtractedFeaturesLoader.sample_features(str(tmp_path), "train", "heads", 3, seed=0)
    assert s["features"].shape == (3, 2, 1, 1) and list(s["inds"]) == sorted(s["inds"])
    assert all(int(f[0, 0, 0]) // 10 == i for f, i in zip(s["features"], s["inds"]))


def test_config_takes_a_vissl_section_and_checks_it_without_torch(tmp_path):
    """A custom VISSL-style extractor in the workflow config (the yaml section pasted as is) validates; a bad
    pooling op fails at start in one line naming the extractor; config validation never imports torch."""
    import subprocess
    import sys

    from conftest import REPO

    cfg = tmp_path / "config.yaml"
    cfg.write_text("""
datasets: {s: {source: sample}}
extractors:
  rn50-res4-res5:
    preset: vissl-rn50-layers
    backbone: "torchvision:resnet50"
    feature_eval_settings:
      EVAL_MODE_ON: True
      FREEZE_TRUNK_ONLY: True
      EXTRACT_TRUNK_FEATURES_ONLY: True
      SHOULD_FLATTEN_FEATS: False
      LINEAR_EVAL_FEAT_POOL_OPS_MAP: [
        ["res4", ["AvgPool2d", [[8, 8], 3, 0]]],
        ["res5", ["AdaptiveMaxPool2d", [[1, 1]]]],
      ]
features: [{datasets: [s], extractors: [rn50-res4-res5]}]
""")
    code = f"""
import sys, yaml
from visfeat.workflow.config import ConfigError, validate_config
schema = {str(REPO / 'workflow/schemas/config.schema.yaml')!r}
c = yaml.safe_load(open({str(cfg)!r}))
validate_config(c, schema)
c["extractors"]["rn50-res4-res5"]["feature_eval_settings"]["LINEAR_EVAL_FEAT_POOL_OPS_MAP"][1][1][0] = "MaxPool3d"
try:
    validate_config(c, schema)
except ConfigError as e:
    print(e)
assert "torch" not in sys.modules, "config validation imported torch"
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().startswith("config: extractors.rn50-res4-res5: LINEAR_EVAL_FEAT_POOL_OPS_MAP[1] "
                                       "(layer 'res5'): unknown pooling op 'MaxPool3d'")
