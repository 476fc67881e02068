"""DVC stage `unet`: organ-segmentation UNet on the masked subset (see cxr.anatomy.unet).

Writes the model dir (model.pt + card.json with class names), DVCLive logs, and Dice / IoU per
structure on val and test to --metrics.
"""

from __future__ import annotations

import argparse
import logging
import sys

import pandas as pd

from cxr.anatomy.unet import train_unet
from cxr.io import write_json
from cxr.convert import card_settings
from cxr.sources.masks import find_masks
from cxr.stage import run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--images", required=True, help="images table (data/interim/images.parquet)")
    p.add_argument("--image-dir", required=True, help="PNG folder (data/interim/images)")
    p.add_argument("--splits", required=True, help="splits table (data/processed/splits.parquet)")
    p.add_argument("--raw", required=True, help="raw data folder (data/raw): organ masks in any layout of "
                   "cxr.sources.masks (masks/<image_id>/<structure>.png, jsrt/masks/<structure>/<name>.gif)")
    p.add_argument("--out", required=True, help="model dir (models/unet)")
    p.add_argument("--live", default=None, help="DVCLive folder (reports/unet/live)")
    p.add_argument("--metrics", required=True, help="metrics JSON (reports/unet/metrics.json)")
    return p


def _run(args: argparse.Namespace, base, params, convert, *, log: logging.Logger) -> int | None:
    _, metrics = train_unet(
        images=pd.read_parquet(args.images), splits=pd.read_parquet(args.splits), images_dir=args.image_dir,
        masks=find_masks(args.raw), out_dir=args.out, params=params, seed=base.seed, live_dir=args.live,
        convert=card_settings(convert),
    )
    if not metrics:
        return 0  # DDP rank > 0: rank 0 evaluates and writes
    write_json(args.metrics, metrics)
    log.info("unet done: test mean Dice %s", metrics["test"].get("mean_dice"))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run("unet", get_args_parser(), argv, ("base", "unet", "convert"), _run)


if __name__ == "__main__":
    sys.exit(main())
