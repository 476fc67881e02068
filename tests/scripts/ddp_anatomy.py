"""Run by tests/test_ddp.py: train a tiny region detector and a tiny organ UNet with ``--devices`` CPU
processes (Lightning's DDP launcher, gloo) on the tiny cohort's anatomy data, and write the result.

Lightning's launcher starts this same script again for rank 1. Each rank gives its own model dir
and DVCLive folder (``<kind>-rank<r>``), so the test sees which rank wrote; after both fits rank 0
gathers every rank's weight digest and return values and alone writes ``OUT``.

Usage: python tests/scripts/ddp_anatomy.py OUT.json --data DATA.json --devices 2 --batch-size 4
(``DATA.json``: the paths of the ``anatomy_data`` fixture).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist

from cxr.anatomy.detector import CocoImages, collate, evaluate_detector, load_detector, train_detector
from cxr.anatomy.unet import MaskImages, evaluate_unet, load_unet, mask_table, train_unet
from cxr.distributed import state_digest, world
from cxr.params import DetectorParams, UnetParams
from cxr.sources.masks import find_masks

DETECTOR = dict(image_size=64, epochs=4, batch_size=4, lr=2e-3, anchor_sizes=[8, 16, 32, 64],
                rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=50,
                rpn_post_nms_top_n_test=20, rpn_batch_size_per_image=32, box_batch_size_per_image=16, device="cpu")
UNET = dict(image_size=64, epochs=4, batch_size=4, lr=3e-3, encoder_depth=3, decoder_channels=[16, 8, 4],
            augment=False, precision="32", device="cpu")


def _mean_detector_loss(model, data: CocoImages) -> float:
    """Summed Faster R-CNN losses over ``data`` (batch norm in eval mode, seeded RPN / box sampling)."""
    torch.manual_seed(0)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    total = 0.0
    with torch.no_grad():
        for images, targets in torch.utils.data.DataLoader(data, batch_size=8, collate_fn=collate):
            losses = model(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
            total += float(sum(losses.values())) * len(images)
    model.eval()
    return total / len(data)


def _mean_unet_loss(model, data: MaskImages) -> float:
    """The UNet's training loss (BCE + 1 - soft Dice per structure) over ``data``, eval mode: a smooth
    score, unlike the thresholded Dice of a 4-step model, whose masks flip with small weight changes."""
    total = 0.0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(data, batch_size=8):
            logits = model(x).float()
            p = torch.sigmoid(logits)
            soft = (2 * (p * y).sum((2, 3)) + 1) / (p.sum((2, 3)) + y.sum((2, 3)) + 1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + (1 - soft).mean()
            total += float(loss) * len(x)
    return total / len(data)


def run(data: dict, work: Path, devices: int, batch_size: int) -> dict:
    """Both fits with ``devices`` processes; every rank returns its part, rank 0 adds the scores."""
    rank = int(os.environ.get("LOCAL_RANK", "0"))  # set for rank 1 by Lightning's launcher before this runs
    strategy = "ddp" if devices > 1 else "auto"
    dp = DetectorParams(**{**DETECTOR, "batch_size": batch_size, "devices": devices, "strategy": strategy})
    up = UnetParams(**{**UNET, "batch_size": batch_size, "devices": devices, "strategy": strategy})
    det_dir, unet_dir = work / f"detector-rank{rank}", work / f"unet-rank{rank}"
    det, card = train_detector(data["coco"], data["image_dir"], det_dir, dp, seed=5,
                               live_dir=work / f"live-detector-rank{rank}", progress=False)
    unet, metrics = train_unet(pd.read_parquet(data["images"]), pd.read_parquet(data["splits"]), data["image_dir"],
                               find_masks(data["raw"]), unet_dir, up, seed=5, live_dir=work / f"live-unet-rank{rank}",
                               progress=False)
    mine = {"rank": world()[0], "launcher_rank": rank, "world_size": world()[1], "detector_card": card,
            "unet_metrics": metrics, "detector_digest": state_digest(det), "unet_digest": state_digest(unet)}
    if world()[1] > 1:
        ranks: list = [None] * world()[1]
        dist.all_gather_object(ranks, mine)  # every rank's return values and digests, to rank 0
    else:
        ranks = [mine]
    if rank != 0:
        return {}
    out = {"world_size": world()[1], "ranks": ranks}
    # what the saved model dirs hold: reload, predict, score in this one process
    model, card0 = load_detector(det_dir)
    out["detector_reloaded_digest"] = state_digest(model)
    out["detector_steps"] = card0["steps"]
    coco = Path(data["coco"])
    out["detector_train_loss"] = _mean_detector_loss(model, CocoImages(coco / "train.json", data["image_dir"],
                                                                          dp.image_size, progress=False))
    out["detector_val"] = evaluate_detector(model, coco, data["image_dir"], dp.image_size, splits=("val",),
                                            device="cpu", progress=False)["val"]
    model, classes = load_unet(unet_dir)
    out["unet_reloaded_digest"] = state_digest(model)
    table = mask_table(pd.read_parquet(data["images"]), pd.read_parquet(data["splits"]), find_masks(data["raw"]),
                       up.structures)
    val = MaskImages(table[table["split"] == "val"], data["image_dir"], up.structures, up.image_size, progress=False)
    out["unet_val_reloaded"] = evaluate_unet(model, val, up.threshold)
    out["unet_val_loss"] = _mean_unet_loss(model, val)
    out["unet_classes"] = classes
    out["files"] = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--data", required=True)
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args()
    out = Path(args.out)
    data = json.loads(Path(args.data).read_text())
    result = run(data, out.parent / f"work-{args.devices}", args.devices, args.batch_size)
    if result:  # rank 1 (started again by Lightning's launcher) writes nothing here
        out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
