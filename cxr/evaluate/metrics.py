"""Classification metrics on masked multi-label predictions (numpy, no sklearn in the hot path).

Everything takes ``probs [N, C]``, ``targets [N, C]`` in {0, 1} and ``mask [N, C]`` (False =
label unknown / ignored: the entry is left out of every metric of its class). A class whose
evaluated entries are all positive or all negative has an undefined AUROC (NaN) and is left out
of the macro average, which says how many classes it averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata


def auroc(scores: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged); NaN if one class only."""
    y = np.asarray(y, bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auprc(scores: np.ndarray, y: np.ndarray) -> float:
    """Average precision (step-wise area under the precision-recall curve); NaN without positives."""
    y = np.asarray(y, bool)
    if y.sum() == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores), kind="stable")
    s, yy = np.asarray(scores)[order], y[order]
    tp = np.cumsum(yy)
    last = np.r_[np.nonzero(np.diff(s))[0], yy.size - 1]  # last index of each distinct score
    precision = tp[last] / (last + 1)
    recall = tp[last] / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_class_auroc(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """AUROC of each class over its unmasked entries ``[C]`` (NaN where undefined)."""
    return np.array([auroc(probs[mask[:, c], c], targets[mask[:, c], c]) for c in range(probs.shape[1])])


def macro_auroc(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """Mean AUROC over classes where it is defined (NaN if none is)."""
    a = per_class_auroc(probs, targets, mask)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def micro_auroc(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """AUROC over all unmasked (image, class) entries pooled."""
    return auroc(probs[mask], targets[mask])


def roc_curve(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` at every distinct score, from (0, 0) to (1, 1)."""
    y = np.asarray(y, bool)
    order = np.argsort(-np.asarray(scores), kind="stable")
    s, yy = np.asarray(scores)[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], yy.size - 1]
    tp, fp = np.cumsum(yy)[last], np.cumsum(~yy)[last]
    tpr = np.r_[0.0, tp / max(y.sum(), 1)]
    fpr = np.r_[0.0, fp / max((~y).sum(), 1)]
    return fpr, tpr, np.r_[np.inf, s[last]]


def pr_curve(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(precision, recall)`` at every distinct score threshold."""
    y = np.asarray(y, bool)
    order = np.argsort(-np.asarray(scores), kind="stable")
    s, yy = np.asarray(scores)[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], yy.size - 1]
    tp = np.cumsum(yy)[last]
    return tp / (last + 1), tp / max(y.sum(), 1)


def youden_threshold(scores: np.ndarray, y: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 (used on VALIDATION predictions only).

    Returns 0.5 when the class is not estimable (one class only in ``y``).
    """
    y = np.asarray(y, bool)
    if y.all() or not y.any():
        return 0.5
    fpr, tpr, thr = roc_curve(scores, y)
    j = tpr - fpr
    best = int(np.argmax(j[1:])) + 1  # skip the +inf threshold
    return float(thr[best])


def operating_point(scores: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, precision and F1 at ``score >= threshold``."""
    y = np.asarray(y, bool)
    pred = np.asarray(scores) >= threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    prec = tp / (tp + fp) if tp + fp else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return {"sensitivity": sens, "specificity": spec, "precision": prec, "f1": f1}


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, bins: int = 10) -> float:
    """ECE over all unmasked entries: sum over equal-width bins of |accuracy - confidence| x share."""
    p, y = probs[mask], targets[mask]
    if p.size == 0:
        return float("nan")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(y[sel].mean() - p[sel].mean())
    return float(ece)


def val_thresholds(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Per-class operating thresholds (Youden's J) from VALIDATION predictions."""
    return {n: youden_threshold(probs[mask[:, c], c], targets[mask[:, c], c]) for c, n in enumerate(names)}
