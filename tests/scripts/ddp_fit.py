"""Run by tests/test_ddp.py: fit a small region model with ``--devices`` CPU processes and write the result.

Lightning's DDP launcher starts this same script again for rank 1 (gloo on CPU); only rank 0
writes ``--out``. Usage: python tests/scripts/ddp_fit.py OUT.json --devices 2 --batch-size 4 (11 validation samples: odd, so
the DistributedSampler pads one shard with a repeat)
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
from cxr.models.zoo import create_model
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


def fit_and_score(folder: Path, devices: int, batch_size: int, n_train: int = 32, n_val: int = 11) -> dict:
    """Fit one epoch with ``devices`` CPU processes; on rank 0 add the whole-split AUROC recomputed in one process."""
    n = n_train + n_val
    root = region_dir(folder / f"features-{devices}", n)
    feats = RegionFeatures(root)
    rl = np.load(root / "labels.npy")
    meta = pd.DataFrame({"image_id": [f"i{k:03d}" for k in range(n)], "patient_id": [f"p{k}" for k in range(n)],
                         "A": rl[:, :, 0].any(1).astype(float), "B": rl[:, :, 1].any(1).astype(float)})
    tr = RegionDataset(meta.iloc[:n_train], ["A", "B"], feats)
    va = RegionDataset(meta.iloc[n_train:], ["A", "B"], feats)
    torch.manual_seed(0)
    model = create_model("graph_transformer", num_classes=2, num_regions=6, feature_dim=8, hidden=8, edge_dim=4,
                         num_findings=2)
    summary = fit(model, tr, va, seed=0, epochs=1, batch_size=batch_size, lr=1e-2, graph_importance=0.5,
                  progress=False, device="cpu", precision="32", devices=devices,
                  strategy="ddp" if devices > 1 else "auto")
    if summary["global_rank"] == 0:
        summary["recomputed_val_macro_auroc"] = macro_auroc(predict(model, va, batch_size=8), va.targets, va.mask)
        summary["val_size"] = len(va)
    return summary


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args()
    out = Path(args.out)
    summary = fit_and_score(out.parent, args.devices, args.batch_size)
    if summary["global_rank"] == 0:  # rank 1 (started again by Lightning's launcher) writes nothing
        out.write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
