"""DVC stage `models_table`: reports/models.md comparing every model of train.models (cxr.evaluate.report_table).

Reads data/processed/evaluation/<M>/{metrics.json,predictions.parquet} (outputs of evaluate@M); the paired
patient-bootstrap p-values test each model's macro AUROC against evaluate.reference. A second table compares the
retrieval metrics of every model of train.models and retrieve.hashing (data/processed/retrieval/<M>/retrieval.json,
from retrieve@M and retrieve_hash@M).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pandas as pd

from cxr.evaluate.report_table import BASELINES, models_table, retrieval_table
from cxr.io import write_json, write_text
from cxr.stage import run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--baselines", default=None, help="baseline metrics dir (data/processed/baselines)")
    p.add_argument("--evaluation", required=True,
                   help="directory holding <M>/metrics.json and <M>/predictions.parquet (data/processed/evaluation)")
    p.add_argument("--retrieval", required=True, help="directory holding <M>/retrieval.json (data/processed/retrieval)")
    p.add_argument("--out", required=True, help="markdown table (reports/models.md)")
    p.add_argument("--json", required=True, help="table data (reports/models.json)")
    return p


def _run(args: argparse.Namespace, base, train, params, retrieve, *, log: logging.Logger) -> int | None:
    metrics, preds = {}, {}
    for m in train.models:
        mpath, ppath = Path(args.evaluation) / m / "metrics.json", Path(args.evaluation) / m / "predictions.parquet"
        if not mpath.is_file() or not ppath.is_file():
            log.error("model %s has no evaluation (%s, %s); run evaluate@%s", m, mpath, ppath, m)
            return 1
        metrics[m] = json.loads(mpath.read_text())
        preds[m] = pd.read_parquet(ppath)
    names = [c[2:] for c in next(iter(preds.values())).columns if c.startswith("p:")]
    retrieval = {}
    for m in [*train.models, *retrieve.hashing]:
        rpath = Path(args.retrieval) / m / "retrieval.json"
        if not rpath.is_file():
            stage = "retrieve_hash" if m in retrieve.hashing else "retrieve"
            log.error("model %s has no retrieval result (%s); run %s@%s", m, rpath, stage, m)
            return 1
        retrieval[m] = json.loads(rpath.read_text())
    baselines = {}
    if args.baselines:
        for b in BASELINES:
            bpath = Path(args.baselines) / f"{b}.json"
            if not bpath.is_file():
                log.error("baseline %s has no metrics (%s); run the baselines stage", b, bpath)
                return 1
            baselines[b] = json.loads(bpath.read_text())
    text, data = models_table(metrics, preds, names, reference=params.reference, n_boot=params.bootstrap,
                              seed=base.seed, baselines=baselines)
    text += retrieval_table(retrieval)
    write_text(args.out, text)
    write_json(args.json, data)
    log.info("wrote %s (%d models)", args.out, len(metrics))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run("models_table", get_args_parser(), argv, ("base", "train", "evaluate", "retrieve"), _run)


if __name__ == "__main__":
    sys.exit(main())
