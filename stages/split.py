"""DVC stage `split`: images + labels -> patient-level train/val/test (see cxr.split).

Writes data/processed/splits.parquet (image_id, dataset, patient_id, split) and
reports/split.json (images, patients and per-label prevalence per split).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from cxr.io import write_json, write_parquet
from cxr.sources.mimic import read_split as read_mimic_split
from cxr.sources.nih import read_split_list
from cxr.split import SplitError, make_splits
from cxr.stage import run


def official_splits(raw_dir: Path, which: list[str]) -> dict[str, str]:
    """image_id -> official split for the configured datasets (files must exist)."""
    out: dict[str, str] = {}
    if "mimic" in which:
        df = read_mimic_split(raw_dir / "mimic-cxr" / "mimic-cxr-2.0.0-split.csv")
        out.update(zip(df["image_id"], df["split"]))
    if "nih" in which:
        out.update(dict.fromkeys(read_split_list(raw_dir / "nih" / "train_val_list.txt"), "trainval"))
        out.update(dict.fromkeys(read_split_list(raw_dir / "nih" / "test_list.txt"), "test"))
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--images", required=True, help="images table (data/interim/images.parquet)")
    p.add_argument("--labels", required=True, help="labels table (data/interim/labels.parquet)")
    p.add_argument("--raw", default=None, help="raw data directory, for official split files (split.official)")
    p.add_argument("--out", required=True, help="splits table (data/processed/splits.parquet)")
    p.add_argument("--metrics", required=True, help="summary JSON (reports/split.json)")
    return p


def _run(args: argparse.Namespace, base, params, *, log: logging.Logger) -> int | None:
    official = None
    if params.official:
        if args.raw is None:
            raise SplitError(f"split.official = {params.official} needs --raw (the raw data directory)")
        official = official_splits(Path(args.raw), list(params.official))
    splits, summary = make_splits(
        images=pd.read_parquet(args.images),
        labels=pd.read_parquet(args.labels),
        fractions={"train": params.train, "val": params.val, "test": params.test},
        seed=base.seed,
        official=official,
        order=params.order,
    )
    write_parquet(args.out, splits)
    write_json(args.metrics, summary)
    log.info("split done: %s", {k: (v["patients"], v["images"]) for k, v in summary["splits"].items()})
    return 0


def main(argv: list[str] | None = None) -> int:
    return run("split", get_args_parser(), argv, ("base", "split"), _run)


if __name__ == "__main__":
    sys.exit(main())
