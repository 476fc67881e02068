"""Trivial baselines, trained and scored exactly like the models (same splits, images, labels, truth,
bootstrap), so that every AUROC the report prints stands beside what no real model achieves:

* ``prevalence``: the TRAIN prevalence of each class as the score of every test image (AUROC 0.5 by
  construction; its AUPRC is the test prevalence: the floor of the precision-recall table);
* ``pixels16``: logistic regression on the image downsampled to 16 x 16 pixels (the classifiers'
  own image loader at side 16), one L2-regularised model per class, C chosen on VALIDATION macro
  AUROC;
* ``metadata``: logistic regression on view (PA / AP / other), sex and age only, C chosen the same
  way: how much a shortcut through acquisition and demographics already gives.

Each writes the metrics of :func:`cxr.evaluate.classification.classification_metrics` (thresholds
from Youden's J on validation, as for the models).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from cxr.evaluate.classification import DEFAULT_TRUTH, by_view, classification_metrics
from cxr.evaluate.metrics import macro_auroc, val_thresholds
from cxr.evaluate.report_table import BASELINES
from cxr.inference import build_datasets

log = logging.getLogger(__name__)

C_GRID = (0.01, 0.1, 1.0)
PIXEL_SIDE = 16


def metadata_features(meta: pd.DataFrame, age_mean: float) -> np.ndarray:
    """View one-hot (PA, AP, other), sex one-hot (M, F, unknown), age / 100 (train mean where missing) + missing flag."""
    view = meta["view"].fillna("").str.upper()
    sex = meta["sex"].fillna("").str.upper().str[:1] if "sex" in meta else pd.Series("", index=meta.index)
    age = pd.to_numeric(meta["age"], errors="coerce") if "age" in meta else pd.Series(np.nan, index=meta.index)
    cols = [view == "PA", view == "AP", ~view.isin(["PA", "AP"]), sex == "M", sex == "F", ~sex.isin(["M", "F"]),
            age.fillna(age_mean) / 100.0, age.isna()]
    return np.stack([np.asarray(c, dtype=np.float64) for c in cols], axis=1)


def _fit_predict(xtr: np.ndarray, ytr: np.ndarray, mtr: np.ndarray, xs: Sequence[np.ndarray], c: float) -> list[np.ndarray]:
    """Per-class logistic regression on the unmasked TRAIN entries; probabilities for each of ``xs``."""
    from sklearn.linear_model import LogisticRegression

    outs = [np.zeros((len(x), ytr.shape[1])) for x in xs]
    for k in range(ytr.shape[1]):
        m = mtr[:, k]
        y = ytr[m, k]
        if m.sum() == 0 or y.min() == y.max():  # one outcome only: its rate is all there is to learn
            rate = float(y.mean()) if m.sum() else 0.5
            for o in outs:
                o[:, k] = rate
            continue
        clf = LogisticRegression(C=c, max_iter=2000).fit(xtr[m], y)
        for o, x in zip(outs, xs):
            o[:, k] = clf.predict_proba(x)[:, 1]
    return outs


def _standardise(xtr: np.ndarray, *xs: np.ndarray) -> list[np.ndarray]:
    mu, sd = xtr.mean(0), xtr.std(0)
    sd[sd == 0] = 1.0
    return [(x - mu) / sd for x in (xtr, *xs)]


def run_baselines(*, images: pd.DataFrame, labels: pd.DataFrame, splits: pd.DataFrame, images_dir: str | Path,
                  names: Sequence[str], uncertainty: Mapping[str, Any], frontal_only: bool,
                  datasets: Sequence[str] | None, cache_dir: str | Path, n_boot: int = 1000, ci: float = 0.95,
                  ece_bins: int = 10, seed: int = 0, progress: bool = False, min_positives: int = 10,
                  truth: Mapping[str, str] | None = None) -> dict[str, dict]:
    """Train every baseline on TRAIN, choose C on VAL, score on TEST; name -> metrics (plus the chosen C).

    ``uncertainty`` (the training policy, ``label.uncertainty``) makes the TRAIN / VAL targets, as for the
    models; the TEST targets are ``truth`` (``evaluate.truth``), the one test truth every model answers to.
    """
    common = dict(images=images, labels=labels, splits=splits, images_dir=images_dir, names=names,
                  image_size=PIXEL_SIDE, frontal_only=frontal_only, cache_dir=cache_dir, progress=progress,
                  datasets=datasets)
    ds = build_datasets("baseline", uncertainty=uncertainty, which=("train", "val"), inputs="image", **common)
    t = {**DEFAULT_TRUTH, **dict(truth or {})}
    ds["test"] = build_datasets("baseline", uncertainty={"default": t["uncertain"], "blank": t["blank"]},
                                which=("test",), inputs="image", **common)["test"]
    tr, va, te = ds["train"], ds["val"], ds["test"]
    info = images.drop_duplicates("image_id").set_index("image_id")
    meta = {s: info.loc[d.meta["image_id"], ["view", "sex", "age"]].reset_index(drop=True) for s, d in ds.items()}
    pids = te.meta["patient_key"].astype(str).to_numpy()
    out: dict[str, dict] = {}
    scored: dict[str, tuple[np.ndarray, dict[str, float]]] = {}  # name -> test probabilities, thresholds

    # prevalence: every test image gets each class's TRAIN rate
    rate = np.array([tr.targets[tr.mask[:, k], k].mean() if tr.mask[:, k].any() else 0.5 for k in range(len(names))])
    probs = np.tile(rate, (len(te), 1))
    scored["prevalence"] = (probs, {n: float(r) for n, r in zip(names, rate)})
    out["prevalence"] = classification_metrics(probs, te.targets, te.mask, pids, names, scored["prevalence"][1], n_boot,
                                               ci, ece_bins, seed, min_positives=min_positives)

    def pixels(d):
        return np.asarray(d.cache.array[d._rows], np.float64).reshape(len(d), -1) / 255.0

    age_mean = float(pd.to_numeric(meta["train"]["age"], errors="coerce").mean())
    age_mean = 50.0 if not np.isfinite(age_mean) else age_mean
    features = {
        "pixels16": [pixels(d) for d in (tr, va, te)],
        "metadata": [metadata_features(meta[s], age_mean) for s in ("train", "val", "test")],
    }
    for name, (xtr, xva, xte) in features.items():
        xtr, xva, xte = _standardise(xtr, xva, xte)
        best = None
        for c in C_GRID:
            pva, pte = _fit_predict(xtr, tr.targets, tr.mask, (xva, xte), c)
            score = macro_auroc(pva, va.targets, va.mask)
            score = -1.0 if score is None or not np.isfinite(score) else float(score)
            if best is None or score > best[0]:
                best = (score, c, pva, pte)
        _, c, pva, pte = best
        thresholds = val_thresholds(pva, va.targets, va.mask, names)
        met = classification_metrics(pte, te.targets, te.mask, pids, names, thresholds, n_boot, ci, ece_bins, seed,
                                     min_positives=min_positives)
        scored[name] = (pte, thresholds)
        met["C"] = c
        met["val_macro_auroc"] = round(best[0], 4) if best[0] >= 0 else None
        out[name] = met
    for name, met in out.items():
        met["model"] = name
        met["truth"] = t
        met["baseline"] = True
        met["by_view"] = by_view(scored[name][0], te.targets, te.mask, pids, te.meta["view"].to_numpy(), names,
                                 scored[name][1], n_boot, ci, seed, min_positives)
        log.info("baseline %s: test macro AUROC %s [%s, %s]", name, met["macro_auroc"], met["macro_auroc_ci_low"],
                 met["macro_auroc_ci_high"])
    return out
