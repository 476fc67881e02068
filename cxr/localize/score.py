"""Localisation scores against ground-truth boxes (ChestX-ray8, Wang et al. 2017, section 4.2).

For two boxes ``x1, y1, x2, y2`` in the same frame:

* ``IoU  = area(GT ∩ pred) / area(GT ∪ pred)``
* ``IoBB = area(GT ∩ pred) / area(pred)`` (intersection over the *predicted* bounding box, the
  ChestX-ray8 definition: a small predicted box inside the lesion scores 1).

Counting rule (:func:`score_boxes`): the unit is the **ground-truth box**. Every GT box of an
(image, class) pair is matched to ONE predicted box of the same image and class: the one with the
highest IoU (ties: the higher IoBB, then the earlier box). Its IoU and its IoBB are both those of
that one detection, as ChestX-ray8 counts a hit by the IoU or the IoBB of the same detection (so a
small spurious box inside the lesion cannot lend its IoBB of 1 to a GT box matched by another box).
A GT box is localised at ``T(IoU) = t`` when the IoU of its matched box is ``>= t`` (same for IoBB).
Several GT boxes of one class in one image each count once and may be matched by the same
predicted box. An (image, class) pair with no predicted box scores 0 for its GT boxes.

False positives (ChestX-ray8's "AFP"): at each threshold, a predicted box of an (image, class) pair
is a false positive when it reaches ``t`` with none of that pair's GT boxes (IoU for T(IoU), IoBB
for T(IoBB)); ``afp`` is their number per scored (image, class) pair.

Per class: accuracy at each threshold = localised GT boxes / GT boxes of that class, the mean
IoU / IoBB over its GT boxes, and the AFP. Overall: ``macro`` (mean over classes that have GT
boxes) and ``micro`` (over all GT boxes; AFP over all scored pairs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

DEFAULT_THRESHOLDS = (0.1, 0.25, 0.5, 0.75)


def _boxes(b) -> np.ndarray:
    a = np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return np.zeros((0, 4))
    a = a.reshape(-1, a.shape[-1])[:, :4]
    return a


def _areas(b: np.ndarray) -> np.ndarray:
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def intersection(gt, pred) -> np.ndarray:
    """Intersection areas ``[G, P]`` of GT boxes ``[G, 4]`` and predicted boxes ``[P, 4(+)]``."""
    g, p = _boxes(gt), _boxes(pred)
    w = np.minimum(g[:, None, 2], p[None, :, 2]) - np.maximum(g[:, None, 0], p[None, :, 0])
    h = np.minimum(g[:, None, 3], p[None, :, 3]) - np.maximum(g[:, None, 1], p[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def iou(gt, pred) -> np.ndarray:
    """IoU matrix ``[G, P]`` (0 where the union is empty)."""
    g, p = _boxes(gt), _boxes(pred)
    inter = intersection(g, p)
    union = _areas(g)[:, None] + _areas(p)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def iobb(gt, pred) -> np.ndarray:
    """IoBB matrix ``[G, P]``: intersection / area of the predicted box (0 for an empty prediction)."""
    g, p = _boxes(gt), _boxes(pred)
    inter = intersection(g, p)
    area = np.broadcast_to(_areas(p)[None, :], inter.shape)
    return np.divide(inter, area, out=np.zeros_like(inter), where=area > 0)


def matched_overlaps(gt, pred) -> tuple[np.ndarray, np.ndarray]:
    """Per GT box: IoU and IoBB of its ONE matched predicted box (highest IoU, ties: higher IoBB,
    then the earlier box); 0 when there is no predicted box."""
    g, p = _boxes(gt), _boxes(pred)
    if len(p) == 0:
        return np.zeros(len(g)), np.zeros(len(g))
    u, b = iou(g, p), iobb(g, p)
    # lexicographic argmax over (IoU, IoBB); max() keeps the first of equal keys
    best = np.array([max(range(len(p)), key=lambda j: (u[k, j], b[k, j])) for k in range(len(g))])
    rows = np.arange(len(g))
    return u[rows, best], b[rows, best]


def false_positives(gt, pred, thresholds: Sequence[float]) -> dict[str, dict[str, int]]:
    """Predicted boxes that reach ``t`` with no GT box, per threshold: ``{"iou": {t: n}, "iobb": {t: n}}``."""
    g, p = _boxes(gt), _boxes(pred)
    out: dict[str, dict[str, int]] = {"iou": {}, "iobb": {}}
    for key, fn in (("iou", iou), ("iobb", iobb)):
        best = fn(g, p).max(axis=0) if len(g) and len(p) else np.zeros(len(p))
        for t in thresholds:
            out[key][f"{t:g}"] = int((best < t).sum())
    return out


def score_boxes(pairs: Iterable[tuple[str, np.ndarray, np.ndarray]], classes: Sequence[str],
                thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict:
    """Localisation accuracy per class and overall (counting rule: module docstring).

    Args:
        pairs: one ``(class name, gt [G, 4], pred [P, 4(+)])`` per (image, class) with GT boxes,
            all in one coordinate frame.
        classes: class names in report order (classes without GT boxes are reported with n = 0).
        thresholds: T values for T(IoU) and T(IoBB).

    Returns:
        ``{"per_class": {c: {"n_boxes", "n_images", "iou": {"t": acc}, "iobb": {...}, "mean_iou",
        "mean_iobb"}}, "macro": {...}, "micro": {...}}``; accuracies are None where n_boxes = 0.
    """
    ts = [float(t) for t in thresholds]
    per: dict[str, dict[str, list]] = {c: {"iou": [], "iobb": [], "images": [], "fp": []} for c in classes}
    for k, (c, gt, pred) in enumerate(pairs):
        if c not in per:
            raise ValueError(f"class {c!r} of a scored pair is not one of {list(classes)}")
        bi, bb = matched_overlaps(gt, pred)
        per[c]["iou"].extend(bi.tolist())
        per[c]["iobb"].extend(bb.tolist())
        per[c]["images"].append(k)
        per[c]["fp"].append(false_positives(gt, pred, ts))

    def summary(ious: np.ndarray, iobbs: np.ndarray, n_images: int, fps: list[dict]) -> dict:
        n = len(ious)
        return {
            "n_boxes": int(n),
            "n_images": int(n_images),
            "iou": {f"{t:g}": (float((ious >= t).mean()) if n else None) for t in ts},
            "iobb": {f"{t:g}": (float((iobbs >= t).mean()) if n else None) for t in ts},
            "mean_iou": float(ious.mean()) if n else None,
            "mean_iobb": float(iobbs.mean()) if n else None,
            "afp": {key: {f"{t:g}": (float(np.mean([f[key][f"{t:g}"] for f in fps])) if fps else None) for t in ts}
                    for key in ("iou", "iobb")},
        }

    per_class = {c: summary(np.asarray(v["iou"]), np.asarray(v["iobb"]), len(v["images"]), v["fp"])
                 for c, v in per.items()}
    scored = [c for c in classes if per_class[c]["n_boxes"] > 0]

    def macro_of(key: str) -> dict | float | None:
        if not scored:
            return None
        if key in ("mean_iou", "mean_iobb"):
            return float(np.mean([per_class[c][key] for c in scored]))
        if key == "afp":
            return {m: {f"{t:g}": float(np.mean([per_class[c]["afp"][m][f"{t:g}"] for c in scored])) for t in ts}
                    for m in ("iou", "iobb")}
        return {f"{t:g}": float(np.mean([per_class[c][key][f"{t:g}"] for c in scored])) for t in ts}

    macro = {"n_classes": len(scored), **{k: macro_of(k) for k in ("iou", "iobb", "mean_iou", "mean_iobb", "afp")}}
    all_iou = np.concatenate([np.asarray(per[c]["iou"]) for c in classes]) if classes else np.zeros(0)
    all_iobb = np.concatenate([np.asarray(per[c]["iobb"]) for c in classes]) if classes else np.zeros(0)
    micro = summary(all_iou, all_iobb, sum(len(per[c]["images"]) for c in classes), [f for c in classes for f in per[c]["fp"]])
    micro["n_pairs"] = micro.pop("n_images")  # (image, class) pairs: an image with two classes counts twice
    return {"per_class": per_class, "macro": macro, "micro": micro}
