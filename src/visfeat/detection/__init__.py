"""A small two-stage detector library in plain PyTorch + torchvision.ops, serving every region extractor.

Components, each with a documented contract, composed by `model.TwoStageDetector`:
- `resnet`: ResNet/ResNeXt trunks with frozen batch norm (detectron2 / maskrcnn-benchmark Caffe style).
- `rpn`: anchors, objectness + delta head, proposal decoding with top-k before and after NMS.
- `heads`: RoI pooling (ROIPool / ROIAlign) into a res5 head, class/box/attribute predictors.
- `select`: box selection strategies by name (maxnms, perclass, topk) and given boxes.
- `boxes`: the box transform and box utilities the rest share.
- `checkpoint`: reading the official weight files (detectron2 pickles, converted HF layouts).

No compiled extension: nms, roi_pool and roi_align come from torchvision.ops.
"""
