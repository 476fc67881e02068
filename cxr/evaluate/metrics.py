"""Classification metrics on masked multi-label predictions.

Average precision and the ROC / PR curves are scikit-learn's (``average_precision_score``,
``roc_curve``, ``precision_recall_curve``). AUROC is the Mann-Whitney statistic on ranks: it is
computed once per class per bootstrap replicate (14 classes x 1000 replicates x models), where it is
several times cheaper than ``roc_auc_score``'s input validation and curve; tests/test_evaluate.py
checks it equals ``roc_auc_score`` (ties included), on single classes and through the bootstrap wrappers.

Everything takes ``probs [N, C]``, ``targets [N, C]`` in {0, 1} and ``mask [N, C]`` (False =
label unknown / ignored: the entry is left out of every metric of its class). A class whose
evaluated entries are all positive or all negative has an undefined AUROC (NaN) and is left out
of the macro average, which says how many classes it averaged.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import average_precision_score
from sklearn.metrics import precision_recall_curve as _sk_pr_curve
from sklearn.metrics import roc_curve as _sk_roc_curve


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
    return float(average_precision_score(y, np.asarray(scores)))


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
    """``(fpr, tpr, thresholds)`` at every distinct score, from (0, 0) to (1, 1) (threshold inf first)."""
    y = np.asarray(y, bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # one class only: its rate is NaN, read as 0
        fpr, tpr, thr = _sk_roc_curve(y, np.asarray(scores), drop_intermediate=False)
    return np.nan_to_num(fpr), np.nan_to_num(tpr), thr


def pr_curve(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(precision, recall)`` at every distinct score threshold, highest threshold first."""
    y = np.asarray(y, bool)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "No positive class found", UserWarning)  # handled below
        precision, recall, _ = _sk_pr_curve(y, np.asarray(scores), drop_intermediate=False)
    # sklearn: increasing thresholds plus a final (precision 1, recall 0) point that has no threshold
    precision, recall = precision[:-1][::-1], recall[:-1][::-1]
    if not y.any():  # sklearn sets recall to 1 there; nothing was found
        recall = np.zeros_like(recall)
    return precision, recall


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
