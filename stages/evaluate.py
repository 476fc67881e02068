"""DVC stage `evaluate@M`: evaluate one trained model on the TEST split (cxr.evaluate).

Writes reports/<M>/metrics.json (DVC metrics: AUROC with patient-bootstrap CIs, AUPRC,
sensitivity/specificity/F1 at the validation thresholds, ECE), reports/<M>/roc.csv and pr.csv
(DVC plots) and the test predictions (for the paired comparisons of reports/models.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from cxr.evaluate.classification import evaluate_model
from cxr.io import scratch_dir, write_csv, write_json, write_parquet
from cxr.stage import run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--model-dir", required=True, help="trained model dir (models/<M>)")
    p.add_argument("--images", required=True, help="converted PNG directory (data/interim/images)")
    p.add_argument("--table", required=True, help="images table (data/interim/images.parquet)")
    p.add_argument("--labels", required=True, help="labels table (data/interim/labels.parquet)")
    p.add_argument("--splits", required=True, help="splits table (data/processed/splits.parquet)")
    p.add_argument("--features", default=None, help="region feature dir (anatomy models)")
    p.add_argument("--metrics", required=True, help="metrics JSON (reports/<M>/metrics.json)")
    p.add_argument("--roc", required=True, help="ROC points CSV (reports/<M>/roc.csv)")
    p.add_argument("--pr", required=True, help="precision-recall points CSV (reports/<M>/pr.csv)")
    p.add_argument("--out-dir", required=True,
                   help="evaluation dir read by later stages (data/processed/evaluation/<M>): metrics.json, roc.csv, "
                        "pr.csv, predictions.parquet (test predictions)")
    return p


def _run(args: argparse.Namespace, base, params, *, log: logging.Logger) -> int | None:
    with scratch_dir("cxr-cache") as tmp:
        metrics, roc, pr, pred = evaluate_model(
            args.model_dir, images=pd.read_parquet(args.table), labels=pd.read_parquet(args.labels),
            splits=pd.read_parquet(args.splits), images_dir=args.images, cache_dir=tmp, features_dir=args.features,
            n_boot=params.bootstrap, ci=params.ci, ece_bins=params.ece_bins, seed=base.seed,
            min_positives=params.min_positives,
            truth=params.truth.model_dump(),
        )
    out = Path(args.out_dir)
    # the declared outputs later stages depend on, and the DVC metrics/plots copies under reports/
    write_json(out / "metrics.json", metrics)
    write_csv(out / "roc.csv", roc)
    write_csv(out / "pr.csv", pr)
    write_parquet(out / "predictions.parquet", pred)
    write_json(args.metrics, metrics)
    write_csv(args.roc, roc)
    write_csv(args.pr, pr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run("evaluate", get_args_parser(), argv, ("base", "evaluate"), _run)


if __name__ == "__main__":
    sys.exit(main())
