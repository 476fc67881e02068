"""DVC stage `coco`: Chest ImaGenome scene graphs -> COCO json per split (see cxr.anatomy.coco).

Writes <out>/{train,val,test}.json and a summary (images, annotations, missing regions) to --metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pandas as pd

from cxr.anatomy.coco import SPLITS, build_coco, read_graphs
from cxr.applicability import marker
from cxr.io import write_json, write_text
from cxr.stage import run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--scene-graphs", required=True, help="folder searched for *_SceneGraph.json")
    p.add_argument("--images", required=True, help="images table (data/interim/images.parquet)")
    p.add_argument("--splits", required=True, help="splits table (data/processed/splits.parquet)")
    p.add_argument("--out", required=True, help="output folder (data/processed/coco)")
    p.add_argument("--metrics", required=True, help="summary JSON (reports/coco.json)")
    return p


def _run(args: argparse.Namespace, params, *, log: logging.Logger) -> int | None:
    sg = Path(args.scene_graphs)
    if not (sg.is_dir() and next(sg.rglob("*_SceneGraph.json"), None)):
        reason = (f"no Chest ImaGenome scene graphs (*_SceneGraph.json) under {args.scene_graphs}: the anatomy "
                  "branch (coco, detector, features, region models) needs them")
        log.warning("not applicable: %s", reason)
        for split in SPLITS:
            write_text(Path(args.out) / f"{split}.json", json.dumps(
                {"images": [], "annotations": [], "categories": [], **marker(reason)}) + "\n")
        write_json(args.metrics, marker(reason))
        return 0
    graphs, bad = read_graphs(args.scene_graphs, unknown=params.unknown_findings)
    cocos, summary = build_coco(
        graphs=graphs,
        images=pd.read_parquet(args.images),
        splits=pd.read_parquet(args.splits),
        regions=params.regions,
        findings=params.findings,
    )
    summary["malformed_graphs"] = len(bad)
    for msg in bad[:20]:
        log.warning("skipped: %s", msg)
    for split in SPLITS:  # compact JSON: these files are read by programs
        write_text(Path(args.out) / f"{split}.json", json.dumps(cocos[split], separators=(",", ":")) + "\n")
    write_json(args.metrics, summary)
    log.info("coco done: images %s, images missing regions %s", summary["images"], summary["images_missing_regions"])
    return 0


def main(argv: list[str] | None = None) -> int:
    return run("coco", get_args_parser(), argv, ("coco",), _run)


if __name__ == "__main__":
    sys.exit(main())
