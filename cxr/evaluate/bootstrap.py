"""Bootstrap over PATIENTS: confidence intervals and paired model comparisons.

Images of one patient are correlated, so resampling images would understate the variance. Each
replicate draws patients with replacement and takes all their images (a patient drawn twice
contributes its images twice). The same replicates are used for every model evaluated on the same
test images, which makes model comparisons paired.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np


def patient_resamples(patient_ids: Sequence, n: int, seed: int) -> list[np.ndarray]:
    """``n`` row-index arrays, each the rows of patients drawn with replacement (deterministic in ``seed``)."""
    pids = np.asarray(patient_ids)
    uniq, inv = np.unique(pids, return_inverse=True)
    if len(uniq) < 2:
        raise ValueError(f"patient bootstrap needs at least 2 patients, got {len(uniq)}")
    order = np.argsort(inv, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(inv, minlength=len(uniq)))]
    rows_of = [order[starts[i]:starts[i + 1]] for i in range(len(uniq))]
    rng = np.random.default_rng(seed)
    return [np.concatenate([rows_of[p] for p in rng.integers(0, len(uniq), len(uniq))]) for _ in range(n)]


def bootstrap(stat: Callable[[np.ndarray], float | np.ndarray], resamples: Sequence[np.ndarray]) -> np.ndarray:
    """``stat(rows)`` for every replicate: ``[B]`` or ``[B, K]`` (NaN where undefined)."""
    return np.array([stat(rows) for rows in resamples], dtype=np.float64)


def percentile_ci(samples: np.ndarray, ci: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap ``samples`` along axis 0, ignoring NaN replicates."""
    a = (1 - ci) / 2
    s = np.asarray(samples, dtype=np.float64)
    cols = s.reshape(len(s), -1)
    lo, hi = np.full(cols.shape[1], np.nan), np.full(cols.shape[1], np.nan)
    for k in range(cols.shape[1]):
        v = cols[np.isfinite(cols[:, k]), k]
        if v.size:
            lo[k], hi[k] = np.quantile(v, a), np.quantile(v, 1 - a)
    if s.ndim == 1:
        return lo[0], hi[0]
    return lo.reshape(s.shape[1:]), hi.reshape(s.shape[1:])


def replicate_macro(per: np.ndarray) -> np.ndarray:
    """Macro AUROC of every replicate ``[B]`` from its per-class AUROCs ``[B, C]``: the mean over the classes
    defined in that replicate (as ``metrics.macro_auroc``), NaN where none is."""
    out = np.full(len(per), np.nan)
    defined = np.isfinite(per).any(axis=1)
    out[defined] = np.nanmean(per[defined], axis=1)
    return out


def paired_p_value(diff_samples: np.ndarray) -> float:
    """Two-sided bootstrap p-value of ``H0: difference = 0`` from paired replicate differences.

    ``p = 2 * min(P(d <= 0), P(d >= 0))`` over the finite replicates (capped at 1).
    """
    d = diff_samples[np.isfinite(diff_samples)]
    if d.size == 0:
        return float("nan")
    return float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))


def resample_counts(resamples: Sequence[np.ndarray], n: int, block: int) -> Iterator[np.ndarray]:
    """How often each of ``n`` rows is drawn in each replicate: float32 ``[b, n]`` blocks of <= ``block`` replicates."""
    for s in range(0, len(resamples), block):
        yield np.stack([np.bincount(r, minlength=n) for r in resamples[s:s + block]]).astype(np.float32)


def _weighted_auroc(order: np.ndarray, starts: np.ndarray, pos: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUROC per row of weights ``w [b, m]`` over entries pre-sorted by score (``order``, tie groups at ``starts``)."""
    ws = w[:, order]
    p = np.add.reduceat(ws * pos, starts, axis=1).astype(np.float64)
    q = np.add.reduceat(ws * ~pos, starts, axis=1).astype(np.float64)
    below = np.cumsum(q, axis=1) - q  # negatives strictly below each tie group
    n_pos, n_neg = p.sum(1), q.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (p * (below + 0.5 * q)).sum(1) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def bootstrap_auroc(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray,
                    resamples: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-class ``[B, C]`` and micro ``[B]`` AUROC of every replicate, without copying any replicate.

    The same numbers as ``per_class_auroc`` / ``micro_auroc`` on ``probs[rows]`` (Mann-Whitney with
    ties counted half), computed as AUROCs weighted by how often each row was drawn: the scores
    are sorted once per class instead of once per replicate and class, so a replicate costs
    O(rows) (measured: 2,000 test images x 14 classes x 1,000 replicates 18.5 s before, see
    bench/scale.py).
    """
    n, c = probs.shape
    per = np.full((len(resamples), c), np.nan)
    micro = np.full(len(resamples), np.nan)
    prepared = []
    for j in range(c):
        rows = np.flatnonzero(mask[:, j])
        prepared.append((rows, *_sorted_groups(probs[rows, j], targets[rows, j])))
    m_rows, m_cols = np.nonzero(mask)
    micro_groups = _sorted_groups(probs[m_rows, m_cols], targets[m_rows, m_cols])
    block = max(1, int(4e6 // max(1, len(m_rows))))  # replicates per pass: about 16 MB per weight array
    at = 0
    for w in resample_counts(resamples, n, block):
        b = len(w)
        for j, (rows, order, starts, pos) in enumerate(prepared):
            if len(rows):
                per[at:at + b, j] = _weighted_auroc(order, starts, pos, w[:, rows])
        if len(m_rows):
            micro[at:at + b] = _weighted_auroc(*micro_groups, w[:, m_rows])
        at += b
    return per, micro


def _sorted_groups(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(scores, kind="stable")
    s = np.asarray(scores)[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1] if len(s) else np.zeros(0, np.int64)
    return order, starts, np.asarray(y, bool)[order]
