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
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, mobilenet_backbone, resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from cxr.anatomy.common import (
    AnatomyError,
    fit_size,
    gray_first_conv,
    lightning_accelerator,
    load_local_weights,
    pick_device,
    read_card,
    read_gray,
    resize_float,
)
from cxr.io import sha256_file
from cxr.modeldir import load_state, save_model_dir
from cxr.params import DetectorParams
from cxr.progress import interactive, tqdm
from cxr.quiet import quiet

log = logging.getLogger(__name__)

ARCHITECTURE = "torchvision.FasterRCNN"
MEAN, STD = (0.5,), (0.25,)
BACKBONES = ("tiny_fpn", "mobilenet_v3_large_fpn", "mobilenet_v3_small_fpn", "resnet18_fpn", "resnet50_fpn")


# ------------------------------------------------------------------------------------ model


def _to_gray(backbone: nn.Module) -> None:
    """Replace the first 3-channel conv of ``backbone`` with a 1-channel one (same geometry)."""
    for name, mod in backbone.named_modules():
        if isinstance(mod, nn.Conv2d) and mod.in_channels == 3:
            new = nn.Conv2d(1, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                            mod.groups, mod.bias is not None)
            parent = backbone.get_submodule(name.rsplit(".", 1)[0]) if "." in name else backbone
            setattr(parent, name.rsplit(".", 1)[-1], new)
            return
    raise AnatomyError("backbone has no 3-channel input convolution to convert to grayscale")


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def tiny_fpn_backbone(out_channels: int = 96) -> BackboneWithFPN:
    """A small plain-convolution backbone (strides 8 / 16 / 32 + max-pool level) with an FPN.

    Dense 3x3 convolutions run several times faster on CPUs than the depthwise convolutions of
    MobileNetV3 at the same accuracy on radiograph anatomy, so this is the CPU default.
    """
    chans = (24, 32, 64, 128, 192)
    layers = [("stem", _conv_bn(1, chans[0], 2))]
    for i in range(1, 5):
        layers.append((f"layer{i}", nn.Sequential(_conv_bn(chans[i - 1], chans[i], 2), _conv_bn(chans[i], chans[i], 1))))
    body = nn.Sequential(OrderedDict(layers))
    return BackboneWithFPN(body, return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
                           in_channels_list=list(chans[2:]), out_channels=out_channels,
                           extra_blocks=LastLevelMaxPool())


def build_detector(num_classes: int, params: DetectorParams, pretrained: str | None = None) -> FasterRCNN:
    """Faster R-CNN for ``num_classes`` regions (+ background) on grayscale input.

    Args:
        num_classes: number of regions (the background class is added).
        params: the ``detector`` params section (backbone, sizes, proposal counts).
        pretrained: optional local backbone weights file (torchvision ImageNet state_dict of the
            plain classifier, or of ``backbone.body``); never downloaded.

    Raises:
        AnatomyError: unknown backbone or unusable weights file.
    """
    if params.backbone not in BACKBONES:
        raise AnatomyError(f"detector.backbone = {params.backbone!r}; choose one of {list(BACKBONES)}")
    norm = nn.BatchNorm2d  # from scratch: trainable batch norm (torchvision freezes it for pretrained nets)
    if params.backbone == "tiny_fpn":
        backbone = tiny_fpn_backbone()
        n_maps = 4
    elif params.backbone.startswith("mobilenet"):
        backbone = mobilenet_backbone(backbone_name=params.backbone.removesuffix("_fpn"), weights=None, fpn=True,
                                      norm_layer=norm, trainable_layers=6)
        n_maps = 3  # two returned stages + the max-pool level
    else:
        backbone = resnet_fpn_backbone(backbone_name=params.backbone.removesuffix("_fpn"), weights=None,
                                       norm_layer=norm, trainable_layers=5)
        n_maps = 5
    if params.backbone != "tiny_fpn":
        _to_gray(backbone.body)
    if pretrained:
        state = load_local_weights(pretrained)
        body = backbone.body.state_dict()
        state = {k.removeprefix("backbone.body.").removeprefix("features."): v for k, v in state.items()}
        if params.backbone.startswith("mobilenet"):  # torchvision classifier keys: features.<i>.* -> <i>.*
            state = {k: v for k, v in state.items() if k in body}
        state = gray_first_conv(state, body)
        missing, unexpected = backbone.body.load_state_dict(state, strict=False)
        if len(missing) == len(body):
            raise AnatomyError(f"{pretrained}: no key matches the {params.backbone} backbone")
        log.info("loaded %s: %d keys missing, %d unexpected", pretrained, len(missing), len(unexpected))
    sizes = tuple(int(a) for a in params.anchor_sizes)
    anchors = AnchorGenerator(sizes=(sizes,) * n_maps, aspect_ratios=((0.5, 1.0, 2.0),) * n_maps)
    return FasterRCNN(
        backbone,
        num_classes=num_classes + 1,
        min_size=params.image_size,
        max_size=params.image_size,
        image_mean=list(MEAN),
        image_std=list(STD),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=params.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=params.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=params.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=params.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=params.rpn_batch_size_per_image,
        box_batch_size_per_image=params.box_batch_size_per_image,
        box_score_thresh=params.box_score_thresh,
        box_detections_per_img=params.box_detections_per_img,
    )


def load_detector(model_dir: str | Path) -> tuple[FasterRCNN, dict[str, Any]]:
    """Rebuild the trained detector of a model dir (eval mode, CPU) and return it with its card."""
    card = read_card(model_dir)
    if card.get("architecture") != ARCHITECTURE:
        raise AnatomyError(f"{model_dir}: architecture {card.get('architecture')!r} is not {ARCHITECTURE}")
    params = DetectorParams(**card["params"])
    model = build_detector(len(card["regions"]), params)
    model.load_state_dict(load_state(model_dir))
    return model.eval(), card


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


class DetectorModule(L.LightningModule):
    """Lightning wrapper: summed Faster R-CNN losses, AdamW, one-cycle LR."""

    def __init__(self, model: FasterRCNN, lr: float, weight_decay: float, total_steps: int):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.total_steps = lr, weight_decay, max(1, total_steps)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        losses = self.model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite detector loss {float(loss)} at step {self.global_step}: "
                                     f"{ {k: float(v) for k, v in losses.items()} }; lower detector.lr")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        for k, v in losses.items():
            self.log(f"train/{k}", v, batch_size=len(images))
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=self.total_steps,
                                                    pct_start=0.15)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def make_logger(live_dir: str | Path | None):
    """DVCLive logger writing into ``live_dir`` (no git / DVC side effects), or False."""
    if live_dir is None:
        return False
    from dvclive.lightning import DVCLiveLogger

    return DVCLiveLogger(dir=str(live_dir), save_dvc_exp=False, dvcyaml=False, report=None)


@quiet
def fit(module: L.LightningModule, loader: DataLoader, epochs: int, max_steps: int, device: torch.device,
        live_dir: str | Path | None, seed: int, precision: str = "32-true") -> float:
    """Train ``module`` with Lightning (``precision``: a Lightning precision); returns the wall time in seconds."""
    trainer = L.Trainer(
        max_epochs=epochs, max_steps=max_steps, accelerator=lightning_accelerator(device), devices=1,
        precision=precision,
        logger=make_logger(live_dir), enable_checkpointing=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=1, deterministic=False,
        enable_progress_bar=interactive(), default_root_dir=None,
    )
    t0 = time.perf_counter()
    trainer.fit(module, loader)
    return time.perf_counter() - t0


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
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=params.batch_size, shuffle=True, collate_fn=collate,
                        num_workers=params.workers, generator=gen, drop_last=len(train) > params.batch_size)
    steps = params.epochs * len(loader)
    if params.max_steps > 0:
        steps = min(steps, params.max_steps)
    module = DetectorModule(model, params.lr, params.weight_decay, steps)
    seconds = fit(module, loader, params.epochs, params.max_steps, device, live_dir, seed)
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
        "steps": steps,
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
        metrics[split] = m
        log.info("%s: mAP %.3f, AP50 %.3f over %d images", split, m["mAP"], m["AP50"], m["images"])
    model.cpu()
    return metrics
