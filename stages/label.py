"""DVC stage `label`: dataset label files + report labeller -> one label space with provenance.

Writes data/interim/labels.parquet (one row per image: dataset, image_id, patient_id,
study_id, the labels of base.label_space as 1 / 0 / -1 / NaN, label_source) and
reports/label.json (counts per source and label, disagreement rates, counted malformed
input, labeller throughput). See cxr.label_build.build_labels.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cxr.io import write_json, write_parquet
from cxr.label_build import build_labels
from cxr.stage import run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--raw", required=True, help="raw data directory (data/raw)")
    p.add_argument("--out", required=True, help="labels table (data/interim/labels.parquet)")
    p.add_argument("--metrics", required=True, help="summary JSON (reports/label.json)")
    return p


def _run(args: argparse.Namespace, base, params, *, log: logging.Logger) -> int | None:
    labels, summary = build_labels(
        raw_dir=args.raw,
        space=base.label_space,
        vocabulary=params.vocabulary,
        sections=tuple(params.sections),
        precedence=tuple(params.precedence),
        unknown=params.unknown_labels,
        workers=params.workers,
        scheduler=params.scheduler,
        chunk_size=params.chunk_size,
    )
    write_parquet(args.out, labels)
    write_json(args.metrics, summary)
    issues = sum(v["count"] for v in summary["issues"].values())
    log.info("label done: %d images labelled (%s), %d malformed records counted",
             summary["merged"]["images"], summary["merged"]["per_source"], issues)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run("label", get_args_parser(), argv, ("base", "label"), _run)


if __name__ == "__main__":
    sys.exit(main())
