"""Region features for every image: the AnaXNet / CheXtriev input.

For each image, the trained detector runs once; for each configured region the best-scoring box
of that class above ``features.score_thresh`` is kept (``boxes: pred``, the default), or the
scene-graph box is used (``boxes: gt``, the CheXtriev setting; images without a scene graph then
have no regions). What describes the region inside that box (``features.extractor``):

* an image classifier's name (default ``densenet121``): the ``backbone`` stage trains that model on
  the image labels (``train`` params); its final feature map (``model.features``, the map its head
  pools) and, with ``features.levels: 2`` (default), the next finer stage (stride 16) are pooled inside
  each box with ``torchvision.ops.roi_align`` (2 x 2 bins, averaged) and concatenated:
  :func:`backbone_region_features`. Chosen on the validation split of the default synthetic run (README,
  anatomy section): it raises the region models' image-level and region-level validation AUROCs above
  the box head's and above the final map alone;
* ``detector``: the 1024-d output of the detector's box head (``roi_heads.box_roi_pool`` +
  ``roi_heads.box_head``) on that box, as AnaXNet published it. Its box head learnt to find anatomy,
  not findings.

Contract (folder written by the ``features`` stage; row ``i`` of every array is row ``i`` of
``index.parquet``; region axis in the order of ``meta.json["regions"]``)::

    features.npy  float16 [N, R, D]  region features; NaN where mask is False (never zero-filled)
    mask.npy      bool    [N, R]     region found (pred: a box scored >= score_thresh; gt: in the scene graph)
    boxes.npy     float32 [N, R, 4]  x1, y1, x2, y2 in PNG pixels (images.parquet png_path); NaN where missing
    scores.npy    float32 [N, R]     detector score of the kept box (1.0 for gt boxes); NaN where missing
    labels.npy    float32 [N, R, F]  region findings from the scene graph (1 / 0) in meta["findings"] order;
                                     NaN for images without a scene graph or a region it does not list
    index.parquet  row, image_id, dataset, patient_id, split, view, png_path, has_scene_graph, regions_found
    meta.json      regions, findings, dim, box_source (pred | gt), score_thresh, extractor (kind, architecture,
                   weights sha256), detector card digest, counts

Several processes: under ``torchrun --nproc-per-node P stages/features.py ...`` (or any launcher that
sets ``WORLD_SIZE`` / ``RANK``), rank k extracts every P-th batch, the rows are gathered in row order
(:func:`cxr.distributed.gather_by_index`) and rank 0 writes the folder; the arrays are those of one
process (the same batches, so the same numbers), ``meta["processes"]`` says how many ran.

Load with :func:`load_features`; use ``np.where(mask[..., None], features, 0)`` (or a learned
"missing" embedding) before feeding a model, and keep the mask for attention / pooling.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchvision.ops import roi_align

from cxr.anatomy.common import AnatomyError, fit_size, gray_float, ok_images, pick_device, read_png, resize_float
from cxr.data import png_square
from cxr.intensity import normalise
from cxr.distributed import digests_agree, gather_by_index, init_from_env
from cxr.io import sha256_file
from cxr.models.detector import load_detector
from cxr.io import atomic_dir, write_json, write_parquet
from cxr.progress import tqdm

log = logging.getLogger(__name__)

ARRAYS = ("features", "mask", "boxes", "scores", "labels")
INDEX_COLUMNS = ("row", "image_id", "dataset", "patient_id", "split", "view", "png_path", "has_scene_graph",
                 "regions_found")


def gt_regions(coco_dir: str | Path, regions: Sequence[str], findings: Sequence[str]) -> dict[str, dict]:
    """image_id -> ``{"boxes": [R, 4] (NaN missing), "labels": [R, F] (NaN missing)}`` from the COCO files."""
    out: dict[str, dict] = {}
    pos = {r: i for i, r in enumerate(regions)}
    for path in sorted(Path(coco_dir).glob("*.json")):
        coco = json.loads(path.read_text(encoding="utf-8"))
        if list(coco["info"].get("findings", [])) != list(findings):
            raise AnatomyError(f"{path}: findings {coco['info'].get('findings')} differ from the detector's "
                               f"{list(findings)}; rerun coco and detector together")
        cat = {c["id"]: c["name"] for c in coco["categories"]}
        ids = {}
        for im in coco["images"]:
            ids[im["id"]] = im["name"]
            out[im["name"]] = {"boxes": np.full((len(regions), 4), np.nan, np.float32),
                               "labels": np.full((len(regions), len(findings)), np.nan, np.float32)}
        for a in coco["annotations"]:
            r = pos.get(cat[a["category_id"]])
            if r is None:
                continue
            x, y, w, h = a["bbox"]
            slot = out[ids[a["image_id"]]]
            slot["boxes"][r] = (x, y, x + w, y + h)
            slot["labels"][r] = a["attributes"]
    return out


@torch.inference_mode()
def _region_features(model, images: list[torch.Tensor], boxes_in: list[torch.Tensor] | None,
                     n_regions: int, score_thresh: float, head: bool = True
                     ) -> list[tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]]:
    """Per image: box-head features [R, D] (None when ``head`` is False), mask [R], boxes [R, 4] (input
    pixels), scores [R]."""
    if boxes_in is not None and not head:  # given boxes and no box-head features: the detector has nothing to do
        return [(None, (m := ~torch.isnan(b).any(1)).cpu().numpy(), b.cpu().numpy(),
                 torch.where(m, 1.0, float("nan")).cpu().numpy()) for b in boxes_in]
    il, _ = model.transform(images)
    feats = model.backbone(il.tensors)
    chosen: list[torch.Tensor] = []
    masks, scores = [], []
    if boxes_in is None:
        proposals, _ = model.rpn(il, feats)
        dets, _ = model.roi_heads(feats, proposals, il.image_sizes)
        for d in dets:
            b = torch.full((n_regions, 4), float("nan"))
            s = torch.full((n_regions,), float("nan"))
            for box, score, label in zip(d["boxes"], d["scores"], d["labels"]):  # sorted by score
                k = int(label) - 1
                if score >= score_thresh and torch.isnan(s[k]):
                    b[k], s[k] = box, score
            chosen.append(b)
            scores.append(s)
            masks.append(~torch.isnan(s))
    else:
        for b in boxes_in:
            m = ~torch.isnan(b).any(1)
            chosen.append(b)
            masks.append(m)
            scores.append(torch.where(m, 1.0, float("nan")))
    if not head:  # the caller pools another network's features inside the boxes
        return [(None, m.cpu().numpy(), b.cpu().numpy(), s.cpu().numpy()) for b, m, s in zip(chosen, masks, scores)]
    # the transform may rescale (it does not when inputs are already image_size); boxes follow
    ratios = [(s[0] / im.shape[-2], s[1] / im.shape[-1]) for s, im in zip(il.image_sizes, images)]
    scaled = [b[m] * torch.tensor([rx, ry, rx, ry], device=b.device) for b, m, (ry, rx) in zip(chosen, masks, ratios)]
    dim = model.roi_heads.box_head.fc7.out_features
    if sum(len(b) for b in scaled):
        x = model.roi_heads.box_head(model.roi_heads.box_roi_pool(feats, scaled, il.image_sizes))
    else:
        x = torch.zeros(0, dim)
    out, start = [], 0
    for b, m, s in zip(chosen, masks, scores):
        f = torch.full((n_regions, dim), float("nan"))
        n = int(m.sum())
        f[m.cpu()] = x[start:start + n].float().cpu()  # a GPU's features come back to the host arrays
        start += n
        out.append((f.numpy(), m.cpu().numpy(), b.cpu().numpy(), s.cpu().numpy()))
    return out


#: what ``features.extractor`` names to keep the detector's own box-head features (AnaXNet as published)
DETECTOR = "detector"


def load_backbone(model_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The ``backbone`` stage's classifier (eval mode) and its card, checked to expose a feature map.

    Raises:
        AnatomyError: not a model dir, or a model without a ``features`` map (``[B, D, h, w]``) to pool.
    """
    from cxr.inference import load_model_dir  # lazy: the classifier zoo (timm) only when a backbone is used

    try:
        model, card = load_model_dir(model_dir)
    except Exception as exc:  # noqa: BLE001  (any load failure: one message naming the dir)
        raise AnatomyError(f"{model_dir}: cannot load the region-feature backbone ({type(exc).__name__}: {exc})") from None
    if card.get("input", {}).get("kind") != "image" or not isinstance(getattr(model, "features", None), nn.Module):
        raise AnatomyError(f"{model_dir}: {card.get('architecture')!r} has no image feature map to pool in region "
                           "boxes; features.extractor must be a global image classifier (e.g. densenet121) or "
                           f"{DETECTOR!r}")
    return model.eval(), card


def png_boxes_to_square(boxes: np.ndarray, png_shape: tuple[int, int], size: int) -> np.ndarray:
    """PNG-pixel boxes ``[..., 4]`` -> pixels of the classifier input (:func:`cxr.data.load_png_square`: the PNG
    padded centred to a square of side ``max(h, w)``, then resized to ``size``)."""
    h, w = png_shape
    side = max(h, w)
    pad = np.array([(side - w) // 2, (side - h) // 2] * 2, np.float64)
    return (np.asarray(boxes, np.float64) + pad) * (size / side)


def pooled_stages(backbone: nn.Module, levels: int) -> list[tuple[str, nn.Module, int]]:
    """The backbone stages pooled besides its final map: ``levels - 1`` of them, one per output stride, the
    deepest first below the final map's stride (densenet121, ``levels`` 2: ``denseblock3``, stride 16).

    Raises:
        AnatomyError: the backbone declares fewer stages than ``levels`` asks for (e.g. a ViT: set 1).
    """
    if levels < 1:
        raise AnatomyError(f"features.levels = {levels}; it must be >= 1 (1 = the final feature map only)")
    stages = list(backbone.cam_stages()) if callable(getattr(backbone, "cam_stages", None)) else []
    if levels == 1:
        return []
    final = max((s for _, _, s in stages), default=0)
    picked: list[tuple[str, nn.Module, int]] = []
    for name, mod, stride in sorted(stages, key=lambda t: -t[2]):
        if stride < final and all(stride != p[2] for p in picked):
            picked.append((name, mod, stride))
    if len(picked) < levels - 1:
        raise AnatomyError(f"features.levels = {levels}, but the backbone declares {len(picked)} stage(s) finer than "
                           f"its final map ({[(n, s) for n, _, s in stages]}); set features.levels: 1")
    return picked[:levels - 1]


def feature_maps(backbone: nn.Module, x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``[final map, *finer stage outputs]`` (float32, deepest first) of one forward pass (:func:`pooled_stages`)."""
    grabbed: dict[str, torch.Tensor] = {}
    extra = pooled_stages(backbone, levels)
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: grabbed.__setitem__(n, out)) for n, m, _ in extra]
    try:
        final = backbone.features(x)
    finally:
        for h in hooks:
            h.remove()
    maps = [final, *(grabbed[n] for n, _, _ in extra)]
    bad = [tuple(m.shape) for m in maps if m.ndim != 4]
    if bad:
        raise AnatomyError(f"backbone feature maps of shapes {bad}; expected [B, D, h, w]")
    return [m.float() for m in maps]


@torch.inference_mode()
def backbone_region_features(backbone: nn.Module, card: dict[str, Any], squares: np.ndarray, boxes: np.ndarray,
                             png_shapes: Sequence[tuple[int, int]], device: torch.device | str = "cpu",
                             levels: int = 2) -> np.ndarray:
    """The classifier's feature maps pooled inside each region box: ``[B, R, D]`` float32, NaN where a box is NaN.

    Args:
        backbone, card: :func:`load_backbone` output (model already on ``device``).
        squares: uint8 ``[B, S, S]`` classifier inputs (:func:`cxr.data.load_png_square` at the card's size).
        boxes: ``[B, R, 4]`` x1, y1, x2, y2 in PNG pixels (NaN = region missing).
        png_shapes: ``(h, w)`` of each PNG, to map its boxes onto the square input.
        levels: maps pooled: the final one (the map the head pools), plus ``levels - 1`` finer stages
            (:func:`pooled_stages`); their pooled vectors are concatenated, deepest first.

    Each map is read in float32; ``roi_align`` with 2 x 2 bins (2 samples per bin side, ``aligned=True``)
    averaged over the bins gives one vector per box and map. At 128 px densenet121's final map is 4 x 4
    cells, so most boxes share cells: the stride-16 map (8 x 8) tells neighbouring regions apart.
    """
    size = int(card["input"]["size"])
    norm = card["input"].get("normalisation")
    x = normalise(torch.from_numpy(np.array(squares, dtype=np.uint8))[:, None], dict(norm) if norm else None)
    maps = feature_maps(backbone, x.to(device), levels)
    n, r = boxes.shape[:2]
    rois = [torch.from_numpy(np.nan_to_num(png_boxes_to_square(b, hw, size))).float().to(device)
            for b, hw in zip(boxes, png_shapes)]
    pooled = torch.cat([roi_align(f, rois, output_size=2, spatial_scale=f.shape[-1] / size, sampling_ratio=2,
                                  aligned=True).mean((2, 3)) for f in maps], 1)
    out = pooled.reshape(n, r, -1).cpu().numpy().astype(np.float32)
    out[np.isnan(boxes).any(-1)] = np.nan
    return out


def extractor_info(backbone_dir: str | Path | None, backbone: tuple[nn.Module, dict[str, Any]] | None,
                   detector_dim: int, levels: int = 1) -> dict[str, Any]:
    """``meta["extractor"]`` (and the region models' cards): what computed the region features."""
    if backbone is None:
        return {"kind": DETECTOR, "what": "detector box head (roi_heads.box_head) on each box", "dim": int(detector_dim)}
    model, card = backbone
    stages = [n for n, _, _ in pooled_stages(model, levels)]
    return {"kind": "backbone", "architecture": card["architecture"], "input_size": int(card["input"]["size"]),
            "weights_sha256": sha256_file(Path(backbone_dir) / "model.pt"), "levels": int(levels),
            "maps": ["final", *stages],
            "what": f"{card['architecture']} feature maps ({', '.join(['final', *stages])}) pooled in each box "
                    "(roi_align, 2x2 bins averaged, concatenated)"}


def detector_input(img: np.ndarray, size: int) -> tuple[torch.Tensor, float]:
    """A PNG image (float ``[H, W]`` in ``[0, 1]``, :func:`cxr.anatomy.common.read_gray`) -> detector input ``[1, h, w]`` and its scale.

    The long side becomes ``size`` (box-filter resize); ``scale`` = input pixels per PNG pixel.
    """
    h, w, s = fit_size(*img.shape, size)
    return torch.from_numpy(resize_float(img, h, w)).unsqueeze(0), s


def image_region_features(model, card: dict[str, Any], img: np.ndarray, score_thresh: float,
                          device: torch.device | str = "cpu", backbone: tuple[nn.Module, dict[str, Any]] | None = None,
                          square: np.ndarray | None = None, levels: int = 1) -> dict[str, np.ndarray]:
    """Region features of ONE image, as the ``features`` stage computes them with ``boxes: pred``.

    Used for images outside the pipeline (``cxr predict``).

    Args:
        model, card: :func:`~cxr.anatomy.detector.load_detector` output (model already on ``device``).
        img: float32 ``[H, W]`` in ``[0, 1]``: the converted PNG as :func:`cxr.anatomy.common.read_gray` returns it.
        score_thresh: ``features.score_thresh``.
        backbone: :func:`load_backbone` output when the features come from a classifier backbone; then
            ``square`` is the PNG as :func:`cxr.data.load_png_square` gives it at the backbone's size and
            ``levels`` the maps pooled (the features meta's ``extractor.levels``).

    Returns:
        ``features`` float16 ``[R, D]`` (NaN where missing), ``mask`` bool ``[R]``, ``boxes``
        float32 ``[R, 4]`` in PNG pixels (NaN where missing), ``scores`` float32 ``[R]``.
    """
    x, s = detector_input(img, int(card["input"]["size"]))
    (feat, m, b, sc), = _region_features(model, [x.to(device)], None, len(card["regions"]), score_thresh,
                                         head=backbone is None)
    boxes = (b / s).astype(np.float32)
    if backbone is not None:
        if square is None:
            raise AnatomyError("image_region_features: a backbone needs the square classifier input (square=)")
        feat = backbone_region_features(*backbone, square[None], boxes[None], [img.shape], device, levels=levels)[0]
    return {"features": feat.astype(np.float16), "mask": m, "boxes": boxes, "scores": sc}


def extract_features(
    model_dir: str | Path,
    coco_dir: str | Path,
    images: pd.DataFrame,
    splits: pd.DataFrame,
    images_dir: str | Path,
    out_dir: str | Path,
    boxes: str = "pred",
    score_thresh: float = 0.05,
    views: Sequence[str] = ("PA", "AP"),
    batch_size: int = 16,
    device: str = "auto",
    progress: bool = True,
    backbone_dir: str | Path | None = None,
    levels: int = 2,
) -> dict[str, Any]:
    """Write the features folder (see the module docstring) for every split image of the given views.

    ``backbone_dir``: the ``backbone`` stage's classifier, whose feature maps (``levels``: the final one and
    ``levels - 1`` finer stages, :func:`backbone_region_features`) are pooled in each box; None = the
    detector's box head (``features.extractor: detector``).

    Returns:
        The summary written to ``meta.json`` (counts of missing regions per region and per split).

    Raises:
        AnatomyError: bad ``boxes`` value, no image to extract, or COCO / detector mismatch.
    """
    if boxes not in ("pred", "gt"):
        raise AnatomyError(f"features.boxes = {boxes!r}; choose 'pred' (detector) or 'gt' (scene graph)")
    model, card = load_detector(model_dir)
    dev = pick_device(device)
    rank, procs = init_from_env(dev)  # under torchrun: every rank extracts every procs-th batch
    if procs > 1 and not digests_agree(model):
        raise AnatomyError(f"{model_dir}: the {procs} processes loaded different detector weights")
    model.to(dev)
    backbone = load_backbone(backbone_dir) if backbone_dir is not None else None
    if backbone is not None:
        backbone[0].to(dev)
        if procs > 1 and not digests_agree(backbone[0]):
            raise AnatomyError(f"{backbone_dir}: the {procs} processes loaded different backbone weights")
    regions, findings = list(card["regions"]), list(card["findings"])
    size = int(card["input"]["size"])
    gt = gt_regions(coco_dir, regions, findings)
    imgs = ok_images(images).reset_index(drop=True)
    split_of = dict(zip(splits["image_id"], splits["split"]))
    wanted = {v.upper() for v in views}
    rows = imgs[imgs["image_id"].isin(split_of.keys()) & imgs["view"].fillna("").str.upper().isin(wanted)]
    rows = rows.sort_values("image_id", kind="stable").reset_index(drop=True)
    if rows.empty:
        raise AnatomyError(f"no converted image with a split has a view in {sorted(wanted)}")
    n, r, f = len(rows), len(regions), len(findings)
    head_dim = model.roi_heads.box_head.fc7.out_features
    if backbone is None:
        dim = head_dim
    else:
        with torch.inference_mode():
            bsize = int(backbone[1]["input"]["size"])
            dim = sum(int(m.shape[1]) for m in feature_maps(backbone[0], torch.zeros(1, 1, bsize, bsize, device=dev),
                                                            levels))
    arr = {"features": np.full((n, r, dim), np.nan, np.float16), "mask": np.zeros((n, r), bool),
           "boxes": np.full((n, r, 4), np.nan, np.float32), "scores": np.full((n, r), np.nan, np.float32),
           "labels": np.full((n, r, f), np.nan, np.float32)}
    t0 = time.perf_counter()
    starts = list(range(0, n, batch_size))[rank::procs]  # whole batches per rank: the same batches as one process
    for start in tqdm(starts, desc=f"features ({boxes} boxes)", unit="batch",
                      disable=not progress or rank > 0, mininterval=2):
        batch = rows.iloc[start:start + batch_size]
        tensors, scales, box_in, shapes, squares = [], [], [], [], []
        for row in batch.itertuples(index=False):
            png = read_png(Path(images_dir) / row.png_path)  # decoded once: the detector's and the classifier's input
            img = gray_float(png)
            x, s = detector_input(img, size)
            tensors.append(x.to(dev))
            scales.append(s)
            shapes.append(img.shape)
            if backbone is not None:  # the classifier's own input, decoded as its training did
                squares.append(png_square(png, bsize))
            g = gt.get(row.image_id)
            box_in.append(torch.from_numpy(g["boxes"] * s) if g is not None else torch.full((r, 4), float("nan")))
        res = _region_features(model, tensors, None if boxes == "pred" else [b.to(dev) for b in box_in], r,
                               score_thresh, head=backbone is None)
        png_boxes = np.stack([b / s for (_, _, b, _), s in zip(res, scales)]).astype(np.float32)
        if backbone is not None:
            pooled = backbone_region_features(*backbone, np.stack(squares), png_boxes, shapes, dev, levels=levels)
        for j, (row, (feat, m, b, sc)) in enumerate(zip(batch.itertuples(index=False), res)):
            i = start + j
            arr["features"][i] = (feat if backbone is None else pooled[j]).astype(np.float16)
            arr["mask"][i] = m
            arr["boxes"][i] = png_boxes[j]
            arr["scores"][i] = sc
            g = gt.get(row.image_id)
            if g is not None:
                arr["labels"][i] = g["labels"]
    if procs > 1:  # every rank's rows, in row order, on every rank (each row computed by exactly one rank)
        mine = torch.from_numpy(np.concatenate([np.arange(s, min(s + batch_size, n)) for s in starts] or [np.zeros(0, np.int64)]))
        got = gather_by_index(mine, *(torch.from_numpy(arr[k][mine.numpy()]) for k in ARRAYS))
        if not np.array_equal(got[0], np.arange(n)):
            raise AnatomyError(f"features: the {procs} processes returned {len(got[0])} of {n} rows")
        arr = dict(zip(ARRAYS, got[1:]))
    seconds = time.perf_counter() - t0
    index = pd.DataFrame({
        "row": np.arange(n), "image_id": rows["image_id"].to_numpy(), "dataset": rows["dataset"].to_numpy(),
        "patient_id": rows["patient_id"].to_numpy(), "split": rows["image_id"].map(split_of).to_numpy(),
        "view": rows["view"].to_numpy(), "png_path": rows["png_path"].to_numpy(),
        "has_scene_graph": rows["image_id"].isin(gt.keys()).to_numpy(),
        "regions_found": arr["mask"].sum(1).astype(np.int64),
    }, columns=list(INDEX_COLUMNS))
    missing = {reg: int((~arr["mask"][:, k]).sum()) for k, reg in enumerate(regions)}
    meta = {
        "regions": regions, "findings": findings, "dim": int(dim), "box_source": boxes,
        "score_thresh": score_thresh, "views": sorted(wanted), "images": n,
        "images_per_split": {k: int(v) for k, v in index["split"].value_counts().sort_index().items()},
        "images_with_scene_graph": int(index["has_scene_graph"].sum()),
        "images_missing_regions": int((index["regions_found"] < r).sum()),
        "missing_per_region": {k: v for k, v in missing.items() if v},
        "missing_on_scene_graph_images": int((~arr["mask"][index["has_scene_graph"].to_numpy()]).sum()),
        "extractor": extractor_info(backbone_dir, backbone, head_dim, levels),
        "detector": {"backbone": card["backbone"], "weights_sha256": sha256_file(Path(model_dir) / "model.pt")},
        "seconds": round(seconds, 1), "processes": procs,
    }
    if rank > 0:
        return meta  # rank 0 writes the folder
    with atomic_dir(out_dir) as tmp:
        for name in ARRAYS:
            np.save(tmp / f"{name}.npy", arr[name], allow_pickle=False)
        write_parquet(tmp / "index.parquet", index)
        write_json(tmp / "meta.json", meta)
    log.info("features: %d images, %s boxes, %d images missing regions", n, boxes, meta["images_missing_regions"])
    return meta


def load_features(folder: str | Path) -> tuple[dict[str, np.ndarray], pd.DataFrame, dict[str, Any]]:
    """Read a features folder: ``(arrays by name, index, meta)``; checks that every array has N rows.

    Raises:
        AnatomyError: missing file or misaligned arrays.
    """
    folder = Path(folder)
    try:
        arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in ARRAYS}
        index = pd.read_parquet(folder / "index.parquet")
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise AnatomyError(f"{folder}: incomplete features folder ({exc.filename} missing)") from None
    n = len(index)
    bad = {k: v.shape for k, v in arrays.items() if v.shape[0] != n or v.shape[1] != len(meta["regions"])}
    if bad:
        raise AnatomyError(f"{folder}: arrays {bad} do not match {n} index rows x {len(meta['regions'])} regions")
    return arrays, index, meta
