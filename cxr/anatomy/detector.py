"""Anatomical region detector: torchvision Faster R-CNN (Ren et al., NeurIPS 2015) with an FPN backbone.

AnaXNet (Agu et al., MICCAI 2021) detects the 18 Chest ImaGenome regions with a Faster R-CNN
ResNet-50-FPN; that is ``backbone: resnet50_fpn`` here. The CPU default is a MobileNetV3-Large FPN
trained from scratch at 256 px with reduced proposal counts.

Input: grayscale ``[1, H, W]`` float in ``[0, 1]``, resized so that the long side is
``image_size`` (the first conv takes one channel; RGB pretrained weights are summed over their
input channels). Normalisation inside the model: ``(x - 0.5) / 0.25``. Classes: index 0 is the
background, ``k >= 1`` is ``regions[k - 1]`` (the COCO category order).

Training: one Lightning module (AdamW + one-cycle schedule; a non-finite loss stops the run),
logged through DVCLive. Evaluation: pycocotools COCOeval on val / test with the detections mapped
back to PNG pixels: mAP@[.5:.95], AP50, per-region AP.

Model dir: ``model.pt`` (state_dict, load with ``weights_only=True``) + ``card.json``
(architecture, regions in order, input size, normalisation, params, data hashes, metrics);
:func:`load_detector` rebuilds the module from both.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection import FasterRCNN
from cxr.progress import tqdm

from cxr.anatomy.common import AnatomyError, fit_size, lightning_accelerator, pick_device, read_gray, resize_float
from cxr.engine import OneCycleModule, check_finite, fit_module, make_logger, rank_zero_writes
from cxr.io import sha256_file
from cxr.modeldir import save_model_dir
from cxr.models.detector import (  # noqa: F401  (re-exported: the network lives with the other models)
    ARCHITECTURE,
    BACKBONES,
    MEAN,
    STD,
    build_detector,
    load_detector,
    tiny_fpn_backbone,
)
from cxr.params import DetectorParams
from cxr.precision import precision_for

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------- data


class CocoImages(Dataset):
    """Images and boxes of one COCO file, preloaded at the detector's input size.

    Samples: ``(image [1, h, w] float32 in [0, 1], target)`` with target keys ``boxes``
    ``[n, 4]`` (x1, y1, x2, y2 in input pixels), ``labels`` ``[n]`` (category ids), ``image_id``
    (COCO id) and ``scale`` (input pixels per PNG pixel).
    """

    def __init__(self, coco_json: str | Path, images_dir: str | Path, image_size: int, progress: bool = True):
        coco = json.loads(Path(coco_json).read_text(encoding="utf-8"))
        self.coco = coco
        self.categories = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
        by_image: dict[int, list[dict]] = {}
        for a in coco["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        self.items = []
        for im in tqdm(coco["images"], desc=f"load {Path(coco_json).stem}", unit="img", disable=not progress,
                       mininterval=2):
            img = read_gray(Path(images_dir) / im["file_name"])
            if img.shape != (im["height"], im["width"]):
                raise AnatomyError(f"{im['file_name']}: PNG is {img.shape[::-1]} but {coco_json} says "
                                   f"{(im['width'], im['height'])}; rerun the coco stage")
            rows, cols, s = fit_size(*img.shape, image_size)
            img = (resize_float(img, rows, cols) * 255).round().astype(np.uint8)  # compact in memory
            anns = by_image.get(im["id"], [])
            boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], np.float32).reshape(-1, 4) * s
            labels = np.array([a["category_id"] for a in anns], np.int64)
            self.items.append((img, boxes, labels, im["id"], s))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        img, boxes, labels, image_id, s = self.items[i]
        return (torch.from_numpy(img).float().div_(255).unsqueeze(0),
                {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels), "image_id": image_id, "scale": s})


def collate(batch: list) -> tuple[list[torch.Tensor], list[dict]]:
    return [b[0] for b in batch], [b[1] for b in batch]


# ---------------------------------------------------------------------------------- training


class DetectorModule(OneCycleModule):
    """Lightning wrapper: summed Faster R-CNN losses, AdamW, one-cycle LR (over this process's steps)."""

    def __init__(self, model: FasterRCNN, train: CocoImages, params: DetectorParams, seed: int):
        super().__init__(train, params.batch_size, params.lr, params.weight_decay, seed=seed, workers=params.workers,
                         collate_fn=collate)
        self.model = model

    def training_step(self, batch, batch_idx):
        images, targets = batch
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        losses = self.model(images, targets)
        loss = sum(losses.values())
        check_finite(loss, "detector", self.global_step,
                     lambda: f"parts { {k: float(v) for k, v in losses.items()} }; lower detector.lr")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        for k, v in losses.items():
            self.log(f"train/{k}", v, batch_size=len(images))
        return loss


def train_detector(
    coco_dir: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    params: DetectorParams,
    seed: int = 42,
    live_dir: str | Path | None = None,
    progress: bool = True,
    convert: dict[str, Any] | None = None,
) -> tuple[FasterRCNN, dict[str, Any]]:
    """Train on ``coco_dir/train.json``, save the model dir, return the model and its card
    (``convert``: the convert settings of the training PNGs, recorded in the card).

    Raises:
        AnatomyError: empty training split or bad backbone / weights.
    """
    coco_dir = Path(coco_dir)
    L.seed_everything(seed, workers=True, verbose=False)
    device = pick_device(params.device)
    train = CocoImages(coco_dir / "train.json", images_dir, params.image_size, progress=progress)
    if len(train) == 0:
        raise AnatomyError(f"{coco_dir / 'train.json'} has no images; the detector needs training scene graphs")
    model = build_detector(len(train.categories), params, pretrained=params.pretrained)
    module = DetectorModule(model, train, params, seed)  # builds its loader: batch_size per process
    precision = precision_for(params.precision, lightning_accelerator(device))
    trainer, seconds = fit_module(module, None, epochs=params.epochs, max_steps=params.max_steps,
                                  accelerator=lightning_accelerator(device), devices=params.devices,
                                  strategy=params.strategy, num_nodes=params.num_nodes, precision=precision,
                                  logger=make_logger(live_dir))
    if not rank_zero_writes(trainer, module.model, "detector"):
        return module.model.cpu().eval(), {}  # DDP rank > 0: rank 0 writes the model dir
    model = module.model.cpu().eval()
    card = {
        "architecture": ARCHITECTURE,
        "backbone": params.backbone,
        "regions": train.categories,
        "classes": ["__background__", *train.categories],
        "findings": train.coco["info"].get("findings", []),
        "input": {"channels": 1, "size": params.image_size, "resize": "long side to size, aspect kept",
                  "range": [0.0, 1.0]},
        "normalisation": {"mean": list(MEAN), "std": list(STD), "applied_by": "model.transform"},
        "convert": convert,
        "params": params.model_dump(),
        "seed": seed,
        "data": {"train_json_sha256": sha256_file(coco_dir / "train.json"), "train_images": len(train)},
        "train_seconds": round(seconds, 1),
        "precision": precision,  # the Lightning precision the weights were trained in
        "steps": trainer.global_step,  # optimiser steps (each of batch_size x world_size images)
        "world_size": trainer.world_size,
    }
    save_model_dir(out_dir, model, card)
    return model, card


# -------------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def predict(model: FasterRCNN, data: CocoImages, batch_size: int = 8, device: torch.device | None = None,
            progress: bool = True) -> list[dict]:
    """Detections of every image as COCO results (``bbox`` in PNG pixels)."""
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate)
    out = []
    for images, targets in tqdm(loader, desc="detect", unit="batch", disable=not progress, mininterval=2):
        dets = model([im.to(device) for im in images])
        for d, t in zip(dets, targets):
            boxes = d["boxes"].cpu().numpy() / t["scale"]
            for b, s, c in zip(boxes, d["scores"].cpu().numpy(), d["labels"].cpu().numpy()):
                out.append({"image_id": int(t["image_id"]), "category_id": int(c), "score": round(float(s), 5),
                            "bbox": [round(float(b[0]), 2), round(float(b[1]), 2), round(float(b[2] - b[0]), 2),
                                     round(float(b[3] - b[1]), 2)]})
    return out


def coco_metrics(coco_json: str | Path, results: list[dict]) -> dict[str, Any]:
    """COCOeval bbox metrics: mAP@[.5:.95], AP50, AP75 and per-region AP / AP50 (NaN-free: -1 -> None)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()) as buf:
        gt = COCO(str(coco_json))
        if not results or not gt.getImgIds():
            return {"mAP": 0.0, "AP50": 0.0, "AP75": 0.0, "images": len(gt.getImgIds()), "per_region": {}}
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    log.debug("%s", buf.getvalue())
    prec = ev.eval["precision"]  # [T, R, K, A, M]: IoU thresholds, recall, classes, areas, max dets

    def ap(p: np.ndarray) -> float | None:
        p = p[p > -1]
        return round(float(p.mean()), 4) if p.size else None

    per_region = {}
    for k, cid in enumerate(ev.params.catIds):
        per_region[gt.cats[cid]["name"]] = {"AP": ap(prec[:, :, k, 0, -1]), "AP50": ap(prec[0, :, k, 0, -1])}
    return {"mAP": round(float(ev.stats[0]), 4), "AP50": round(float(ev.stats[1]), 4),
            "AP75": round(float(ev.stats[2]), 4), "images": len(gt.getImgIds()), "per_region": per_region}


def prior_box_results(train_json: str | Path, split_json: str | Path) -> list[dict]:
    """The no-model baseline as COCO results: per region, the mean TRAIN box relative to its image
    (x / width, y / height), placed on every image of ``split_json`` with score 1. A detector that does
    not beat it at AP50 has learnt no more than where each region usually is."""
    train = json.loads(Path(train_json).read_text(encoding="utf-8"))
    split = json.loads(Path(split_json).read_text(encoding="utf-8"))
    size = {im["id"]: (float(im["width"]), float(im["height"])) for im in train.get("images", [])}
    rel: dict[int, list[list[float]]] = {}
    for a in train.get("annotations", []):
        w, h = size[a["image_id"]]
        x, y, bw, bh = a["bbox"]
        rel.setdefault(int(a["category_id"]), []).append([x / w, y / h, bw / w, bh / h])
    mean = {c: np.mean(v, axis=0) for c, v in rel.items()}
    out = []
    for im in split.get("images", []):
        w, h = float(im["width"]), float(im["height"])
        for c, (x, y, bw, bh) in sorted(mean.items()):
            out.append({"image_id": int(im["id"]), "category_id": c, "score": 1.0,
                        "bbox": [round(x * w, 2), round(y * h, 2), round(bw * w, 2), round(bh * h, 2)]})
    return out


def evaluate_detector(model: FasterRCNN, coco_dir: str | Path, images_dir: str | Path, image_size: int,
                      splits: Sequence[str] = ("val", "test"), device: str = "auto",
                      progress: bool = True) -> dict[str, Any]:
    """COCOeval of ``model`` on each split's COCO file (empty splits are reported as such)."""
    dev = pick_device(device)
    metrics: dict[str, Any] = {}
    for split in splits:
        path = Path(coco_dir) / f"{split}.json"
        data = CocoImages(path, images_dir, image_size, progress=progress)
        t0 = time.perf_counter()
        results = predict(model, data, device=dev, progress=progress)
        m = coco_metrics(path, results)
        m["images_per_second"] = round(len(data) / max(time.perf_counter() - t0, 1e-9), 2)
        aps = [v["AP50"] for v in m["per_region"].values() if v["AP50"] is not None]
        m["AP50_min_region"] = min(aps) if aps else None
        train_json = Path(coco_dir) / "train.json"
        if train_json.is_file():
            b = coco_metrics(path, prior_box_results(train_json, path))
            m["baseline_prior_box"] = {k: b[k] for k in ("mAP", "AP50", "AP75")}
        metrics[split] = m
        log.info("%s: mAP %.3f, AP50 %.3f over %d images", split, m["mAP"], m["AP50"], m["images"])
    model.cpu()
    return metrics
