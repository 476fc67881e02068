"""Bootstrap over PATIENTS: confidence intervals and paired model comparisons.

Images of one patient are correlated, so resampling images would understate the variance. Each
replicate draws patients with replacement and takes all their images (a patient drawn twice
contributes its images twice). The same replicates are used for every model evaluated on the same
test images, which makes model comparisons paired.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def paired_p_value(diff_samples: np.ndarray) -> float:
    """Two-sided bootstrap p-value of ``H0: difference = 0`` from paired replicate differences.

    ``p = 2 * min(P(d <= 0), P(d >= 0))`` over the finite replicates (capped at 1).
    """
    d = diff_samples[np.isfinite(diff_samples)]
    if d.size == 0:
        return float("nan")
    return float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))
