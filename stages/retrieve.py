"""DVC stage `retrieve@M`: image search with one trained model (cxr.retrieve).

Embeds the database splits (retrieve.database) and the test queries, builds the faiss index
(exact inner product, IVF/HNSW above retrieve.index.exact_max, Hamming for hashing models such as
ATH); an approximate index measures its recall@k against exact search on a sample of the test queries and
raises its search effort until retrieve.index.min_recall holds, else exact search is used (and said so).
Scores the CheXtriev metrics at retrieve.k with the index kept. Writes the retrieval dir
data/processed/retrieval/<M> (index, items, example queries, the full retrieval.json) and its flat
numbers for `dvc metrics show` in reports/<M>/retrieval.json.
"""

from __future__ import annotations

import argparse
import logging
import sys

import pandas as pd

from cxr.io import scratch_dir, write_json
from cxr.retrieve.run import metrics_summary, retrieve_model, write_outputs
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
    p.add_argument("--out-dir", required=True, help="retrieval dir read by later stages (data/processed/retrieval/<M>)")
    p.add_argument("--metrics", required=True, help="flat DVC metrics (reports/<M>/retrieval.json)")
    return p


def _run(args: argparse.Namespace, base, params, *, log: logging.Logger) -> int | None:
    with scratch_dir("cxr-cache") as tmp:
        result = retrieve_model(
            args.model_dir, images=pd.read_parquet(args.table), labels=pd.read_parquet(args.labels),
            splits=pd.read_parquet(args.splits), images_dir=args.images, cache_dir=tmp, params=params,
            seed=base.seed, features_dir=args.features,
        )
    write_outputs(args.out_dir, result)
    write_json(args.metrics, metrics_summary(result["metrics"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run("retrieve", get_args_parser(), argv, ("base", "retrieve"), _run)


if __name__ == "__main__":
    sys.exit(main())
