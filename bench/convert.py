"""Benchmark: the convert stage vs a naive serial converter written the way the seed code did it.

Both convert the same synthetic MIMIC-style DICOMs (the default cohort's ~340 files, with its
MONOCHROME1, 12-16 bit, RLE and JPEG 2000 variety and a few broken files) to PNGs of the same size:

(a) naive:   for each file: ``dcmread`` -> ``pixel_array`` -> min-max to 8 bit -> PIL resize -> save
             (serial; no rescale, no VOI, no MONOCHROME1 handling: the defects DESIGN.md lists)
(b) stage:   :func:`cxr.convert.convert` with its default executor (one process per core)
(c) rerun:   the stage again over the unchanged tree (incremental: nothing to convert)

Each is run ``--repeat`` times (alternating) and the best time is kept, which keeps the load of
other processes on a shared machine out of the comparison as far as possible.

Usage::

    python bench/convert.py                      # generates the default synthetic cohort in a temp dir
    python bench/convert.py --raw data/raw       # or reuse an existing raw tree (e.g. after dvc repro)

Prints throughputs and the ratios (b)/(a) and (b)/(c). Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from cxr.convert import convert
from cxr.params import ConvertParams, SyntheticParams


def _cpu() -> float:
    """CPU seconds used so far by this process and its finished children (the pool's workers)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def naive(files: list[Path], out: Path, size: int) -> int:
    """The seed-style baseline: serial, no LUTs, PIL's default resize, PNG save. Returns files written."""
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for f in files:
        try:
            ds = pydicom.dcmread(f)
            arr = ds.pixel_array.astype(np.float64)
        except Exception:  # the seed would have crashed here; count it and go on
            continue
        arr = (arr - arr.min()) / max(arr.max() - arr.min(), 1e-9) * 255
        img = Image.fromarray(arr.astype(np.uint8))
        h, w = arr.shape
        scale = size / max(h, w)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))))
        img.save(out / f"{f.stem}.png")
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", type=Path, help="existing raw tree with mimic-cxr/ (default: generate the default cohort)")
    p.add_argument("--size", type=int, default=256, help="output long side (default 256)")
    p.add_argument("--workers", type=int, default=0, help="stage workers (0 = one per core)")
    p.add_argument("--repeat", type=int, default=3, help="runs of (a) and (b); the best of each is kept")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pydicom").setLevel(logging.ERROR)  # the broken files' warnings are expected
    warnings.simplefilter("ignore", UserWarning)

    work = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    try:
        raw = args.raw
        if raw is None:
            from cxr.synth import generate

            raw = work / "cohort"
            t = time.perf_counter()
            generate(raw, profile="default", seed=42, params=SyntheticParams(), progress=False)
            print(f"generated the default synthetic cohort in {time.perf_counter() - t:.1f} s")
        # Only the DICOMs: a raw tree that links to mimic-cxr/ alone.
        sub = work / "raw"
        sub.mkdir()
        os.symlink((raw / "mimic-cxr").resolve(), sub / "mimic-cxr")
        files = sorted((raw / "mimic-cxr").rglob("*.dcm"))
        for f in files:  # warm the page cache so neither side pays for the first read
            f.read_bytes()
        print(f"{len(files)} DICOMs, output long side {args.size} px, {os.cpu_count()} CPUs, best of {args.repeat}")

        # Best of --repeat runs each, alternating, so that load from other processes on a shared
        # machine hits both sides alike.
        params = ConvertParams(size=args.size, workers=args.workers, square="none", max_failure_fraction=1.0)
        t_naive = t_stage = t_rerun = cpu_naive = cpu_stage = float("inf")
        for i in range(args.repeat):
            t, c = time.perf_counter(), _cpu()
            n_naive = naive(files, work / f"naive{i}", args.size)
            t_naive, cpu_naive = min(t_naive, time.perf_counter() - t), min(cpu_naive, _cpu() - c)
            out = work / f"stage{i}"
            t, c = time.perf_counter(), _cpu()
            s = convert(sub, out / "images", out / "images.parquet", params)
            t_stage, cpu_stage = min(t_stage, time.perf_counter() - t), min(cpu_stage, _cpu() - c)
            t = time.perf_counter()
            s2 = convert(sub, out / "images", out / "images.parquet", params)
            t_rerun = min(t_rerun, time.perf_counter() - t)
            assert s2["converted"] == 0, s2

        rate = lambda n, t: n / t if t > 0 else float("inf")  # noqa: E731
        print(f"{'':28s}{'seconds':>10s}{'images/s':>12s}{'CPU s':>9s}")
        print(f"{'(a) naive serial':28s}{t_naive:10.2f}{rate(len(files), t_naive):12.1f}{cpu_naive:9.2f}"
              f"   ({n_naive} written)")
        print(f"{'(b) convert stage':28s}{t_stage:10.2f}{rate(len(files), t_stage):12.1f}{cpu_stage:9.2f}"
              f"   ({s['ok']} ok, {s['error']} errors recorded)")
        print(f"{'(c) rerun, nothing changed':28s}{t_rerun:10.3f}{rate(len(files), t_rerun):12.1f}")
        print(f"ratio stage / naive : {t_naive / t_stage:6.2f}x   (target >= 3)")
        print(f"ratio first / rerun : {t_stage / t_rerun:6.1f}x   (target >= 50)")
        print(f"CPU work naive / stage: {cpu_naive / cpu_stage:4.2f}x   (the part that does not depend on idle cores)")
        print(f"load average while running: {os.getloadavg()[0]:.1f} (other processes compete for the {os.cpu_count()} cores)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
