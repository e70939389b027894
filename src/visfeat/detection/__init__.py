"""A small two-stage detector library in plain PyTorch + torchvision.ops, serving every region extractor.

It knows nothing of presets or extractors (`visfeat.extractors` builds on it, never the reverse). Modules:
- `model`: `C4Detector` (res4 backbone, res5 RoI head) and `FPNDetector` (FPN levels, MLP head), their
  `DetectorSpec`, and the VinVL attribute head.
- `resnet`: ResNet/ResNeXt trunks with frozen batch norm (detectron2 / maskrcnn-benchmark Caffe style).
- `rpn`: anchors, objectness + delta head, proposal decoding with top-k before and after NMS.
- `heads`: RoI pooling (ROIPool / ROIAlign, per level for FPN) into the box head, class/box/attribute predictors.
- `select`: box selection strategies by name (maxnms, perclass, nms_filter, vmb, topk), each with its options.
- `boxes`: the box transform and box utilities the rest share.
- `preprocess`: named input sizes, the originals' resize rules and preprocessors, batch padding.
- `checkpoint`: reading the official weight files (detectron2 pickles, HF and maskrcnn-benchmark layouts).
- `mrcnn_yaml`: the option values a checkpoint's maskrcnn-benchmark yaml sets.
- `build`: a detector from preset options and a checkpoint.

No compiled extension: nms, roi_pool and roi_align come from torchvision.ops.
"""
