"""Per-field agreement between two stores of the same dataset x preset (e.g. re-extracted vs published).

Regions: boxes matched by IoU (each box of A to its best in B), the matched IoU, feature cosine of matched
boxes, object / attribute id agreement, box-count differences. Fixed fields: cosine per image (vectors, or
cells of a grid). Images present on one side only are listed.
"""
from __future__ import annotations

import numpy as np

from visfeat.store.reader import FeatureStore


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def compare(path_a: str, path_b: str, plot: str | None = None) -> dict:
    """The agreement summary; with `plot`, also a PNG of the distributions (matched IoU, feature cosine)."""
    a, b = FeatureStore(path_a), FeatureStore(path_b)
    ids_a, ids_b = set(a.ids), set(b.ids)
    common = sorted(ids_a & ids_b)
    names = {s.name for s in a.specs} & {s.name for s in b.specs}
    regions = {"features", "boxes"} <= names
    fixed = [s.name for s in a.specs if s.name in names and not s.ragged and s.name not in ("num_boxes",)
             and np.dtype(s.dtype).kind == "f"]
    res: dict = {"only_a": sorted(ids_a - ids_b), "only_b": sorted(ids_b - ids_a), "images": len(common)}
    iou, cos, same_obj, same_attr, count_diff, fixed_cos = [], [], [], [], 0, {f: [] for f in fixed}
    for i in common:
        ra, rb = a[i], b[i]
        if regions:
            ba, bb = ra["boxes"], rb["boxes"]
            count_diff += int(len(ba) != len(bb))
            if len(ba) and len(bb):
                m = _iou(ba, bb)
                j = m.argmax(1)
                iou.append(m[np.arange(len(j)), j])
                cos.append(_cos(ra["features"], rb["features"][j]))
                if "obj_id" in names:
                    same_obj.append(ra["obj_id"] == rb["obj_id"][j])
                if "attr_id" in names:
                    same_attr.append(ra["attr_id"] == rb["attr_id"][j])
        for f in fixed:
            fixed_cos[f].append(_cos(ra[f], rb[f]))
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
    if regions:
        res["regions"] = {"images_with_other_box_count": count_diff, "matched_iou_min": float(cat(iou).min(initial=1)),
                          "matched_iou_mean": float(cat(iou).mean()) if iou else 1.0,
                          "feature_cosine_min": float(cat(cos).min(initial=1)),
                          "obj_id_agreement": float(cat(same_obj).mean()) if same_obj else 1.0,
                          "attr_id_agreement": float(cat(same_attr).mean()) if same_attr else 1.0}
    res["fields"] = {f: {"cosine_min": float(cat(v).min(initial=1)), "cosine_mean": float(cat(v).mean()) if v else 1.0}
                     for f, v in fixed_cos.items()}
    if plot:
        panels = ([("matched box IoU", cat(iou)), ("region feature cosine", cat(cos))] if regions else []) + [
            (f"{f} cosine", cat(v)) for f, v in fixed_cos.items()]
        _plot(panels, plot, f"{path_a} vs {path_b}: {len(common)} images, {len(res['only_a'])} only in A, "
                            f"{len(res['only_b'])} only in B")
    return res


def _plot(panels: list, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.5 * max(1, len(panels)), 3.2), squeeze=False)
    for ax, (name, v) in zip(axes.flat, panels):
        ax.hist(v, bins=40, color="tab:blue")
        ax.set(title=f"{name} (min {v.min(initial=1):.4f})", xlabel=name, ylabel="count")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(res: dict) -> str:
    lines = [f"images compared: {res['images']}; only in A: {len(res['only_a'])}; only in B: {len(res['only_b'])}"]
    for side in ("only_a", "only_b"):
        if res[side]:
            lines.append(f"  {side}: {' '.join(res[side][:20])}{' ...' if len(res[side]) > 20 else ''}")
    for k, v in res.get("regions", {}).items():
        lines.append(f"  regions {k:30s} {v:.6g}")
    for f, v in res["fields"].items():
        lines.append(f"  {f:38s} cosine min {v['cosine_min']:.6f} mean {v['cosine_mean']:.6f}")
    return "\n".join(lines)
