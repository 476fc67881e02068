"""Why do the anatomy-aware models lose to a plain DenseNet? Their design choices, side by side in one run.

The region models (AnaXNet, the CheXtriev-style graph transformer) differ from densenet121 in three
ways at once: (a) their regions come from the detector's predicted boxes (or the scene graph's GT
boxes, ``features.boxes: gt``), (b) their region features are the frozen box-head features of a
detector trained to find anatomy, not findings, and (c) only MIMIC-style images have scene graphs,
so their region labels (node loss) and, with GT boxes, their regions exist on a subset of the images.
This bench varies one thing at a time on a trained default workspace (read only):

* boxes: predicted (detector) | GT (scene graph);
* region features: the detector's box head (AnaXNet as published, ``features.extractor: detector``) | the
  trained densenet121's own feature map pooled inside each region box (``torchvision.ops.roi_align``, the
  default ``features.extractor: densenet121``);
* training images: every frontal image with features | only the images with a scene graph;
* densenet121 retrained on the scene-graph images only (same params), beside the default model;
* segfusion_van_gcn (default model) and the prevalence / pixels16 / metadata baselines.

Every row is scored on the same TEST images (those with a scene graph: the only ones every variant
can score, GT boxes included) with the evaluate stage's code: macro AUROC with its patient-bootstrap
CI (``evaluate.bootstrap`` resamples). Training uses the workspace's params (``train`` section).

    python bench/anatomy_ablation.py --root /path/to/workspace          # after `dvc repro` of the default
    python bench/anatomy_ablation.py --root . --models anaxnet --no-retrain-densenet   # quicker

Writes nothing into the workspace (temporary dirs only).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from _common import Workspace, auroc_ci, baselines, evaluate_dir, machine_line, print_table, train_eval, \
    training_precision
from cxr.anatomy.features import extract_features
from cxr.params import load_section


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."), help="trained default workspace (read only)")
    ap.add_argument("--models", nargs="+", default=["anaxnet", "graph_transformer"], help="region models to train")
    ap.add_argument("--classifier", default="densenet121", help="model dir whose backbone gives the ROI features")
    ap.add_argument("--no-retrain-densenet", action="store_true", help="skip densenet121 on the scene-graph subset")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder (kept) instead of a temporary one")
    args = ap.parse_args()
    ws = Workspace(args.root)
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="cxr-bench-anatomy-"))
    tmp.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    print(machine_line(f"training {training_precision(True)} (CNNs) / {training_precision(False)} (region models); "
                       "features / heatmaps float32, stored float16"))
    index = pd.read_parquet(ws.features_dir / "index.parquet")
    sg = set(index.loc[index["has_scene_graph"], "image_id"])
    frontal = set(index["image_id"])
    test_sg = ws.restrict({"test": sg})
    sg_only = ws.restrict({"train": sg, "val": sg, "test": sg})
    n = {s: (int(((index["split"] == s) & index["has_scene_graph"]).sum()), int((index["split"] == s).sum()))
         for s in ("train", "val", "test")}
    print(f"workspace {ws.root}: images with region features {len(frontal)}, with a scene graph {len(sg)}; "
          f"scene-graph / all per split: {n}; train params: epochs {ws.train.epochs}, image_size "
          f"{ws.train.image_size}, batch {ws.train.batch_size}, lr {ws.train.lr}; bootstrap {ws.evaluate.bootstrap}")
    print(f"every row is scored on the {n['test'][0]} TEST images with a scene graph")

    rows: list[tuple] = []

    def row(model: str, feats: str, boxes: str, train_on: str, met: dict) -> None:
        rows.append((model, feats, boxes, train_on, str(met.get("train_images", "-")), auroc_ci(met),
                     f"{met['macro_auroc_common']:.3f}" if met.get("macro_auroc_common") is not None else "-",
                     f"{met.get('seconds', 0):.0f}" if "seconds" in met else "-"))
        print(f"  {' | '.join(rows[-1])}", flush=True)

    base = baselines(ws, test_sg, tmp / "cache")
    for name in ("prevalence", "metadata", "pixels16"):
        row(f"baseline: {name}", "-", "-", "all frontal", base[name])
    row("densenet121 (default model)", "image", "-", "all frontal", evaluate_dir(ws, ws.model("densenet121"), test_sg))
    if ws.model("segfusion_van_gcn").is_dir():
        row("segfusion_van_gcn (default model)", "image+UNet", "-", "all frontal",
            evaluate_dir(ws, ws.model("segfusion_van_gcn"), test_sg))
    stage_meta = json.loads((ws.features_dir / "meta.json").read_text())
    stage_feats = (stage_meta.get("extractor") or {}).get("architecture") or "detector"
    for model in args.models:
        if ws.model(model).is_dir():
            row(f"{model} (default model)", stage_feats, "pred", "all frontal",
                evaluate_dir(ws, ws.model(model), test_sg, ws.features_dir))

    # the four feature folders (extractor x boxes); the stage's own is reused, the others built here
    fparams = load_section("features", ws.params_file)
    folders = {(stage_feats, stage_meta.get("box_source", "pred")): ws.features_dir}

    def build(feats: str, boxes: str) -> Path:
        t0 = time.perf_counter()
        dst = tmp / f"features_{feats}_{boxes}"
        if not dst.exists():
            extract_features(ws.model("detector"), ws.coco_dir, ws.images, ws.splits, ws.images_dir, dst, boxes=boxes,
                             score_thresh=fparams.score_thresh, views=fparams.views, batch_size=fparams.batch_size,
                             device="cpu", progress=False,
                             backbone_dir=None if feats == "detector" else ws.model(feats))
        print(f"  features {feats} / {boxes} boxes built in {time.perf_counter() - t0:.0f} s", flush=True)
        return dst

    for feats, boxes in (("detector", "pred"), (args.classifier, "pred"), ("detector", "gt"), (args.classifier, "gt")):
        folder = folders.get((feats, boxes)) or build(feats, boxes)
        folders[(feats, boxes)] = folder
        subsets = [("scene-graph only", sg_only)] if boxes == "gt" else [("all frontal", ws.splits),
                                                                         ("scene-graph only", sg_only)]
        for model in args.models:
            for train_on, splits in subsets:
                tag = f"m_{model}_{feats}_{boxes}_{'sg' if train_on != 'all frontal' else 'all'}"
                row(model, feats, boxes, train_on,
                    train_eval(ws, model, tmp / tag, splits=splits, test_splits=test_sg, features_dir=folder))
    if not args.no_retrain_densenet:
        row("densenet121", "image", "-", "scene-graph only",
            train_eval(ws, "densenet121", tmp / "m_densenet121_sg", splits=sg_only, test_splits=test_sg))
    print()
    print_table(("model", "region features", "boxes", "trained on", "train images",
                 f"macro AUROC [{ws.evaluate.ci:.0%} CI]", f"macro common (>={ws.evaluate.min_positives} pos)",
                 "train s"), rows)
    print(f"\nTEST: {n['test'][0]} images with a scene graph; total {time.perf_counter() - t_start:.0f} s; work dir {tmp}")
    if args.keep is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
