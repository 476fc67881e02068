"""DVC stage `headline`: the few numbers declared as DVC metrics, in reports/metrics.json (cxr.evaluate.headline).

Reads the detail outputs (evaluation, localization and retrieval dirs of every model, the detector, UNet and
label metrics) and writes per model macro AUROC + CI, AUPRC, F1, ECE, localisation accuracy and retrieval AP@k,
plus detector AP50, UNet Dice and labeller F1. `dvc metrics show/diff` and `dvc exp show` print only these.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from cxr.evaluate.headline import HeadlineError, build
from cxr.io import write_json
from cxr.params import load_sections


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--evaluation", required=True, help="dir of <M>/metrics.json (data/processed/evaluation)")
    p.add_argument("--localization", required=True, help="dir of <M>/localization.json (data/processed/localization)")
    p.add_argument("--retrieval", required=True, help="dir of <M>/retrieval.json (data/processed/retrieval)")
    p.add_argument("--detector", required=True, help="detector metrics (reports/detector/metrics.json)")
    p.add_argument("--unet", required=True, help="UNet metrics (reports/unet/metrics.json)")
    p.add_argument("--label", required=True, help="label stage metrics (reports/label.json)")
    p.add_argument("--out", required=True, help="headline metrics JSON (reports/metrics.json)")
    return p


def _read(path: Path, log: logging.Logger, stage: str) -> dict | None:
    if not path.is_file():
        log.error("%s is missing; run %s", path, stage)
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("headline")
    loaded = load_sections(args.params, "train", "localize", "retrieve", log=log)
    if loaded is None:
        return 2
    train, localize, retrieve = loaded
    models: dict[str, dict] = {}
    hashing: dict[str, dict] = {}
    for m in [*train.models, *retrieve.hashing]:
        parts = {"retrieve": _read(Path(args.retrieval) / m / "retrieval.json", log, f"retrieve@{m}")}
        if m in train.models:
            parts["evaluate"] = _read(Path(args.evaluation) / m / "metrics.json", log, f"evaluate@{m}")
            parts["localize"] = _read(Path(args.localization) / m / "localization.json", log, f"localize@{m}")
        if any(v is None for v in parts.values()):
            return 1
        (models if m in train.models else hashing)[m] = parts
    others = [_read(Path(p), log, s) for p, s in ((args.detector, "detector"), (args.unet, "unet"), (args.label, "label"))]
    if any(v is None for v in others):
        return 1
    try:
        out = build(models=models, hashing=hashing, detector_metrics=others[0], unet_metrics=others[1],
                    label=others[2], select_iou=localize.select_iou, ks=retrieve.k)
    except HeadlineError as exc:
        log.error("%s", exc)
        return 1
    write_json(args.out, out)
    log.info("wrote %s (%d models)", args.out, len(out["models"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
