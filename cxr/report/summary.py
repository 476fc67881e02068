"""The report's first section: what a reader needs before any table.

Data source and size, the params that differ from the project defaults (what this experiment
changed), the best model per task with its uncertainty beside the baseline measured in the same
run, what was not applicable and why, and warnings (classes with too few test positives). Every
figure comes from the same stage outputs the later sections show in full.
"""

from __future__ import annotations

from typing import Any

from cxr.applicability import reason_of
from cxr.params import SECTIONS, parse_section
from cxr.report.blocks import Section, Text, fmt, table
from cxr.report.dag import Dag, flatten
from cxr.report.errors import ReportError
from cxr.report.inputs import ReportInputs, get, read_json, read_parquet
from cxr.report.sections import _ci, absent_note, matrix_outputs


def changed_params(params: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(key, value, default)`` of every leaf of the validated params that differs from the schema default."""
    out = []
    for name, values in params.items():
        if name not in SECTIONS:
            continue
        default = flatten(parse_section(name, None, source="defaults").model_dump(mode="json"))
        for k, v in flatten(values).items():
            if k in default and default[k] != v:
                out.append((f"{name}.{k}", fmt(v), fmt(default[k])))
    return out


def _classification(evals: dict[str, tuple[dict, Any]], models: dict | None, path) -> tuple[list, list[str]]:
    rows, warn = [], []
    if not evals:
        return rows, warn
    for m, r in (models or {}).items():  # the same checks as the classifier section, before any number is read
        if not isinstance(r, dict):
            raise ReportError(f"{path}: entry {m!r} should be an object, got {type(r).__name__}")
        get(r, "macro_auroc", path, (int, float), None)
    # models.json (models_table) holds the comparison numbers; evaluate's metrics.json is the fallback
    row = {m: {**evals[m][0], **((models or {}).get(m) or {})} for m in evals}
    best = max(row, key=lambda m: row[m].get("macro_auroc") or -1)
    met = row[best]
    base = {m.removeprefix("baseline:"): r for m, r in (models or {}).items() if m.startswith("baseline:")}
    strongest = max((b for b in base if b != "prevalence"), key=lambda b: base[b].get("macro_auroc") or -1, default=None)
    versus = (f"{strongest}: {_ci(base[strongest].get('macro_auroc'), base[strongest].get('macro_auroc_ci_low'), base[strongest].get('macro_auroc_ci_high'))}"
              if strongest else "no baseline stage in this pipeline")
    if "prevalence" in base:
        versus += f"; prevalence: {fmt(base['prevalence'].get('macro_auroc'))}"
    note = f"{met.get('test_images')} test images / {met.get('test_patients')} patients"
    if (met.get("region_boxes") or {}).get("source") == "gt":
        note += "; GT boxes at test time (oracle)"
    rows.append(("classification: macro AUROC [95% CI]", best,
                 _ci(met.get("macro_auroc"), met.get("macro_auroc_ci_low"), met.get("macro_auroc_ci_high")), versus, note))
    few = sorted({c for m, (e, _) in evals.items() for c, v in e.get("per_class", {}).items() if v.get("few_positives")})
    if few:
        mp = next((e.get("min_positives") for e, _ in evals.values() if e.get("min_positives")), 10)
        warn.append(f"Fewer than {mp} test positives (AUROC and CI too unstable to read): {', '.join(few)}.")
    return rows, warn


def _localisation(dag: Dag, inputs: ReportInputs) -> tuple[list, list[str]]:
    rows, na = [], []
    if absent_note(dag, inputs.localization, "localisation result"):
        return rows, na
    best = None
    for _, m, d in matrix_outputs(dag, inputs.localization):
        loc = read_json(d / "localization.json", dag)
        if not loc.get("supported"):
            na.append(f"localisation of {m}: {loc.get('reason', 'no reason recorded')}")
            continue
        where = loc if loc.get("kind") == "heatmap" else (loc.get("pointing") or {})
        scores = where.get("test") if loc.get("kind") == "heatmap" else where.get("scores")
        micro = (scores or {}).get("micro") or {}
        acc = (micro.get("iobb") or {}).get("0.25")
        if acc is not None and (best is None or acc > best[1]):
            best = (m, acc, micro, where.get("baselines") or {})
    if best:
        m, acc, micro, bl = best
        parts = []
        for name, label in (("prior_box", "prior box"), ("lung_box", "whole-lung box")):
            b = bl.get(name) or {}
            if "not_applicable" in b:
                na.append(f"{label} localisation baseline: {b['not_applicable']}")
            elif b:
                parts.append(f"{label}: {fmt(((b.get('test') or {}).get('micro') or {}).get('iobb', {}).get('0.25'))}")
        rows.append(("localisation: accuracy at T(IoBB) 0.25, micro", m, fmt(acc), "; ".join(parts) or "n/a",
                     f"{micro.get('n_boxes')} test GT boxes (no CI: few boxes, read with care)"))
    return rows, na


def _retrieval(dag: Dag, inputs: ReportInputs) -> list:
    if absent_note(dag, inputs.retrieval, "retrieval result"):
        return []
    best = None
    for _, m, d in matrix_outputs(dag, inputs.retrieval):
        r = read_json(d / "retrieval.json", dag)
        ap = (r.get("summary") or {}).get("ap@5")
        if ap is not None and (best is None or ap > best[1]):
            best = (m, ap, r)
    if not best:
        return []
    m, ap, r = best
    ch = (((r.get("chance") or {}).get("5") or {}).get("class_average") or {}).get("ap")
    md = (((r.get("metadata") or {}).get("5") or {}).get("class_average") or {}).get("ap")
    return [("retrieval: AP@5 (class average)", m, fmt(ap), f"chance: {fmt(ch)}; metadata (view, sex): {fmt(md)}",
             f"{(r.get('queries') or {}).get('images')} test queries")]


def _anatomy(dag: Dag, inputs: ReportInputs) -> tuple[list, list[str]]:
    rows, na = [], []
    if not absent_note(dag, inputs.detector, "detector metrics"):
        det = read_json(inputs.detector, dag)
        if why := reason_of(det):
            na.append(f"region detector: {why}")
        elif "test" in det:
            t = det["test"]
            b = t.get("baseline_prior_box") or {}
            rows.append(("region detection: AP50 (COCO)", "Faster R-CNN", fmt(t.get("AP50")),
                         f"prior box (mean train box): {fmt(b.get('AP50'))}" if b else "no baseline recorded",
                         f"{t.get('images')} test images; mAP {fmt(t.get('mAP'))}"))
    if not absent_note(dag, inputs.unet, "segmentation metrics"):
        un = read_json(inputs.unet, dag)
        if "test" in un and un["test"].get("images"):
            b = un["test"].get("baseline_prior_mask") or {}
            rows.append(("organ segmentation: mean Dice", "UNet", fmt(un["test"].get("mean_dice")),
                         f"prior mask (mean train mask): {fmt(b.get('mean_dice'))}" if b else "no baseline recorded",
                         f"{un['test'].get('images')} test images"))
    return rows, na


def _labeller(dag: Dag, inputs: ReportInputs) -> list:
    if absent_note(dag, inputs.label, "labeller summary"):
        return []
    st = ((read_json(inputs.label, dag).get("labeller") or {}).get("synthetic_truth")) or {}
    if not st or st.get("skipped"):
        return []
    return [("report labelling: micro F1", "rule labeller", fmt(st.get("micro_f1")),
             f"keyword baseline: {fmt(st.get('keyword_micro_f1'))}", f"{st.get('reports')} reports; macro F1 "
             f"{fmt(st.get('macro_f1'))} (keyword {fmt(st.get('keyword_macro_f1'))})")]


def summary_section(dag: Dag, params: dict[str, Any], inputs: ReportInputs,
                    evals: dict[str, tuple[dict, Any]]) -> Section:
    """The summary that leads the report (module docstring)."""
    blocks: list = []
    source = (params.get("ingest") or {}).get("source", "n/a")
    line = f"Data source: {source}."
    if not absent_note(dag, inputs.images, "converted image table"):
        df = read_parquet(inputs.images, dag, ("status",))
        line += f" {int((df['status'] == 'ok').sum())} of {len(df)} source images converted."
    if not absent_note(dag, inputs.split, "split summary"):
        sp = read_json(inputs.split, dag).get("splits") or {}
        parts = [f"{s} {v.get('images')} images / {v.get('patients')} patients" for s, v in sp.items()
                 if isinstance(v, dict)]
        if parts:
            line += " Split by patient: " + "; ".join(parts) + "."
    if str(source).startswith("synthetic://"):
        line += (" Synthetic cohort: the view (AP / PA) is drawn with the label pattern as in CheXpert, so a model "
                 "can score above 0.5 by reading the view; the metadata baseline measures how far that goes.")
    blocks.append(Text(line))
    changed = changed_params(params)
    if changed:
        blocks.append(table("summary_params", "This run's params that differ from the project defaults",
                            ("key", "value", "default"), changed))
    else:
        blocks.append(Text("Params: the project defaults (no key differs from the schema defaults)."))
    models = None if absent_note(dag, inputs.models, "model comparison table") else read_json(inputs.models, dag)
    rows, warn = _classification(evals, models, inputs.models)
    loc_rows, na = _localisation(dag, inputs)
    an_rows, an_na = _anatomy(dag, inputs)
    rows += loc_rows + _retrieval(dag, inputs) + an_rows + _labeller(dag, inputs)
    blocks.append(table("summary_best", "Best model per task on the test split, beside its baseline from the same run",
                        ("task", "best", "result", "baseline (same run, same split)", "note"), rows))
    for why in [*an_na, *na]:
        blocks.append(Text(f"Not applicable: {why}"))
    for w in warn:
        blocks.append(Text(f"Warning: {w}"))
    return Section("summary", "Summary", tuple(blocks))


