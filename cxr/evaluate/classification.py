"""Test-set evaluation of one trained classifier (the ``evaluate@M`` stage).

Per class and macro/micro: AUROC with a patient-bootstrap CI, AUPRC, sensitivity / specificity /
F1 at the thresholds stored in the model card (chosen on VALIDATION by the train stage; the test
split never chooses anything), expected calibration error; per-region AUROC for anatomy models.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from cxr.evaluate.bootstrap import bootstrap_auroc, patient_resamples, percentile_ci, replicate_macro
from cxr.evaluate.metrics import (
    auprc,
    auroc,
    expected_calibration_error,
    macro_auroc,
    micro_auroc,
    operating_point,
    per_class_auroc,
    pr_curve,
    roc_curve,
)
from cxr.inference import card_datasets, load_model_dir, predict
from cxr.models.zoo import input_kind

log = logging.getLogger(__name__)


def _f(x) -> float | None:
    x = float(x)
    return round(x, 6) if np.isfinite(x) else None


def reliability(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, bins: int = 10) -> list[dict]:
    """The reliability diagram behind the ECE: per equal-width probability bin (all classes pooled, unmasked
    entries), its range, count, mean predicted probability and observed positive rate (None when empty)."""
    p, y = np.asarray(probs)[mask], np.asarray(targets)[mask]
    idx = np.minimum((p * bins).astype(int), bins - 1) if p.size else np.zeros(0, int)
    out = []
    for b in range(bins):
        sel = idx == b
        out.append({"low": round(b / bins, 6), "high": round((b + 1) / bins, 6), "n": int(sel.sum()),
                    "confidence": _f(p[sel].mean()) if sel.any() else None,
                    "observed": _f(y[sel].mean()) if sel.any() else None})
    return out


def classification_metrics(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, patient_ids: Sequence,
                           names: Sequence[str], thresholds: Mapping[str, float], n_boot: int = 1000, ci: float = 0.95,
                           ece_bins: int = 10, seed: int = 0, min_positives: int = 10) -> dict:
    """Metrics of test predictions ``probs [N, C]`` against ``targets``/``mask`` (see module docstring).

    ``min_positives``: classes with fewer test positives are flagged (``few_positives``) and left out
    of ``macro_auroc_common`` (with its own bootstrap CI over the same resamples); ``macro_auroc``
    keeps every class with a defined AUROC.
    """
    res = patient_resamples(patient_ids, n_boot, seed)
    per_auc = per_class_auroc(probs, targets, mask)
    boot_per, boot_micro = bootstrap_auroc(probs, targets, mask, res)
    boot_macro = replicate_macro(boot_per)
    lo, hi = percentile_ci(boot_per, ci)
    # A replicate that drew only one label value of a rare class has no AUROC for it: count them
    # (the CI of that class rests on the rest) instead of dropping them unseen.
    dropped = (~np.isfinite(boot_per)).sum(0) if boot_per.size else np.zeros(len(names), int)
    per_class = {}
    for c, n in enumerate(names):
        m = mask[:, c]
        s, y = probs[m, c], targets[m, c].astype(bool)
        op = operating_point(s, y, thresholds.get(n, 0.5))
        per_class[n] = {
            "auroc": _f(per_auc[c]), "auroc_ci_low": _f(np.atleast_1d(lo)[c]), "auroc_ci_high": _f(np.atleast_1d(hi)[c]),
            "auprc": _f(auprc(s, y)), "threshold": _f(thresholds.get(n, 0.5)),
            **{k: _f(v) for k, v in op.items()}, "positives": int(y.sum()), "negatives": int((~y).sum()),
            # counts at the validation threshold (what the sensitivity / specificity above rest on)
            "tp": int((s >= thresholds.get(n, 0.5))[y].sum()), "fn": int((s < thresholds.get(n, 0.5))[y].sum()),
            "fp": int((s >= thresholds.get(n, 0.5))[~y].sum()), "tn": int((s < thresholds.get(n, 0.5))[~y].sum()),
            "bootstrap_dropped": int(dropped[c]),
        }
    common = np.array([per_class[n]["positives"] >= min_positives and per_class[n]["auroc"] is not None
                       for n in names], bool)
    for n in names:
        per_class[n]["few_positives"] = per_class[n]["positives"] < min_positives
    boot_common = replicate_macro(boot_per[:, common]) if common.any() else np.array([np.nan])
    clo, chi = percentile_ci(boot_common, ci)
    # Classes without an AUROC (one label value only on the evaluated test entries, e.g. a "No
    # Finding" that is only ever 1) leave the macro average: say which, and why.
    not_evaluated = {n: f"{v['positives']} positive / {v['negatives']} negative test labels"
                     for n, v in per_class.items() if v["auroc"] is None}
    for n, why in not_evaluated.items():
        log.warning("%s has no test AUROC (%s); it is left out of the macro average", n, why)
    mlo, mhi = percentile_ci(boot_macro, ci)
    ulo, uhi = percentile_ci(boot_micro, ci)
    auprcs = [v["auprc"] for v in per_class.values() if v["auprc"] is not None]
    f1s = [v["f1"] for v in per_class.values() if v["f1"] is not None]
    return {
        "macro_auroc": _f(macro_auroc(probs, targets, mask)), "macro_auroc_ci_low": _f(mlo), "macro_auroc_ci_high": _f(mhi),
        "micro_auroc": _f(micro_auroc(probs, targets, mask)), "micro_auroc_ci_low": _f(ulo), "micro_auroc_ci_high": _f(uhi),
        "macro_auprc": _f(np.mean(auprcs)) if auprcs else None, "macro_f1": _f(np.mean(f1s)) if f1s else None,
        "ece": _f(expected_calibration_error(probs, targets, mask, ece_bins)),
        "reliability": reliability(probs, targets, mask, ece_bins),
        "macro_auroc_common": _f(np.nanmean(per_auc[common])) if common.any() else None,
        "macro_auroc_common_ci_low": _f(clo) if common.any() else None,
        "macro_auroc_common_ci_high": _f(chi) if common.any() else None,
        "common_classes": [n for n, ok in zip(names, common) if ok], "min_positives": int(min_positives),
        "classes_evaluated": int(np.isfinite(per_auc).sum()), "classes_not_evaluated": not_evaluated,
        "bootstrap_macro_dropped": int((~np.isfinite(boot_macro)).sum()), "test_images": int(len(probs)),
        "test_patients": int(len(set(patient_ids))), "bootstrap": n_boot, "ci": ci, "per_class": per_class,
    }


def curve_tables(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, names: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ROC (class, fpr, tpr) and PR (class, recall, precision) points of every class with both outcomes."""
    roc, pr = [], []
    for c, n in enumerate(names):
        m = mask[:, c]
        y = targets[m, c].astype(bool)
        if y.all() or not y.any():
            continue
        fpr, tpr, _ = roc_curve(probs[m, c], y)
        roc.append(pd.DataFrame({"class": n, "fpr": fpr.round(6), "tpr": tpr.round(6)}))
        prec, rec = pr_curve(probs[m, c], y)
        pr.append(pd.DataFrame({"class": n, "recall": rec.round(6), "precision": prec.round(6)}))
    empty_roc, empty_pr = pd.DataFrame(columns=["class", "fpr", "tpr"]), pd.DataFrame(columns=["class", "recall", "precision"])
    return (pd.concat(roc, ignore_index=True) if roc else empty_roc), (pd.concat(pr, ignore_index=True) if pr else empty_pr)


def region_auroc(node_probs: np.ndarray, region_targets: np.ndarray, region_mask: np.ndarray,
                 region_names: Sequence[str] | None = None) -> dict[str, float | None]:
    """AUROC per region (all findings of the region pooled) of an anatomy model's node predictions ``[N, R, F]``."""
    out = {}
    for r in range(node_probs.shape[1]):
        m = region_mask[:, r]
        name = region_names[r] if region_names is not None else str(r)
        out[name] = _f(auroc(node_probs[:, r][m], region_targets[:, r][m]))
    return out


#: The default test truth: uncertain (-1) test labels masked, not mentioned = negative.
DEFAULT_TRUTH = {"uncertain": "ignore", "blank": "zeros"}


def by_view(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, patient_ids: np.ndarray, views: np.ndarray,
            names: Sequence[str], thresholds: Mapping[str, float], n_boot: int, ci: float, seed: int,
            min_positives: int) -> dict[str, dict]:
    """Macro AUROC (all classes with an AUROC, and the common classes) with patient-bootstrap CIs per
    frontal view (AP / PA): a model whose AUROC holds only across views may be reading the view, a
    known shortcut (AP films are the sicker, portable patients)."""
    out = {}
    v = np.asarray([str(x).upper() for x in views])
    for view in ("AP", "PA"):
        keep = v == view
        if not keep.any():
            continue
        m = classification_metrics(probs[keep], targets[keep], mask[keep], patient_ids[keep], names, thresholds,
                                   n_boot, ci, 10, seed, min_positives=min_positives)
        out[view] = {k: m.get(k) for k in ("test_images", "test_patients", "macro_auroc", "macro_auroc_ci_low",
                                           "macro_auroc_ci_high", "macro_auroc_common", "macro_auroc_common_ci_low",
                                           "macro_auroc_common_ci_high", "common_classes")}
    return out


def region_box_note(card: Mapping) -> dict[str, str]:
    """Where a region model's boxes came from at test time (``features.boxes``): GT scene-graph boxes
    are an oracle a deployed model does not have, so every table that shows the model says so."""
    src = str(card.get("input", {}).get("box_source") or "unknown")
    text = {"gt": "ground-truth scene-graph boxes at test time (features.boxes: gt): an oracle, not a deployable result",
            "pred": "boxes predicted by the anatomy detector (features.boxes: pred)"}.get(src, f"box source {src!r}")
    ex = card.get("input", {}).get("extractor") or {"kind": "detector"}  # cards before features.extractor: box head
    maps = ", ".join(ex.get("maps") or ["final"])
    feats = (f"{ex.get('architecture')} feature maps ({maps}) pooled in each box (features.extractor, features.levels)"
             if ex.get("kind") == "backbone" else "the detector's box-head features (features.extractor: detector)")
    return {"source": src, "note": f"{text}; {feats}", "features": str(ex.get("architecture") or "detector")}


def evaluate_model(model_dir, *, images: pd.DataFrame, labels: pd.DataFrame, splits: pd.DataFrame, images_dir,
                   cache_dir, features_dir=None, n_boot: int = 1000, ci: float = 0.95, ece_bins: int = 10, seed: int = 0,
                   batch_size: int = 32, progress: bool = True, min_positives: int = 10,
                   truth: Mapping[str, str] | None = None) -> tuple[dict, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Evaluate a model dir on the TEST split.

    The test truth is ``truth`` (``{"uncertain": ignore|ones|zeros, "blank": zeros|ignore}``, the
    ``evaluate.truth`` params; default :data:`DEFAULT_TRUTH`), the same for every model: never the
    card's training uncertainty policy, which would make U-Ones and U-Ignore models answer to
    different test labels. Bootstrap clusters are ``dataset:patient_id`` (the split's key).

    Returns:
        ``(metrics, roc, pr, predictions)``; predictions has image_id, patient_id, patient_key and, per class,
        ``p:<name>``, ``y:<name>``, ``m:<name>`` (probability, target, mask) for paired comparisons.
    """
    model, card = load_model_dir(model_dir)
    name, names = card["architecture"], card["label_names"]
    truth = {**DEFAULT_TRUTH, **dict(truth or {})}
    unc = {"default": truth["uncertain"], "blank": truth["blank"]}
    ds = card_datasets(card, images=images, labels=labels, splits=splits, images_dir=images_dir, which=("test",),
                       uncertainty=unc, cache_dir=cache_dir, features_dir=features_dir, progress=progress)["test"]
    probs = predict(model, ds, batch_size=batch_size, norm=card["input"].get("normalisation"))
    pids = ds.meta["patient_key"].astype(str).to_numpy()
    metrics = classification_metrics(probs, ds.targets, ds.mask, pids, names, card["thresholds"], n_boot, ci, ece_bins, seed,
                                     min_positives=min_positives)
    metrics["model"] = name
    metrics["truth"] = truth
    metrics["by_view"] = by_view(probs, ds.targets, ds.mask, pids, ds.meta["view"].to_numpy(), names, card["thresholds"],
                                 n_boot, ci, seed, min_positives)
    if input_kind(name) == "region_features":
        metrics["region_boxes"] = region_box_note(card)
        nodes, rt, rm = [], [], []
        with torch.inference_mode():
            for batch in torch.utils.data.DataLoader(ds, batch_size=batch_size):
                _, node = model.forward_all(**{k: batch[k] for k in model.input_keys})
                nodes.append(torch.sigmoid(node.float()).numpy())
                rt.append(batch["region_targets"].numpy())
                rm.append((batch["region_mask"] & batch["presence"].unsqueeze(-1)).numpy())
        metrics["region_auroc"] = region_auroc(np.concatenate(nodes), np.concatenate(rt), np.concatenate(rm),
                                               ds.feats.region_names)
    roc, pr = curve_tables(probs, ds.targets, ds.mask, names)
    pred = pd.DataFrame({"image_id": ds.meta["image_id"].to_numpy(),
                         "patient_id": ds.meta["patient_id"].astype(str).to_numpy(), "patient_key": pids})
    for c, n in enumerate(names):
        pred[f"p:{n}"] = probs[:, c]
        pred[f"y:{n}"] = ds.targets[:, c]
        pred[f"m:{n}"] = ds.mask[:, c]
    log.info("%s: test macro AUROC %s [%s, %s] on %d images / %d patients", name, metrics["macro_auroc"],
             metrics["macro_auroc_ci_low"], metrics["macro_auroc_ci_high"], metrics["test_images"], metrics["test_patients"])
    return metrics, roc, pr, pred
