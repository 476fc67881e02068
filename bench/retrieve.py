"""Benchmark: exact vs approximate faiss search at MIMIC size, on structured (embedding-like) vectors.

Data: ``--dim`` (512) L2-normalised vectors from a seeded clustered mixture (:func:`mixture`): cluster
centres on a ``--latent`` (64)-d subspace with a power-law spectrum (as PCA spectra of CNN embeddings
decay), Zipf-sized clusters (common findings dominate), each cluster spread over its own
``--local`` (24)-d subspace plus isotropic noise. Random Gaussian vectors, the worst case for
approximate search (no neighbourhood structure, what this bench measured before), are the second data
set at the smallest size. The printed local intrinsic dimensionality (LID, maximum-likelihood
estimate over the 20 nearest neighbours, median over the queries) says how hard each set is; it is
also printed for every real retrieval dir found under ``--retrieval`` (the ``retrieve@M`` outputs),
searched with the same grid, so real embeddings can be placed beside the mixture. Sizes: ``--sizes``
(100k, 377k = MIMIC-CXR's image count, 1M), prefixes of one 1M sample; ``--queries`` (500) held-out
queries from the same mixture.

Methods (faiss, inner product): exact ``IndexFlatIP`` (the baseline); IVF with ``4 sqrt(N)`` cells
(the stage's default, k-means on ``IVF_TRAIN_PER_CELL`` points per cell) storing flat float32, SQ8 (1
byte / dim) or PQ (``--pq-m`` bytes) codes, one trained coarse quantiser shared by the three, over
``nprobe`` in ``--nprobe``; HNSW (``hnsw_m`` / ``ef_construction`` of params.yaml) over ``efSearch``
in ``--ef``. HNSW and SQ8 are built only up to ``--hnsw-max`` / ``--sq-max`` (400k) vectors and PQ up to ``--pq-max``
(100k), as building them at 1M on a loaded 2-core machine takes too long: above, their
memory is extrapolated from the measured bytes per vector (marked ``extrapolated``).

Measured per row: build time (train + add), memory (the serialised index, which is what a search
process holds), batch latency (all queries in one call, per query, median of ``--repeat``),
single-query latency (one query per call, median over ``--single`` queries), recall@10 against the
exact top 10 (a returned item counts when it is at least as close as the exact 10th neighbour), and
the speed-ups over exact search measured in the same run. Builds and batch searches use ``--threads``
(2) OpenMP threads, one-query calls one.

Usage::

    nice -n 19 python bench/retrieve.py                          # 100k, 377k, 1M (about 15 min on 2 cores)
    python bench/retrieve.py --sizes 20000 --hnsw-max 20000      # a quick look

Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from cxr.params import load_section
from cxr.retrieve import IndexConfig, SearchIndex
from cxr.retrieve.index import IVF_TRAIN_PER_CELL, build_faiss, exact_neighbours, ivf_lists, pack_codes, recall_at_k

K = 10


def mixture(n: int, dim: int, seed: int, clusters: int = 1000, latent: int = 64, local: int = 24, spread: float = 0.8,
            noise: float = 0.35, decay: float = 0.5) -> np.ndarray:
    """``n`` L2-normalised float32 vectors of the clustered mixture described in the module docstring (iid rows,
    so any prefix is a sample of the same mixture)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, latent)))[0]
    centres = (rng.standard_normal((clusters, latent)) * (1.0 + np.arange(latent)) ** -decay) @ basis.T
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = (1.0 + np.arange(clusters)) ** -0.8
    counts = rng.multinomial(n, weights / weights.sum())
    out = np.empty((n, dim), np.float32)
    start = 0
    for c, m in enumerate(counts):
        if not m:
            continue
        sub = np.linalg.qr(rng.standard_normal((dim, local)))[0].T
        out[start:start + m] = (centres[c] + spread / np.sqrt(local) * (rng.standard_normal((m, local)) @ sub)
                                + noise / np.sqrt(dim) * rng.standard_normal((m, dim)))
        start += m
    out = out[rng.permutation(n)]
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def unit_random(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def lid(db: np.ndarray, q: np.ndarray, k: int = 20) -> float:
    """Median maximum-likelihood local intrinsic dimensionality of the queries over their ``k`` nearest
    database neighbours (Euclidean; the nearest is skipped when it is the query itself)."""
    import faiss

    dist, _ = faiss.knn(q, db, k + 1, metric=faiss.METRIC_L2)
    d = np.sqrt(np.maximum(dist, 1e-12))
    d = d[:, 1:] if np.median(d[:, 0]) < 1e-4 else d[:, :k]
    return float(np.median(-1.0 / np.mean(np.log(d[:, :-1] / d[:, -1:]), axis=1)))


def _median_s(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _single_s(index, q: np.ndarray, n: int) -> float:
    """Median seconds of one-query calls, on one thread: a request stream, and on a loaded machine a second
    OpenMP thread per call mostly waits for a core (measured: 10-20x slower exact one-query calls)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    times = []
    try:
        for i in range(min(n, len(q))):
            t = time.perf_counter()
            index.search(q[i:i + 1], K)
            times.append(time.perf_counter() - t)
    finally:
        faiss.omp_set_num_threads(threads)
    return statistics.median(times)


def _size_mb(index, binary: bool) -> float:
    import faiss

    blob = faiss.serialize_index_binary(index) if binary else faiss.serialize_index(index)
    return len(blob) / 2**20


def _row(data, method, effort, build, mem, index, db, q, truth, args, binary=False, note=""):
    qq = pack_codes(q) if binary else q
    dd = pack_codes(db) if binary else db
    return {"data": data, "method": method, "effort": effort, "build_s": build, "mem_mb": mem, "note": note,
            "batch_us": 1e6 * _median_s(lambda: index.search(qq, K), args.repeat) / len(q),
            "single_us": 1e6 * _single_s(index, qq, args.single),
            "recall": recall_at_k(index, dd, qq, truth, K, binary)}


def bench_set(data: str, db: np.ndarray, q: np.ndarray, cfg: IndexConfig, args, binary: bool = False,
              full: bool = True) -> list[dict]:
    """Every method of the module docstring on one database; ratios are filled in by :func:`_ratios`."""
    import faiss

    n, d = db.shape
    rows = []
    dd, qq = (pack_codes(db), pack_codes(q)) if binary else (db, q)
    truth = exact_neighbours(dd, qq, K, binary)
    t = time.perf_counter()
    flat = build_faiss(db, "flat", cfg, binary)
    rows.append(_row(data, "exact (flat)", "-", time.perf_counter() - t, _size_mb(flat, binary), flat, db, q, truth,
                     args, binary))
    del flat
    nlist = ivf_lists(n, cfg)
    codecs = (["flat"] if binary or not full else
              ["flat"] + (["sq8"] if n <= args.sq_max else []) + (["pq"] if n <= args.pq_max else []))
    quantizer = None
    for codec in codecs:
        t = time.perf_counter()
        if binary:
            index = build_faiss(db, "ivf", cfg, binary=True)
        else:
            if quantizer is None:  # train the coarse k-means once; the codecs share it, as their cells
                quantizer = faiss.IndexFlatIP(d)
                train = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
                train.cp.max_points_per_centroid = IVF_TRAIN_PER_CELL
                train.train(db)
                train_s = time.perf_counter() - t
                t = time.perf_counter()
            if codec == "flat":
                index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            elif codec == "sq8":
                index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                      faiss.METRIC_INNER_PRODUCT)
            else:
                index = faiss.IndexIVFPQ(quantizer, d, nlist, args.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
            index.train(db)  # the quantiser is trained already: only SQ ranges / PQ codebooks here
            index.add(db)
        build = time.perf_counter() - t + (0 if binary else train_s)
        mem = _size_mb(index, binary)
        name = f"IVF{nlist},{'Flat' if codec == 'flat' else codec.upper() + (str(args.pq_m) if codec == 'pq' else '')}"
        for npb in args.nprobe:
            if npb > nlist:
                continue
            index.nprobe = npb
            rows.append(_row(data, name, f"nprobe {npb}", build, mem, index, db, q, truth, args, binary))
        del index
    if n <= args.hnsw_max and full:
        t = time.perf_counter()
        index = build_faiss(db, "hnsw", replace(cfg, deterministic=False), binary)
        build = time.perf_counter() - t
        mem = _size_mb(index, binary)
        for ef in args.ef:
            index.hnsw.efSearch = ef
            rows.append(_row(data, f"HNSW{cfg.hnsw_m}", f"ef {ef}", build, mem, index, db, q, truth, args, binary))
        del index
    return rows


def _ratios(rows: list[dict]) -> None:
    base = {}
    for r in rows:
        if r["method"] == "exact (flat)":
            base[r["data"]] = r
    for r in rows:
        b = base[r["data"]]
        r["x_batch"], r["x_single"] = b["batch_us"] / r["batch_us"], b["single_us"] / r["single_us"]


def _extrapolate(rows: list[dict], sizes: list[int], target: int) -> list[str]:
    """Memory at ``target`` vectors of the HNSW / PQ indexes measured only at smaller sizes (bytes per vector at
    the largest size measured, times ``target``)."""
    out = []
    for method_key in ("HNSW", "SQ8", "PQ"):
        got = [r for r in rows if r["data"].startswith("mixture") and method_key in r["method"]]
        if not got or any(r["data"].startswith(f"mixture {target // 1000}k") for r in got):
            continue
        last = max(got, key=lambda r: r["n"])
        per = last["mem_mb"] / last["n"]
        out.append(f"{last['method']}: {per * 2**20:.0f} bytes/vector at {last['n']:,} -> {per * target / 1024:.2f} GiB "
                   f"at {target:,} (extrapolated, not built)")
    return out


HEAD = (f"{'data':<30} {'method':<14} {'effort':<11} {'build s':>8} {'mem MiB':>8} {'batch us/q':>11} "
        f"{'1-query us':>11} {'recall@10':>10} {'x exact batch':>14} {'x exact 1-q':>12}")


def _print(rows: list[dict]) -> None:
    for r in rows:
        print(f"{r['data']:<30} {r['method']:<14} {r['effort']:<11} {r['build_s']:>8.1f} {r['mem_mb']:>8.0f} "
              f"{r['batch_us']:>11.1f} {r['single_us']:>11.1f} {r['recall']:>10.3f} {r['x_batch']:>13.2f}x "
              f"{r['x_single']:>11.2f}x", flush=True)


def _machine(threads: int) -> str:
    import faiss

    flags = set()
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = {f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "fma", "sse4", "f16c"))}
                break
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else platform.processor()
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("n/a",)
    return (f"faiss {faiss.__version__} ({faiss.get_compile_options()}), {threads} OpenMP threads; numpy {np.__version__}; "
            f"{model}, {os.cpu_count()} CPUs, load average {load[0]:.1f}; float32 vectors, inner product\n"
            f"CPU flags: {' '.join(sorted(flags))}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default="params.yaml", help="params file (retrieve.index: hnsw_m, ef_construction, ivf_lists)")
    p.add_argument("--retrieval", default="data/processed/retrieval", help="retrieve@M output dirs (real embeddings)")
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 377_000, 1_000_000], help="database sizes")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--latent", type=int, default=64, help="mixture: dimension of the centres' subspace")
    p.add_argument("--local", type=int, default=24, help="mixture: dimension of each cluster's spread")
    p.add_argument("--clusters", type=int, default=1000, help="mixture: clusters")
    p.add_argument("--queries", type=int, default=500, help="held-out queries")
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    p.add_argument("--ef", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--pq-m", type=int, default=64, help="PQ bytes per vector")
    p.add_argument("--hnsw-max", type=int, default=400_000, help="largest database HNSW is built for (slow to build)")
    p.add_argument("--pq-max", type=int, default=100_000, help="largest database IVF-PQ is built for")
    p.add_argument("--sq-max", type=int, default=400_000, help="largest database IVF-SQ8 is built for")
    p.add_argument("--repeat", type=int, default=3, help="timed repeats of the batch search (median)")
    p.add_argument("--single", type=int, default=50, help="queries timed one by one (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="faiss OpenMP threads of builds and batch searches "
                                                          "(one-query calls: 1)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    ip = load_section("retrieve", args.params).index
    cfg = IndexConfig(**ip.model_dump())
    import faiss

    faiss.omp_set_num_threads(args.threads)
    print(_machine(args.threads))
    print(f"index params: ivf_lists={cfg.ivf_lists or '4 sqrt(N)'} ({IVF_TRAIN_PER_CELL} k-means points per cell), "
          f"hnsw_m={cfg.hnsw_m}, ef_construction={cfg.ef_construction}; k={K}; {args.queries} held-out queries; "
          f"batch = median of {args.repeat}, 1-query = median of {args.single}\n")
    sizes = sorted(args.sizes)
    t = time.perf_counter()
    allv = mixture(sizes[-1] + args.queries, args.dim, args.seed, clusters=args.clusters, latent=args.latent,
                   local=args.local)
    q, full = allv[-args.queries:], allv[:-args.queries]
    print(f"mixture of {sizes[-1] + args.queries:,} vectors generated in {time.perf_counter() - t:.1f} s")
    rows: list[dict] = []
    lids = []
    rnd = unit_random(sizes[0] + args.queries, args.dim, args.seed + 1)
    # random vectors: exact and IVF,Flat only (the worst case, for contrast; HNSW took 66 s to build there)
    sets = [(f"random {sizes[0] // 1000}k x {args.dim}-d", rnd[:sizes[0]], rnd[sizes[0]:], False, False)]
    sets += [(f"mixture {n // 1000}k x {args.dim}-d", full[:n], q, False, True) for n in sizes]
    for d in sorted(Path(args.retrieval).glob("*/index.json")) if Path(args.retrieval).is_dir() else []:
        if not (d.parent / "query_vectors.npy").is_file():
            continue
        idx = SearchIndex.load(d.parent)
        sets.append((f"{d.parent.name} {len(idx)}x{idx.dim}{' bits' if idx.binary else '-d'}", idx.vectors,
                     np.load(d.parent / "query_vectors.npy"), idx.binary, True))
    print(f"\n{HEAD}\n{'-' * len(HEAD)}")
    for title, db, qv, binary, every in sets:  # rows printed per data set, as they are measured
        t = time.perf_counter()
        lids.append(f"{title}: LID {lid(db, qv):.1f}")
        got = bench_set(title, db, qv, cfg, args, binary, every)
        for r in got:
            r["n"] = len(db)
        _ratios(got)
        _print(got)
        rows += got
        lids[-1] += f" ({time.perf_counter() - t:.0f} s)"
    print("\n" + "; ".join(lids))
    for line in _extrapolate(rows, sizes, sizes[-1]):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
