"""DVC stage `localize@M`: weak localisation of one trained model (cxr.localize).

Image models: class activation heatmaps -> boxes (threshold chosen on VAL boxes) -> accuracy at
T(IoU) / T(IoBB) and mean IoU against the TEST ground-truth boxes of BBox_List_2017.csv. Anatomy
models: per-region finding AUROC and top-region pointing. Writes data/processed/localization/<M>/
(localization.json + gallery.png) and the DVC metrics copy reports/<M>/localization.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from cxr.io import atomic_dir, write_json
from cxr.localize.pipeline import localize_model, metrics_view
from cxr.stage import run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--model-dir", required=True, help="trained model dir (models/<M>)")
    p.add_argument("--images", required=True, help="converted PNG directory (data/interim/images)")
    p.add_argument("--table", required=True, help="images table (data/interim/images.parquet)")
    p.add_argument("--labels", required=True, help="labels table (data/interim/labels.parquet)")
    p.add_argument("--splits", required=True, help="splits table (data/processed/splits.parquet)")
    p.add_argument("--boxes", required=True, help="ground-truth finding boxes (data/raw/nih/BBox_List_2017.csv)")
    p.add_argument("--features", default=None, help="region feature dir (anatomy models)")
    p.add_argument("--unet", default=None, help="organ UNet model dir (models/unet) of the whole-lung-box baseline")
    p.add_argument("--out-dir", required=True,
                   help="localisation dir read by later stages (data/processed/localization/<M>): localization.json, gallery.png")
    p.add_argument("--metrics", required=True, help="metrics JSON copy (reports/<M>/localization.json)")
    return p


def _run(args: argparse.Namespace, base, params, *, log: logging.Logger) -> int | None:
    result, gallery = localize_model(
        args.model_dir, images=pd.read_parquet(args.table), labels=pd.read_parquet(args.labels),
        splits=pd.read_parquet(args.splits), images_dir=args.images, bbox_csv=args.boxes, params=params,
        seed=base.seed, features_dir=args.features, unet_dir=args.unet,
    )
    if not result.get("supported", False):
        log.warning("%s", result.get("reason"))
    with atomic_dir(args.out_dir) as tmp:
        write_json(Path(tmp) / "localization.json", result)
        if gallery is not None:
            (Path(tmp) / "gallery.png").write_bytes(gallery)
    write_json(args.metrics, metrics_view(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run("localize", get_args_parser(), argv, ("base", "localize"), _run)


if __name__ == "__main__":
    sys.exit(main())
