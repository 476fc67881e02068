"""``localize@M``: weak localisation of one trained model, scored against ground-truth finding boxes.

Ground truth: NIH ``BBox_List_2017.csv`` (read by :func:`cxr.sources.nih.read_boxes`; the
synthetic cohort writes it in the pixel grid of the stored source image, like the real file).
Box labels are ChestX-ray14 terms, mapped into the model's label space with the packaged
vocabulary map (``maps/chestxray14.csv``; e.g. Infiltration -> Lung Opacity, Effusion -> Pleural
Effusion, Pneumonia -> Pneumonia and Lung Opacity in chexpert14; every finding -> Abnormal in
the binary space). Terms without a counterpart (e.g. Mass in anaxnet9) are counted, not scored.
Scoring happens in the ground truth's frame (source pixels, :mod:`cxr.localize.boxes`).

Image models (``cam_target_layers``): for every (image, class) with GT boxes, the heatmap of that
class (whatever the predicted probability, as ChestX-ray8 evaluates) -> boxes at a heatmap
threshold -> source pixels -> :func:`cxr.localize.score.score_boxes`. The threshold is chosen
on the VALIDATION images with GT boxes among ``params.heatmap_thresholds``: the one with the
highest micro accuracy at T(IoU) = ``params.select_iou``; ties go to the higher mean IoU, then to
the lower threshold. The TEST images are scored once with it.

Region models (``forward_all``: per-region finding logits; AnaXNet, graph transformer): per
finding AUROC of the region predictions against the region labels over present regions of the
TEST images, and, for TEST images with GT boxes, the box of the top-scoring present region for
that finding scored against the GT boxes like a single predicted box ("pointing").

Any other model gets ``{"supported": false, "reason": ...}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from cxr.data import NORMALISATION, DataError, RegionDataset, RegionFeatures, join_split, load_png_square, normalise
from cxr.errors import CxrError
from cxr.evaluate.metrics import auroc
from cxr.inference import load_model_dir
from cxr.labels import CHESTXRAY14, load_map, resolve_space
from cxr.localize.boxes import BoxError, Geometry, heatmap_boxes, xywh_to_xyxy
from cxr.localize.cam import gradcam_layer, image_heatmaps, supports_heatmaps
from cxr.localize.gallery import Tile, render_gallery
from cxr.localize.baselines import lung_box_predictions, prior_box_predictions
from cxr.localize.score import score_boxes
from cxr.sources.nih import boxes_on_grid, read_boxes

log = logging.getLogger(__name__)

FRAME = "source image pixels (the grid of BBox_List_2017.csv; images.parquet rows x cols)"


class LocalizeError(CxrError, ValueError):
    """Localisation cannot run: missing inputs, unusable geometry, bad params (message names it)."""


def box_label_map(label_names: Sequence[str]) -> dict[str, list[str]]:
    """ChestX-ray14 box term -> the labels of ``label_names`` it counts for (may be empty)."""
    names = list(label_names)
    if names == ["Abnormal"]:
        return {t: ["Abnormal"] for t in CHESTXRAY14 if t != "No Finding"}
    try:
        space, _ = resolve_space(names)
    except ValueError as exc:
        raise LocalizeError(f"cannot map box labels into the model's labels {names}: {exc}") from None
    m = load_map("chestxray14")
    return {t: [x for x in cell.split("|") if x in names] for t, cell in zip(m["term"], m[space])}


def ground_truth(bbox_csv: str | Path, images: pd.DataFrame, splits: pd.DataFrame, label_names: Sequence[str]
                 ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """GT boxes in the model's label space, with split and source-frame ``x1, y1, x2, y2``.

    Returns:
        The table (image_id, split, label, term, x1, y1, x2, y2; one row per box and model label)
        and counts (boxes read, unmapped terms, boxes of images without an ``ok`` PNG or split).
    """
    raw, issues = read_boxes(bbox_csv, unknown="count")
    raw, off_grid = boxes_on_grid(raw, images)
    lm = box_label_map(label_names)
    ok = images.loc[images["status"] == "ok", ["image_id"]]
    df = raw.merge(ok, on="image_id", how="inner").merge(splits[["image_id", "split"]], on="image_id", how="inner")
    unmapped = raw.loc[raw["label"].map(lambda t: not lm.get(t)), "label"].value_counts().sort_index()
    rows = []
    xyxy = xywh_to_xyxy(df[["x", "y", "w", "h"]].to_numpy()) if len(df) else np.zeros((0, 4))
    for (r, b) in zip(df.itertuples(index=False), xyxy):
        for lab in lm.get(r.label, []):
            rows.append({"image_id": r.image_id, "split": r.split, "label": lab, "term": r.label,
                         "x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3]})
    gt = pd.DataFrame(rows, columns=["image_id", "split", "label", "term", "x1", "y1", "x2", "y2"])
    gt = gt.drop_duplicates().sort_values(["split", "image_id", "label", "x1", "y1", "x2", "y2"], kind="stable")
    counts = {
        "boxes_read": int(len(raw)) + off_grid,
        "boxes_skipped_not_1024px": off_grid,
        "malformed_rows": len(issues),
        "boxes_without_usable_image": int(len(raw) - len(df)),
        "unmapped_terms": {str(k): int(v) for k, v in unmapped.items()},
        "gt_boxes_per_split": {s: int((gt["split"] == s).sum()) for s in ("train", "val", "test")},
        "gt_images_per_split": {s: int(gt.loc[gt["split"] == s, "image_id"].nunique()) for s in ("train", "val", "test")},
    }
    return gt.reset_index(drop=True), counts


def geometries(images: pd.DataFrame, ids: Sequence[str], size: int) -> dict[str, Geometry]:
    """:class:`Geometry` of each image id (from images.parquet)."""
    need = {"image_id", "scale", "offset_x", "offset_y", "out_rows", "out_cols"}
    missing = need - set(images.columns)
    if missing:
        raise LocalizeError(f"images table lacks column(s) {sorted(missing)} (they come from the convert stage)")
    rows = images.set_index("image_id")
    out = {}
    for i in ids:
        try:
            out[i] = Geometry.from_row({"image_id": i, **rows.loc[i].to_dict()}, size)
        except BoxError as exc:
            raise LocalizeError(str(exc)) from None
    return out


def _pairs(gt: pd.DataFrame, split: str) -> list[tuple[str, str, np.ndarray]]:
    """(image_id, label, GT boxes [G, 4]) per (image, label) of ``split``, sorted."""
    sub = gt[gt["split"] == split]
    return [(i, lab, g[["x1", "y1", "x2", "y2"]].to_numpy(np.float64))
            for (i, lab), g in sub.groupby(["image_id", "label"], sort=True)]


def baseline_scores(gt: pd.DataFrame, test: Sequence[tuple[str, str, np.ndarray]], classes: Sequence[str], *,
                    images: pd.DataFrame, images_dir: str | Path, size: int, thresholds: Sequence[float],
                    unet_dir: str | Path | None, device: str = "auto") -> dict[str, Any]:
    """The prior-box and whole-lung-box baselines (cxr.localize.baselines) on the same TEST pairs, classes and
    thresholds as the model; the lung box is "not applicable" (with the reason) without a UNet model dir."""
    out: dict[str, Any] = {}
    if not test:
        return out
    preds, rule = prior_box_predictions(gt, test, classes, lambda ids: geometries(images, ids, size))
    out["prior_box"] = {"rule": rule, "test": score_boxes([(lab, g, preds[(i, lab)]) for i, lab, g in test], classes,
                                                            thresholds)}
    if unet_dir is None or not (Path(unet_dir) / "card.json").is_file():
        out["lung_box"] = {"not_applicable": f"no organ UNet model dir at {str(unet_dir)!r}"}
        return out
    geos = geometries(images, sorted({p[0] for p in test}), size)
    try:
        preds, rule = lung_box_predictions(unet_dir, test, images, images_dir, geos, device)
    except ValueError as exc:
        out["lung_box"] = {"not_applicable": str(exc)}
        return out
    out["lung_box"] = {"rule": rule, "test": score_boxes([(lab, g, preds[(i, lab)]) for i, lab, g in test], classes,
                                                          thresholds)}
    return out


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pair_heatmaps(model: torch.nn.Module, pairs: Sequence[tuple[str, str, np.ndarray]], label_names: Sequence[str],
                  pixels: Mapping[str, np.ndarray], *, method: str, batch_size: int, norm: Mapping,
                  device: torch.device, min_grid: int = 0) -> dict[tuple[str, str], np.ndarray]:
    """Heatmap ``[S, S]`` of each (image, label) pair: one forward pass per image, batches of images."""
    idx = {n: i for i, n in enumerate(label_names)}
    per_image: dict[str, list[str]] = {}
    for i, lab, _ in pairs:
        per_image.setdefault(i, [])
        if lab not in per_image[i]:
            per_image[i].append(lab)
    ids = sorted(per_image)
    out: dict[tuple[str, str], np.ndarray] = {}
    model.to(device)
    for s in range(0, len(ids), batch_size):
        chunk = ids[s:s + batch_size]
        x = torch.from_numpy(np.stack([pixels[i] for i in chunk]))[:, None]
        maps = image_heatmaps(model, normalise(x.to(device), dict(norm)), [[idx[lab] for lab in per_image[i]] for i in chunk],
                              method=method, min_grid=min_grid)
        for i, m in zip(chunk, maps):
            out.update({(i, lab): h for lab, h in zip(per_image[i], m)})
    return out


def _pred_source(heat: np.ndarray, geo: Geometry, threshold: float, max_boxes: int) -> np.ndarray:
    b = heatmap_boxes(heat, threshold, max_boxes)
    return geo.input_to_source(b[:, :4]) if len(b) else np.zeros((0, 4))


def select_threshold(pairs, heat, geos, candidates: Sequence[float], select_iou: float, max_boxes: int,
                     classes: Sequence[str]) -> tuple[float, dict[str, dict[str, float]]]:
    """Pick the heatmap threshold on VALIDATION pairs (rule: module docstring)."""
    table = {}
    best, best_key = None, None
    for t in sorted(float(c) for c in candidates):
        s = score_boxes([(lab, g, _pred_source(heat[(i, lab)], geos[i], t, max_boxes)) for i, lab, g in pairs],
                        classes, [select_iou])
        acc, miou = s["micro"]["iou"][f"{select_iou:g}"], s["micro"]["mean_iou"]
        table[f"{t:g}"] = {f"acc_iou_{select_iou:g}": acc, "mean_iou": miou}
        key = (acc, miou, -t)
        if best_key is None or key > best_key:
            best, best_key = t, key
    return float(best), table


def _load_pixels(ids: Sequence[str], images: pd.DataFrame, images_dir: str | Path, size: int) -> dict[str, np.ndarray]:
    paths = images.set_index("image_id")["png_path"]
    out = {}
    for i in ids:
        p = Path(images_dir) / paths[i]
        if not p.is_file():
            raise LocalizeError(f"converted image {p} of {i} not found (run the convert stage)")
        out[i] = load_png_square(p, size)
    return out


def _gallery_ids(ids: Sequence[str], n: int, seed: int) -> list[str]:
    ids = sorted(set(ids))
    if n <= 0 or not ids:
        return []
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(ids, size=min(n, len(ids)), replace=False).tolist())


def _gallery_tiles(test: Sequence[tuple[str, str, np.ndarray]], preds: Mapping, geos: Mapping[str, Geometry],
                   images: pd.DataFrame, images_dir: str | Path, n: int, seed: int,
                   heat: Mapping | None = None) -> list[Tile]:
    """Gallery tiles of ``n`` seeded test images: each image's first scored (class, GT boxes) pair with its
    predicted boxes (source pixels in ``preds``) and, for heatmap models, the heatmap."""
    first: dict[str, tuple[str, np.ndarray]] = {}
    for i, lab, g in test:
        first.setdefault(i, (lab, g))
    png_path = images.set_index("image_id")["png_path"]
    tiles = []
    for i in _gallery_ids(list(first), n, seed):
        lab, g = first[i]
        geo, pred = geos[i], preds[(i, lab)]
        gt_png = [b for b in (geo.source_to_png_clipped(r) for r in g) if b is not None]
        tiles.append(Tile(png=Path(images_dir) / png_path.at[i], geometry=geo, title=f"{i[:8]} {lab}"[:40],
                          gt_png=np.asarray(gt_png).reshape(-1, 4),
                          pred_png=geo.source_to_png(pred) if len(pred) else np.zeros((0, 4)),
                          heatmap=None if heat is None else heat[(i, lab)]))
    return tiles


def localize_heatmaps(model, card: Mapping, *, images: pd.DataFrame, images_dir: str | Path, gt: pd.DataFrame,
                      params: Any, seed: int, unet_dir: str | Path | None = None) -> tuple[dict[str, Any], bytes]:
    """Heatmap localisation of an image model: threshold on VAL, scores on TEST, gallery of TEST examples."""
    names = list(card["label_names"])
    size = int(card["input"]["size"])
    norm = card["input"].get("normalisation", NORMALISATION)
    val, test = _pairs(gt, "val"), _pairs(gt, "test")
    ids = sorted({p[0] for p in val + test})
    geos = geometries(images, ids, size)
    pixels = _load_pixels(ids, images, images_dir, size)
    device = _device(params.device)
    heat = pair_heatmaps(model, val + test, names, pixels, method=params.method, batch_size=params.batch_size,
                         norm=norm, device=device, min_grid=params.cam_min_grid)
    layer = "head" if params.method == "cam" else gradcam_layer(model, size, params.cam_min_grid)[0]
    scored = sorted({p[1] for p in val + test}, key=names.index)
    if val:
        thr, table = select_threshold(val, heat, geos, params.heatmap_thresholds, params.select_iou, params.max_boxes,
                                      scored)
        rule = (f"heatmap threshold with the highest micro accuracy at T(IoU)={params.select_iou:g} on the "
                f"{len({p[0] for p in val})} validation images with GT boxes (ties: higher mean IoU, then lower threshold)")
    else:
        thr, table = float(params.default_threshold), {}
        rule = "no validation image has GT boxes: localize.default_threshold used"
        log.warning("no validation GT boxes for %s: heatmap threshold %.2f from params", card.get("architecture"), thr)
    preds = {(i, lab): _pred_source(heat[(i, lab)], geos[i], thr, params.max_boxes) for i, lab, _ in test}
    classes = [n for n in names if n in scored]
    scores = score_boxes([(lab, g, preds[(i, lab)]) for i, lab, g in test], classes, params.thresholds)
    baselines = baseline_scores(gt, test, classes, images=images, images_dir=images_dir, size=size,
                                thresholds=params.thresholds, unet_dir=unet_dir, device=params.device)
    tiles = _gallery_tiles(test, preds, geos, images, images_dir, params.gallery_size, seed, heat)
    result = {
        "supported": True,
        "kind": "heatmap",
        "method": params.method,
        "heatmap_layer": layer,
        "frame": FRAME,
        "heatmap_threshold": thr,
        "threshold_rule": rule,
        "threshold_search": table,
        "max_boxes": params.max_boxes,
        "test_images": len({p[0] for p in test}),
        "val_images": len({p[0] for p in val}),
        "test": scores,
        "baselines": baselines,
        "gallery": [t.title for t in tiles],
    }
    return result, render_gallery(tiles)


def localize_regions(model, card: Mapping, *, images: pd.DataFrame, labels: pd.DataFrame, splits: pd.DataFrame,
                     images_dir: str | Path, features_dir: str | Path, bbox_csv: str | Path | None, params: Any,
                     seed: int, unet_dir: str | Path | None = None) -> tuple[dict[str, Any], bytes]:
    """Region-level localisation of an anatomy model on the TEST split (module docstring; no pointing without boxes)."""
    names = list(card["label_names"])
    feats = RegionFeatures(features_dir)
    frontal = bool(card.get("params", {}).get("frontal_only", True))
    ds = RegionDataset(join_split(images, labels, splits, names, "test", frontal_only=frontal), names, feats,
                       dict(card.get("uncertainty", {})))
    device = _device(params.device)
    model.eval().to(device)
    probs = []
    with torch.inference_mode():
        for b in DataLoader(ds, batch_size=params.batch_size, shuffle=False):
            x = {k: b[k].to(device) for k in model.input_keys}
            probs.append(torch.sigmoid(model.forward_all(**x)[1].float()).cpu())
    prob = torch.cat(probs).numpy()  # [N, R, F]
    rows = ds._rows
    rl = np.asarray(feats.region_labels[rows], dtype=np.float64)
    present = np.asarray(feats.presence[rows], dtype=bool)
    findings = list(feats.finding_names)
    if prob.shape[1:] != rl.shape[1:]:
        raise LocalizeError(f"model region outputs {prob.shape[1:]} do not match the features' region labels {rl.shape[1:]}")
    per = {}
    for f, name in enumerate(findings):
        ok = present & ~np.isnan(rl[:, :, f])
        a = auroc(prob[:, :, f][ok], rl[:, :, f][ok] == 1) if ok.any() else float("nan")
        per[name] = {"auroc": None if np.isnan(a) else a, "n_regions": int(ok.sum()),
                     "n_positive": int((rl[:, :, f][ok] == 1).sum())}
    defined = [v["auroc"] for v in per.values() if v["auroc"] is not None]
    region_auroc = {"per_finding": per, "macro": float(np.mean(defined)) if defined else None, "n_findings": len(defined)}
    head = {"supported": True, "kind": "region", "frame": FRAME, "findings": findings, "test_images": len(ds),
            "region_auroc": region_auroc}
    if bbox_csv is None:
        return {**head, "pointing": None, "ground_truth": None, "gallery": []}, render_gallery([])
    # pointing: top-scoring present region per (image, finding) with GT boxes
    gt, counts = ground_truth(bbox_csv, images, splits, findings)
    test = [p for p in _pairs(gt, "test") if p[0] in feats.rows]
    pos = {i: k for k, i in enumerate(ds.meta["image_id"])}
    test = [p for p in test if p[0] in pos]
    # region boxes are PNG pixels: only the source <-> png part of the geometry is used (input side unused)
    geos = geometries(images, sorted({p[0] for p in test}), size=1)
    boxes_png = np.asarray(feats.boxes[rows], dtype=np.float64)
    preds, regions = {}, {}
    for i, lab, _ in test:
        k, f = pos[i], findings.index(lab)
        s = np.where(present[k], prob[k, :, f], -np.inf)
        if not np.isfinite(s).any():
            preds[(i, lab)], regions[(i, lab)] = np.zeros((0, 4)), None
            continue
        r = int(np.argmax(s))
        preds[(i, lab)] = geos[i].png_to_source(boxes_png[k, r])
        regions[(i, lab)] = feats.region_names[r]
    classes = sorted({p[1] for p in test}, key=findings.index)
    pointing = score_boxes([(lab, g, preds[(i, lab)]) for i, lab, g in test], classes, params.thresholds)
    baselines = baseline_scores(gt, test, classes, images=images, images_dir=images_dir, size=1,
                                thresholds=params.thresholds, unet_dir=unet_dir, device=params.device)
    tiles = _gallery_tiles(test, preds, geos, images, images_dir, params.gallery_size, seed)
    result = {
        **head,
        "pointing": {"rule": "box of the top-scoring present region for the GT finding vs the GT boxes (IoU / IoBB)",
                     "test_images": len({p[0] for p in test}), "scores": pointing,
                     "top_regions": {f"{i}|{lab}": regions[(i, lab)] for i, lab, _ in test},
                     "baselines": baselines},
        "ground_truth": counts,
        "gallery": [t.title for t in tiles],
    }
    return result, render_gallery(tiles)


def localize_model(model_dir: str | Path, *, images: pd.DataFrame, labels: pd.DataFrame, splits: pd.DataFrame,
                   images_dir: str | Path, bbox_csv: str | Path, params: Any, seed: int,
                   features_dir: str | Path | None = None, unet_dir: str | Path | None = None
                   ) -> tuple[dict[str, Any], bytes | None]:
    """Localisation of the model in ``model_dir`` (heatmaps, regions, or an explained "unsupported").

    Args:
        model_dir: a model dir (``cxr.inference.load_model_dir``).
        images, labels, splits: images.parquet, labels.parquet, splits.parquet.
        images_dir: converted PNG directory.
        bbox_csv: ``BBox_List_2017.csv`` (NIH format).
        params: the ``localize`` params section.
        seed: base seed (gallery sample).
        features_dir: region features (anatomy models).
        unet_dir: the organ UNet model dir of the whole-lung-box baseline (None: that baseline is not applicable).

    Returns:
        The result JSON and the gallery PNG bytes (None when unsupported).
    """
    model, card = load_model_dir(model_dir)
    head = {"model": Path(model_dir).name, "architecture": card["architecture"], "label_names": card["label_names"]}
    has_boxes = Path(bbox_csv).is_file()
    if supports_heatmaps(model):
        if not has_boxes:
            return {**head, "supported": False, "reason": f"no ground-truth box file {str(bbox_csv)!r} (NIH "
                    "BBox_List_2017.csv format): heatmap localisation has nothing to be scored against"}, None
        gt, counts = ground_truth(bbox_csv, images, splits, card["label_names"])
        if not len(gt):
            return {**head, "supported": False, "ground_truth": counts,
                    "reason": f"no ground-truth finding box on a usable image ({counts['boxes_read']} boxes read, "
                              f"{counts['boxes_skipped_not_1024px']} skipped because their NIH image is not "
                              f"1024 x 1024, {counts['boxes_without_usable_image']} without a converted image "
                              "in a split)"}, None
        res, png = localize_heatmaps(model, card, images=images, images_dir=images_dir, gt=gt, params=params, seed=seed,
                                     unet_dir=unet_dir)
        return {**head, **res, "ground_truth": counts}, png
    if callable(getattr(model, "forward_all", None)) and card.get("input", {}).get("kind") == "region_features":
        if features_dir is None:
            raise LocalizeError(f"model {card['architecture']!r} localises per region and needs --features")
        try:
            res, png = localize_regions(model, card, images=images, labels=labels, splits=splits, images_dir=images_dir,
                                        features_dir=features_dir, bbox_csv=bbox_csv if has_boxes else None,
                                        params=params, seed=seed, unet_dir=unet_dir)
        except DataError as exc:
            raise LocalizeError(str(exc)) from None
        return {**head, **res}, png
    return {**head, "supported": False,
            "reason": f"model {card['architecture']!r} has neither class activation maps (cam_target_layers) nor "
                      "per-region finding outputs (forward_all on region features): nothing to localise"}, None


def metrics_view(result: Mapping[str, Any]) -> dict[str, Any]:
    """The result without its per-example lists (gallery captions, top regions): the DVC metrics copy."""
    out = {k: v for k, v in result.items() if k not in ("gallery", "label_names")}
    if isinstance(out.get("pointing"), Mapping):
        out["pointing"] = {k: v for k, v in out["pointing"].items() if k != "top_regions"}
    return out
