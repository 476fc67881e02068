"""Benchmark: densenet121 training throughput with our data path vs the reference repositories' loop.

Both train densenet121 (same batch size, same steps, same input size ``train.image_size``) on the
converted PNGs of the train split:

(a) reference: a plain PyTorch loop whose Dataset opens each PNG with PIL every step, converts it
    to RGB, resizes and normalises it with torchvision transforms (3-channel input), as the seed
    repositories did (CheXNet reimplementations, X_RAY);
(b) ours: :class:`cxr.data.ImageCache` (decoded once into a uint8 memory-mapped array; the build
    time is included) + :class:`cxr.data.ImageDataset`, 1-channel uint8 batches normalised on the
    batch, the same forward/backward/AdamW step.

Each variant runs in its own process (so peak RSS is its own) and is repeated ``--repeat`` times,
alternating; the best time is kept. Also printed: data-loading-only throughput of both paths
(no model), which isolates what the cache changes.

Usage::

    python bench/train.py --images data/interim/images --table data/interim/images.parquet \\
        --splits data/processed/splits.parquet [--steps 6 --batch-size 16 --size 128]

Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

log = logging.getLogger("bench.train")


def _rows(table: str, splits: str, n: int) -> pd.DataFrame:
    img = pd.read_parquet(table)
    spl = pd.read_parquet(splits)
    df = spl[spl["split"] == "train"].merge(img[img["status"] == "ok"], on="image_id")
    df = df[~df["view"].fillna("").str.upper().str.contains("LAT")]
    return df.sort_values("image_id").head(n).reset_index(drop=True)


class PilDataset(torch.utils.data.Dataset):
    """The reference pattern: open + decode + RGB + resize + normalise on every access."""

    def __init__(self, paths, size):
        from torchvision import transforms

        self.paths = list(paths)
        self.tf = transforms.Compose([
            transforms.Resize((size, size)), transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            x = self.tf(im.convert("RGB"))
        return {"image": x, "targets": torch.zeros(14)}


def _variant(kind: str, args: dict, queue) -> None:
    torch.manual_seed(0)
    from cxr.data import ImageCache, ImageDataset, normalise
    from cxr.models import create_model

    df = _rows(args["table"], args["splits"], args["steps"] * args["batch_size"])
    paths = [Path(args["images"]) / p for p in df["png_path"]]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "ours":
            cache = ImageCache.build(list(df["image_id"]), paths, args["size"], tmp, progress=False)
            meta = df.assign(**{"No Finding": 0.0})
            ds = ImageDataset(meta, ["No Finding"], cache)
            in_chans = 1
        else:
            ds = PilDataset(paths, args["size"])
            in_chans = 3
        loader = torch.utils.data.DataLoader(ds, batch_size=args["batch_size"], shuffle=False)
        if args["data_only"]:
            n = 0
            for _ in range(args["epochs"]):
                for b in loader:
                    x = normalise(b["image"]) if kind == "ours" else b["image"]
                    n += len(x)
            queue.put((kind, n / (time.perf_counter() - t0), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
            return
        model = create_model("densenet121", num_classes=14, in_chans=in_chans, image_size=args["size"])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model.train()
        n = 0
        t0m = time.perf_counter()
        for _ in range(args["epochs"]):
            for b in loader:
                x = normalise(b["image"]) if kind == "ours" else b["image"]
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), torch.zeros(len(x), 14))
                opt.zero_grad()
                loss.backward()
                opt.step()
                n += len(x)
        # model construction is excluded for both; the cache build is included for ours
        elapsed = time.perf_counter() - t0m + (t0m - t0 if kind == "ours" else 0.0)
    queue.put((kind, n / elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


def run(kind: str, args: dict) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_variant, args=(kind, args, q))
    p.start()
    _, ips, rss = q.get()
    p.join()
    return ips, rss / 1024.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default="data/interim/images")
    ap.add_argument("--table", default="data/interim/images.parquet")
    ap.add_argument("--splits", default="data/processed/splits.parquet")
    ap.add_argument("--size", type=int, default=128, help="input side (train.image_size)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6, help="batches per epoch")
    ap.add_argument("--epochs", type=int, default=2, help="epochs over the same images (the cache pays off from the 2nd)")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    base = {"images": a.images, "table": a.table, "splits": a.splits, "size": a.size, "batch_size": a.batch_size,
            "steps": a.steps, "epochs": a.epochs}
    for data_only in (True, False):
        best = {"reference": (0.0, 0.0), "ours": (0.0, 0.0)}
        for _ in range(a.repeat):
            for kind in ("reference", "ours"):
                ips, rss = run(kind, {**base, "data_only": data_only})
                if ips > best[kind][0]:
                    best[kind] = (ips, rss)
        what = "data loading only" if data_only else f"densenet121 training, {a.size}px, batch {a.batch_size}"
        log.info("%s (%d epochs x %d images, torch threads %d):", what, a.epochs, a.steps * a.batch_size,
                 torch.get_num_threads())
        for kind in ("reference", "ours"):
            log.info("  %-9s %8.1f images/s   peak RSS %7.0f MB", kind, *best[kind])
        log.info("  ratio ours / reference: %.2fx", best["ours"][0] / best["reference"][0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
