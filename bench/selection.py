"""Box selection cost: the originals' loop (one NMS per class over all proposals) vs visfeat's form
(`select.nms_survivors`: only the (proposal, class) pairs that can still change the result, all classes in one
batched NMS, `select.batched_nms`, so no host synchronisation per class on a GPU), the same selections, same run.

Scores: 1000 proposals (VMB's RPN output; VinVL 300) x 1600 VG classes, proposals clustered on 8 objects;
class scores softmax(logits) with one class boosted per proposal, `--peak` sets how sharp (3: trained-like,
0.1: near uniform like a random-init model). That the two give the same selections is tests/test_select.py's
job (against the originals' loops as written); the loop's time here is its NMS part alone.

    python bench/selection.py [--proposals 1000] [--classes 1600] [--repeat 3] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import time

import torch
from torchvision.ops import nms

from visfeat.detection import select
from visfeat.detection.boxes import nms_plus_one


def detections(proposals: int, classes: int, peak: float, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(8, 2, generator=g) * 800
    xy = centres[torch.randint(0, 8, (proposals,), generator=g)] + torch.randn(proposals, 2, generator=g) * 30
    boxes = torch.cat([xy, xy + 30 + torch.rand(proposals, 2, generator=g) * 200], 1)
    logits = torch.randn(proposals, classes + 1, generator=g) * peak
    logits[torch.arange(proposals), torch.randint(0, classes + 1, (proposals,), generator=g)] += 2 * peak
    probs = logits.softmax(1)[:, 1:]
    class_boxes = boxes[:, None, :] + torch.randn(proposals, classes, 4, generator=g) * 5
    return boxes.to(device), probs.to(device), class_boxes.to(device)


def unpruned(name: str, boxes, probs, class_boxes):
    """The NMS part of the originals' loops: every class's NMS over all proposals."""
    for c in range(probs.shape[1]):
        if name == "nms_filter":
            nms(class_boxes[:, c], probs[:, c], 0.3)
        else:
            nms_plus_one(boxes, probs[:, c], 0.3 if name == "perclass" else 0.5, suppress_equal=name == "perclass")


def timed(fn, repeat: int, device: str) -> float:
    best = float("inf")
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proposals", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=1600)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    runs = {
        "vmb": lambda b, p, cb: select.vmb(b, p, cb, scale=1.0),
        "perclass": lambda b, p, cb: select.perclass(b, p, cb, orig_hw=(800, 800), short=800, max_size=1333),
        "nms_filter": lambda b, p, cb: select.nms_filter(b, p, cb),
    }
    print(f"{args.proposals} proposals x {args.classes} classes on {args.device}, best of {args.repeat}")
    print("| selection | scores | loop over classes (s) | visfeat (s) | speed-up |")
    print("|---|---|---|---|---|")
    for peak, label in ((3.0, "trained-like"), (0.1, "near uniform")):
        b, p, cb = detections(args.proposals, args.classes, peak, args.device)
        for name, run in runs.items():
            t_loop = timed(lambda: unpruned(name, b, p, cb), args.repeat, args.device)
            t_new = timed(lambda: run(b, p, cb), args.repeat, args.device)
            print(f"| {name} | {label} | {t_loop:.3f} | {t_new:.4f} | {t_loop / t_new:.0f}x |", flush=True)


if __name__ == "__main__":
    main()
