"""Classifier diagnostics beyond one AUROC: what readers of such reports look for.

* precision-recall curves per class (``pr.csv`` of evaluate@M), with the class's test prevalence
  as the chance level;
* a reliability diagram per model (``metrics.json["reliability"]``: the bins behind its ECE);
* TP / FP / FN / TN per class at the validation threshold;
* the most confident mistakes: per model, the test images with the highest score for a class they
  do not have (false positives) and the lowest score for a class they have (false negatives), from
  ``predictions.parquet`` at the model's validation thresholds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr import shards
from cxr.report.blocks import Gallery, Section, Svg, Text, fmt, table
from cxr.report.charts import PALETTE, curve_svg, roc_legend, thumbnail
from cxr.report.dag import Dag
from cxr.report.inputs import ReportInputs, read_csv, read_parquet
from cxr.report.sections import absent_note, matrix_outputs

#: mistakes shown per model and kind (false positives, false negatives)
MISTAKES = 3


def _pr_panels(evals: dict[str, tuple[dict, Any]], prs: dict[str, pd.DataFrame], colors: dict[str, str]) -> str:
    order: list[str] = []
    for pr in prs.values():
        order += [c for c in pr["class"].astype(str).unique() if c not in order]
    panels = []
    for c in order:
        curves, labels, level = {}, {}, None
        for m, pr in prs.items():
            sub = pr[pr["class"].astype(str) == c]
            if not len(sub):
                continue
            curves[m] = (sub["recall"].to_numpy(np.float64), sub["precision"].to_numpy(np.float64))
            v = evals[m][0].get("per_class", {}).get(c, {})
            labels[m] = fmt(v.get("auprc"), 2)
            pos, neg = v.get("positives"), v.get("negatives")
            if level is None and pos is not None and neg and pos + neg:
                level = pos / (pos + neg)
        panels.append(curve_svg(c, curves, colors, labels, "recall", "precision", level=level, attr="data-pr"))
    return "".join(panels)


def _reliability_panels(evals: dict[str, tuple[dict, Any]], colors: dict[str, str]) -> str:
    panels = []
    for m, (met, _) in evals.items():
        bins = [b for b in met.get("reliability") or [] if b.get("n") and b.get("confidence") is not None]
        if not bins:
            continue
        x = np.array([b["confidence"] for b in bins], np.float64)
        y = np.array([b["observed"] for b in bins], np.float64)
        panels.append(curve_svg(m, {m: (x, y)}, colors, {m: f"ECE {fmt(met.get('ece'), 3)}"}, "mean predicted probability",
                                "observed positive rate", diagonal=True, attr="data-reliability"))
    return "".join(panels)


def _mistakes(pred: pd.DataFrame, met: dict, png_paths: pd.Series, image_dir: Path | None, n: int, size: int, stage: str):
    """The ``n`` most confident false positives and false negatives of one model (gallery rows)."""
    names = [c[2:] for c in pred.columns if c.startswith("p:")]
    fp, fn = [], []
    for c in names:
        thr = (met.get("per_class", {}).get(c) or {}).get("threshold")
        if thr is None:
            continue
        m = pred[f"m:{c}"].astype(bool).to_numpy()
        p, y = pred[f"p:{c}"].to_numpy(np.float64), pred[f"y:{c}"].to_numpy(np.float64)
        for k in np.flatnonzero(m & (y == 0) & (p >= thr)):
            fp.append((p[k], pred["image_id"].iat[k], c, thr))
        for k in np.flatnonzero(m & (y == 1) & (p < thr)):
            fn.append((p[k], pred["image_id"].iat[k], c, thr))
    fp.sort(key=lambda t: (-t[0], t[1], t[2]))
    fn.sort(key=lambda t: (t[0], t[1], t[2]))
    rows = []
    for kind, items in (("false positive", fp[:n]), ("false negative", fn[:n])):
        row = []
        for p, i, c, thr in items:
            png = None
            if image_dir is not None and i in png_paths.index:
                path = Path(image_dir) / str(png_paths.at[i])
                png = thumbnail(path, size) if shards.exists(path) else None  # a file or a shard member
            row.append((f"{kind}: {c} p={p:.2f} (threshold {thr:.2f})", png, str(i)))
        if row:
            rows.append(tuple(row))
    return rows, len(fp), len(fn)


def diagnostics_section(dag: Dag, inputs: ReportInputs, evals: dict[str, tuple[dict, Any]],
                        image_dir: Path | None = None, thumb_size: int = 96) -> Section:
    """PR curves, reliability diagrams, counts at the threshold and the most confident mistakes (module docstring)."""
    title = "Classifier diagnostics: precision-recall, calibration, mistakes"
    if absent := absent_note(dag, inputs.evaluation, "classifier evaluation"):
        return Section("diagnostics", title, absent=absent)
    models = list(evals)
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}
    dirs = {m: d for _, m, d in matrix_outputs(dag, inputs.evaluation)}
    prs = {m: read_csv(dirs[m] / "pr.csv", dag, ("class", "recall", "precision")) for m in models if m in dirs}
    blocks: list = [Svg("pr", "Test-split precision-recall per class (numbers: AUPRC per model); dashed: the class's "
                              "test prevalence, what a random score reaches",
                        f'<div>{roc_legend(models, colors)}</div><div class="roc-grid">{_pr_panels(evals, prs, colors)}</div>',
                        "PR curves are drawn in index.html; per-class AUPRC is in metrics.json of each evaluate@M.")]
    rel = _reliability_panels(evals, colors)
    if rel:
        blocks.append(Svg("reliability", "Reliability diagrams (all classes pooled, equal-width bins): observed positive "
                                         "rate against mean predicted probability; dashed: perfect calibration",
                          f'<div class="roc-grid">{rel}</div>', "Reliability bins are in metrics.json (reliability)."))
    classes = sorted({c for met, _ in evals.values() for c in met["per_class"]})
    blocks.append(table("confusion_counts", "TP / FP / FN / TN per class at the validation threshold (test split)",
                        ("class", *models),
                        [(c, *[" / ".join(fmt(evals[m][0]["per_class"].get(c, {}).get(k)) for k in ("tp", "fp", "fn", "tn"))
                               for m in models]) for c in classes]))
    png_paths = pd.Series(dtype=str)
    if not absent_note(dag, inputs.images, "converted image table"):
        t = read_parquet(inputs.images, dag, ("image_id", "png_path"))
        png_paths = t.drop_duplicates("image_id").set_index("image_id")["png_path"]
    for m in models:
        path = dirs.get(m, Path()) / "predictions.parquet"
        if m not in dirs or not path.is_file():
            continue
        pred = pd.read_parquet(path)
        rows, n_fp, n_fn = _mistakes(pred, evals[m][0], png_paths, image_dir, MISTAKES, thumb_size, f"evaluate@{m}")
        if rows:
            blocks.append(Gallery(f"mistakes_{m}", f"{m}: the most confident mistakes at the validation thresholds "
                                                   f"({n_fp} false positive and {n_fn} false negative (image, class) "
                                                   "pairs in all)", tuple(rows)))
        else:
            blocks.append(Text(f"{m}: no false positive or false negative at the validation thresholds."))
    return Section("diagnostics", title, tuple(blocks))
