"""Run by tests/test_ddp.py: fit a small region model with ``--devices`` CPU processes and write the result.

Lightning's DDP launcher starts this same script again for rank 1 (gloo on CPU); only rank 0
writes ``--out``. Usage: python tests/scripts/ddp_fit.py OUT.json --devices 2 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr.data import RegionDataset, RegionFeatures
from cxr.evaluate.metrics import macro_auroc
from cxr.models import create_model
from cxr.train import fit, predict


def region_dir(root: Path, n: int, r: int = 6, d: int = 8, f: int = 2) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rl = (rng.random((n, r, f)) < 0.3).astype(np.float32)
    feats = rng.normal(size=(n, r, d)).astype(np.float16)
    feats[..., 0] += rl.any(-1) * 2
    np.save(root / "features.npy", feats)
    np.save(root / "mask.npy", np.ones((n, r), bool))
    np.save(root / "boxes.npy", rng.random((n, r, 4)).astype(np.float32))
    np.save(root / "labels.npy", rl)
    pd.DataFrame({"image_id": [f"i{k:03d}" for k in range(n)]}).to_parquet(root / "index.parquet")
    return root


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--train", type=int, default=32)
    p.add_argument("--val", type=int, default=11)  # odd: the DistributedSampler pads a shard with a repeat
    args = p.parse_args()
    n = args.train + args.val
    out = Path(args.out)
    feats = RegionFeatures(region_dir(out.parent / f"features-{args.devices}", n))
    rl = np.load(out.parent / f"features-{args.devices}" / "labels.npy")
    meta = pd.DataFrame({"image_id": [f"i{k:03d}" for k in range(n)], "patient_id": [f"p{k}" for k in range(n)],
                         "A": rl[:, :, 0].any(1).astype(float), "B": rl[:, :, 1].any(1).astype(float)})
    tr = RegionDataset(meta.iloc[:args.train], ["A", "B"], feats)
    va = RegionDataset(meta.iloc[args.train:], ["A", "B"], feats)
    torch.manual_seed(0)
    model = create_model("graph_transformer", num_classes=2, num_regions=6, feature_dim=8, hidden=8, edge_dim=4,
                         num_findings=2)
    summary = fit(model, tr, va, seed=0, epochs=1, batch_size=args.batch_size, lr=1e-2, graph_importance=0.5,
                  progress=False, device="cpu", precision="32", devices=args.devices,
                  strategy="ddp" if args.devices > 1 else "auto")
    if summary["global_rank"] != 0:
        return 0
    probs = predict(model, va, batch_size=8)
    summary["recomputed_val_macro_auroc"] = macro_auroc(probs, va.targets, va.mask)
    summary["val_size"] = len(va)
    out.write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
