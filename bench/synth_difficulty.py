"""How hard is the synthetic task? Train one small CNN per signal level, report macro AUROC.

The default ``ingest.synthetic.signal`` should give a task that is learnable but not trivial
(macro AUROC well above 0.5 and well below 1.0). This script generates the default cohort at
several signal levels (same seed, so only finding contrast changes), trains the same small
CNN on a patient-level 70/30 split of each, and prints the test macro AUROC side by side with,
measured on the same split in the same run:

* the true null (signal 0: the pixels do not depend on the findings at all), and
* the view-only baseline (each test image scored with its view's train prevalence). The view is
  drawn with the label pattern as in CheXpert (``ingest.synthetic.view_confound``), and a CNN
  sees the view (AP films magnify the heart), so at signal 0 the CNN can reach the view-only
  AUROC but should not pass it; with ``--no-view-confound`` both fall to 0.5.

    python bench/synth_difficulty.py --signals 0 0.5 1.0 2.0 --epochs 12 [--no-view-confound]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from cxr.params import SyntheticParams
from cxr.synth import generate
from cxr.synth.labels import CHEXPERT14
from cxr.synth.preview import load_display

MIN_POSITIVES = 8


def load(root: Path, size: int) -> tuple[np.ndarray, pd.DataFrame]:
    truth = pd.read_parquet(root / "truth/truth.parquet")
    truth = truth[truth.broken == ""].reset_index(drop=True)
    x = np.stack([np.asarray(Image.fromarray(load_display(root / f)).resize((size, size), Image.BILINEAR)) for f in truth.file])
    return x.astype(np.float32)[:, None] / 255.0, truth


def small_cnn(n_out: int) -> nn.Module:
    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(block(1, 16), block(16, 32), block(32, 64), block(64, 96), block(96, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, n_out))


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = pd.Series(np.concatenate([pos, neg])).rank().to_numpy()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def view_only(truth: pd.DataFrame, in_test: np.ndarray, names: list[str]) -> dict[str, float]:
    """Per-class AUROC of scoring each test image with the train prevalence of its view."""
    view = truth["view"].astype(str).str.upper().to_numpy()
    out = {}
    for n in names:
        y = truth[n].to_numpy(np.float64)
        rate = {v: float(y[~in_test & (view == v)].mean()) if (~in_test & (view == v)).any() else float(y[~in_test].mean())
                for v in np.unique(view)}
        out[n] = auroc(y[in_test], np.array([rate[v] for v in view[in_test]]))
    return out


def run(signal: float, seed: int, epochs: int, size: int, workdir: Path, view_confound: bool = True) -> dict:
    root = workdir / f"signal-{signal}"
    t0 = time.perf_counter()
    generate(root, "default", seed, SyntheticParams(signal=signal, view_confound=view_confound), progress=False)
    gen_s = time.perf_counter() - t0
    x, truth = load(root, size)
    in_test = truth.patient_id.map(lambda p: int(hashlib.sha256(p.encode()).hexdigest(), 16) % 10 < 3).to_numpy()
    names = [c for c in CHEXPERT14 if truth.loc[~in_test, c].sum() >= MIN_POSITIVES and truth.loc[in_test, c].sum() >= 3]
    y = truth[names].to_numpy(np.float32)
    torch.manual_seed(seed)
    model = small_cnn(len(names))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x[~in_test]), torch.from_numpy(y[~in_test])
    gen = torch.Generator().manual_seed(seed)
    t1 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(32):
            xb = xt[idx]
            if torch.rand(1, generator=gen).item() < 0.5:  # mild augmentation: intensity jitter
                xb = xb * (0.9 + 0.2 * torch.rand(len(xb), 1, 1, 1, generator=gen))
            loss = nn.functional.binary_cross_entropy_with_logits(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.inference_mode():
        scores = torch.sigmoid(model(torch.from_numpy(x[in_test]))).numpy()
    per = {n: auroc(y[in_test, i], scores[:, i]) for i, n in enumerate(names)}
    vo = view_only(truth, in_test, names)
    return {"signal": signal, "macro_auroc": float(np.nanmean(list(per.values()))), "per_class": per,
            "view_only": float(np.nanmean(list(vo.values()))), "view_only_per_class": vo,
            "gen_s": gen_s, "train_s": time.perf_counter() - t1, "n_train": int((~in_test).sum()), "n_test": int(in_test.sum())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--signals", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    p.add_argument("--no-view-confound", action="store_true", help="draw the view independently of the findings")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--size", type=int, default=128)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(s, args.seed, args.epochs, args.size, Path(tmp), not args.no_view_confound) for s in args.signals]
    base = results[0]["macro_auroc"]
    print(f"view_confound: {not args.no_view_confound}; small CNN, {args.epochs} epochs at {args.size} px, float32, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'signal':>7} {'CNN macro AUROC':>16} {'view-only':>10} {'CNN - view':>11} {'vs signal=' + str(args.signals[0]):>16} "
          f"{'gen s':>7} {'train s':>8}  n_train/n_test")
    for r in results:
        print(f"{r['signal']:>7.2f} {r['macro_auroc']:>16.3f} {r['view_only']:>10.3f} {r['macro_auroc'] - r['view_only']:>+11.3f} "
              f"{r['macro_auroc'] - base:>+16.3f} {r['gen_s']:>7.1f} {r['train_s']:>8.1f}  {r['n_train']}/{r['n_test']}")
    print("per-class AUROC at each signal:")
    classes = list(results[-1]["per_class"])
    print(" " * 28 + "".join(f"{r['signal']:>8.2f}" for r in results))
    for c in classes:
        print(f"{c:>28}" + "".join(f"{r['per_class'].get(c, float('nan')):>8.3f}" for r in results))


if __name__ == "__main__":
    main()
