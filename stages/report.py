"""DVC stage `report`: every stage's declared outputs -> reports/index.html + reports/summary.md (cxr.report).

The HTML page is self-contained (opens from disk, no server, no network); summary.md has the same
tables for `git diff`. Sections whose stage is not in dvc.yaml say so; a declared input that is
missing or malformed stops the stage with a message naming the file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cxr.report import ReportInputs, write_report
from cxr.stage import run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--dvc-yaml", default="dvc.yaml", help="pipeline definition drawn as the DAG (default: dvc.yaml)")
    p.add_argument("--raw", required=True, help="ingest output dir with its manifest (data/raw)")
    p.add_argument("--images", required=True, help="images table (data/interim/images.parquet)")
    p.add_argument("--image-dir", default=None, help="converted PNGs, for retrieval thumbnails (data/interim/images)")
    p.add_argument("--label", required=True, help="label summary (reports/label.json)")
    p.add_argument("--split", required=True, help="split summary (reports/split.json)")
    p.add_argument("--coco", required=True, help="scene-graph conversion summary (reports/coco.json)")
    p.add_argument("--features", required=True, help="region feature summary (reports/features.json)")
    p.add_argument("--detector", required=True, help="detector metrics (reports/detector/metrics.json)")
    p.add_argument("--unet", required=True, help="UNet metrics (reports/unet/metrics.json)")
    p.add_argument("--evaluation", required=True, help="evaluate@M outputs (data/processed/evaluation)")
    p.add_argument("--models", required=True, help="model comparison (reports/models.json)")
    p.add_argument("--localization", required=True, help="localize@M outputs (data/processed/localization)")
    p.add_argument("--retrieval", required=True, help="retrieve@M outputs (data/processed/retrieval)")
    p.add_argument("--training", default=None,
                   help="DVCLive logs of train@M / train_hash@M, one folder per model (reports/training)")
    p.add_argument("--detector-live", default=None, help="detector DVCLive plots (reports/detector/live/plots/metrics)")
    p.add_argument("--unet-live", default=None, help="UNet DVCLive plots (reports/unet/live/plots/metrics)")
    p.add_argument("--html", required=True, help="report page (reports/index.html)")
    p.add_argument("--summary", required=True, help="markdown summary (reports/summary.md)")
    return p


def _run(args: argparse.Namespace, *, log: logging.Logger) -> int | None:
    inputs = ReportInputs(
        params=Path(args.params), dvc_yaml=Path(args.dvc_yaml), raw=Path(args.raw), images=Path(args.images),
        label=Path(args.label), split=Path(args.split), coco=Path(args.coco), features=Path(args.features),
        detector=Path(args.detector), unet=Path(args.unet), evaluation=Path(args.evaluation),
        models=Path(args.models), localization=Path(args.localization), retrieval=Path(args.retrieval),
        **{k: Path(getattr(args, k)) if getattr(args, k) else None for k in ("training", "detector_live", "unet_live")},
    )
    sections = write_report(inputs, Path(args.html), Path(args.summary),
                            image_dir=Path(args.image_dir) if args.image_dir else None)
    absent = [s.title for s in sections if s.absent]
    log.info("wrote %s and %s (%d sections%s)", args.html, args.summary, len(sections),
             f"; not in this pipeline: {', '.join(absent)}" if absent else "")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run("report", get_args_parser(), argv, (), _run)


if __name__ == "__main__":
    sys.exit(main())
