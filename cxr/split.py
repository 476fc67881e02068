"""Patient-level train / val / test splits by iterative stratification.

Every image of a patient lands in the same split (the reference code's image-level random
splits put one patient in train and test). Patients are stratified on their label vector
(a label is positive for a patient if any of their images is positive) with the iterative
stratification of Sechidis et al. (ECML-PKDD 2011) / Szymanski & Kajdanowicz (2017), as
implemented by scikit-multilearn. Its ``IterativeStratification`` refuses ``random_state``,
so numpy's global generator is seeded around the call and restored afterwards.

:func:`stratified_folds` is that algorithm step for step, with the same draws from numpy's
global generator (so the same folds, checked against scikit-multilearn in the tests), but in
linear time: scikit-multilearn removes each assigned row from every per-label Python list
(``list.remove``), which is quadratic in the number of patients (measured: 8k patients 0.33 s,
32k 2.3 s; MIMIC-CXR has 65k). Here rows are skipped lazily and per-label counts kept instead.

Official splits (MIMIC-CXR's split csv, NIH's test list) are honoured when configured: a
patient with any image in an official test (val) list goes to test (val); patients of an
official train/val list are stratified between train and val only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from cxr.errors import CxrError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
ID_COLUMNS = ("dataset", "image_id", "patient_id", "study_id", "label_source")


class SplitError(CxrError, ValueError):
    """Inputs that cannot be split (missing columns, bad ratios, leakage)."""


@contextlib.contextmanager
def seeded_numpy(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG inside the block and restore its previous state afterwards."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


def iterative_stratification(y: np.ndarray, fractions: Sequence[float], seed: int, order: int = 1) -> np.ndarray:
    """Assign each row of a binary label matrix to a fold with the given size fractions.

    Args:
        y: ``[n, L]`` binary matrix (one row per patient).
        fractions: desired fraction of rows per fold (sums to 1; zeros allowed).
        seed: seeds numpy's global RNG around scikit-multilearn's call.
        order: label-combination order (1 = single labels).

    Returns:
        ``[n]`` fold index per row.

    Raises:
        SplitError: fractions do not sum to 1 or are negative.
    """
    fr = np.asarray(fractions, dtype=float)
    if (fr < 0).any() or abs(fr.sum() - 1) > 1e-6:
        raise SplitError(f"fractions must be >= 0 and sum to 1, got {list(fractions)}")
    n = len(y)
    out = np.full(n, -1, dtype=np.int64)
    active = np.flatnonzero(fr > 0)
    if n == 0:
        return out
    if len(active) == 1 or n < 2 * len(active):
        # Too few rows to stratify: a seeded permutation cut at the fractions.
        rng = np.random.default_rng(seed)
        perm = rng.permutation(n)
        cuts = np.round(np.cumsum(fr[active]) * n).astype(int)[:-1]
        for fold, part in zip(active, np.split(perm, cuts)):
            out[part] = fold
        return out
    y = np.asarray(y, dtype=np.int64)
    if y.ndim != 2 or y.shape[1] == 0:
        y = np.zeros((n, 1), dtype=np.int64)
    sub = fr[active] / fr[active].sum()
    with seeded_numpy(seed):
        for k, idx in enumerate(stratified_folds(y, list(sub), order)):
            out[idx] = active[k]
    if (out < 0).any():
        raise SplitError("iterative stratification left rows unassigned")
    return out


def stratified_folds(y: np.ndarray, fractions: Sequence[float], order: int = 1) -> list[list[int]]:
    """Row indices per fold: scikit-multilearn's ``IterativeStratification`` in linear time.

    Same steps and the same draws from numpy's global generator as scikit-multilearn 0.2
    (seed it around the call), so the same folds: repeatedly take the label combination with
    the fewest unassigned rows (its odd tie rule kept), pop its rows from the end and give each
    to the fold that still wants most of that combination (random among ties); then deal the
    unlabelled rows, last first, at random among folds that still want rows.

    Args:
        y: ``[n, L]`` binary matrix.
        fractions: desired fraction of rows per fold.
        order: label-combination order.

    Returns:
        One list of row indices per fold, in assignment order.
    """
    import itertools

    n, k = len(y), len(fractions)
    want_rows = np.array([f * n for f in fractions])
    rows_of: dict[tuple, list[int]] = {}
    combos_of: list[list[tuple]] = [[] for _ in range(n)]
    for i in range(n):
        for combo in itertools.combinations_with_replacement(np.flatnonzero(y[i]).tolist(), order):
            rows_of.setdefault(combo, []).append(i)
            combos_of[i].append(combo)
    want = {c: np.array([len(r) * f for f in fractions]) for c, r in rows_of.items()}
    left = {c: len(r) for c, r in rows_of.items()}  # unassigned rows per combination
    used = np.zeros(n, bool)
    folds: list[list[int]] = [[] for _ in range(k)]

    def next_combination():
        chosen, best_size, best_support = None, None, None
        for c in rows_of:  # first-appearance order, as scikit-multilearn's dict
            size, support = len(set(c)), left[c]
            if support == 0:
                continue
            if chosen is None or (best_size < size and best_support > support):
                chosen, best_size, best_support = c, size, support
        return chosen

    combo = next_combination()
    while combo is not None:
        stack = rows_of[combo]
        while left[combo] > 0:
            row = stack.pop()
            if used[row]:
                continue  # assigned through another combination: already counted off
            w = want[combo]
            ties = np.where(w == w.max())[0]
            m = ties[0] if len(ties) == 1 else np.random.choice(ties, 1)[0]
            folds[m].append(row)
            used[row] = True
            for c in combos_of[row]:
                left[c] -= 1
                want[c][m] -= 1
            want_rows[m] -= 1
        combo = next_combination()
    for row in np.flatnonzero(~used)[::-1].tolist():
        m = np.random.choice(np.where(want_rows > 0)[0], 1)[0]
        want_rows[m] -= 1
        folds[m].append(row)
    return folds


def patient_labels(table: pd.DataFrame, names: Sequence[str], key: str = "patient_key") -> pd.DataFrame:
    """Per-patient binary labels: 1 if any of the patient's images is positive (value 1)."""
    pos = (table[list(names)].to_numpy(dtype=float, na_value=np.nan) == 1).astype(np.int64)
    df = pd.DataFrame(pos, columns=list(names))
    df[key] = table[key].to_numpy()
    return df.groupby(key, sort=True).max()


def make_splits(
    images: pd.DataFrame,
    labels: pd.DataFrame,
    fractions: Mapping[str, float],
    seed: int,
    official: Mapping[str, str] | None = None,
    order: int = 1,
) -> tuple[pd.DataFrame, dict]:
    """Split images at patient level.

    Args:
        images: images.parquet (``image_id, dataset, patient_id, status``); only ``status == ok``
            rows are split.
        labels: labels.parquet (``dataset, image_id`` + label columns [+ ``label_source``]).
        fractions: ``{"train": .7, "val": .1, "test": .2}`` of patients.
        seed: random seed.
        official: optional ``image_id -> train / val / test / trainval`` from official split files.
        order: label order for iterative stratification.

    Returns:
        ``(splits, summary)``: splits.parquet content (``image_id, dataset, patient_id, split``,
        sorted) and reports/split.json content.

    Raises:
        SplitError: missing columns, bad fractions, or (never expected) a patient in two splits.
    """
    for name, df, cols in (("images", images, ("image_id", "dataset", "patient_id", "status")),
                           ("labels", labels, ("image_id", "dataset"))):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise SplitError(f"{name} table lacks column(s) {missing}")
    fr = np.array([fractions.get(s, 0.0) for s in SPLITS], dtype=float)
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown or (fr < 0).any() or abs(fr.sum() - 1) > 1e-6:
        raise SplitError(f"fractions must be train/val/test >= 0 summing to 1, got {dict(fractions)}")
    names = [c for c in labels.columns if c not in ID_COLUMNS]
    ok = images[images["status"] == "ok"]
    table = ok[["dataset", "image_id", "patient_id"]].merge(
        labels[["dataset", "image_id", *names]], on=["dataset", "image_id"], how="inner"
    )
    no_pid = table["patient_id"].isna() | (table["patient_id"].astype(str).str.strip() == "")
    table = table[~no_pid].copy()
    table["patient_key"] = table["dataset"].astype(str) + ":" + table["patient_id"].astype(str)
    summary: dict = {
        "seed": seed,
        "fractions": dict(zip(SPLITS, fr.tolist())),
        "excluded": {
            "images_not_ok": int(len(images) - len(ok)),
            "images_without_labels": int(len(ok) - ok.merge(labels[["dataset", "image_id"]], on=["dataset", "image_id"]).shape[0]),
            "labels_without_image": int(len(labels) - labels.merge(ok[["dataset", "image_id"]], on=["dataset", "image_id"]).shape[0]),
            "images_without_patient_id": int(no_pid.sum()),
        },
    }
    plab = patient_labels(table, names)
    fixed = pd.Series("", index=plab.index, dtype=object)
    if official:
        off = table[["image_id", "patient_key"]].assign(o=table["image_id"].map(official)).dropna(subset=["o"])
        rank = {"test": 3, "val": 2, "train": 1, "trainval": 0}
        bad = sorted(set(off["o"]) - set(rank))
        if bad:
            raise SplitError(f"official split values {bad}; expected {sorted(rank)}")
        off["r"] = off["o"].map(rank)
        best = off.sort_values("r").groupby("patient_key")["o"].last()
        fixed.loc[best.index] = best
    assign = pd.Series("", index=plab.index, dtype=object)
    for s in ("train", "val", "test"):
        assign[fixed == s] = s
    tv = fixed == "trainval"
    if tv.any():
        sub = fr[:2] / fr[:2].sum() if fr[:2].sum() > 0 else np.array([1.0, 0.0])
        folds = iterative_stratification(plab[tv].to_numpy(), [*sub, 0.0], seed, order)
        assign[tv] = [SPLITS[k] for k in folds]
    free = fixed == ""
    if free.any():
        folds = iterative_stratification(plab[free].to_numpy(), fr, seed, order)
        assign[free] = [SPLITS[k] for k in folds]
    table["split"] = table["patient_key"].map(assign)
    per_patient = table.groupby("patient_key")["split"].nunique()
    if (per_patient > 1).any():  # impossible by construction; checked because leakage is the worst bug
        raise SplitError(f"patients in several splits: {list(per_patient[per_patient > 1].index[:5])}")
    splits = table[["image_id", "dataset", "patient_id", "split"]].sort_values(["dataset", "image_id"], kind="stable")
    splits = splits.reset_index(drop=True)
    summary["splits"] = {}
    for s in SPLITS:
        part = table[table["split"] == s]
        summary["splits"][s] = {
            "images": int(len(part)),
            "patients": int(part["patient_key"].nunique()),
            "prevalence": {n: round(float((part[n] == 1).mean()), 4) if len(part) else None for n in names},
        }
    summary["official_patients"] = int((fixed != "").sum())
    return splits, summary
