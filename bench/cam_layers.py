"""Why do Grad-CAM heatmaps peak at image borders? A controlled experiment on one trained model.

Same trained model, same validation-chosen heatmap threshold rule, same test boxes and the same
scoring code as the localize stage; only the layer Grad-CAM reads changes (the backbone's last
feature map, as in the stage, then earlier timm feature stages with a finer grid). Beside them, in
the same run: the prior-box baseline (mean train box per class) and, per layer, where the heatmap
peaks fall (share of peaks in the outer eighth of the input, share in the square padding).

    python bench/cam_layers.py --model-dir models/densenet121        # after `dvc repro` of the default
    python bench/cam_layers.py --root /path/to/other/workspace       # read another workspace (read only)

Prints one table; reads data/interim/images.parquet, data/processed/splits.parquet,
data/raw/nih/BBox_List_2017.csv and the converted PNGs of the default workspace.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr.localize import pipeline as lp
from cxr.localize.score import score_boxes
from cxr.params import load_section
from cxr.precision import cpu_has_bf16
from cxr.train import load_model_dir

from _common import cpu_flags


def stage_modules(model) -> list[tuple[str, torch.nn.Module, int]]:
    """(name, module, reduction) of the last 3 timm feature stages of the backbone (densenet121: denseblock2, denseblock3,
    norm5 = the map the head pools)."""
    net = model.features.net
    info = getattr(net, "feature_info", None)
    out = []
    if info is not None:
        named = dict(net.named_modules())
        for f in (info.info if hasattr(info, "info") else info):
            mod = named.get(f["module"])
            if mod is not None:
                out.append((f["module"], mod, int(f["reduction"])))
    return out[-3:]


def peak_stats(heat: dict, geos: dict, size: int) -> tuple[float, float, float]:
    """Share of heatmap argmax positions in the outer eighth of the input, in a corner (outer eighth on both
    axes), and in the square padding outside the image."""
    border = corner = pad = 0
    e = size // 8
    for (i, _), h in heat.items():
        y, x = np.unravel_index(int(np.argmax(h)), h.shape)
        ex, ey = x < e or x >= size - e, y < e or y >= size - e
        border += int(ex or ey)
        corner += int(ex and ey)
        g = geos[i]
        px, py = g.pad
        f = size / g.side
        inside = (px * f <= x < (px + g.png_width) * f) and (py * f <= y < (py + g.png_height) * f)
        pad += int(not inside)
    n = max(len(heat), 1)
    return border / n, corner / n, pad / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."),
                    help="workspace the relative paths below are read from (a DVC repo after `dvc repro`)")
    ap.add_argument("--model-dir", default="models/densenet121")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--images", default="data/interim/images")
    ap.add_argument("--table", default="data/interim/images.parquet")
    ap.add_argument("--splits", default="data/processed/splits.parquet")
    ap.add_argument("--boxes", default="data/raw/nih/BBox_List_2017.csv")
    ap.add_argument("--t", default="0.25", help="threshold of the headline column (T(IoBB) and T(IoU))")
    args = ap.parse_args()
    for k in ("model_dir", "params", "images", "table", "splits", "boxes"):
        setattr(args, k, str(args.root / getattr(args, k)))
    torch.manual_seed(0)
    params = load_section("localize", args.params)
    model, card = load_model_dir(args.model_dir)
    names, size = list(card["label_names"]), int(card["input"]["size"])
    norm = card["input"].get("normalisation")
    images, splits = pd.read_parquet(args.table), pd.read_parquet(args.splits)
    gt, _ = lp.ground_truth(args.boxes, images, splits, names)
    val, test = lp._pairs(gt, "val"), lp._pairs(gt, "test")
    ids = sorted({p[0] for p in val + test})
    geos = lp.geometries(images, ids, size)
    pixels = lp._load_pixels(ids, images, args.images, size)
    classes = sorted({p[1] for p in test}, key=names.index)
    print(f"model {card['architecture']} (input {size} px), {len(val)} val / {len(test)} test (image, class) pairs, "
          f"{sum(len(g) for *_, g in test)} test GT boxes; method {params.method}; CPU flags: {cpu_flags()}; "
          f"native bf16: {cpu_has_bf16()}; heatmaps in float32; torch threads {torch.get_num_threads()}")
    t = args.t
    rows = []
    base = lp.baseline_scores(gt, test, classes, images=images, images_dir=args.images, size=size,
                              thresholds=params.thresholds, unet_dir=None)["prior_box"]["test"]
    rows.append(("baseline: prior box", "-", "-", "-", base["micro"]["iobb"][t], base["macro"]["iobb"][t],
                 base["micro"]["iou"][t], base["micro"]["mean_iou"], "-", "-", "-", "-", "-"))
    # where the findings are: the same position statistics for the centre of each test GT box (input frame)
    centres = {}
    for i, lab, g in test:
        for k, b in enumerate(geos[i].source_to_input(g)):
            h = np.zeros((size, size), np.float32)
            h[int(np.clip((b[1] + b[3]) / 2, 0, size - 1)), int(np.clip((b[0] + b[2]) / 2, 0, size - 1))] = 1
            centres[(i, f"{lab}#{k}")] = h
    gb, gc, gp = peak_stats(centres, geos, size)
    rows.append(("reference: GT box centres", "-", "-", "-", "-", "-", "-", "-", f"{gb:.2f}", f"{gc:.2f}", f"{gp:.2f}",
                 "-", "-"))
    for r in rows:
        print(f"  {' | '.join(f'{v:.3f}' if isinstance(v, float) else str(v) for v in r)}", flush=True)
    original = model.cam_target_layers
    stages = stage_modules(model)
    variants = [("features (stage default)", None, "final", params.method)]
    variants += [(n, [m], "x".join([str(size // r)] * 2), params.method) for n, m, r in stages]
    variants += [("features (stage default)", None, "final", m) for m in ("cam", "gradcam", "gradcam++")
                 if m != params.method]
    if stages:
        variants += [(stages[0][0], [stages[0][1]], "x".join([str(size // stages[0][2])] * 2), m)
                     for m in ("gradcam++",) if m != params.method]
    for name, mods, grid, method in variants:
        model.cam_target_layers = original if mods is None else (lambda ms=mods: list(ms))
        t0 = time.perf_counter()
        try:
            heat = lp.pair_heatmaps(model, val + test, names, pixels, method=method, batch_size=params.batch_size,
                                    norm=norm, device=torch.device("cpu"))
        except ValueError as exc:  # CamError: e.g. CAM on a head that is not linear in the layer
            print(f"{name} / {method}: not applicable ({exc})")
            continue
        thr, _ = lp.select_threshold(val, heat, geos, params.heatmap_thresholds, params.select_iou, params.max_boxes,
                                     classes)
        preds = {(i, lab): lp._pred_source(heat[(i, lab)], geos[i], thr, params.max_boxes) for i, lab, _ in test}
        s = score_boxes([(lab, g, preds[(i, lab)]) for i, lab, g in test], classes, params.thresholds)
        border, corner, pad = peak_stats({k: v for k, v in heat.items() if k in preds}, geos, size)
        ties = np.mean([float((heat[k] >= heat[k].max() - 1e-6).mean()) for k in preds])
        rows.append((name, method, grid, f"{thr:g}", s["micro"]["iobb"][t], s["macro"]["iobb"][t], s["micro"]["iou"][t],
                     s["micro"]["mean_iou"], f"{border:.2f}", f"{corner:.2f}", f"{pad:.2f}",
                     f"{ties:.3f}", f"{time.perf_counter() - t0:.1f}"))
        print(f"  {' | '.join(f'{v:.3f}' if isinstance(v, float) else str(v) for v in rows[-1])} (prior box IoBB "
              f"{base['micro']['iobb'][t]:.3f})", flush=True)
    model.cam_target_layers = original
    head = ("heatmap layer", "method", "grid", "val thr", f"IoBB {t} micro", f"IoBB {t} macro", f"IoU {t} micro",
            "mean IoU", "peaks outer 1/8", "peaks corner", "peaks padding", "max plateau", "s")
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    width = [max(len(fmt(r[k])) for r in [head, *rows]) for k in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(fmt(v).ljust(w) for v, w in zip(r, width)))
    print(f"\npeaks: argmax of each TEST (image, class) heatmap; outer 1/8 = within size/8 of an edge of the "
          f"{size} px input, corner = within size/8 of two edges, padding = outside the image in the square input; "
          "max plateau = mean share of the input's pixels at the heatmap's maximum (a coarse map upsampled with "
          "clamped edges has a flat maximum whose first pixel, np.argmax's pick, lies on the border)")


if __name__ == "__main__":
    main()
