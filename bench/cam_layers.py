"""Why do Grad-CAM heatmaps peak at image borders? A controlled experiment on one trained model.

Same trained model, same validation-chosen heatmap threshold rule, same test boxes and the same
scoring code as the localize stage; only the layer Grad-CAM reads changes (the backbone's last
feature map, as in the stage, then earlier timm feature stages with a finer grid). Beside them, in
the same run: the prior-box baseline (mean train box per class) and, per layer, where the heatmap
peaks fall (share of peaks in the outer eighth of the input, share in the square padding).

    python bench/cam_layers.py --model-dir models/densenet121        # after `dvc repro` of the default

Prints one table; reads data/interim/images.parquet, data/processed/splits.parquet,
data/raw/nih/BBox_List_2017.csv and the converted PNGs of the default workspace.
"""

from __future__ import annotations

import argparse
import platform
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


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return platform.processor() or "unknown"
    keep = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return " ".join(keep) or "no avx2"


def stage_modules(model) -> list[tuple[str, torch.nn.Module, int]]:
    """(name, module, reduction) of the backbone's timm feature stages, finest last dropped to the last 3."""
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


def peak_stats(heat: dict, geos: dict, size: int) -> tuple[float, float]:
    """Share of heatmap argmax positions in the outer eighth of the input, and in the padding."""
    border = pad = 0
    for (i, _), h in heat.items():
        y, x = np.unravel_index(int(np.argmax(h)), h.shape)
        e = size // 8
        border += int(x < e or y < e or x >= size - e or y >= size - e)
        g = geos[i]
        px, py = g.pad
        f = size / g.side
        inside = (px * f <= x < (px + g.png_width) * f) and (py * f <= y < (py + g.png_height) * f)
        pad += int(not inside)
    n = max(len(heat), 1)
    return border / n, pad / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="models/densenet121")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--images", default="data/interim/images")
    ap.add_argument("--table", default="data/interim/images.parquet")
    ap.add_argument("--splits", default="data/processed/splits.parquet")
    ap.add_argument("--boxes", default="data/raw/nih/BBox_List_2017.csv")
    ap.add_argument("--t", default="0.25", help="threshold of the headline column (T(IoBB) and T(IoU))")
    args = ap.parse_args()
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
                              thresholds=params.thresholds, unet_dir=None)["prior_box"]["test"]["micro"]
    rows.append(("baseline: prior box", "-", "-", base["iobb"][t], base["iou"][t], base["mean_iou"], "-", "-", "-"))
    original = model.cam_target_layers
    layers = [("features (stage default)", None, None)] + [(n, m, r) for n, m, r in stage_modules(model)]
    for name, mod, red in layers:
        model.cam_target_layers = original if mod is None else (lambda m=mod: [m])
        t0 = time.perf_counter()
        heat = lp.pair_heatmaps(model, val + test, names, pixels, method=params.method, batch_size=params.batch_size,
                                norm=norm, device=torch.device("cpu"))
        thr, _ = lp.select_threshold(val, heat, geos, params.heatmap_thresholds, params.select_iou, params.max_boxes,
                                     classes)
        preds = {(i, lab): lp._pred_source(heat[(i, lab)], geos[i], thr, params.max_boxes) for i, lab, _ in test}
        s = score_boxes([(lab, g, preds[(i, lab)]) for i, lab, g in test], classes, params.thresholds)["micro"]
        border, pad = peak_stats({k: v for k, v in heat.items() if k in preds}, geos, size)
        grid = "x".join(str(size // red) for _ in range(2)) if red else "final"
        rows.append((name, grid, f"{thr:g}", s["iobb"][t], s["iou"][t], s["mean_iou"], f"{border:.2f}", f"{pad:.2f}",
                     f"{time.perf_counter() - t0:.1f}"))
    model.cam_target_layers = original
    head = ("Grad-CAM layer", "grid", "val thr", f"acc T(IoBB) {t}", f"acc T(IoU) {t}", "mean IoU",
            "peaks in outer 1/8", "peaks in padding", "s")
    width = [max(len(str(r[k])) if not isinstance(r[k], float) else 5 for r in [head, *rows]) for k in range(len(head))]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    for r in [head, *rows]:
        print("  ".join(fmt(v).ljust(w) for v, w in zip(r, width)))


if __name__ == "__main__":
    main()
