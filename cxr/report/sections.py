"""One builder per report section: stage outputs in, :class:`~cxr.report.blocks.Section` out.

Each builder first asks the DAG whether the stage producing its input exists; if not, the section
says so. Otherwise the input must be there and well formed (:class:`ReportError` if not).
Timings and throughputs found in the inputs are left out, so the report is the same on every run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxr.report.blocks import Section, Svg, Text, fmt, table
from cxr.report.charts import PALETTE, dag_mermaid, dag_svg, roc_legend, roc_svg
from cxr.report.dag import Dag, flatten, norm
from cxr.report.errors import ReportError
from cxr.applicability import reason_of
from cxr.report.inputs import ReportInputs, get, is_timing, read_csv, read_json, read_parquet


def absent_note(dag: Dag, path: Path, what: str) -> str:
    """Why a section is empty: no stage of dvc.yaml produces ``path`` (empty string if one does)."""
    if dag.producers(norm(str(path))):
        return ""
    return f"Not in this pipeline: no stage of dvc.yaml produces {norm(str(path))}, so there is no {what} to show."


def matrix_outputs(dag: Dag, folder: Path) -> list[tuple[str, str, Path]]:
    """``(stage, M, path)`` for each per-model output dir ``folder/<M>`` declared in the DAG, in DAG order."""
    out, seen = [], set()
    for stage, o in dag.outputs_under(norm(str(folder))):
        rel = o[len(norm(str(folder))) + 1:]
        m = rel.split("/", 1)[0]
        if m not in seen:
            seen.add(m)
            out.append((stage.name, m, Path(folder) / m))
    return out


# -- pipeline -----------------------------------------------------------------------------------

def pipeline_section(dag: Dag, params: dict[str, Any], inputs: ReportInputs) -> Section:
    """The DAG (SVG + mermaid in markdown), one row per stage, and every resolved parameter."""
    preds: dict[str, list[str]] = {n: [] for n in dag.names()}
    for a, b in dag.edges:
        preds[b].append(a)
    stages = table("stages", "Stages (dvc.yaml, matrix stages expanded): upstream stages, declared outputs, params",
                   ("stage", "after", "outputs", "params"),
                   [(s.name, ", ".join(preds[s.name]) or "-", ", ".join(s.outs) or "-",
                     ", ".join("all of params.yaml" if p == "params.yaml:*" else p.removeprefix("params.yaml:") for p in s.params) or "-") for s in dag.stages])
    params_tables = [
        table(f"params_{name}", f"params: {name}", ("key", "value"),
              [(k, v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)) for k, v in flatten(values).items()])
        for name, values in params.items()
    ]
    return Section("pipeline", "Pipeline and parameters", (
        Svg("dag", "Pipeline DAG from dvc.yaml (left to right; edges implied by a longer path are not drawn, "
                   "the stage table lists every upstream stage)", dag_svg(dag), dag_mermaid(dag)),
        stages,
        Text(f"Parameters of the run ({inputs.params.name}, validated, defaults filled in), one table per section:"),
        *params_tables,
    ))


# -- data -----------------------------------------------------------------------------------------

def _manifest(inputs: ReportInputs, dag: Dag) -> tuple[Path, dict] | None:
    for name in ("ingest-manifest.json", "manifest.json"):
        p = Path(inputs.raw) / name
        if p.is_file():
            return p, read_json(p, dag)
    if dag.producers(norm(str(inputs.raw))):
        raise ReportError(f"{inputs.raw}: has neither ingest-manifest.json nor manifest.json "
                          f"(the ingest stage writes one); run `dvc repro ingest`")
    return None


def data_section(dag: Dag, inputs: ReportInputs) -> Section:
    """Counts along the data path: ingest, convert, label, split, coco, features."""
    blocks: list = []
    if absent := absent_note(dag, inputs.raw, "ingest manifest"):
        blocks.append(Text(absent))
    elif (found := _manifest(inputs, dag)) is not None:
        path, man = found
        rows = [("source", fmt(man.get("source", "n/a")))]
        if "counts" in man:
            rows += [(f"counts.{k}", fmt(v)) for k, v in flatten(get(man, "counts", path, dict)).items()
                     if not is_timing(k)]
        if "files" in man:
            files = get(man, "files", path, list)
            rows += [("files", str(len(files))),
                     ("bytes", str(sum(int(f.get("size", 0)) for f in files if isinstance(f, dict))))]
        if "refused" in man:
            rows.append(("refused files", str(len(get(man, "refused", path, list)))))
        blocks.append(table("ingest", f"Ingest ({path.name})", ("item", "value"), rows))

    if absent := absent_note(dag, inputs.images, "converted image table"):
        blocks.append(Text(absent))
    else:
        df = read_parquet(inputs.images, dag, ("dataset", "status", "view"))
        by = df.groupby(["dataset", "status"]).size().unstack(fill_value=0)
        statuses = sorted(by.columns, key=lambda s: (s != "ok", s))
        rows = [(d, *[int(by.loc[d, s]) for s in statuses], int(by.loc[d].sum())) for d in sorted(by.index)]
        rows.append(("all", *[int(by[s].sum()) for s in statuses], int(len(df))))
        blocks.append(table("convert", f"Converted images per dataset and status ({inputs.images.name})",
                            ("dataset", *statuses, "total"), rows))
        ok = df[df["status"] == "ok"]
        views = ok.groupby(["dataset", ok["view"].fillna("unknown")]).size()
        blocks.append(table("views", "Views of the converted images (status ok)", ("dataset", "view", "images"),
                            [(d, v, int(n)) for (d, v), n in views.items()]))

    if absent := absent_note(dag, inputs.label, "label summary"):
        blocks.append(Text(absent))
    else:
        lab = read_json(inputs.label, dag)
        merged = get(lab, "merged", inputs.label, dict)
        names = get(lab, "labels", inputs.label, list)
        counts = get(merged, "counts", inputs.label, dict)
        per_source = get(merged, "per_source", inputs.label, dict)
        blocks.append(table("label_sources", f"Labelled images per source (label space {lab.get('space', 'n/a')})",
                            ("source", "images"),
                            [*[(k, v) for k, v in per_source.items()],
                             ("total", get(merged, "images", inputs.label, int)),
                             ("images without labels", get(merged, "images_without_labels", inputs.label, int))]))
        rows = []
        for n in names:
            c = get(counts, n, inputs.label, dict)
            rows.append((n, *[get(c, k, inputs.label, int) for k in ("pos", "neg", "unc", "blank")]))
        blocks.append(table("label_counts", "Merged labels per class (1 / 0 / -1 uncertain / blank)",
                            ("label", "positive", "negative", "uncertain", "blank"), rows))

    if absent := absent_note(dag, inputs.split, "split summary"):
        blocks.append(Text(absent))
    else:
        sp = read_json(inputs.split, dag)
        splits = get(sp, "splits", inputs.split, dict)
        order = [s for s in ("train", "val", "test") if s in splits] + sorted(set(splits) - {"train", "val", "test"})
        blocks.append(table("splits", "Patient-level splits", ("split", "images", "patients"),
                            [(s, get(splits[s], "images", inputs.split, int), get(splits[s], "patients", inputs.split, int))
                             for s in order]))
        labels = sorted({k for s in order for k in get(splits[s], "prevalence", inputs.split, dict)})
        blocks.append(table("prevalence", "Prevalence per split (positives / labelled images)", ("label", *order),
                            [(n, *[splits[s]["prevalence"].get(n) for s in order]) for n in labels]))

    if absent := absent_note(dag, inputs.coco, "scene-graph conversion summary"):
        blocks.append(Text(absent))
    elif na := reason_of(read_json(inputs.coco, dag)):
        blocks.append(Text(f"Chest ImaGenome -> COCO: not applicable: {na}"))
    else:
        co = read_json(inputs.coco, dag)
        imgs, anns = get(co, "images", inputs.coco, dict), get(co, "annotations", inputs.coco, dict)
        blocks.append(table("coco", f"Chest ImaGenome -> COCO ({get(co, 'graphs', inputs.coco, int)} scene graphs, "
                                    f"{get(co, 'regions', inputs.coco, int)} regions)",
                            ("split", "images", "region boxes"), [(s, imgs[s], anns.get(s, 0)) for s in sorted(imgs)]))

    if absent := absent_note(dag, inputs.features, "region feature summary"):
        blocks.append(Text(absent))
    elif na := reason_of(read_json(inputs.features, dag)):
        blocks.append(Text(f"Region features: not applicable: {na}"))
    else:
        fe = read_json(inputs.features, dag)
        per = get(fe, "images_per_split", inputs.features, dict)
        blocks.append(table("features", f"Region features ({fe.get('box_source', 'n/a')} boxes, dim "
                                        f"{fe.get('dim', 'n/a')}, {len(fe.get('regions', []))} regions)",
                            ("split", "images"), [*sorted(per.items()), ("all", get(fe, "images", inputs.features, int))]))
    return Section("data", "Data", tuple(blocks))


# -- failures -------------------------------------------------------------------------------------

def failures_section(dag: Dag, inputs: ReportInputs, extra: Sequence[tuple[str, str, Any, str]] = ()) -> Section:
    """Every failure the stages recorded: one summary table plus one row per failed image.

    ``extra`` rows (stage, what, count, detail) come from the localisation / retrieval sections.
    """
    rows: list[tuple[str, str, Any, str]] = []
    per_file = None
    if not absent_note(dag, inputs.raw, ""):
        found = _manifest(inputs, dag)
        if found is not None:
            path, man = found
            for r in man.get("refused", []) or []:
                rows.append(("ingest", "refused file", 1, f"{r.get('name')}: {r.get('reason')}"))
            broken = man.get("counts", {}).get("broken") if isinstance(man.get("counts"), dict) else None
            if broken:
                rows.append(("ingest", "deliberately broken files (synthetic cohort)", broken,
                             "expected to fail in convert (ingest.synthetic.broken_fraction)"))
    if not absent_note(dag, inputs.images, ""):
        df = read_parquet(inputs.images, dag, ("image_id", "dataset", "source_path", "status", "error"))
        bad = df[df["status"] != "ok"].sort_values(["dataset", "source_path"], kind="stable")
        for status, n in bad["status"].value_counts().sort_index().items():
            rows.append(("convert", f"images with status {status}", int(n), "listed one per file below"))
        per_file = table("convert_failures", f"Convert: every source file not converted ({len(bad)})",
                         ("dataset", "source file", "status", "reason"),
                         [(r.dataset, r.source_path, r.status, r.error if isinstance(r.error, str) and r.error
                           else "(no reason recorded)") for r in bad.itertuples()])
    if not absent_note(dag, inputs.label, ""):
        lab = read_json(inputs.label, dag)
        for src, issue in sorted(get(lab, "issues", inputs.label, dict).items()):
            if issue.get("count"):
                ex = "; ".join(str(e) for e in issue.get("examples", []))
                rows.append(("label", f"{src}: malformed or unknown label records", issue["count"], ex or "-"))
            if issue.get("labels_without_image"):
                rows.append(("label", f"{src}: label rows without an image", issue["labels_without_image"], "-"))
        n = get(lab, "merged.images_without_labels", inputs.label, int, default=0)
        if n:
            rows.append(("label", "images without any label", n, "not in labels.parquet"))
        st = get(lab, "labeller.synthetic_truth", inputs.label, dict, default=None)
        if st and st.get("skipped"):
            rows.append(("label", "labeller scoring skipped", 1, st["skipped"]))
    if not absent_note(dag, inputs.split, ""):
        sp = read_json(inputs.split, dag)
        for k, v in sorted(get(sp, "excluded", inputs.split, dict).items()):
            if v:
                rows.append(("split", f"excluded: {k.replace('_', ' ')}", v, "-"))
    if not absent_note(dag, inputs.coco, "") and not reason_of(read_json(inputs.coco, dag)):
        co = read_json(inputs.coco, dag)
        if co.get("malformed_graphs"):
            rows.append(("coco", "malformed scene graphs", co["malformed_graphs"], "-"))
        for k, v in sorted((co.get("skipped") or {}).items()):
            rows.append(("coco", f"skipped: {k}", v, "-"))
        for s, v in sorted((co.get("images_missing_regions") or {}).items()):
            if v:
                rows.append(("coco", f"{s} images missing regions", v, "-"))
        for r, v in sorted((co.get("missing_per_region") or {}).items()):
            rows.append(("coco", f"region missing: {r}", v, "-"))
    if not absent_note(dag, inputs.features, "") and not reason_of(read_json(inputs.features, dag)):
        fe = read_json(inputs.features, dag)
        if fe.get("images_missing_regions"):
            rows.append(("features", "images with a region not detected", fe["images_missing_regions"],
                         f"{fe.get('missing_on_scene_graph_images', 'n/a')} on images with a scene graph"))
        for r, v in sorted((fe.get("missing_per_region") or {}).items()):
            rows.append(("features", f"region not detected: {r}", v, "-"))
    for _, m, d in matrix_outputs(dag, inputs.evaluation):
        path = d / "metrics.json"
        met = read_json(path, dag)
        skipped = [c for c, v in sorted(get(met, "per_class", path, dict).items()) if v.get("auroc") is None]
        if skipped:
            rows.append((f"evaluate@{m}", "classes without AUROC (no positive or no negative test image)",
                         len(skipped), ", ".join(skipped)))
    rows.extend(extra)
    blocks: list = [table("failures", f"Recorded failures and exclusions ({len(rows)})",
                          ("stage", "what", "count", "detail"), rows) if rows
                    else Text("No stage recorded a failure.")]
    if per_file is not None:
        blocks.append(per_file if per_file.rows else Text("Convert: every source file was converted."))
    return Section("failures", "Failures and exclusions", tuple(blocks))


# -- classifiers --------------------------------------------------------------------------------

def _ci(v, lo, hi) -> str:
    return "n/a" if v is None else f"{v:.3f} [{fmt(lo)}, {fmt(hi)}]"


def load_evaluations(dag: Dag, inputs: ReportInputs) -> dict[str, tuple[dict, Any]]:
    """``{M: (metrics, roc DataFrame)}`` for every evaluate@M of the DAG."""
    out = {}
    for _, m, d in matrix_outputs(dag, inputs.evaluation):
        met = read_json(d / "metrics.json", dag)
        get(met, "per_class", d / "metrics.json", dict)
        roc = read_csv(d / "roc.csv", dag, ("class", "fpr", "tpr"))
        out[m] = (met, roc)
    return out


def classifiers_section(dag: Dag, inputs: ReportInputs, evals: dict[str, tuple[dict, Any]]) -> Section:
    """models.json comparison with CIs and the per-class AUROC of every evaluated model."""
    title = "Classifiers (test split)"
    if absent := absent_note(dag, inputs.evaluation, "classifier evaluation"):
        return Section("classifiers", title, absent=absent)
    blocks: list = []
    base: dict[str, dict] = {}  # per-class AUROC of the pixel / metadata baselines (models.json)
    if absent := absent_note(dag, inputs.models, "model comparison table"):
        blocks.append(Text(absent))
    else:
        mj = read_json(inputs.models, dag)
        rows, notes = [], []
        for m in [m for m in evals if m in mj] + sorted(set(mj) - set(evals)):
            r = mj[m]
            if not isinstance(r, dict):
                raise ReportError(f"{inputs.models}: entry {m!r} should be an object, got {type(r).__name__}")
            vs = r.get("vs_reference")
            versus = ("baseline" if m.startswith("baseline:") else "reference" if vs is None else
                      f"{fmt(vs.get('difference'))} (p={fmt(vs.get('p_value'))}, n={fmt(vs.get('shared_images'))})")
            views = r.get("by_view") or {}
            label = m + (" (GT boxes at test)" if (r.get("region_boxes") or {}).get("source") == "gt" else "")
            rows.append((label, _ci(get(r, "macro_auroc", inputs.models, (int, float)), r.get("macro_auroc_ci_low"),
                                    r.get("macro_auroc_ci_high")),
                         _ci(r.get("macro_auroc_common"), r.get("macro_auroc_common_ci_low"),
                             r.get("macro_auroc_common_ci_high")),
                         r.get("micro_auroc"), r.get("macro_auprc"), r.get("macro_f1"), r.get("ece"),
                         f"{fmt(r.get('test_images'))} / {fmt(r.get('test_patients'))}",
                         *[(_ci(views[v].get("macro_auroc"), views[v].get("macro_auroc_ci_low"),
                                views[v].get("macro_auroc_ci_high")) + f" (n={fmt(views[v].get('test_images'))})")
                           if isinstance(views.get(v), dict) else "n/a" for v in ("AP", "PA")], versus))
            if r.get("region_boxes"):  # every region model: box source and region features
                notes.append(Text(f"{m}: {r['region_boxes'].get('note')}."))
        ci = next((e[0].get("ci") for e in evals.values()), None)
        blocks.append(table("models", f"Model comparison ({inputs.models.name}): macro AUROC with "
                                      f"{fmt(ci, 2) if ci else 'bootstrap'} CI over patients; F1 at validation thresholds",
                            ("model", "macro AUROC [CI]", "macro AUROC, common classes [CI]", "micro AUROC",
                             "macro AUPRC", "macro F1", "ECE", "test images / patients", "AP views: macro AUROC [CI]",
                             "PA views: macro AUROC [CI]", "vs reference: diff (p, n)"),
                            rows))
        blocks.extend(notes)
        base = {m: r.get("per_class_auroc") or {} for m, r in mj.items() if m.startswith("baseline:") and
                m != "baseline:prevalence"}
    models = list(evals)
    classes = sorted({c for met, _ in evals.values() for c in met["per_class"]})

    def few(c):
        return any(evals[m][0]["per_class"].get(c, {}).get("few_positives") for m in models)

    blocks.append(table("per_class_auroc", "Per-class AUROC [CI] (positives in test); (!) = fewer than "
                        f"{next((e[0].get('min_positives') for e in evals.values() if e[0].get('min_positives')), 10)} "
                        "test positives: too few to read, left out of the common-class macro",
                        ("class", *models, *base),
                        [(c + (" (!)" if few(c) else ""),
                          *[_ci(evals[m][0]["per_class"].get(c, {}).get("auroc"),
                                evals[m][0]["per_class"].get(c, {}).get("auroc_ci_low"),
                                evals[m][0]["per_class"].get(c, {}).get("auroc_ci_high"))
                            + f" ({fmt(evals[m][0]['per_class'].get(c, {}).get('positives'))})" for m in models],
                          *[fmt(b.get(c)) for b in base.values()])
                         for c in classes]))
    blocks.append(table("per_class_f1", "Per-class F1 / sensitivity / specificity at the validation threshold",
                        ("class", *models),
                        [(c, *[" / ".join(fmt(evals[m][0]["per_class"].get(c, {}).get(k))
                                          for k in ("f1", "sensitivity", "specificity")) for m in models])
                         for c in classes]))
    return Section("classifiers", title, tuple(blocks))


def roc_section(dag: Dag, inputs: ReportInputs, evals: dict[str, tuple[dict, Any]]) -> Section:
    """ROC curves per class, one colour per model, from the evaluate@M roc.csv files."""
    title = "ROC curves per class"
    if absent := absent_note(dag, inputs.evaluation, "ROC data"):
        return Section("roc", title, absent=absent)
    models = list(evals)
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}
    order: list[str] = []
    for _, roc in evals.values():
        order += [c for c in roc["class"].astype(str).unique() if c not in order]
    panels = []
    for c in order:
        curves = {}
        for m in models:
            met, roc = evals[m]
            sub = roc[roc["class"].astype(str) == c]
            if len(sub):
                curves[m] = (sub["fpr"].to_numpy(np.float64), sub["tpr"].to_numpy(np.float64))
        aurocs = {m: met["per_class"].get(c, {}).get("auroc") for m, (met, _) in evals.items()}
        panels.append(roc_svg(c, curves, colors, aurocs))
    svg = f'<div>{roc_legend(models, colors)}</div><div class="roc-grid">{"".join(panels)}</div>'
    return Section("roc", title, (
        Svg("roc", "Test-split ROC per class (numbers: AUROC per model, same colours); dashed: chance", svg,
            "ROC curves are drawn in index.html; the per-class AUROC table above has the same numbers."),))


# -- anatomy --------------------------------------------------------------------------------------

def anatomy_section(dag: Dag, inputs: ReportInputs) -> Section:
    """Detector COCO metrics per region and UNet Dice / IoU per structure."""
    blocks: list = []
    if absent := absent_note(dag, inputs.detector, "detector metrics"):
        blocks.append(Text(absent))
    elif na := reason_of(read_json(inputs.detector, dag)):
        blocks.append(Text(f"Region detector: not applicable: {na}"))
    else:
        det = read_json(inputs.detector, dag)
        splits = [s for s in ("val", "test") if s in det]
        if not splits:
            raise ReportError(f"{inputs.detector}: no 'val' or 'test' metrics")
        keys = ("mAP", "AP50", "AP75", "AP50_min_region", "images")
        drows = [(s, *[get(det, f"{s}.{k}", inputs.detector, (int, float)) for k in keys]) for s in splits]
        drows += [(f"{s}: baseline prior box (mean train box per region)",
                   *[det[s]["baseline_prior_box"].get(k) for k in keys[:3]], "-", det[s].get("images"))
                  for s in splits if isinstance(det[s].get("baseline_prior_box"), dict)]
        blocks.append(table("detector", f"Region detector (Faster R-CNN, backbone {det.get('backbone', 'n/a')}): "
                                        "COCO box AP, beside the prior-box baseline scored by the same COCOeval",
                            ("split", *keys), drows))
        regions = list(get(det, f"{splits[-1]}.per_region", inputs.detector, dict))
        blocks.append(table("detector_regions", "Detector AP / AP50 per region",
                            ("region", *[f"{s} {k}" for s in splits for k in ("AP", "AP50")]),
                            [(r, *[det[s].get("per_region", {}).get(r, {}).get(k) for s in splits for k in ("AP", "AP50")])
                             for r in regions]))
    if absent := absent_note(dag, inputs.unet, "segmentation metrics"):
        blocks.append(Text(absent))
    else:
        un = read_json(inputs.unet, dag)
        splits = [s for s in ("val", "test") if s in un]
        if not splits:
            raise ReportError(f"{inputs.unet}: no 'val' or 'test' metrics")
        urows = [(s, get(un, f"{s}.images", inputs.unet, int), get(un, f"{s}.mean_dice", inputs.unet, float, None),
                  get(un, f"{s}.mean_iou", inputs.unet, float, None)) for s in splits]
        urows += [(f"{s}: baseline prior mask (mean train mask)", un[s]["baseline_prior_mask"].get("images"),
                   un[s]["baseline_prior_mask"].get("mean_dice"), "-")
                  for s in splits if isinstance(un[s].get("baseline_prior_mask"), dict)]
        blocks.append(table("unet", "Organ UNet: mean Dice / IoU, beside the prior-mask baseline",
                            ("split", "images", "mean Dice", "mean IoU"), urows))
        structs = list(get(un, f"{splits[-1]}.per_structure", inputs.unet, dict))
        blocks.append(table("unet_structures", "UNet Dice / IoU per structure",
                            ("structure", *[f"{s} {k}" for s in splits for k in ("Dice", "IoU")]),
                            [(st, *[un[s].get("per_structure", {}).get(st, {}).get(k) for s in splits
                                    for k in ("dice", "iou")]) for st in structs]))
    return Section("anatomy", "Anatomy: region detector and organ segmentation", tuple(blocks))


# -- labeller -------------------------------------------------------------------------------------

def labeller_section(dag: Dag, inputs: ReportInputs) -> Section:
    """The report labeller's P / R / F1 against reference labels, and source disagreement rates."""
    title = "Report labeller"
    if absent := absent_note(dag, inputs.label, "labeller summary"):
        return Section("labeller", title, absent=absent)
    lab = read_json(inputs.label, dag)
    blocks: list = []
    info = lab.get("labeller")
    if not info:
        blocks.append(Text("No free-text reports in this cohort: the labeller did not run."))
    else:
        get(info, "reports", inputs.label, int)
        blocks.append(Text(f"Vocabulary {info.get('vocabulary', 'n/a')}, sections {fmt(info.get('sections', []))}, "
                           f"{info['reports']} reports labelled."))
        st = info.get("synthetic_truth")
        if not st or st.get("skipped"):
            blocks.append(Text("No reference labels for the reports in this run, so no labeller F1 "
                               "(the synthetic cohort provides them; see bench/label.py for OpenI)."
                               + (f" Skipped: {st['skipped']}" if st and st.get("skipped") else "")))
        else:
            per = get(st, "per_class", inputs.label, dict)
            rows = [(n, v.get("n_pos"), v.get("P"), v.get("R"), v.get("F1")) for n, v in per.items()]
            rows += [("micro", "", "", "", get(st, "micro_f1", inputs.label, (int, float))),
                     ("macro", "", "", "", get(st, "macro_f1", inputs.label, (int, float))),
                     ("keyword baseline, micro", "", "", "", st.get("keyword_micro_f1")),
                     ("keyword baseline, macro", "", "", "", st.get("keyword_macro_f1"))]
            blocks.append(table("labeller_f1", f"Labeller vs reference labels on {st.get('reports', 'n/a')} reports "
                                               f"({st.get('policy', '')})",
                                ("label", "reference positives", "precision", "recall", "F1"), rows))
    for pair, d in sorted((lab.get("disagreement") or {}).items()):
        per = get(d, "per_label", inputs.label, dict)
        blocks.append(table(f"disagreement_{pair}".replace(" ", "_"),
                            f"Disagreement {pair}: {d.get('disagree')} of {d.get('cells')} labelled cells "
                            f"({fmt(d.get('rate'))}) on {d.get('images')} images",
                            ("label", "cells", "disagree", "rate"),
                            [(n, v.get("cells"), v.get("disagree"), v.get("rate")) for n, v in sorted(per.items())]))
    return Section("labeller", title, tuple(blocks))
