"""DVC stage `backbone`: train the image classifier whose feature map gives the region features.

``features.extractor`` names a classifier of the zoo (default densenet121); this stage trains it
exactly as ``train@<that model>`` would (the ``train`` params, the same data and seed) into
models/backbone, with its DVCLive log in reports/backbone/live. The ``features`` stage pools its
feature map inside each region box; ``train@<that model>`` then copies these weights instead of
training the same model twice. ``features.extractor: detector`` (the detector's box head, AnaXNet as
published) leaves nothing to train: the outputs are not-applicable markers.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cxr.anatomy.features import DETECTOR
from cxr.applicability import marker
from cxr.params import ParamsError
from cxr.io import write_json
from cxr.models.zoo import input_kind, list_models
from cxr.stage import run
from cxr.train import train_stage

#: image models of the zoo whose output is not one pooled feature map (UNet fusion, label graph, hashing)
NO_FEATURE_MAP = ("segfusion_van_gcn", "mlgcn", "ath")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--images", required=True, help="converted PNG directory (data/interim/images)")
    p.add_argument("--table", required=True, help="images table (data/interim/images.parquet)")
    p.add_argument("--labels", required=True, help="labels table (data/interim/labels.parquet)")
    p.add_argument("--splits", required=True, help="splits table (data/processed/splits.parquet)")
    p.add_argument("--out", required=True, help="model dir (models/backbone)")
    p.add_argument("--log-dir", required=True, help="DVCLive dir (reports/backbone/live)")
    return p


def _run(args: argparse.Namespace, base, label, params, convert, ingest, features, *,
         log: logging.Logger) -> int | None:
    name = features.extractor
    if name == DETECTOR:
        reason = "features.extractor is 'detector': the region features are the detector's box-head outputs"
        log.warning("not applicable: %s", reason)
        write_json(Path(args.out) / "marker.json", marker(reason))
        for f in ("metrics.json", "params.yaml", "plots/metrics/marker.json"):  # the declared DVCLive outputs
            write_json(Path(args.log_dir) / f, marker(reason))
        return 0
    known = list_models()
    if name not in known or input_kind(name) != "image" or name in NO_FEATURE_MAP:
        raise ParamsError(f"features.extractor = {name!r}: choose {DETECTOR!r} or an image classifier of the zoo with "
                          f"a feature map (e.g. densenet121, resnet50); registered: {', '.join(known)}")
    train_stage(name, table=args.table, labels=args.labels, splits=args.splits, images_dir=args.images, base=base,
                label=label, params=params, convert=convert, ingest=ingest, out_dir=args.out, log_dir=args.log_dir,
                log=log)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run("backbone", get_args_parser(), argv, ("base", "label", "train", "convert", "ingest", "features"), _run)


if __name__ == "__main__":
    sys.exit(main())
