"""Run by tests/test_ddp.py under ``torchrun --nproc-per-node 2``: extract region features of the tiny set
made by :func:`make_set` (gloo on CPU); rank 0 writes the folder, every rank writes ``rank<k>.json``
(its rank, the world size, meta["processes"]). Usage: python -m torch.distributed.run --standalone --nproc-per-node 2 ddp_features.py ROOT"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from cxr.anatomy.features import extract_features
from cxr.distributed import world

REGIONS, FINDINGS, N = ["left_lung", "right_lung"], ["opacity"], 11


def make_set(root: Path) -> dict:
    """11 random 64-px PNGs, their images / splits tables, one COCO file with two regions each,
    and an untrained tiny_fpn detector model dir (seeded)."""
    from cxr.anatomy.detector import ARCHITECTURE, build_detector
    from cxr.modeldir import save_model_dir
    from cxr.params import DetectorParams

    rng = np.random.default_rng(0)
    (root / "images" / "local").mkdir(parents=True, exist_ok=True)
    ids = [f"i{k:02d}" for k in range(N)]
    for i in ids:
        Image.fromarray(rng.integers(0, 256, (64, 56), dtype=np.uint8)).save(root / "images" / "local" / f"{i}.png")
    pd.DataFrame({"image_id": ids, "dataset": "local", "patient_id": [f"p{k}" for k in range(N)], "view": "PA",
                  "png_path": [f"local/{i}.png" for i in ids], "status": "ok"}).to_parquet(root / "images.parquet")
    pd.DataFrame({"image_id": ids, "split": ["train"] * 7 + ["val"] * 2 + ["test"] * 2}).to_parquet(root / "splits.parquet")
    (root / "coco").mkdir(exist_ok=True)
    anns = [{"id": 2 * k + c, "image_id": k, "category_id": c + 1, "attributes": [float((k + c) % 2)],
             "bbox": [float(2 + 20 * c + k % 3), 8.0, 18.0, 30.0 + k % 5]} for k in range(N) for c in range(2)]
    coco = {"info": {"findings": FINDINGS}, "categories": [{"id": c + 1, "name": r} for c, r in enumerate(REGIONS)],
            "images": [{"id": k, "name": i} for k, i in enumerate(ids)], "annotations": anns}
    (root / "coco" / "train.json").write_text(json.dumps(coco))
    params = DetectorParams(image_size=64)
    torch.manual_seed(0)
    model = build_detector(len(REGIONS), params)
    save_model_dir(root / "detector", model, {"architecture": ARCHITECTURE, "backbone": params.backbone,
                                              "regions": REGIONS, "findings": FINDINGS, "input": {"size": 64},
                                              "params": params.model_dump()})
    return {"model_dir": root / "detector", "coco_dir": root / "coco", "images": pd.read_parquet(root / "images.parquet"),
            "splits": pd.read_parquet(root / "splits.parquet"), "images_dir": root / "images"}


def extract(root: Path, out: Path) -> dict:
    d = {"model_dir": root / "detector", "coco_dir": root / "coco", "images": pd.read_parquet(root / "images.parquet"),
         "splits": pd.read_parquet(root / "splits.parquet"), "images_dir": root / "images"}
    return extract_features(**d, out_dir=out, boxes="gt", batch_size=3, device="cpu", progress=False)


def main() -> int:
    root = Path(sys.argv[1])
    torch.set_num_threads(1)
    meta = extract(root, root / "ddp")
    rank, size = world()
    (root / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "size": size, "processes": meta["processes"],
                                                        "env_rank": os.environ.get("RANK")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
