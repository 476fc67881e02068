"""DVC stage `baselines`: trivial classifiers (prevalence, 16 x 16 pixels, metadata) on the models' own
splits and truth, so every model AUROC stands beside them (see cxr.evaluate.baselines).

Writes data/processed/baselines/<name>.json (read by models_table and report) and the headline copy
reports/baselines/metrics.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import pandas as pd

from cxr.evaluate.baselines import run_baselines
from cxr.io import write_json
from cxr.labels import label_names
from cxr.stage import run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--images", required=True, help="PNG folder (data/interim/images)")
    p.add_argument("--table", required=True, help="images table (data/interim/images.parquet)")
    p.add_argument("--labels", required=True, help="labels table (data/interim/labels.parquet)")
    p.add_argument("--splits", required=True, help="splits table (data/processed/splits.parquet)")
    p.add_argument("--out-dir", required=True, help="baseline metrics dir (data/processed/baselines)")
    p.add_argument("--metrics", required=True, help="headline metrics JSON (reports/baselines/metrics.json)")
    return p


def _run(args: argparse.Namespace, base, label, train, ev, *, log: logging.Logger) -> int | None:
    u = label.uncertainty
    with tempfile.TemporaryDirectory(prefix="cxr-cache-") as tmp:
        results = run_baselines(
            images=pd.read_parquet(args.table), labels=pd.read_parquet(args.labels),
            splits=pd.read_parquet(args.splits), images_dir=args.images, names=label_names(base.label_space),
            uncertainty={"policy": dict(u.per_class), "default": u.default, "blank": u.blank},
            frontal_only=train.frontal_only, datasets=train.datasets, cache_dir=tmp, n_boot=ev.bootstrap,
            ci=ev.ci, ece_bins=ev.ece_bins, seed=base.seed, min_positives=ev.min_positives,
            truth=ev.truth.model_dump(),
        )
    for name, met in results.items():
        write_json(Path(args.out_dir) / f"{name}.json", met)
    keys = ("macro_auroc", "macro_auroc_ci_low", "macro_auroc_ci_high", "macro_auroc_common", "macro_auroc_common_ci_low",
            "macro_auroc_common_ci_high", "macro_auprc")
    headline = {name: {k: met[k] for k in keys} for name, met in results.items()}
    write_json(args.metrics, headline)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run("baselines", get_args_parser(), argv, ("base", "label", "train", "evaluate"), _run)


if __name__ == "__main__":
    sys.exit(main())
