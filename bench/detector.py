"""Benchmark: the default region detector vs the same detector with torchvision's default proposal settings.

Both are the ``detector`` section of params.yaml (backbone, input size, anchors); the second
column only swaps the proposal / sampling counts back to torchvision's Faster R-CNN defaults
(RPN pre/post-NMS 2000/2000 training and 1000/1000 inference, 256 anchors and 512 RoIs sampled
per image, score threshold 0.05). Measured: training images/s (forward + backward + AdamW step,
batch ``detector.batch_size``) and inference images/s (batch 8), best of ``--repeat`` timed runs
after one warm-up (the two configurations alternate), on real synthetic radiographs and their COCO boxes.

Usage::

    python bench/detector.py                                             # tiny synthetic cohort in a temp dir
    python bench/detector.py --coco data/processed/coco --images data/interim/images   # after dvc repro
    python bench/detector.py --backbone mobilenet_v3_large_fpn           # another backbone, same comparison

Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from cxr.anatomy.detector import CocoImages, build_detector, collate
from cxr.params import DetectorParams, load_section

TORCHVISION_DEFAULTS = dict(rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=2000, rpn_pre_nms_top_n_test=1000,
                            rpn_post_nms_top_n_test=1000, rpn_batch_size_per_image=256, box_batch_size_per_image=512,
                            box_score_thresh=0.05)


def _tiny_coco(work: Path, size: int) -> tuple[Path, Path]:
    """Tiny synthetic cohort -> PNGs -> COCO, through the pipeline's own stages."""
    from stages import coco, convert, label, split

    from cxr.params import SyntheticParams
    from cxr.synth import generate

    raw = work / "raw"
    generate(raw, profile="tiny", seed=42, params=SyntheticParams(workers=1), progress=False)
    params = work / "params.yaml"
    params.write_text(f"convert: {{size: {size}, workers: 1}}\n")
    p = ["--params", str(params)]
    assert convert.main([*p, "--raw", str(raw), "--images", str(work / "images"), "--table", str(work / "images.parquet")]) == 0
    assert label.main([*p, "--raw", str(raw), "--out", str(work / "labels.parquet"), "--metrics", str(work / "l.json")]) == 0
    assert split.main([*p, "--images", str(work / "images.parquet"), "--labels", str(work / "labels.parquet"),
                       "--out", str(work / "splits.parquet"), "--metrics", str(work / "s.json")]) == 0
    assert coco.main([*p, "--scene-graphs", str(raw / "chest-imagenome"), "--images", str(work / "images.parquet"),
                      "--splits", str(work / "splits.parquet"), "--out", str(work / "coco"),
                      "--metrics", str(work / "c.json")]) == 0
    return work / "coco", work / "images"


def _rates(configs: dict[str, DetectorParams], data: CocoImages, steps: int, n_infer: int,
           repeat: int) -> dict[str, tuple[float, float]]:
    """Best-of-``repeat`` training and inference images/s per config; the configs alternate within
    each repeat so that load from other processes hits them alike."""
    models, opts, batches = {}, {}, {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        models[name] = build_detector(len(data.categories), cfg)
        opts[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-4)
        bs = cfg.batch_size
        batches[name] = [collate([data[(i * bs + j) % len(data)] for j in range(bs)]) for i in range(steps)]
    images = [data[i % len(data)][0] for i in range(n_infer)]

    def train(name: str, images_, targets) -> None:
        model, opt = models[name].train(), opts[name]
        loss = sum(model(images_, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer(name: str) -> None:
        model = models[name].eval()
        with torch.inference_mode():
            for i in range(0, n_infer, 8):
                model(images[i:i + 8])

    for name in configs:  # warm-up
        train(name, *batches[name][0])
        infer(name)
    best = {name: [float("inf"), float("inf")] for name in configs}
    for _ in range(repeat):
        for name in configs:
            t = time.perf_counter()
            for b in batches[name]:
                train(name, *b)
            best[name][0] = min(best[name][0], time.perf_counter() - t)
            t = time.perf_counter()
            infer(name)
            best[name][1] = min(best[name][1], time.perf_counter() - t)
    return {name: (steps * configs[name].batch_size / tr, n_infer / inf) for name, (tr, inf) in best.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default="params.yaml", help="params file whose detector section is benchmarked")
    p.add_argument("--coco", type=Path, help="COCO folder (default: build one from the tiny synthetic cohort)")
    p.add_argument("--images", type=Path, help="PNG folder of --coco")
    p.add_argument("--backbone", default=None, help="override detector.backbone")
    p.add_argument("--steps", type=int, default=6, help="timed training steps per run")
    p.add_argument("--infer", type=int, default=32, help="timed inference images per run")
    p.add_argument("--repeat", type=int, default=2, help="timed runs; the best is kept")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    params = load_section("detector", args.params) if Path(args.params).is_file() else DetectorParams()
    if args.backbone:
        params = params.model_copy(update={"backbone": args.backbone})
    work = Path(tempfile.mkdtemp(prefix="bench-detector-"))
    try:
        coco, images = (args.coco, args.images) if args.coco else _tiny_coco(work, 512)
        data = CocoImages(coco / "train.json", images, params.image_size, progress=False)
        configs = {"default (params.yaml)": params,
                   "torchvision proposals": params.model_copy(update=TORCHVISION_DEFAULTS)}
        rows = _rates(configs, data, args.steps, args.infer, args.repeat)
        print(f"backbone {params.backbone}, input {params.image_size} px, {len(data)} training images, "
              f"batch {params.batch_size}, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs")
        print(f"{'':26s}{'train img/s':>13s}{'infer img/s':>13s}")
        for name, (tr, inf) in rows.items():
            print(f"{name:26s}{tr:13.2f}{inf:13.2f}")
        (dt, di), (tt, ti) = rows.values()
        print(f"ratio default / torchvision: train {dt / tt:.2f}x, inference {di / ti:.2f}x")
        print(f"load average while running: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
