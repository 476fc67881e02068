"""DVC stage `features`: region features of every image in the trained detector's boxes (see cxr.anatomy.features).

The features are the backbone stage's classifier map pooled in each box (--backbone), or the detector's
box-head outputs when that stage is not applicable (features.extractor: detector).

Writes the features folder (features / mask / boxes / scores / labels .npy, index.parquet, meta.json)
and a copy of meta.json (counts, box source) to --metrics.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from cxr.anatomy.common import AnatomyError, read_card
from cxr.anatomy.features import DETECTOR, extract_features
from cxr.applicability import marker, reason_of
from cxr.distributed import is_rank_zero
from cxr.io import write_json
from cxr.stage import run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--model", required=True, help="detector model dir (models/detector)")
    p.add_argument("--backbone", default=None, help="the backbone stage's classifier (models/backbone); a "
                                                     "not-applicable marker there = the detector's box head")
    p.add_argument("--coco", required=True, help="COCO folder (ground-truth boxes and region labels)")
    p.add_argument("--images", required=True, help="images table (data/interim/images.parquet)")
    p.add_argument("--image-dir", required=True, help="PNG folder (data/interim/images)")
    p.add_argument("--splits", required=True, help="splits table (data/processed/splits.parquet)")
    p.add_argument("--out", required=True, help="features folder (data/processed/features)")
    p.add_argument("--metrics", required=True, help="summary JSON (reports/features.json)")
    return p


def _run(args: argparse.Namespace, params, *, log: logging.Logger) -> int | None:
    reason = reason_of(args.model)
    if reason:
        log.warning("not applicable: %s", reason)
        write_json(Path(args.out) / "marker.json", marker(reason))
        write_json(args.metrics, marker(reason))
        return 0
    backbone = None  # features.extractor: detector = the box head, whatever --backbone holds
    if params.extractor != DETECTOR:
        backbone = args.backbone if args.backbone and not reason_of(args.backbone) else None
        if backbone is None:
            raise AnatomyError(f"features.extractor = {params.extractor!r} but no backbone model dir was given "
                               f"(--backbone {args.backbone}); run the backbone stage first")
        arch = read_card(backbone).get("architecture")
        if arch != params.extractor:
            raise AnatomyError(f"features.extractor = {params.extractor!r} but {backbone} holds {arch!r}; rerun the "
                               "backbone stage (dvc repro backbone)")
    meta = extract_features(
        model_dir=args.model, coco_dir=args.coco, images=pd.read_parquet(args.images),
        splits=pd.read_parquet(args.splits), images_dir=args.image_dir, out_dir=args.out,
        boxes=params.boxes, score_thresh=params.score_thresh, views=params.views,
        batch_size=params.batch_size, device=params.device, backbone_dir=backbone, levels=params.levels,
    )
    if not is_rank_zero():
        return 0  # torchrun: rank 0 writes the summary (and wrote the folder)
    write_json(args.metrics, meta)
    log.info("features done: %d images, box source %s, %d images missing regions",
             meta["images"], meta["box_source"], meta["images_missing_regions"])
    return 0


def main(argv: list[str] | None = None) -> int:
    return run("features", get_args_parser(), argv, ("features",), _run)


if __name__ == "__main__":
    sys.exit(main())
