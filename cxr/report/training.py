"""Training curves of every trained model, from the DVCLive logs the training stages declare as plots.

* classifiers and hashing models (train@M, train_hash@M): ``loss/training`` and ``loss/validation`` per
  epoch, and the validation macro AUROC per epoch with the best epoch marked (the epoch whose weights
  the model dir keeps: the first epoch with the highest value, as ``cxr.train.BestState`` picks it);
* the region detector and the organ UNet: their per-step training losses (and the UNet's soft Dice).

A DVCLive table is ``<log>/plots/metrics/<name>.tsv`` with the columns ``step`` and the metric's last
name component (``epoch.tsv`` maps steps to epochs). A log that is missing or unreadable is shown as
absent with the reason; it never stops the report (a run without logs still has results to read).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.report.blocks import Section, Svg, Text, fmt, table
from cxr.report.charts import PALETTE, line_svg
from cxr.report.dag import Dag, norm
from cxr.report.inputs import ReportInputs
from cxr.report.sections import absent_note

#: the classifier metric that selects the kept epoch (cxr.train logs it once per validation epoch)
MONITOR = "val/macro_auroc"
Curves = dict[str, tuple[np.ndarray, np.ndarray]]


def read_live(folder: Path) -> tuple[Curves, list[str]]:
    """``{metric: (step, value)}`` from every DVCLive ``.tsv`` under ``folder``, and the problems found
    (a missing folder, no table, an unreadable table); an unreadable table is left out, the rest kept."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}, [f"no DVCLive log at {norm(str(folder))}"]
    out: Curves = {}
    problems = []
    for f in sorted(folder.rglob("*.tsv")):
        name = f.relative_to(folder).with_suffix("").as_posix()
        try:
            df = pd.read_csv(f, sep="\t")
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            problems.append(f"{norm(str(f))}: not a readable table ({type(exc).__name__}: {exc})")
            continue
        if "step" not in df.columns or f.stem not in df.columns:
            problems.append(f"{norm(str(f))}: expected the columns step and {f.stem}, has {list(df.columns)}")
            continue
        step = pd.to_numeric(df["step"], errors="coerce").to_numpy(np.float64)
        value = pd.to_numeric(df[f.stem], errors="coerce").to_numpy(np.float64)
        keep = np.isfinite(step)
        out[name] = (step[keep], value[keep])
    if not out and not problems:
        problems.append(f"{norm(str(folder))}: no DVCLive table (.tsv) in it")
    return out, problems


def _by_epoch(curves: Curves, per_epoch: bool) -> tuple[Curves, str]:
    """Curves on the epoch axis for a log written once per epoch (``per_epoch``) when ``epoch.tsv`` maps
    every step of them, else on the step axis."""
    series = {k: v for k, v in curves.items() if k != "epoch"}
    if not per_epoch or "epoch" not in curves:
        return series, "step"
    steps, epochs = curves["epoch"]
    to_epoch = dict(zip(steps.tolist(), epochs.tolist()))
    if not all(s in to_epoch for x, _ in series.values() for s in x.tolist()):
        return series, "step"
    return {k: (np.array([to_epoch[s] for s in x.tolist()], np.float64), y) for k, (x, y) in series.items()}, "epoch"


def best_epoch(curves: Curves) -> tuple[float, float] | None:
    """``(x, value)`` of the first highest finite value of the monitored metric, or None without one."""
    if MONITOR not in curves:
        return None
    x, y = curves[MONITOR]
    finite = np.flatnonzero(np.isfinite(y))
    if not len(finite):
        return None
    k = finite[int(np.argmax(y[finite]))]  # argmax: the first of equal maxima, as BestState keeps it
    return float(x[k]), float(y[k])


def _at(curves: Curves, key: str, x: float | None, last: bool = False) -> float | None:
    if key not in curves or not len(curves[key][0]):
        return None
    xs, ys = curves[key]
    if last:
        return float(ys[-1])
    hit = np.flatnonzero(xs == x)
    return float(ys[hit[0]]) if len(hit) else None


def _panels(name: str, curves: Curves, axis: str, best: tuple[float, float] | None) -> str:
    losses = {k: v for k, v in curves.items() if any("loss" in part for part in k.split("/"))}
    others = {k: v for k, v in curves.items() if k not in losses}
    mark, label = (best[0], f"best {axis} {best[0]:g}") if best else (None, "")
    panels = []
    if losses:
        colors = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(losses)}
        panels.append(line_svg(f"{name}: loss", losses, colors, axis, "loss", mark=mark, mark_label=label))
    for i, (k, v) in enumerate(others.items()):
        panels.append(line_svg(f"{name}: {k}", {k: v}, {k: PALETTE[(len(losses) + i) % len(PALETTE)]}, axis, k,
                               mark=mark, mark_label=label))
    return "".join(panels)


def _logs(dag: Dag, inputs: ReportInputs) -> list[tuple[str, str, Path | None, bool]]:
    """``(model, stage, DVCLive plots dir or None if no stage declares it, logged per epoch)`` of every
    trained model the report knows of (classifiers log per epoch, the detector and the UNet per step)."""
    out = []
    training = inputs.training
    if training is not None and not absent_note(dag, training, ""):
        seen = set()
        for stage, o in dag.outputs_under(norm(str(training))):
            m = o[len(norm(str(training))) + 1:].split("/", 1)[0]
            if m not in seen:
                seen.add(m)
                out.append((m, stage.name, Path(training) / m / "plots" / "metrics", True))
    for model, path in (("detector", inputs.detector_live), ("unet", inputs.unet_live)):
        if path is None:
            continue
        producers = dag.producers(norm(str(path)))
        if producers:
            out.append((model, producers[0][0].name, Path(path), False))
        else:
            out.append((model, "-", None, False))
    return out


def training_section(dag: Dag, inputs: ReportInputs) -> Section:
    """Per trained model: its DVCLive curves (module docstring) and one summary row."""
    title = "Training curves (DVCLive)"
    logs = _logs(dag, inputs)
    if not logs:
        what = norm(str(inputs.training)) if inputs.training is not None else "a training log folder"
        return Section("training", title, absent=f"Not in this pipeline: no stage of dvc.yaml declares DVCLive logs "
                                                 f"under {what}, so there are no training curves to show.")
    rows, panels, notes = [], [], []
    for model, stage, path, per_epoch in logs:
        if path is None:
            where = inputs.detector_live if model == "detector" else inputs.unet_live
            notes.append(Text(f"{model}: no training curves: no stage of dvc.yaml declares {norm(str(where))}."))
            continue
        curves, problems = read_live(path)
        notes += [Text(f"{model} ({stage}): {p}") for p in problems if curves]
        if not curves:
            hint = f"run `dvc repro {stage}` (or `dvc pull`)" if "no DVCLive log" in problems[0] else "the log is damaged"
            notes.append(Text(f"{model} ({stage}): no training curves: {'; '.join(problems)}; {hint}."))
            rows.append((model, stage, "absent", "n/a", "n/a", "n/a", "n/a"))
            continue
        series, axis = _by_epoch(curves, per_epoch)
        best = best_epoch(series)
        # (train/loss, val/loss: the names of logs written before the DVCLive metrics were renamed)
        loss_key = next((k for k in ("loss/training", "train/loss") if k in series), None)
        val_key = next((k for k in ("loss/validation", "val/loss") if k in series), "loss/validation")
        first = fmt(float(series[loss_key][1][0])) if loss_key and len(series[loss_key][1]) else "n/a"
        last = fmt(_at(series, loss_key, None, last=True)) if loss_key else "n/a"
        points = max(len(x) for x, _ in series.values()) if series else 0
        rows.append((model, stage, f"{points} {axis}{'s' if points != 1 else ''}",
                     f"{best[0]:g}" if best else "n/a (no validation curve)",
                     f"{best[1]:.3f} (chance 0.500)" if best else "n/a",
                     f"{first} -> {last}", fmt(_at(series, val_key, best[0])) if best else "n/a"))
        panels.append(f'<div class="roc-grid" data-training-model="{html.escape(model, quote=True)}">{_panels(model, series, axis, best)}</div>')
    blocks: list = [table("training", "Training per model: logged points, the kept (best) epoch and its validation "
                                      "macro AUROC beside chance, training loss from the first to the last point, "
                                      "validation loss at the kept epoch",
                          ("model", "stage", "logged", "best epoch", "val macro AUROC at best", "training loss",
                           "val loss at best"), rows)]
    if panels:
        blocks.append(Svg("training_curves", "DVCLive curves per model (dashed: the kept epoch; the detector and the "
                                             "UNet log per optimiser step and keep their last weights)",
                          "".join(panels), "Training curves are drawn in index.html; the DVCLive tables are under each "
                                           "training stage's plots folder (`dvc plots show`)."))
    blocks += notes
    return Section("training", title, tuple(blocks))
