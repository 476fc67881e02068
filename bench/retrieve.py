"""Benchmark: exact vs approximate faiss search, and faiss vs a numpy brute force, side by side.

Two workloads:

* synthetic: ``--n`` (100k) random unit vectors of ``--dim`` (512) dimensions, ``--queries`` (1000)
  other random unit queries. Random Gaussian vectors are the hardest case for approximate search
  (no cluster structure), so the recall figures are a lower bound;
* real: every retrieval dir under ``--retrieval`` (the ``retrieve@M`` outputs: the database vectors of
  the index and the test query vectors), e.g. data/processed/retrieval after ``dvc repro``.

Methods: numpy brute force (``q @ X.T`` + ``argpartition``; for binary codes XOR + popcount),
faiss exact (``IndexFlatIP`` / ``IndexBinaryFlat``), faiss IVF and HNSW, all through
:class:`cxr.retrieve.SearchIndex` with the ``retrieve.index`` params of params.yaml (IVF lists
``4 sqrt(N)`` unless set). Measured: build time, batch latency (all queries in one call, per
query), single-query latency (one query per call), recall@10 against the exact faiss result (a
returned item counts when it is at least as close as the exact 10th neighbour, so Hamming ties are
no misses); IVF and HNSW also with 8x their search effort (nprobe, ef_search); medians over
``--repeat`` runs; ratios against numpy and against exact search. faiss runs ``--threads`` (1) threads.

Usage::

    python bench/retrieve.py                                   # synthetic + data/processed/retrieval if present
    python bench/retrieve.py --retrieval /tmp/out --n 20000    # smaller synthetic set

Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.params import load_section
from cxr.retrieve import IndexConfig, SearchIndex
from cxr.retrieve.index import pack_codes


def numpy_search(db: np.ndarray, q: np.ndarray, k: int, binary: bool, block: int = 128) -> np.ndarray:
    """Brute-force top-k rows (inner product, or Hamming over the signs for ``binary``), ``block`` queries at a time."""
    if len(q) > block:
        return np.concatenate([numpy_search(db, q[i:i + block], k, binary, block) for i in range(0, len(q), block)])
    if binary:
        d = np.bitwise_count(pack_codes(q)[:, None, :] ^ pack_codes(db)[None, :, :]).sum(-1).astype(np.float32)
        s = -d
    else:
        s = q @ db.T
    k = min(k, db.shape[0])
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable")
    return np.take_along_axis(top, order, 1)


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _single_latency(fn, q: np.ndarray, repeat: int, n_single: int) -> float:
    """Median seconds of one-query calls over ``n_single`` queries x ``repeat``."""
    times = []
    for _ in range(repeat):
        for i in range(min(n_single, len(q))):
            t = time.perf_counter()
            fn(q[i:i + 1])
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def exact_scores(db: np.ndarray, q: np.ndarray, rows: np.ndarray, binary: bool) -> np.ndarray:
    """True similarity of each returned row (NaN for -1): inner product, or ``1 - 2 hamming / bits``."""
    r = np.maximum(rows, 0)
    if binary:
        s = 1 - 2 * ((q[:, None, :] > 0) != (db[r] > 0)).sum(-1) / db.shape[1]
    else:
        s = np.einsum("qd,qkd->qk", q, db[r])
    return np.where(rows >= 0, s, np.nan)


def recall_at(db: np.ndarray, q: np.ndarray, rows: np.ndarray, ref: np.ndarray, k: int, binary: bool) -> float:
    """Share of the returned top k at least as similar as the exact k-th neighbour (ties count: Hamming
    distances of short codes tie often, and any tied item is an equally correct answer)."""
    kth = exact_scores(db, q, ref[:, k - 1:k], binary)
    got = exact_scores(db, q, rows[:, :k], binary)
    return float(np.mean(np.nan_to_num(got, nan=-np.inf) >= kth - 1e-5))


def bench_one(title: str, db: np.ndarray, q: np.ndarray, binary: bool, cfg: IndexConfig, k: int, repeat: int,
              n_single: int) -> list[dict]:
    items = pd.DataFrame({"image_id": np.arange(len(db)).astype(str), "patient_id": np.arange(len(db)).astype(str),
                          "split": "train", "png_path": ""})
    out = []
    t = time.perf_counter()
    exact = SearchIndex.build(db, items, binary=binary, config=replace(cfg, kind="flat"))
    build_exact = time.perf_counter() - t
    _, ref = exact.search(q, k)
    np_rows = numpy_search(db, q, k, binary)
    out.append({"data": title, "method": "numpy brute force", "build_s": 0.0,
                "batch_us": 1e6 * _median_time(lambda: numpy_search(db, q, k, binary), repeat) / len(q),
                "single_us": 1e6 * _single_latency(lambda x: numpy_search(db, x, k, binary), q, repeat, n_single),
                "recall": recall_at(db, q, np_rows, ref, k, binary)})
    runs = [("faiss exact (flat)", exact, build_exact, None)]
    for kind in ("ivf", "hnsw"):
        t = time.perf_counter()
        idx = SearchIndex.build(db, items, binary=binary, config=replace(cfg, kind=kind, deterministic=False))
        build = time.perf_counter() - t
        if kind == "ivf":  # the params' nprobe, then 8x more cells visited (same index)
            runs += [(f"faiss ivf nprobe={n}", idx, build, ("nprobe", n)) for n in (idx.index.nprobe, min(8 * idx.index.nprobe, idx.index.nlist))]
        else:
            runs += [(f"faiss hnsw ef={e}", idx, build, ("ef", e)) for e in (cfg.ef_search, 8 * cfg.ef_search)]
    for name, idx, build, knob in runs:
        if knob and knob[0] == "nprobe":
            idx.index.nprobe = knob[1]
        elif knob:
            idx.index.hnsw.efSearch = knob[1]
        _, rows = idx.search(q, k)
        out.append({"data": title, "method": name, "build_s": build,
                    "batch_us": 1e6 * _median_time(lambda: idx.search(q, k), repeat) / len(q),
                    "single_us": 1e6 * _single_latency(lambda x: idx.search(x, k), q, repeat, n_single),
                    "recall": recall_at(db, q, rows, ref, k, binary)})
    np_batch, np_single = out[0]["batch_us"], out[0]["single_us"]
    ex_batch, ex_single = out[1]["batch_us"], out[1]["single_us"]
    for r in out:
        r["x_numpy_batch"], r["x_numpy_single"] = np_batch / r["batch_us"], np_single / r["single_us"]
        r["x_exact_batch"], r["x_exact_single"] = ex_batch / r["batch_us"], ex_single / r["single_us"]
    return out


def _print(rows: list[dict], k: int) -> None:
    head = (f"{'data':<34} {'method':<22} {'build s':>8} {'batch us/q':>11} {'1-query us':>11} {f'recall@{k}':>10} "
            f"{'speed-up vs numpy (batch / 1-q)':>32} {'vs exact (batch / 1-q)':>24}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['data']:<34} {r['method']:<22} {r['build_s']:>8.2f} {r['batch_us']:>11.1f} {r['single_us']:>11.1f} "
              f"{r['recall']:>10.3f} {r['x_numpy_batch']:>15.2f}x / {r['x_numpy_single']:>6.2f}x "
              f"{r['x_exact_batch']:>12.2f}x / {r['x_exact_single']:>6.2f}x")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default="params.yaml", help="params file (retrieve.index settings)")
    p.add_argument("--retrieval", default="data/processed/retrieval", help="retrieve@M output dirs (real embeddings)")
    p.add_argument("--n", type=int, default=100_000, help="synthetic database size")
    p.add_argument("--dim", type=int, default=512, help="synthetic dimension")
    p.add_argument("--queries", type=int, default=1000, help="synthetic queries")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeat", type=int, default=5, help="timed repeats (medians)")
    p.add_argument("--single", type=int, default=50, help="queries timed one by one per repeat")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="faiss OpenMP threads (default 1: one query stream; on a shared, loaded machine more threads "
                        "mostly add contention)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    ip = load_section("retrieve", args.params).index
    cfg = IndexConfig(**ip.model_dump())
    import faiss

    faiss.omp_set_num_threads(args.threads)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; numpy {np.__version__}; "
          f"index params: nprobe={cfg.nprobe}, ivf_lists={cfg.ivf_lists or '4 sqrt(N)'}, hnsw_m={cfg.hnsw_m}, "
          f"ef_construction={cfg.ef_construction}, ef_search={cfg.ef_search}; medians of {args.repeat} runs\n")
    rng = np.random.default_rng(args.seed)

    def unit(n):
        v = rng.standard_normal((n, args.dim), dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    rows = bench_one(f"random {args.n // 1000}k x {args.dim}-d", unit(args.n), unit(args.queries), False, cfg, args.k,
                     args.repeat, args.single)
    for d in sorted(Path(args.retrieval).glob("*/index.json")) if Path(args.retrieval).is_dir() else []:
        idx = SearchIndex.load(d.parent)
        qv = d.parent / "query_vectors.npy"
        if not qv.is_file():
            continue
        q = np.load(qv)
        title = f"{d.parent.name} {len(idx)}x{idx.dim}{' bits' if idx.binary else '-d'}, {len(q)} q"
        rows += bench_one(title, idx.vectors, q, idx.binary, cfg, args.k, args.repeat, args.single)
    _print(rows, args.k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
