"""The headline numbers of a run: the one small file declared as DVC ``metrics:`` (reports/metrics.json).

``dvc metrics show``, ``dvc metrics diff`` and ``dvc exp show`` print every number of every file
declared as metrics. The stage outputs hold thousands (per class, per region, per threshold, label
counts, text such as ``architecture``), which buries the few a reader compares across experiments.
This module picks those few from the detail files, which stay ordinary outputs:

- per classifier of ``train.models``: macro AUROC with its patient-bootstrap CI, macro AUPRC,
  macro F1, ECE (evaluate@M); localisation accuracy at T(IoU) = T(IoBB) = ``localize.select_iou``
  (localize@M, macro over classes, TEST; heatmap boxes, or the top region's box for the region models); retrieval AP@k (retrieve@M, class average, k = 5 when
  ``retrieve.k`` has it, else its middle value);
- per hashing model of ``retrieve.hashing``: retrieval AP@k;
- detector AP50 and UNet mean Dice on TEST; the report labeller's macro F1 against the synthetic
  cohort's truth (absent on real data, which has no such truth).

A stage that did not apply (a not-applicable marker), had no TEST image to score, or a model its method
does not support contributes nothing: a missing key, never an invented number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cxr.applicability import reason_of


class HeadlineError(ValueError):
    """A detail file lacks a number the headline needs (names the file and the key)."""


def _get(obj: Mapping[str, Any], keys: Sequence[str], source: str) -> Any:
    cur: Any = obj
    for k in keys:
        if not isinstance(cur, Mapping) or k not in cur:
            raise HeadlineError(f"{source}: no {'.'.join(keys)!r} (stopped at {k!r}); rerun the stage that writes it")
        cur = cur[k]
    return cur


def _num(v: Any) -> float | None:
    return None if v is None else round(float(v), 4)


def classifier(metrics: Mapping[str, Any], source: str = "metrics.json") -> dict[str, float | None]:
    """Macro AUROC (+ CI), AUPRC, F1 and ECE of an evaluate@M metrics.json."""
    keys = ("macro_auroc", "macro_auroc_ci_low", "macro_auroc_ci_high", "macro_auprc", "macro_f1", "ece")
    return {k: _num(_get(metrics, (k,), source)) for k in keys}


def localization(result: Mapping[str, Any], at: float, source: str = "localization.json") -> dict[str, float | None]:
    """TEST macro accuracy at T(IoU) = T(IoBB) = ``at``; {} when the model cannot localise.

    Heatmap models: boxes from the thresholded heatmaps (``test.macro``). Region models (AnaXNet,
    graph transformer): the box of the top-scoring region ("pointing", ``pointing.scores.macro``).
    """
    if reason_of(dict(result)) or not result.get("supported", True):
        return {}
    where = ("pointing", "scores", "macro") if result.get("kind") == "region" else ("test", "macro")
    thr = _get(result, (*where, "iou"), source)
    key = next((t for t in thr if abs(float(t) - at) < 1e-9), None)
    if key is None:
        raise HeadlineError(f"{source}: no accuracy at threshold {at} (has {sorted(thr)}); "
                            "localize.select_iou must be one of localize.thresholds")
    return {f"iou@{key}": _num(thr[key]), f"iobb@{key}": _num(_get(result, (*where, "iobb", key), source))}


def retrieval_k(ks: Sequence[int]) -> int:
    """The cut-off of the headline AP@k: 5 (the CheXtriev headline) when listed, else the middle one
    (as reports/models.md, cxr.evaluate.report_table.retrieval_table)."""
    ks = sorted(int(k) for k in ks)
    return 5 if 5 in ks else ks[len(ks) // 2]


def retrieval(result: Mapping[str, Any], k: int, source: str = "retrieval.json") -> dict[str, float | None]:
    """Class-average (no-skip) AP@k of a retrieve@M ``retrieval.json`` (the full tree of its retrieval dir)."""
    if reason_of(dict(result)):
        return {}
    avg = _get(result, ("metrics", str(k), "no_skip", "class_average"), source) or {}
    return {f"ap@{k}": _num(avg.get("ap"))}


def _no_test(metrics: Mapping[str, Any]) -> bool:
    # not applicable, or no TEST image to score (a tiny cohort's split can leave none with masks)
    test = metrics.get("test")
    return bool(reason_of(dict(metrics))) or (isinstance(test, Mapping) and test.get("images") == 0)


def detector(metrics: Mapping[str, Any], source: str = "detector/metrics.json") -> dict[str, float | None]:
    if _no_test(metrics):
        return {}
    return {"ap50": _num(_get(metrics, ("test", "AP50"), source))}


def unet(metrics: Mapping[str, Any], source: str = "unet/metrics.json") -> dict[str, float | None]:
    if _no_test(metrics):
        return {}
    return {"dice": _num(_get(metrics, ("test", "mean_dice"), source))}


def labeller(label: Mapping[str, Any]) -> dict[str, float | None]:
    truth = (label.get("labeller") or {}).get("synthetic_truth") or {}
    return {"macro_f1": _num(truth["macro_f1"])} if truth.get("macro_f1") is not None else {}


def build(*, models: Mapping[str, Mapping[str, Any]], hashing: Mapping[str, Mapping[str, Any]],
          detector_metrics: Mapping[str, Any], unet_metrics: Mapping[str, Any], label: Mapping[str, Any],
          select_iou: float, ks: Sequence[int]) -> dict[str, Any]:
    """The headline mapping.

    Args:
        models: classifier -> {"evaluate": metrics.json, "localize": localization.json, "retrieve": retrieval.json}.
        hashing: hashing model -> {"retrieve": retrieval.json}.
        detector_metrics, unet_metrics, label: the detector, UNet and label stage metrics.
        select_iou: localisation threshold reported (``localize.select_iou``).
        ks: ``retrieve.k``.

    Returns:
        ``{"models": {M: {...}}, "detector": {...}, "unet": {...}, "labeller": {...}}`` (empty parts dropped).
    """
    k = retrieval_k(ks)
    out: dict[str, Any] = {"models": {}}
    for m, parts in models.items():
        row = classifier(parts["evaluate"], f"evaluation/{m}/metrics.json")
        row.update(localization(parts["localize"], select_iou, f"localization/{m}/localization.json"))
        row.update(retrieval(parts["retrieve"], k, f"retrieval/{m}/retrieval.json"))
        out["models"][m] = row
    for m, parts in hashing.items():
        out["models"][m] = retrieval(parts["retrieve"], k, f"retrieval/{m}/retrieval.json")
    for name, part in (("detector", detector(detector_metrics)), ("unet", unet(unet_metrics)),
                       ("labeller", labeller(label))):
        if part:
            out[name] = part
    return out
