"""Scoring a labeller against reference labels: per-class precision / recall / F1, micro, macro.

Used by ``bench/label.py`` (OpenI expert labels, synthetic truth) and by the ``label`` stage,
which scores the labeller against a synthetic cohort's ``truth/truth.parquet`` when the raw data
is synthetic. The truth table is only ever *compared with*; no label is taken from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cxr.labeler.labeler import Labeler


def scores(pred: np.ndarray, gold: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """Per-class P / R / F1 plus ``micro`` and ``macro`` rows (both over classes with positives).

    Args:
        pred: bool [n, k] predicted positives.
        gold: bool [n, k] reference positives.
        names: the k class names.
    """
    pred, gold = np.asarray(pred, bool), np.asarray(gold, bool)
    if pred.shape != gold.shape or pred.shape[1] != len(names):
        raise ValueError(f"shapes differ: pred {pred.shape}, gold {gold.shape}, {len(names)} names")
    tp = (pred & gold).sum(0)
    fp = (pred & ~gold).sum(0)
    fn = (~pred & gold).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        r = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        f = np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    df = pd.DataFrame({"n_pos": gold.sum(0), "P": p, "R": r, "F1": f}, index=list(names))
    has = (df["n_pos"] > 0).to_numpy()
    tps, fps, fns = tp[has].sum(), fp[has].sum(), fn[has].sum()
    df.loc["micro"] = [int(gold[:, has].sum()), tps / max(tps + fps, 1), tps / max(tps + fns, 1),
                       2 * tps / max(2 * tps + fps + fns, 1)]
    kept = df.index[:-1][has]
    df.loc["macro"] = [int(has.sum()), df.loc[kept, "P"].mean(), df.loc[kept, "R"].mean(), df.loc[kept, "F1"].mean()]
    return df


def score_synthetic(
    raw_dir: str | Path, reports: pd.DataFrame, labeller: Labeler, predictions: pd.DataFrame | None = None
) -> dict:
    """Score ``labeller`` on a synthetic cohort's MIMIC-style reports against its truth table.

    Args:
        raw_dir: the cohort root (with ``truth/truth.parquet``).
        reports: the MIMIC adapter's report table (``study_id``, ``report``).
        labeller: the labeller the ``label`` stage used.
        predictions: its output for ``reports`` (``study_id`` + label columns), when already
            computed; otherwise the reports are labelled here.

    Returns:
        ``{"reports": n, "policy": ..., "micro_f1", "macro_f1", "per_class": {name: {P, R, F1, n_pos}},
        "keyword_micro_f1", "keyword_macro_f1"}`` with uncertain outputs counted as positive
        (the generator makes hedged findings true), and the keyword baseline alongside.
    """
    truth = pd.read_parquet(Path(raw_dir) / "truth" / "truth.parquet")
    names = [n for n in labeller.labels if n in truth.columns]
    if not names:
        return {"reports": 0, "skipped": f"vocabulary {labeller.vocab.name!r} shares no label with the truth table"}
    study_truth = truth.groupby("study_id")[names].max()
    rep = reports.drop_duplicates("study_id").set_index("study_id")
    common = study_truth.index.intersection(rep.index)
    gold = study_truth.loc[common, names].to_numpy() == 1
    texts = rep.loc[common, "report"].tolist()
    if predictions is None:
        v = labeller.label_many(texts, progress=False)[names].to_numpy()
    else:
        v = predictions.drop_duplicates("study_id").set_index("study_id").loc[common, names].to_numpy()
    a = scores((v == 1) | (v == -1), gold, names)
    keyword = Labeler(labeller.vocab.name, use_context=False).label_many(texts, progress=False)[names].to_numpy()
    b = scores(keyword == 1, gold, names)
    per = {n: {k: (None if pd.isna(a.loc[n, k]) else round(float(a.loc[n, k]), 4)) for k in ("P", "R", "F1")}
           | {"n_pos": int(a.loc[n, "n_pos"])} for n in names}
    return {
        "reports": int(len(common)),
        "policy": "uncertain counts as positive",
        "micro_f1": round(float(a.loc["micro", "F1"]), 4),
        "macro_f1": round(float(a.loc["macro", "F1"]), 4),
        "keyword_micro_f1": round(float(b.loc["micro", "F1"]), 4),
        "keyword_macro_f1": round(float(b.loc["macro", "F1"]), 4),
        "per_class": per,
    }
