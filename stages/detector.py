"""DVC stage `detector`: train the Faster R-CNN region detector and evaluate it (see cxr.anatomy.detector).

Writes the model dir (model.pt + card.json), DVCLive logs, and COCOeval metrics of val and test
(mAP@[.5:.95], AP50, per-region AP) to --metrics.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cxr.anatomy.detector import evaluate_detector, train_detector
from cxr.applicability import marker, reason_of
from cxr.convert import card_settings
from cxr.io import write_json
from cxr.stage import run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--coco", required=True, help="COCO folder with train/val/test.json (data/processed/coco)")
    p.add_argument("--images", required=True, help="PNG folder the COCO file names are relative to")
    p.add_argument("--out", required=True, help="model dir (models/detector)")
    p.add_argument("--live", default=None, help="DVCLive folder (reports/detector/live)")
    p.add_argument("--metrics", required=True, help="metrics JSON (reports/detector/metrics.json)")
    return p


def _run(args: argparse.Namespace, base, params, convert, *, log: logging.Logger) -> int | None:
    reason = reason_of(Path(args.coco) / "train.json")
    if reason:
        log.warning("not applicable: %s", reason)
        write_json(Path(args.out) / "marker.json", marker(reason))
        if args.live:  # the declared DVCLive plots output must exist too
            write_json(Path(args.live) / "plots" / "metrics" / "marker.json", marker(reason))
        write_json(args.metrics, marker(reason))
        return 0
    model, card = train_detector(coco_dir=args.coco, images_dir=args.images, out_dir=args.out, params=params,
                                 seed=base.seed, live_dir=args.live, convert=card_settings(convert))
    if not card:
        return 0  # DDP rank > 0: rank 0 evaluates and writes
    metrics = evaluate_detector(model, coco_dir=args.coco, images_dir=args.images,
                                image_size=params.image_size, device=params.device)
    metrics["train_seconds"] = card["train_seconds"]
    metrics["steps"], metrics["world_size"] = card["steps"], card["world_size"]  # optimiser steps, DDP processes
    metrics["precision"] = card["precision"]  # trained in (Lightning precision); evaluation runs in float32
    metrics["backbone"] = params.backbone
    write_json(args.metrics, metrics)
    log.info("detector done: test AP50 %.3f, mAP %.3f", metrics["test"]["AP50"], metrics["test"]["mAP"])
    return 0


def main(argv: list[str] | None = None) -> int:
    return run("detector", get_args_parser(), argv, ("base", "detector", "convert"), _run)


if __name__ == "__main__":
    sys.exit(main())
