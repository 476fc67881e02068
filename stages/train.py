"""DVC stage `train@M`: train one model of the zoo (cxr.train) and write its model dir.

Writes models/<M>/model.pt + card.json (label names, input size, normalisation, validation
thresholds, params, data hashes) and DVCLive training curves under reports/training/<M>.
With --backbone: when that model dir (the `backbone` stage's) was trained as M with the same
params, seed and data, its weights and log are copied instead of training M a second time.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cxr.train import train_stage
from cxr.stage import run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--model", required=True, help="registered model name (one entry of train.models)")
    p.add_argument("--images", required=True, help="converted PNG directory (data/interim/images)")
    p.add_argument("--table", required=True, help="images table (data/interim/images.parquet)")
    p.add_argument("--labels", required=True, help="labels table (data/interim/labels.parquet)")
    p.add_argument("--splits", required=True, help="splits table (data/processed/splits.parquet)")
    p.add_argument("--features", default=None, help="region feature dir (anatomy models)")
    p.add_argument("--unet", default=None, help="UNet model dir (segfusion_van_gcn)")
    p.add_argument("--backbone", default=None, help="the backbone stage's model dir (models/backbone): reused when "
                                                     "it is this model trained the same way")
    p.add_argument("--backbone-log", default=None, help="its DVCLive dir (reports/backbone/live), copied with it")
    p.add_argument("--out", required=True, help="model dir (models/<M>)")
    p.add_argument("--log-dir", default=None, help="DVCLive dir (reports/training/<M>)")
    p.add_argument("--cache-dir", default=None, help="image cache dir (default: a temporary dir)")
    return p


def _run(args: argparse.Namespace, base, label, params, convert, ingest, *, log: logging.Logger) -> int | None:
    train_stage(args.model, table=args.table, labels=args.labels, splits=args.splits, images_dir=args.images,
                base=base, label=label, params=params, convert=convert, ingest=ingest, out_dir=args.out,
                log_dir=args.log_dir, cache_dir=args.cache_dir, features_dir=args.features, unet_dir=args.unet,
                reuse=(args.backbone, args.backbone_log) if args.backbone else None, log=log)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run("train", get_args_parser(), argv, ("base", "label", "train", "convert", "ingest"), _run)


if __name__ == "__main__":
    sys.exit(main())
