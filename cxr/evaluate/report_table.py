"""reports/models.md: one table comparing every trained model on the same test patients.

Each row: macro AUROC with its patient-bootstrap CI, micro AUROC, macro AUPRC, macro F1 at the
validation thresholds, ECE, and the paired patient-bootstrap p-value of the macro AUROC
difference against the reference model (densenet121 by default). Models are compared on the
test images they share (region models only see images with region features), with the same
bootstrap replicates for both models of a pair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cxr.evaluate.bootstrap import bootstrap_auroc, paired_p_value, patient_resamples, replicate_macro
from cxr.evaluate.metrics import macro_auroc


def _arrays(pred: pd.DataFrame, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (pred[[f"p:{n}" for n in names]].to_numpy(float), pred[[f"y:{n}" for n in names]].to_numpy(float),
            pred[[f"m:{n}" for n in names]].to_numpy(bool))


# the baselines the baselines stage fits (cxr.evaluate.baselines) and the table prints beside the models; defined
# here, torch-free, so that the models_table stage starts without torch
BASELINES = ("prevalence", "pixels16", "metadata")


def paired_comparison(a: pd.DataFrame, b: pd.DataFrame, names: Sequence[str], n_boot: int, seed: int = 0) -> dict:
    """Macro-AUROC difference a - b on shared test images, with a paired patient-bootstrap p-value.

    Both models are scored against one truth. Their stored targets and masks must agree on every
    shared image (evaluate writes them from ``evaluate.truth``, never from a model's training
    policy); predictions scored against different truths are refused, not silently compared.

    Raises:
        ValueError: the two prediction tables hold different test truths.
    """
    shared = a[["image_id"]].merge(b[["image_id"]], on="image_id")
    a = a.set_index("image_id").loc[shared["image_id"]].reset_index()
    b = b.set_index("image_id").loc[shared["image_id"]].reset_index()
    pa, ya, ma = _arrays(a, names)
    pb, yb, mb = _arrays(b, names)
    differ = [n for c, n in enumerate(names) if (ma[:, c] != mb[:, c]).any() or (ya[ma[:, c], c] != yb[ma[:, c], c]).any()]
    if differ:
        raise ValueError(f"the two models were evaluated against different test truths for {differ}; "
                         "re-run evaluate for both with the same evaluate.truth")
    m = ma
    key = "patient_key" if "patient_key" in a.columns else "patient_id"
    res = patient_resamples(a[key].astype(str).to_numpy(), n_boot, seed)
    diffs = _replicate_macro(pa, ya, m, res) - _replicate_macro(pb, ya, m, res)
    return {"shared_images": int(len(shared)), "difference": float(macro_auroc(pa, ya, m) - macro_auroc(pb, ya, m)),
            "p_value": paired_p_value(diffs)}


def _replicate_macro(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, res: list[np.ndarray]) -> np.ndarray:
    """``macro_auroc(probs[r], targets[r], mask[r])`` for every replicate ``r`` ``[B]``, by the weighted bootstrap."""
    return replicate_macro(bootstrap_auroc(probs, targets, mask, res)[0])


def _fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


_KEYS = ("macro_auroc", "macro_auroc_ci_low", "macro_auroc_ci_high", "macro_auroc_common", "macro_auroc_common_ci_low",
         "macro_auroc_common_ci_high", "common_classes", "micro_auroc", "macro_auprc", "macro_f1", "ece", "test_images",
         "test_patients", "by_view", "region_boxes")


def _view_auroc(met: Mapping, view: str) -> str:
    v = (met.get("by_view") or {}).get(view)
    if not v:
        return "n/a"
    return (f"{_fmt(v.get('macro_auroc'))} [{_fmt(v.get('macro_auroc_ci_low'))}, {_fmt(v.get('macro_auroc_ci_high'))}] "
            f"(n={v.get('test_images')})")


def _row(name: str, met: Mapping, p: str) -> str:
    if (met.get("region_boxes") or {}).get("source") == "gt":
        name = f"{name} (GT boxes at test)"
    return (f"| {name} | {_fmt(met.get('macro_auroc'))} [{_fmt(met.get('macro_auroc_ci_low'))}, "
            f"{_fmt(met.get('macro_auroc_ci_high'))}] | {_fmt(met.get('macro_auroc_common'))} "
            f"[{_fmt(met.get('macro_auroc_common_ci_low'))}, {_fmt(met.get('macro_auroc_common_ci_high'))}] | "
            f"{_fmt(met.get('micro_auroc'))} | {_fmt(met.get('macro_auprc'))} | "
            f"{_fmt(met.get('macro_f1'))} | {_fmt(met.get('ece'))} | {met.get('test_images')} / {met.get('test_patients')} | {_view_auroc(met, 'AP')} | {_view_auroc(met, 'PA')} | {p} |")


def models_table(metrics: Mapping[str, dict], predictions: Mapping[str, pd.DataFrame], names: Sequence[str],
                 reference: str = "densenet121", n_boot: int = 1000, seed: int = 0,
                 baselines: Mapping[str, dict] | None = None) -> tuple[str, dict]:
    """Markdown comparison table + its data (for ``reports/models.json``); ``baselines`` (the
    ``baselines`` stage's metrics, same test split) are rows of their own below the models."""
    rows, data = [], {}
    for m in metrics:
        met = metrics[m]
        cmp = None
        if m != reference and reference in predictions:
            cmp = paired_comparison(predictions[m], predictions[reference], names, n_boot, seed)
        data[m] = {k: met.get(k) for k in _KEYS}
        data[m]["vs_reference"] = cmp
        p = "reference" if m == reference else ("n/a" if cmp is None else f"{cmp['p_value']:.3f} ({cmp['difference']:+.3f}, n={cmp['shared_images']})")
        rows.append(_row(m, met, p))
    for b, met in (baselines or {}).items():
        data[f"baseline:{b}"] = {k: met.get(k) for k in _KEYS}
        data[f"baseline:{b}"]["per_class_auroc"] = {c: v.get("auroc") for c, v in met.get("per_class", {}).items()}
        rows.append(_row(f"baseline: {b}", met, "-"))
    common = next((met.get("common_classes") for met in metrics.values() if met.get("common_classes") is not None), None)
    min_pos = next((met.get("min_positives") for met in metrics.values() if met.get("min_positives")), 10)
    head = [
        "# Classifier comparison (test split)",
        "",
        f"Macro AUROC with 95% CI by bootstrap over patients ({n_boot} replicates); F1 at thresholds chosen on the "
        f"validation split; p: paired patient-bootstrap test of the macro AUROC difference against {reference} "
        "on the test images both models saw. Classes with at least "
        f"{min_pos} test positives: {', '.join(common) if common else 'none'} (the other classes' AUROCs rest on too "
        "few cases to read). Baselines (stage `baselines`, same split and truth): prevalence = every image scored with "
        "the train prevalence; pixels16 = logistic regression on 16 x 16 downsampled pixels; metadata = logistic "
        "regression on view, sex and age. AP / PA columns: the same macro AUROC within one view only; a model "
        "that beats the metadata baseline overall but not within a view may be reading the view.",
        "",
        f"| model | macro AUROC [95% CI] | macro AUROC, classes with >= {min_pos} test positives [95% CI] | micro AUROC | "
        "macro AUPRC | macro F1 | ECE | test images / patients | macro AUROC, AP views [95% CI] | "
        "macro AUROC, PA views [95% CI] | p vs reference (diff, n) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    # A class with one label value only on the test truth has no AUROC and leaves the macro
    # average: say which, per model, instead of averaging over fewer classes unseen.
    notes = []
    for m in metrics:
        left = metrics[m].get("classes_not_evaluated") or {}
        data[m]["classes_not_evaluated"] = dict(left)
        if left:
            notes.append(f"- {m}: macro AUROC over {metrics[m].get('classes_evaluated')} classes; left out (one label "
                         "value only on the test truth): " + "; ".join(f"{k} ({v})" for k, v in left.items()))
    for m in metrics:
        rb = metrics[m].get("region_boxes") or {}
        if rb:  # every region model: where its boxes came from and what described them
            notes.append(f"- {m}: {rb.get('note')}")
    tail = ["", *notes] if notes else []
    return "\n".join(head + rows + tail) + "\n", data


def retrieval_table(results: Mapping[str, dict]) -> str:
    """Markdown table comparing the ``retrieval.json`` of every searched model (``retrieve@M``).

    Class averages, no-skip, at every k of the runs (AP@k) and, at k = 5 (else the middle k),
    precision@k, hit@k and RR@k; plus the query-weighted, the skip and the chance-level AP@k and the number of
    (query, class) pairs without any relevant item in their top k. Definitions: ``cxr.retrieve.metrics``.
    """
    if not results:
        return ""
    first = next(iter(results.values()))
    ks = [int(k) for k in first["k"]]
    km = 5 if 5 in ks else ks[len(ks) // 2]
    db = first["database"]
    rows = []
    for m, r in results.items():
        met = r["metrics"]
        avg = {k: (met[str(k)]["no_skip"]["class_average"] or {}) for k in ks}
        main = met[str(km)]
        qw = main["no_skip"]["query_weighted"] or {}
        sk = main["skip"]["class_average"] or {}
        ch = ((r.get("chance") or {}).get(str(km)) or {}).get("class_average") or {}
        md = ((r.get("metadata") or {}).get(str(km)) or {}).get("class_average") or {}
        emb = r["embedding"]
        code = f"{emb['dim']} bits, Hamming" if emb["binary"] else f"{emb['dim']}-d float, inner product"
        rows.append(f"| {m} | {code}, {r['index']['kind']} | " + " | ".join(_fmt(avg[k].get("ap")) for k in ks)
                    + f" | {_fmt(avg[km].get('precision'))} | {_fmt(avg[km].get('hit'))} | {_fmt(avg[km].get('rr'))} | "
                    f"{_fmt(qw.get('ap'))} | {_fmt(sk.get('ap'))} | {_fmt(ch.get('ap'))} | {_fmt(md.get('ap'))} | "
                    f"{main['no_relevant_in_top_k']} / "
                    f"{main['no_skip']['query_class_pairs']} | {r['queries']['images']} / {r['database']['images']} |")
    head = [
        "",
        f"# Retrieval comparison (test queries; database: {' + '.join(db['splits'])}; each query's own patient excluded)",
        "",
        "Per class c, the queries are the test images positive for c and a result is relevant if it is positive for c "
        "(CheXtriev). AP@k: mean precision at the ranks of the relevant results; precision@k: relevant / k (CheXtriev's "
        "\"HR\"); hit@k: any relevant in the top k; RR@k: reciprocal rank of the first relevant. Class averages, every "
        f"query counted (no-skip), unless marked: query-weighted averages over (query, class) pairs; skip leaves out the "
        f"queries with no relevant result in the top {km}; chance: a random ranking of the same database; metadata: "
        "a ranking by view and sex only (same view and sex first, random within).",
        "",
        "| model | code, index | " + " | ".join(f"AP@{k}" for k in ks)
        + f" | precision@{km} | hit@{km} | RR@{km} | AP@{km} query-weighted | AP@{km} skip | AP@{km} chance | AP@{km} metadata | no relevant in top {km} "
          "(query-class pairs) | queries / database |",
        "|---|---|" + "---|" * len(ks) + "---|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(head + rows) + "\n"
