"""The report stage: DAG from dvc.yaml, sections from tiny fixture outputs, errors, escaping, and the
page rendered in headless Chromium (Debian's `chromium`, driven by playwright, no network)."""

from __future__ import annotations

import io
import json
import re
import shlex
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cxr.report import ReportError, ReportInputs, build_report
from cxr.report.dag import load_dag, overlaps
from stages import report as report_stage

MODELS = ("densenet121", "anaxnet")
EVIL = "<script>alert('x')</script> & \"q\""
CHROMIUM = Path("/usr/bin/chromium")
INSTALL_HINT = ("headless Chromium is required for this test: install it with `apt-get install -y chromium` "
                "(Debian package; `make test` does this when /usr/bin/chromium is missing)")

DVC_YAML = {
    "stages": {
        "ingest": {"cmd": "x", "deps": ["stages/ingest.py"], "outs": ["data/raw"]},
        "convert": {"cmd": "x", "deps": ["data/raw"], "outs": ["data/interim/images", "data/interim/images.parquet"]},
        "label": {"cmd": "x", "deps": ["data/raw"], "outs": ["data/interim/labels.parquet"],
                  "metrics": [{"reports/label.json": {"cache": False}}]},
        "split": {"cmd": "x", "deps": ["data/interim/images.parquet", "data/interim/labels.parquet", "data/raw"],
                  "outs": ["data/processed/splits.parquet"], "metrics": [{"reports/split.json": {"cache": False}}]},
        "coco": {"cmd": "x", "deps": ["data/raw", "data/processed/splits.parquet"], "outs": ["data/processed/coco"],
                 "metrics": [{"reports/coco.json": {"cache": False}}]},
        "detector": {"cmd": "x", "deps": ["data/processed/coco", "data/interim/images"], "outs": ["models/detector"],
                     "metrics": [{"reports/detector/metrics.json": {"cache": False}}],
                     "plots": [{"reports/detector/live/plots/metrics": {"x": "step"}}]},
        "features": {"cmd": "x", "deps": ["models/detector", "data/interim/images"], "outs": ["data/processed/features"],
                     "metrics": [{"reports/features.json": {"cache": False}}]},
        "unet": {"cmd": "x", "deps": ["data/raw", "data/interim/images"], "outs": ["models/unet"],
                 "metrics": [{"reports/unet/metrics.json": {"cache": False}}],
                 "plots": [{"reports/unet/live/plots/metrics": {"x": "step"}}]},
        "train": {"matrix": {"model": "${train.models}"}, "cmd": "x",
                  "deps": ["data/processed/splits.parquet", "data/processed/features"],
                  "outs": ["models/${item.model}", "reports/training/${item.model}/metrics.json"],
                  "plots": [{"reports/training/${item.model}/plots/metrics": {"x": "step"}}]},
        "evaluate": {"matrix": {"model": "${train.models}"}, "cmd": "x", "deps": ["models/${item.model}"],
                     "outs": ["data/processed/evaluation/${item.model}"],
                     "metrics": [{"reports/${item.model}/metrics.json": {"cache": False}}]},
        "models_table": {"cmd": "x", "deps": ["data/processed/evaluation"], "metrics": [{"reports/models.json": {"cache": False}}]},
        "localize": {"matrix": {"model": "${train.models}"}, "cmd": "x", "deps": ["models/${item.model}"],
                     "outs": ["data/processed/localization/${item.model}"]},
        "retrieve": {"matrix": {"model": "${train.models}"}, "cmd": "x", "deps": ["models/${item.model}"],
                     "outs": ["data/processed/retrieval/${item.model}"]},
        "report": {"cmd": "x", "deps": ["data/processed/evaluation", "reports/models.json", "reports/training",
                                        "reports/detector/live/plots/metrics", "reports/unet/live/plots/metrics"],
                   "outs": [{"reports/index.html": {"cache": False}}]},
    }
}


def _png(value: int, size: tuple[int, int] = (40, 32)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


RETRIEVAL_KS = (3, 5, 10)


def _ret_avg(base: float) -> dict:
    return {"ap": round(base, 4), "precision": round(base - 0.1, 4), "hit": round(base + 0.2, 4),
            "rr": round(base + 0.1, 4)}


def retrieval_json(m: str, j: int, classes: list[str]) -> dict:
    """A full data/processed/retrieval/<M>/retrieval.json as cxr.retrieve.run writes it (small numbers that are
    easy to find in the page: class average no-skip AP@k = 0.4 + 0.01 * k + 0.1 * j, chance AP@k = 0.2 + 0.001 * k)."""
    per_k, chance, metadata, summary = {}, {}, {}, {}
    for k in RETRIEVAL_KS:
        ca = _ret_avg(0.4 + 0.01 * k + 0.1 * j)
        per_k[str(k)] = {
            "per_class": {c: {"queries": 1, "no_relevant_in_top_k": 0, "no_relevant_in_database": 0,
                              "no_skip": ca, "skip": ca} for c in classes},
            "no_skip": {"class_average": ca, "query_weighted": _ret_avg(0.55), "classes": 2, "query_class_pairs": 4},
            "skip": {"class_average": _ret_avg(0.65), "query_weighted": _ret_avg(0.75), "classes": 2,
                     "query_class_pairs": 4 - j},
            "no_relevant_in_top_k": 10 + k + j, "no_relevant_in_database": j}
        chance[str(k)] = {"class_average": _ret_avg(0.2 + 0.001 * k), "query_weighted": _ret_avg(0.3)}
        metadata[str(k)] = {"class_average": _ret_avg(0.25 + 0.001 * k), "query_weighted": _ret_avg(0.35)}
        summary.update({f"{x}@{k}": ca[x] for x in ("ap", "precision", "hit", "rr")})
    return {"model": m, "embedding": {"dim": 8, "binary": j == 1, "metric": "hamming" if j else "inner_product"},
            "index": ({"kind": "flat", "config": {"kind": "auto"}, "effort": {},
                       "recall": {"exact": True, "recall": 1.0, "note": "exact search"}} if j == 0 else
                      {"kind": "ivf", "config": {"kind": "ivf", "ivf_codec": "flat"}, "effort": {"nprobe": 32},
                       "recall": {"exact": False, "k": 10, "queries": 1, "source": "held-out queries", "min_recall": 0.95,
                                  "trials": [{"nprobe": 16, "recall": 0.9}, {"nprobe": 32, "recall": 0.97}],
                                  "recall": 0.97, "effort": {"nprobe": 32}, "met": True, "note": "ivf at nprobe 32"}}),
            "database": {"splits": ["train", "val"], "images": 3, "patients": 3},
            "queries": {"split": "test", "images": 1, "patients": 1}, "k": list(RETRIEVAL_KS),
            "summary": summary, "summary_definition": "class average over the classes with a query, no-skip",
            "definitions": {"ap": "AP@k"}, "exclusion": "own patient", "metrics": per_k, "chance": chance,
            "chance_definition": "no-skip averages of a seeded random ranking of the same database",
            "metadata": metadata}


def make_pipeline(root: Path, stages: dict | None = None) -> tuple[ReportInputs, Path]:
    """Tiny outputs of every stage under ``root``; returns the inputs and the converted image dir."""
    (root / "params.yaml").write_text(f"train:\n  models: [{', '.join(MODELS)}]\n", encoding="utf-8")
    (root / "dvc.yaml").write_text(yaml.safe_dump(stages or DVC_YAML, sort_keys=False), encoding="utf-8")
    _write_json(root / "data/raw/manifest.json", {"source": "synthetic://tiny", "counts": {"images": 4, "broken": 1}})
    img_dir = root / "data/interim/images"
    img_dir.mkdir(parents=True)
    for i in range(4):
        (img_dir / f"i{i}.png").write_bytes(_png(40 * (i + 1)))
    pd.DataFrame({
        "image_id": ["i0", "i1", "i2", "i3", "bad"], "dataset": ["mimic"] * 4 + ["nih"],
        "source_path": [f"mimic/i{i}.dcm" for i in range(4)] + ["nih/bad.png"], "view": ["PA", "AP", "PA", "AP", None],
        "status": ["ok"] * 4 + ["error"], "error": [None] * 4 + [EVIL],
        "png_path": [f"i{i}.png" for i in range(4)] + [None],
    }).to_parquet(root / "data/interim/images.parquet")
    classes = ["Edema", "Lung <Opacity>"]
    counts = {c: {"pos": 2, "neg": 1, "unc": 0, "blank": 1} for c in classes}
    _write_json(root / "reports/label.json", {
        "space": "chexpert14", "labels": classes,
        "issues": {"nih": {"count": 2, "examples": ["Hernia?"], "labels_without_image": 1}},
        "labeller": {"vocabulary": "chexpert14", "sections": ["impression"], "reports": 4, "seconds": 0.1,
                     "synthetic_truth": {"reports": 4, "policy": "uncertain counts as positive", "micro_f1": 0.8,
                                         "macro_f1": 0.75, "keyword_micro_f1": 0.6, "keyword_macro_f1": 0.5,
                                         "per_class": {c: {"P": 1.0, "R": 0.5, "F1": 0.667, "n_pos": 2} for c in classes}}},
        "merged": {"images": 4, "images_without_labels": 1, "per_source": {"labeller": 4}, "counts": counts},
        "disagreement": {"labeller vs imagenome": {"cells": 8, "disagree": 1, "rate": 0.125, "images": 4,
                                                   "per_label": {"Edema": {"cells": 4, "disagree": 1, "rate": 0.25}}}},
    })
    _write_json(root / "reports/split.json", {
        "excluded": {"images_not_ok": 1, "labels_without_image": 0},
        "splits": {s: {"images": n, "patients": n, "prevalence": {c: 0.5 for c in classes}}
                   for s, n in (("train", 2), ("val", 1), ("test", 1))},
    })
    _write_json(root / "reports/coco.json", {"graphs": 3, "regions": 18, "images": {"train": 2, "test": 1},
                                            "annotations": {"train": 36, "test": 18}, "malformed_graphs": 1,
                                            "skipped": {}, "missing_per_region": {"trachea": 1}})
    _write_json(root / "reports/features.json", {"images": 3, "images_per_split": {"train": 2, "test": 1}, "dim": 8,
                                                "box_source": "pred", "regions": ["a", "b"],
                                                "images_missing_regions": 1, "missing_per_region": {"b": 1}})
    per_split = {"mAP": 0.5, "AP50": 0.9, "AP75": 0.4, "AP50_min_region": 0.3, "images": 2,
                 "images_per_second": 9.9, "per_region": {"trachea": {"AP": 0.5, "AP50": 0.9}},
                 "baseline_prior_box": {"mAP": 0.1, "AP50": 0.35, "AP75": 0.05}}
    _write_json(root / "reports/detector/metrics.json", {"backbone": "tiny_fpn", "val": per_split, "test": per_split})
    un = {"images": 2, "mean_dice": 0.9, "mean_iou": 0.8, "per_structure": {"heart": {"dice": 0.9, "iou": 0.8}},
          "baseline_prior_mask": {"images": 2, "mean_dice": 0.55, "per_structure": {"heart": {"dice": 0.55}}}}
    _write_json(root / "reports/unet/metrics.json", {"val": un, "test": un, "train_seconds": 3.0})
    models = {}
    for j, m in enumerate(MODELS):
        d = root / "data/processed/evaluation" / m
        per = {c: {"auroc": 0.7 + 0.1 * j, "auroc_ci_low": 0.6, "auroc_ci_high": 0.8, "f1": 0.5, "sensitivity": 0.5,
                   "specificity": 0.5, "positives": 1} for c in classes}
        _write_json(d / "metrics.json", {"model": m, "ci": 0.95, "per_class": per})
        rows = [(c, f, min(1.0, f * (1.5 + j))) for c in classes for f in (0.0, 0.25, 0.5, 1.0)]
        pd.DataFrame(rows, columns=["class", "fpr", "tpr"]).to_csv(d / "roc.csv", index=False)
        pd.DataFrame([(c, r, 1 - 0.5 * r) for c in classes for r in (0.0, 0.5, 1.0)],
                     columns=["class", "recall", "precision"]).to_csv(d / "pr.csv", index=False)
        for c in classes:
            per[c].update(threshold=0.5, tp=1, fp=2, fn=0, tn=3, negatives=3, auprc=0.6)
        _write_json(d / "metrics.json", {"model": m, "ci": 0.95, "per_class": per, "ece": 0.05,
                                         "reliability": [{"low": 0.0, "high": 0.5, "n": 3, "confidence": 0.2,
                                                          "observed": 0.1},
                                                         {"low": 0.5, "high": 1.0, "n": 2, "confidence": 0.8,
                                                          "observed": 0.9}]})
        # test predictions: i1 is a confident false positive for Edema, i2 a confident false negative
        pd.DataFrame({"image_id": ["i1", "i2", "i3"], "patient_id": ["1", "2", "3"],
                      **{f"p:{c}": [0.9, 0.1, 0.6] for c in classes}, **{f"y:{c}": [0.0, 1.0, 1.0] for c in classes},
                      **{f"m:{c}": [True, True, True] for c in classes}}).to_parquet(d / "predictions.parquet")
        models[m] = {"macro_auroc": 0.7, "macro_auroc_ci_low": 0.6, "macro_auroc_ci_high": 0.8, "micro_auroc": 0.8,
                     "macro_auprc": 0.5, "macro_f1": 0.4, "ece": 0.02, "test_images": 1, "test_patients": 1,
                     "vs_reference": None if j == 0 else {"difference": -0.1, "p_value": 0.2, "shared_images": 1}}
        ld = root / "data/processed/localization" / m
        acc = {"n_boxes": 2, "iou": {"0.1": 0.5, "0.5": 0.25}, "iobb": {"0.1": 0.75, "0.5": 0.5}, "mean_iou": 0.3,
               "mean_iobb": 0.6}
        scores = {"per_class": {c: acc for c in classes}, "macro": {**acc, "n_classes": 2}, "micro": acc}
        gt = {"boxes_read": 5, "malformed_rows": 0, "boxes_without_usable_image": 1, "unmapped_terms": {"Mass": 2},
              "gt_boxes_per_split": {"val": 1, "test": 2}, "gt_images_per_split": {"val": 1, "test": 1}}
        loc = ({"supported": True, "kind": "heatmap", "method": "gradcam", "heatmap_threshold": 0.5, "test": scores,
                "threshold_search": {"0.5": {"acc_iou_0.25": 0.5, "mean_iou": 0.3}}, "threshold_rule": "best on val"}
               if j == 0 else
               {"supported": True, "kind": "region", "pointing": {"scores": scores},
                "region_auroc": {"macro": 0.7, "per_finding": {"lung opacity": {"auroc": 0.7, "n_regions": 9, "n_positive": 3}}}})
        _write_json(ld / "localization.json", {"model": m, "test_images": 1, "ground_truth": gt,
                                               "gallery": ["i0 Edema"], **loc})
        (ld / "gallery.png").write_bytes(_png(200, (120, 60)))
        rd = root / "data/processed/retrieval" / m
        _write_json(rd / "retrieval.json", retrieval_json(m, j, classes))
        pd.DataFrame({"query_image_id": ["i0"] * 4, "rank": [0, 1, 2, 3], "image_id": ["i0", "i1", "i2", "i3"],
                      "png_path": ["i0.png", "i1.png", "i2.png", "i3.png"], "labels": ["Edema", "Edema", "", "x"],
                      "score": [np.nan, 0.9, 0.8, 0.7], "relevant": [True, True, False, False]}
                     ).to_parquet(rd / "examples.parquet")
    models["baseline:metadata"] = {"macro_auroc": 0.65, "macro_auroc_ci_low": 0.55, "macro_auroc_ci_high": 0.75,
                                   "test_images": 1, "test_patients": 1, "per_class_auroc": {c: 0.65 for c in classes}}
    models["baseline:prevalence"] = {"macro_auroc": 0.5, "test_images": 1, "test_patients": 1}
    _write_json(root / "reports/models.json", models)
    write_training_logs(root)
    inputs = ReportInputs(
        params=root / "params.yaml", dvc_yaml=root / "dvc.yaml", raw=root / "data/raw",
        images=root / "data/interim/images.parquet", label=root / "reports/label.json",
        split=root / "reports/split.json", coco=root / "reports/coco.json", features=root / "reports/features.json",
        detector=root / "reports/detector/metrics.json", unet=root / "reports/unet/metrics.json",
        evaluation=root / "data/processed/evaluation", models=root / "reports/models.json",
        localization=root / "data/processed/localization", retrieval=root / "data/processed/retrieval",
        training=root / "reports/training", detector_live=root / "reports/detector/live/plots/metrics",
        unet_live=root / "reports/unet/live/plots/metrics",
    )
    return inputs, img_dir


def _tsv(path: Path, name: str, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"step\t{name}\n" + "".join(f"{a}\t{b}\n" for a, b in rows), encoding="utf-8")


def write_training_logs(root: Path) -> None:
    """DVCLive tables as the training stages write them: densenet121 over 3 epochs (steps 4, 8, 12; its val
    macro AUROC peaks at epoch 1 and ties there at epoch 2: the first is kept), no log for anaxnet, per-step
    detector losses, and a UNet table with the wrong column (a damaged log)."""
    live = root / "reports/training/densenet121/plots/metrics"
    _tsv(live / "epoch.tsv", "epoch", [(4, 0), (8, 1), (12, 2)])
    _tsv(live / "loss/training.tsv", "training", [(4, 0.9), (8, 0.6), (12, 0.4)])
    _tsv(live / "loss/validation.tsv", "validation", [(4, 0.8), (8, 0.7), (12, 0.75)])
    _tsv(live / "val/macro_auroc.tsv", "macro_auroc", [(4, 0.61), (8, 0.72), (12, 0.72)])
    det = root / "reports/detector/live/plots/metrics"
    _tsv(det / "epoch.tsv", "epoch", [(1, 0), (2, 0)])
    _tsv(det / "train/loss.tsv", "loss", [(1, 4.5), (2, 3.25)])
    _tsv(det / "train/loss_classifier.tsv", "loss_classifier", [(1, 3.0), (2, 2.0)])
    _tsv(root / "reports/unet/live/plots/metrics/train/loss.tsv", "wrong", [(1, 0.5)])


def _rel(inputs: ReportInputs, root: Path) -> ReportInputs:
    """The same inputs as repository-relative paths (as the stage gets them), for DAG look-ups."""
    return ReportInputs(**{k: None if v is None else Path(v).relative_to(root) for k, v in vars(inputs).items()})


@pytest.fixture()
def pipeline(tmp_path, monkeypatch):
    inputs, img_dir = make_pipeline(tmp_path)
    monkeypatch.chdir(tmp_path)
    return _rel(inputs, tmp_path), img_dir.relative_to(tmp_path)


# -- DAG ----------------------------------------------------------------------------------------

def test_dag_expands_matrix_and_draws_edges(tmp_path):
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False), encoding="utf-8")
    dag = load_dag(tmp_path / "dvc.yaml", {"train": {"models": list(MODELS)}})
    names = dag.names()
    assert names[:2] == ["ingest", "convert"]
    assert {"train@densenet121", "train@anaxnet", "evaluate@anaxnet", "localize@densenet121"} <= set(names)
    edges = set(dag.edges)
    assert ("ingest", "convert") in edges and ("train@anaxnet", "evaluate@anaxnet") in edges
    assert ("train@anaxnet", "evaluate@densenet121") not in edges
    assert ("evaluate@densenet121", "models_table") in edges  # parent dir dep -> every matrix output
    assert ("ingest", "split") in edges and ("ingest", "split") not in dag.reduced_edges()  # via convert
    layers = dag.layers()
    assert layers["ingest"] == 0 and layers["report"] > layers["models_table"] > layers["evaluate@anaxnet"]
    # an empty matrix list (retrieve.hashing: [] in params-real.yaml) is zero stages, as in DVC
    empty = load_dag(tmp_path / "dvc.yaml", {"train": {"models": []}})
    assert not any(n.startswith(("train@", "evaluate@")) for n in empty.names()) and "ingest" in empty.names()


def test_dag_errors_name_the_problem(tmp_path):
    p = tmp_path / "dvc.yaml"
    with pytest.raises(ReportError, match="not found"):
        load_dag(p, {})
    p.write_text("stages: [1, 2\n", encoding="utf-8")
    with pytest.raises(ReportError, match="not valid YAML"):
        load_dag(p, {})
    p.write_text(yaml.safe_dump({"stages": {"a": {"matrix": {"m": "${nope.models}"}, "cmd": "x"}}}), encoding="utf-8")
    with pytest.raises(ReportError, match=r"\$\{nope.models\}"):
        load_dag(p, {})
    p.write_text(yaml.safe_dump({"stages": {"a": {"cmd": "x", "deps": ["b.txt"], "outs": ["a.txt"]},
                                            "b": {"cmd": "x", "deps": ["a.txt"], "outs": ["b.txt"]}}}), encoding="utf-8")
    with pytest.raises(ReportError, match="cycle"):
        load_dag(p, {})


# -- rendering ------------------------------------------------------------------------------------

SECTIONS = ("summary", "classifiers", "roc", "diagnostics", "training", "anatomy", "localization", "retrieval", "labeller", "data", "failures",
            "pipeline")
TABLES = ("summary_best", "confusion_counts", "training", "stages", "params_train", "ingest", "convert", "views", "label_sources", "label_counts", "splits",
          "prevalence", "coco", "features", "failures", "convert_failures", "models", "per_class_auroc",
          "per_class_f1", "detector", "detector_regions", "unet", "unet_structures", "labeller_f1",
          "localization", "localization_gt", "localization_densenet121", "localization_densenet121_threshold", "localization_anaxnet",
          "localization_anaxnet_regions", "retrieval", "retrieval_index", "retrieval_densenet121", "retrieval_densenet121_queries",
          "retrieval_anaxnet", "retrieval_anaxnet_queries", "retrieval_per_class")


def test_report_has_every_section_and_is_deterministic(pipeline):
    inputs, img_dir = pipeline
    html, md = build_report(inputs, image_dir=img_dir)
    for key in SECTIONS:
        assert f'<section id="{key}" data-absent="no">' in html, key
    for key in TABLES:
        assert f'data-table="{key}"' in html, key
    assert html.count("data-roc=") == 2 and 'data-stage="evaluate@anaxnet"' in html
    # two localisation galleries + per model one query and its three results + per model 2 FP and 2 FN mistakes
    assert html.count('src="data:image/png;base64,') == 2 + 2 * 4 + 2 * 4
    assert 'data-gallery="retrieval_examples_anaxnet"' in html and "#1 relevant, score 0.900\nEdema" in html
    # self-contained: nothing fetched from anywhere
    for bad in ("<script", "<link", 'src="http', "url(http", "@import"):
        assert bad not in html
    # every recorded failure is listed
    assert "images with status error" in html and "region not detected: b" in html and "Hernia?" in html
    assert "malformed scene graphs" in html and "images without any label" in html
    assert "query-class pairs with no relevant image in the database" in html  # retrieve@anaxnet
    assert "box label not in the model&#39;s label space: Mass" in html  # localize: once for both models
    assert "localize@densenet121, localize@anaxnet" in html
    # no timings
    assert "9.9" not in html and "train_seconds" not in html
    # markdown: same tables, the DAG as mermaid, no figures' bytes
    assert "```mermaid" in md and "| densenet121 | 0.700 [0.600, 0.800] |" in md
    assert "data:image" not in md and not re.search(r"(?<!\\)<", md)  # every "<" escaped
    assert build_report(inputs, image_dir=img_dir) == (html, md)


def test_report_leads_with_the_summary_and_ends_with_the_dag(pipeline):
    inputs, img_dir = pipeline
    html, md = build_report(inputs, image_dir=img_dir)
    order = [html.index(f'<section id="{k}"') for k in SECTIONS]
    assert order == sorted(order)  # summary first, DAG and params last
    best = _md_table(md, "Best model per task")
    cls = next(r for r in best if r.startswith("| classification"))
    # the best classifier with its CI, beside the strongest non-trivial baseline of the same run
    assert "| densenet121 | 0.700 [0.600, 0.800] | metadata: 0.650 [0.550, 0.750]; prevalence: 0.500 |" in cls
    assert any(r.startswith("| report labelling") and "keyword baseline" in r for r in best)
    assert any(r.startswith("| region detection") and "prior box (mean train box): 0.350" in r for r in best)
    assert any(r.startswith("| organ segmentation") and "prior mask (mean train mask): 0.550" in r for r in best)
    # the params this run changed from the schema defaults are listed, with the default beside
    rows = _md_table(md, "This run's params that differ")
    assert any(r.startswith("| train.") or r.startswith("| convert.") for r in rows)


def test_diagnostics_show_pr_reliability_counts_and_confident_mistakes(pipeline):
    inputs, img_dir = pipeline
    html, md = build_report(inputs, image_dir=img_dir)
    assert html.count("data-pr=") == 2 and html.count("data-reliability=") == 2
    assert "ECE 0.050" in html
    rows = _md_table(md, "TP / FP / FN / TN per class")
    assert rows[0].startswith("| Edema | 1 / 2 / 0 / 3 |")
    # i1 scored 0.9 for classes it does not have: the most confident false positives; i2 (0.1) the false negatives
    assert "false positive: Edema p=0.90 (threshold 0.50)" in html and "false negative: Edema p=0.10" in html
    assert 'data-gallery="mistakes_densenet121"' in html
    assert "(2 false positive and 2 false negative (image, class) pairs in all)" in md


def _md_table(md: str, caption_start: str) -> list[str]:
    """The rows of the markdown table whose caption starts with ``caption_start`` (header and separator dropped)."""
    lines = md.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith(f"**{caption_start}"))
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows[2:]


def test_retrieval_section_shows_summary_beside_chance(pipeline):
    inputs, img_dir = pipeline
    html, md = build_report(inputs, image_dir=img_dir)
    # cross-model comparison: class average no-skip at k = 5 and chance AP@5, one row per model
    assert _md_table(md, "Retrieval comparison at k = 5") == [
        "| densenet121 | 8-d, inner product, flat index | 0.450 | 0.350 | 0.650 | 0.550 | 0.205 | 0.255 | 1 / 3 |",
        "| anaxnet | 8 bits, Hamming, ivf index | 0.550 | 0.450 | 0.750 | 0.650 | 0.205 | 0.255 | 1 / 3 |"]
    # the index each model used, with the recall of its check against exact search
    assert _md_table(md, "Search index used per model") == [
        "| densenet121 | flat | - | 1 (exact search) | - | exact search |",
        "| anaxnet | ivf | nprobe 32 | 0.970 @10 (1 queries, min 0.950) | nprobe: 16: 0.900; 32: 0.970 | ivf at nprobe 32 |"]
    # per model: every metric at every k; class average / query-weighted, no-skip / skip, chance beside no-skip
    rows = _md_table(md, "densenet121: retrieval metrics beside chance")
    assert [r.split(" | ")[0] for r in rows] == [f"| {x}@{k}" for k in (3, 5, 10) for x in ("AP", "precision", "hit", "RR")]
    assert "| precision@3 | 0.330 | 0.103 | 0.550 | 0.450 | 0.200 | 0.650 |" in rows
    assert "| AP@10 | 0.500 | 0.210 | 0.650 | 0.550 | 0.300 | 0.750 |" in rows
    # queries without a relevant result, per k
    assert _md_table(md, "anaxnet: queries without a relevant result") == [
        "| 3 | 14 / 4 | 1 | 4 / 2 | 3 / 2 |", "| 5 | 16 / 4 | 1 | 4 / 2 | 3 / 2 |", "| 10 | 21 / 4 | 1 | 4 / 2 | 3 / 2 |"]
    # these tables and the example queries, not the whole tree of retrieval.json
    section = md[md.index("## Retrieval"):md.index("## Report labeller")]
    assert [line.split(":")[0].split(" (")[0] for line in section.splitlines() if line.startswith("**")] == [
        "**Retrieval comparison at k = 5", "**Search index used per model and its recall against exact search",
        "**densenet121", "**densenet121", "**anaxnet", "**anaxnet",
        "**AP@5 / hit@5 per class, no-skip", "**densenet121", "**anaxnet"]
    assert "inner_product" not in section and "max_ef_search" not in section
    # html and markdown hold the same tables
    for key in ("retrieval", "retrieval_densenet121", "retrieval_anaxnet_queries", "retrieval_per_class"):
        assert f'data-table="{key}"' in html
    assert "<td>precision@3</td><td class=\"num\">0.330</td><td class=\"num\">0.103</td>" in html
    # example queries: a gallery with thumbnails per model; captions only (a table) without an image dir
    assert 'data-gallery="retrieval_examples_densenet121"' in html
    html2, md2 = build_report(inputs, image_dir=None)
    assert 'data-gallery="retrieval_examples_' not in html2 and 'data-table="retrieval_examples_anaxnet"' in html2
    assert "| i0: query: Edema | i1: #1 relevant, score 0.900: Edema |" in md2


def test_text_is_escaped(pipeline):
    inputs, img_dir = pipeline
    html, md = build_report(inputs, image_dir=img_dir)
    assert EVIL not in html and "<script>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &#34;q&#34;" in html  # Jinja2 autoescape (markupsafe)
    assert "Lung &lt;Opacity&gt;" in html and "Lung <Opacity>" not in html  # table cells and SVG titles
    assert "Lung \\<Opacity>" in md and "Lung <Opacity>" not in md  # a literal "<" in CommonMark


def test_training_curves_mark_the_kept_epoch_and_explain_missing_logs(pipeline):
    inputs, img_dir = pipeline
    html, md = build_report(inputs, image_dir=img_dir)
    rows = _md_table(md, "Training per model")
    dn = next(r for r in rows if r.startswith("| densenet121 "))
    # 3 epochs, the first of the tied maxima kept (epoch 1, as cxr.train.BestState), beside chance
    assert "| train@densenet121 | 3 epochs | 1 | 0.720 (chance 0.500) | 0.900 -> 0.400 | 0.700 |" in dn, dn
    det = next(r for r in rows if r.startswith("| detector "))
    assert "| detector | detector | 2 steps | n/a (no validation curve) | n/a | 4.500 -> 3.250 | n/a |" in det, det
    assert next(r for r in rows if r.startswith("| anaxnet ")).count("absent") == 1
    assert any(r.startswith("| unet | unet | absent |") for r in rows)
    # the missing and the damaged log are explained, not errors
    assert "anaxnet (train@anaxnet): no training curves: no DVCLive log at reports/training/anaxnet/plots/metrics; " \
           "run `dvc repro train@anaxnet` (or `dvc pull`)." in md
    assert "unet (unet): no training curves: reports/unet/live/plots/metrics/train/loss.tsv: expected the columns " \
           "step and loss" in md
    # drawn: densenet121's loss panel (training + validation) and AUROC panel, both marking epoch 1
    dn_html = html[html.index('data-training-model="densenet121"'):]
    dn_html = dn_html[:dn_html.index("</div>")]
    assert dn_html.count("<svg") == 2 and dn_html.count('data-mark="1"') == 2
    assert 'data-series="loss/training"' in dn_html and 'data-series="loss/validation"' in dn_html
    assert html.count('data-training-model="detector"') == 1 and 'data-training-model="anaxnet"' not in html


def test_training_section_without_logs_in_the_dag(tmp_path, monkeypatch):
    stages = {k: v for k, v in DVC_YAML["stages"].items() if k not in ("train", "detector", "unet")}
    inputs, img_dir = make_pipeline(tmp_path, {"stages": stages})
    monkeypatch.chdir(tmp_path)
    html, md = build_report(_rel(inputs, tmp_path), image_dir=img_dir.relative_to(tmp_path))
    assert '<section id="training" data-absent="no">' in html  # the detector and UNet rows say why they are absent
    assert "detector: no training curves: no stage of dvc.yaml declares reports/detector/live/plots/metrics." in md
    inputs = ReportInputs(**{**vars(_rel(inputs, tmp_path)), "training": None, "detector_live": None, "unet_live": None})
    html, _ = build_report(inputs, image_dir=None)
    assert '<section id="training" data-absent="yes">' in html


def test_templates_escape_every_field_but_trusted_svg():
    """The HTML template autoescapes every value a block carries (text, captions, keys, cells, names, alt
    text, section titles and absence reasons); only SVG markup from cxr.report.charts goes in as is."""
    from cxr.report.blocks import Gallery, Image as ImageBlock, Section, Svg, Table, Text
    from cxr.report.render import to_html, to_markdown

    png = _png(0, (4, 4))
    blocks = (Text(EVIL), Table(EVIL, EVIL, (EVIL, "n"), ((EVIL, "0.5"),)), ImageBlock(EVIL, EVIL, png, EVIL),
              Gallery(EVIL, EVIL, (((EVIL, png, EVIL), (EVIL, None, EVIL)),)),
              Svg("chart", EVIL, '<svg data-trusted="1"><title>t</title></svg>'))
    sections = [Section(EVIL, EVIL, blocks), Section("gone", "Gone", absent=EVIL)]
    page = to_html(EVIL, sections)
    assert "<script" not in page and "alert('x')" not in page
    escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &#34;q&#34;"
    # title x2, nav (href + text), section id + h2, text, table key/caption/th/td, image key/alt/caption,
    # gallery key/caption + 2 x (title, caption) + 1 alt, svg caption, absence reason
    assert page.count(escaped) == 2 + 2 + 2 + 1 + 4 + 3 + 2 + 4 + 1 + 1 + 1, page.count(escaped)
    assert '<svg data-trusted="1"><title>t</title></svg>' in page  # trusted markup kept
    assert '<td class="num">0.5</td>' in page and '<section id="gone" data-absent="yes">' in page
    md = to_markdown(EVIL, sections)
    assert not re.search(r"(?<!\\)<", md.split("\n", 1)[1])  # below the title line, every "<" is escaped


def test_report_templates_are_package_data(repo_root):
    """`pip install .` ships the Jinja2 templates: every data file of the cxr package matches a package-data glob."""
    import tomllib

    globs = tomllib.loads((repo_root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]["*"]
    pkg = repo_root / "cxr"
    shipped = {p for g in globs for p in pkg.glob(g)}
    data = {p for p in pkg.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    templates = set((pkg / "report/templates").glob("*.j2"))
    assert {t.name for t in templates} >= {"report.html.j2", "report.md.j2"}
    assert data - shipped == set(), sorted(str(p.relative_to(pkg)) for p in data - shipped)


def test_sections_of_stages_missing_from_the_dag_say_so(tmp_path, monkeypatch):
    stages = {k: v for k, v in DVC_YAML["stages"].items() if k not in ("localize", "retrieve", "detector")}
    inputs, img_dir = make_pipeline(tmp_path, {"stages": stages})
    monkeypatch.chdir(tmp_path)
    shutil.rmtree(tmp_path / "data/processed/localization")  # not declared, so never read
    html, md = build_report(_rel(inputs, tmp_path), image_dir=img_dir.relative_to(tmp_path))
    assert '<section id="localization" data-absent="yes">' in html
    assert '<section id="retrieval" data-absent="yes">' in html
    assert "no stage of dvc.yaml produces data/processed/localization" in html
    assert "no stage of dvc.yaml produces reports/detector/metrics.json" in html
    assert 'data-table="unet"' in html and 'data-table="detector"' not in html
    assert "> Not in this pipeline: no stage of dvc.yaml produces data/processed/retrieval" in md


def _corrupt(kind: str, root: Path) -> str:
    if kind == "missing_label":
        (root / "reports/label.json").unlink()
        return r"reports/label.json: missing \(declared by stage label; run `dvc repro label`\)"
    if kind == "bad_json":
        (root / "reports/split.json").write_text("{not json", encoding="utf-8")
        return r"reports/split.json: not valid JSON"
    if kind == "json_list":
        (root / "reports/coco.json").write_text("[1, 2]", encoding="utf-8")
        return r"reports/coco.json: expected a JSON object, got list"
    if kind == "missing_key":
        _write_json(root / "reports/unet/metrics.json", {"val": {"mean_dice": 0.5}})
        return r"reports/unet/metrics.json: missing key 'val.images'"
    if kind == "wrong_type":
        _write_json(root / "reports/models.json", {"densenet121": {"macro_auroc": "high"}})
        return r"reports/models.json: 'macro_auroc' should be int or float, got str"
    if kind == "roc_columns":
        pd.DataFrame({"class": ["a"], "fpr": [0.0]}).to_csv(root / "data/processed/evaluation/anaxnet/roc.csv")
        return r"data/processed/evaluation/anaxnet/roc.csv: missing column\(s\) \['tpr'\]"
    if kind == "missing_model_dir":
        shutil.rmtree(root / "data/processed/evaluation/anaxnet")
        return r"data/processed/evaluation/anaxnet/metrics.json: missing \(declared by stage evaluate@anaxnet"
    if kind == "bad_parquet":
        (root / "data/interim/images.parquet").write_bytes(b"PAR1 not really")
        return r"data/interim/images.parquet: not a readable parquet file"
    if kind == "no_manifest":
        (root / "data/raw/manifest.json").unlink()
        return r"data/raw: has neither ingest-manifest.json nor manifest.json"
    if kind == "gallery_not_png":
        (root / "data/processed/localization/anaxnet/gallery.png").write_bytes(b"GIF89a")
        return r"data/processed/localization/anaxnet/gallery.png: not a PNG file"
    if kind == "example_png_missing":
        (root / "data/interim/images/i2.png").unlink()
        return r"data/interim/images/i2.png: converted image of a retrieval example is missing"
    if kind == "retrieval_k":
        ret = retrieval_json("anaxnet", 1, ["Edema"])
        del ret["metrics"]["5"]["no_skip"]
        _write_json(root / "data/processed/retrieval/anaxnet/retrieval.json", ret)
        return r"retrieval/anaxnet/retrieval.json: missing key 'metrics.5.no_skip'"
    if kind == "retrieval_chance":
        ret = retrieval_json("densenet121", 0, ["Edema"])
        del ret["chance"]["10"]
        _write_json(root / "data/processed/retrieval/densenet121/retrieval.json", ret)
        return r"retrieval/densenet121/retrieval.json: missing key 'chance.10'"
    if kind == "localization_kind":
        _write_json(root / "data/processed/localization/anaxnet/localization.json", {"supported": True, "kind": "x"})
        return r"localization/anaxnet/localization.json: unknown localisation kind 'x'"
    if kind == "gallery_missing":
        (root / "data/processed/localization/densenet121/gallery.png").unlink()
        return r"localization/densenet121/gallery.png: missing \(declared output of stage localize@densenet121\)"
    if kind == "bad_params":
        (root / "params.yaml").write_text("train: {epochs: -3}\n", encoding="utf-8")
        return r"train.epochs"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing_label", "bad_json", "json_list", "missing_key", "wrong_type", "roc_columns",
                                  "missing_model_dir", "bad_parquet", "no_manifest", "gallery_not_png", "bad_params",
                                  "example_png_missing", "retrieval_k", "retrieval_chance", "localization_kind", "gallery_missing"])
def test_missing_or_malformed_inputs_are_clear_errors(pipeline, kind):
    inputs, img_dir = pipeline
    pattern = _corrupt(kind, Path.cwd())
    with pytest.raises(ReportError, match=pattern):
        build_report(inputs, image_dir=img_dir)


def _argv(inputs: ReportInputs, html: Path, md: Path, img_dir: Path | None = None) -> list[str]:
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in vars(inputs).items()]
    if img_dir is not None:
        argv.append(f"--image-dir={img_dir}")
    return [*argv, f"--html={html}", f"--summary={md}"]


def test_stage_writes_both_files_and_fails_cleanly(pipeline, caplog):
    inputs, img_dir = pipeline
    html, md = Path("out/index.html"), Path("out/summary.md")
    assert report_stage.main(_argv(inputs, html, md, img_dir)) == 0
    assert html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert md.read_text(encoding="utf-8").startswith("# cxr-pipeline report")
    Path("reports/features.json").write_text("", encoding="utf-8")
    assert report_stage.main(_argv(inputs, html, md, img_dir)) == 1
    assert "reports/features.json: not valid JSON" in caplog.text


def test_report_stage_declares_what_it_reads(repo_root):
    """Every path on the report stage's command line that a stage produces is a declared dependency."""
    from cxr.params import load_all

    params = {k: v.model_dump(mode="json") for k, v in load_all(repo_root / "params.yaml").items()}
    spec = yaml.safe_load((repo_root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["report"]
    dag = load_dag(repo_root / "dvc.yaml", params)
    report = next(s for s in dag.stages if s.name == "report")
    argv = shlex.split(spec["cmd"])[2:]
    args = report_stage.get_args_parser().parse_args(argv)
    outs = {args.html, args.summary}
    assert outs == set(report.outs)
    for flag, value in vars(args).items():
        if value is None or value in outs or flag in ("params", "dvc_yaml"):
            continue
        if dag.producers(value):
            assert any(overlaps(value, d) for d in report.deps), f"--{flag} {value} is read but not a dependency"
    assert "params.yaml:*" in report.params  # the page shows every parameter


# -- headless Chromium ----------------------------------------------------------------------------

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_page_renders_in_headless_chromium(pipeline):
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: {INSTALL_HINT}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pinned in requirements.txt
        pytest.fail(f"playwright is not installed ({exc}); run `make setup`")
    inputs, img_dir = pipeline
    page_path = Path("reports/index.html").resolve()
    assert report_stage.main(_argv(inputs, page_path, Path("reports/summary.md"), img_dir)) == 0
    t0 = time.perf_counter()
    errors, requests = [], []
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), headless=True,
                                                    args=CHROMIUM_ARGS, offline=True)
        try:
            page = ctx.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
            sections = page.evaluate("Object.fromEntries(Array.from(document.querySelectorAll('section'))"
                                     ".map(s => [s.id, s.innerText.trim().length]))")
            tables = page.evaluate("Object.fromEntries(Array.from(document.querySelectorAll('table[data-table]'))"
                                   ".map(t => [t.dataset.table, t.tBodies[0].rows.length]))")
            svgs = page.evaluate("Array.from(document.querySelectorAll('svg')).map(s => s.getBoundingClientRect().width)")
        finally:
            ctx.close()
    assert images and all(ok and w > 0 for _, ok, w in images), images
    assert set(SECTIONS) <= set(sections) and all(n > 0 for n in sections.values()), sections
    missing = [t for t in TABLES if not tables.get(t)]
    assert not missing, f"tables missing or empty in the rendered page: {missing}"
    assert svgs and all(w > 0 for w in svgs)
    assert not errors, errors
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert time.perf_counter() - t0 < 30


def test_unsupported_localisation_is_explained(pipeline):
    inputs, img_dir = pipeline
    d = Path("data/processed/localization/anaxnet")
    (d / "gallery.png").unlink()
    _write_json(d / "localization.json", {"model": "anaxnet", "supported": False, "reason": "no <CAM> layers"})
    html, md = build_report(inputs, image_dir=img_dir)
    assert "anaxnet: localisation not applicable: no &lt;CAM&gt; layers" in html
    assert 'data-figure="gallery_anaxnet"' not in html and 'data-figure="gallery_densenet121"' in html
    assert "| anaxnet | not applicable |" in md


@pytest.mark.parametrize("mode", ["L", "I;16", "P", "RGB"])
def test_thumbnails_of_every_png_mode(tmp_path, mode):
    from cxr.report.charts import thumbnail

    arr = (np.arange(300 * 200).reshape(200, 300) % 251).astype(np.uint16 if mode == "I;16" else np.uint8)
    im = Image.fromarray(arr * 200 if mode == "I;16" else arr)
    im = im if mode in ("L", "I;16") else im.convert(mode)
    im.save(tmp_path / "x.png")
    png = thumbnail(tmp_path / "x.png", 96)
    out = Image.open(io.BytesIO(png))
    assert out.size == (96, 64) and out.mode in ("L", "RGB")
    assert np.asarray(out).std() > 0  # not blank
    assert thumbnail(tmp_path / "x.png", 96) == png
