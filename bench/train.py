"""Benchmark: densenet121 training throughput of our training path vs the reference repositories' loop.

Both train densenet121 (same batch size, same number of images and epochs, same input size
``train.image_size``) on the converted PNGs of the train split, with the default labels:

(a) reference: a plain PyTorch loop whose Dataset opens each PNG with PIL every step, converts it to
    RGB, resizes and normalises it with torchvision transforms (3-channel input), fp32, NCHW, as the
    seed repositories did (CheXNet reimplementations, X_RAY);
(b) ours: exactly what ``train@densenet121`` runs: :class:`cxr.data.ImageCache` (decoded once into a
    uint8 memory-mapped array; its build time is included) + :class:`cxr.data.ImageDataset` +
    :func:`cxr.train.fit` (the Lightning engine with masked BCE, seeded augmentation, channels_last,
    ``train.precision: auto`` = bf16 mixed on a CPU with native bf16, and one validation pass of
    ``--val`` images per epoch, also counted against us);
(c) ours, fp32: (b) with ``precision=32``, which shows how much of the gain the bf16 autocast gives.

Each variant runs in its own process (so peak RSS is its own) and is repeated ``--repeat`` times,
alternating; the median is kept. Also printed: data-loading-only throughput of both data paths (no
model), which isolates what the cache changes.

Usage::

    python bench/train.py [--steps 8 --batch-size 16 --size 128 --repeat 3]

Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

log = logging.getLogger("bench.train")


def _rows(table: str, labels: str, splits: str, split: str, n: int) -> pd.DataFrame:
    from cxr.data import join_split
    from cxr.labels import label_names

    names = label_names("chexpert14")
    df = join_split(pd.read_parquet(table), pd.read_parquet(labels), pd.read_parquet(splits), names, split)
    return df.head(n).reset_index(drop=True), names


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
    import lightning as L

    from cxr.data import ImageCache, ImageDataset, normalise
    from cxr.models.zoo import create_model
    from cxr.train import fit

    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices of torch.jit / lightning internals
    torch.manual_seed(0)
    df, names = _rows(args["table"], args["labels"], args["splits"], "train", args["steps"] * args["batch_size"])
    paths = [Path(args["images"]) / p for p in df["png_path"]]
    n_images = args["epochs"] * len(df)
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "reference":
            ds = PilDataset(paths, args["size"])
            loader = torch.utils.data.DataLoader(ds, batch_size=args["batch_size"], shuffle=True)
            model = None if args["data_only"] else create_model("densenet121", num_classes=14, in_chans=3,
                                                                image_size=args["size"])
            t0 = time.perf_counter()
            if model is not None:
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
                model.train()
            for _ in range(args["epochs"]):
                for b in loader:
                    if model is None:
                        continue
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(b["image"]), b["targets"])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            elapsed = time.perf_counter() - t0
        else:
            val, _ = _rows(args["table"], args["labels"], args["splits"], "val", args["val"])
            model = None if args["data_only"] else create_model("densenet121", num_classes=len(names),
                                                                image_size=args["size"])
            t0 = time.perf_counter()  # model construction excluded for both; the cache build included for ours
            allm = pd.concat([df, val])
            cache = ImageCache.build(list(allm["image_id"]), [Path(args["images"]) / p for p in allm["png_path"]],
                                     args["size"], tmp, progress=False)
            tr, va = ImageDataset(df, names, cache), ImageDataset(val, names, cache)
            if model is None:
                loader = torch.utils.data.DataLoader(tr, batch_size=args["batch_size"], shuffle=True)
                for _ in range(args["epochs"]):
                    for b in loader:
                        normalise(b["image"])
            else:
                L.seed_everything(0, verbose=False)
                fit(model, tr, va, seed=0, epochs=args["epochs"], batch_size=args["batch_size"], lr=1e-4,
                    patience=args["epochs"], precision="32" if kind == "ours, fp32" else "auto", progress=False)
            elapsed = time.perf_counter() - t0
    queue.put((kind, n_images / elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


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
    ap.add_argument("--labels", default="data/interim/labels.parquet")
    ap.add_argument("--splits", default="data/processed/splits.parquet")
    ap.add_argument("--size", type=int, default=128, help="input side (train.image_size)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8, help="batches per epoch")
    ap.add_argument("--epochs", type=int, default=2, help="epochs over the same images (the cache pays off from the 2nd)")
    ap.add_argument("--val", type=int, default=16, help="validation images per epoch in our engine")
    ap.add_argument("--repeat", type=int, default=3, help="runs per variant (alternating); the median is printed")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    base = {"images": a.images, "table": a.table, "labels": a.labels, "splits": a.splits, "size": a.size,
            "batch_size": a.batch_size, "steps": a.steps, "epochs": a.epochs, "val": a.val}
    for data_only in (True, False):
        kinds = ("reference", "ours") if data_only else ("reference", "ours", "ours, fp32")
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
        for _ in range(a.repeat):
            for kind in kinds:
                runs[kind].append(run(kind, {**base, "data_only": data_only}))
        med = {k: (statistics.median(r[0] for r in v), max(r[1] for r in v)) for k, v in runs.items()}
        what = "data loading only" if data_only else f"densenet121 training, {a.size}px, batch {a.batch_size}"
        log.info("%s (%d epochs x %d images, median of %d, torch threads %d):", what, a.epochs,
                 a.steps * a.batch_size, a.repeat, torch.get_num_threads())
        for kind in kinds:
            log.info("  %-11s %8.1f images/s   peak RSS %7.0f MB   (runs: %s)", kind, *med[kind],
                     ", ".join(f"{r[0]:.1f}" for r in runs[kind]))
        for kind in kinds[1:]:
            log.info("  ratio %s / reference: %.2fx", kind, med[kind][0] / med["reference"][0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
