"""Why do the anatomy-aware models lose to a plain DenseNet? Their design choices, side by side in one run.

The region models (AnaXNet, the CheXtriev-style graph transformer) differ from densenet121 in three
ways at once: (a) their regions come from the detector's predicted boxes (or the scene graph's GT
boxes, ``features.boxes: gt``), (b) their region features are the frozen box-head features of a
detector trained to find anatomy, not findings, and (c) only MIMIC-style images have scene graphs,
so their region labels (node loss) and, with GT boxes, their regions exist on a subset of the images.
This bench varies one thing at a time on a trained default workspace (read only):

* boxes: predicted (detector) | GT (scene graph);
* region features: the detector's box head (as the stage) | the trained densenet121's own backbone
  feature map pooled inside each region box (``torchvision.ops.roi_align``);
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

import numpy as np
import pandas as pd
import torch
from torchvision.ops import roi_align

from _common import Workspace, auroc_ci, baselines, evaluate_dir, machine_line, print_table, train_eval, \
    training_precision
from cxr.anatomy.features import extract_features
from cxr.data import load_png_square
from cxr.inference import load_model_dir
from cxr.intensity import normalise
from cxr.localize.boxes import Geometry
from cxr.params import load_section


def classifier_features(src: Path, dst: Path, ws: Workspace, model_dir: Path, batch: int = 32) -> dict:
    """A copy of the features folder ``src`` whose features are the classifier backbone's map pooled inside each
    region box (roi_align, 2 x 2 bins averaged, on the map the head pools) instead of the detector box head's."""
    model, card = load_model_dir(model_dir)
    model.eval()
    size, norm = int(card["input"]["size"]), card["input"].get("normalisation")
    index = pd.read_parquet(src / "index.parquet")
    boxes = np.load(src / "boxes.npy")
    mask = np.load(src / "mask.npy")
    rows = ws.images.set_index("image_id")
    with torch.inference_mode():
        probe = model.features(torch.zeros(1, 1, size, size))
    dim, grid = int(probe.shape[1]), int(probe.shape[-1])
    feats = np.full((len(index), boxes.shape[1], dim), np.nan, np.float16)
    for s in range(0, len(index), batch):
        part = index.iloc[s:s + batch]
        x = np.stack([load_png_square(ws.images_dir / p, size) for p in part["png_path"]])
        with torch.inference_mode():
            fmap = model.features(normalise(torch.from_numpy(x)[:, None], dict(norm)))
            rois = []
            for j, i in enumerate(part["image_id"]):
                r = s + j
                geo = Geometry.from_row({"image_id": i, **rows.loc[i].to_dict()}, size)
                b = geo.png_to_input(np.nan_to_num(boxes[r]))
                rois.append(torch.from_numpy(np.concatenate([np.full((len(b), 1), j), b], 1)).float())
            pooled = roi_align(fmap.float(), torch.cat(rois), output_size=2, spatial_scale=grid / size,
                               sampling_ratio=2, aligned=True).mean((2, 3))
        pooled = pooled.reshape(len(part), boxes.shape[1], dim).numpy()
        feats[s:s + len(part)] = np.where(mask[s:s + len(part), :, None], pooled, np.nan).astype(np.float16)
    dst.mkdir(parents=True)
    for f in ("index.parquet", "mask.npy", "boxes.npy", "scores.npy", "labels.npy"):
        shutil.copy2(src / f, dst / f)
    np.save(dst / "features.npy", feats, allow_pickle=False)
    meta = json.loads((src / "meta.json").read_text())
    meta.update(dim=dim, features_from=f"{card['architecture']} backbone map ({grid}x{grid} at {size} px), roi_align")
    (dst / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


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
    for model in args.models:
        if ws.model(model).is_dir():
            row(f"{model} (default model)", "detector", "pred", "all frontal",
                evaluate_dir(ws, ws.model(model), test_sg, ws.features_dir))

    # feature folders, cheapest first: detector on pred boxes (the stage's), classifier ROI on pred boxes,
    # then the detector on GT boxes and the classifier ROI on GT boxes
    fparams = load_section("features", ws.params_file)
    folders = {("detector", "pred"): ws.features_dir}

    def build(feats: str, boxes: str) -> Path:
        t0 = time.perf_counter()
        dst = tmp / f"features_{feats}_{boxes}"
        if not dst.exists() and feats == "detector":
            extract_features(ws.model("detector"), ws.coco_dir, ws.images, ws.splits, ws.images_dir, dst, boxes=boxes,
                             score_thresh=fparams.score_thresh, views=fparams.views, batch_size=fparams.batch_size,
                             device="cpu", progress=False)
        elif not dst.exists():
            classifier_features(folders[("detector", boxes)], dst, ws, ws.model(args.classifier))
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
