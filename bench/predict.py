"""Benchmark: single-image latency of ``cxr predict`` on the CPU, cold and warm.

* cold: a new process runs ``python -m cxr.cli predict IMAGE --model M`` (interpreter start,
  imports, model rebuild + weights, decoding, forward, JSON written); wall time from the
  process start to its exit, median of ``--cold`` runs.
* warm: the model is loaded once (:class:`cxr.predict.Predictor`); one call of
  :func:`cxr.predict.predict_file` (decode like the convert stage, model input, forward, JSON
  written), median of ``--warm`` calls; also split into its parts: decode + convert (+ region
  detector for anatomy models), forward pass, and the Grad-CAM heatmap of one class (CNN models).

Heatmaps are off in the latency columns (``--no-heatmaps``) and timed apart ("heatmap 1 class"):
:func:`cxr.localize.cam.heatmaps` runs one forward pass for all classes plus one backward pass
through the head per class, so k positive classes cost about that figure plus (k - 1) small
backward passes.

Usage::

    python bench/predict.py [--models models/densenet121 models/anaxnet] [--image FILE] [--cold 5 --warm 20]

Run from the repository root (``./params.yaml`` gives the convert settings). Not a test: numbers
depend on the machine and on its load (printed).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO.parent / "shared" / "realdata" / "siim" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"

log = logging.getLogger("bench.predict")


def cold(model: Path, image: Path, runs: int, threads: int) -> list[float]:
    """Wall seconds of ``runs`` fresh ``cxr predict`` processes (each must exit 0 and write its JSON)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "cxr.cli", "predict", str(image), "--model", str(model), "--out", tmp,
                   "--device", "cpu", "--no-heatmaps"]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            dt = time.perf_counter() - t0
            if proc.returncode != 0 or not (Path(tmp) / f"{image.stem}.json").is_file():
                raise RuntimeError(f"cxr predict failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
            times.append(dt)
    return times


def warm(model: Path, image: Path, runs: int) -> dict[str, float]:
    """Medians (seconds) of the warm call and of its parts with the model loaded once."""
    import torch

    from cxr.params import load_section
    from cxr.predict import Predictor, predict_file

    t0 = time.perf_counter()
    pred = Predictor(model, convert=load_section("convert", REPO / "params.yaml"),
                     features=load_section("features", REPO / "params.yaml"), device="cpu")
    load = time.perf_counter() - t0
    parts: dict[str, list[float]] = {"call": [], "prepare": [], "forward": [], "heatmap": []}
    with tempfile.TemporaryDirectory() as tmp:
        predict_file(pred, image, tmp, heatmaps=False)  # first call: lazy imports, allocator warm-up
        for _ in range(runs):  # the parts are timed in the same loop, so they share the machine's load
            t0 = time.perf_counter()
            predict_file(pred, image, tmp, heatmaps=False)
            parts["call"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            prep = pred.prepare(image)
            parts["prepare"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pred.predict(prep, heatmaps=False)
            parts["forward"].append(time.perf_counter() - t0)
            if pred.kind == "image":  # one class, through the same call cxr predict makes per positive class
                x = pred.inputs(prep)
                t0 = time.perf_counter()
                pred._heatmaps(x["image"], pred.names[:1])
                parts["heatmap"].append(time.perf_counter() - t0)
        out = {k: statistics.median(v) for k, v in parts.items() if v}
        out["load"] = load
    out["threads"] = torch.get_num_threads()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", type=Path, default=[REPO / "models" / "densenet121", REPO / "models" / "anaxnet"])
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="one DICOM / PNG / JPEG file")
    p.add_argument("--cold", type=int, default=5, help="fresh processes per model")
    p.add_argument("--warm", type=int, default=20, help="warm calls per model")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    threads = torch.get_num_threads()
    print(f"image {args.image.name}; CPU threads {threads}; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores; cold n={args.cold}, warm n={args.warm}")
    head = f"{'model':<20} {'cold (s)':>9} {'cold min':>9} {'warm (ms)':>10} {'decode':>8} {'forward':>8} " \
           f"{'load (s)':>9} {'heatmap 1 class (ms)':>20}"
    rows = []
    for m in args.models:
        if not (m / "card.json").is_file():
            print(f"{m}: no model card, skipped")
            continue
        c = cold(m, args.image, args.cold, threads)
        w = warm(m, args.image, args.warm)
        hm = f"{w['heatmap'] * 1e3:.0f}" if "heatmap" in w else "n/a"
        rows.append(f"{m.name:<20} {statistics.median(c):>9.2f} {min(c):>9.2f} {w['call'] * 1e3:>10.0f} "
                    f"{w['prepare'] * 1e3:>8.0f} {w['forward'] * 1e3:>8.0f} {w['load']:>9.2f} {hm:>20}")
    print(head)
    print("\n".join(rows))
    print("cold = process start to JSON written (median, min); warm = predict_file with the model loaded "
          "(median); decode = convert-stage decoding + model input (+ region detector for anatomy models); "
          "load = model (+ detector) rebuild + weights; heatmaps off in cold/warm, one class timed apart")
    return 0


if __name__ == "__main__":
    sys.exit(main())
