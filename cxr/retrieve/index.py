"""A faiss search index over image embeddings, with its row-aligned item table.

* Float embeddings (L2-normalised, so inner product = cosine): exact ``IndexFlatIP`` up to
  ``exact_max`` database items, above that the approximate index named by ``approximate``:
  ``IndexIVFFlat`` (inner product, ``ivf_lists`` k-means cells, ``nprobe`` visited per query) or
  ``IndexHNSWFlat`` (``hnsw_m`` links, ``ef_construction`` / ``ef_search`` beam widths).
* Binary codes (hashing models such as ATH): the float codes are binarised (bit = value > 0),
  packed 8 bits per byte and searched by Hamming distance in ``IndexBinaryFlat`` (exact) or
  ``IndexBinaryIVF`` / ``IndexBinaryHNSW`` above ``exact_max``. Scores are reported as
  ``1 - 2 * hamming / bits``, the cosine of the +-1 codes, so "higher = closer" holds for both.
  Hamming distances are small integers: tied items keep faiss's order, which is deterministic.

Every approximate index proves its recall when it is built (:func:`tune_recall`): recall@``recall_k``
against exact search on a fixed, seeded sample of queries (held-out queries when the caller gives
them, else database rows with their own row left out; those flatter HNSW, whose graph already links
each database row to its neighbours: 0.96 vs 0.60 at the same efSearch on 4000 random 32-d vectors). Below ``min_recall`` the search effort
(``nprobe`` / ``efSearch``) doubles until it holds, up to ``max_nprobe`` / ``max_ef_search``; when it
never holds the exact index replaces the approximate one. The trials, the effort used and any
fallback are recorded in ``index.json`` (``recall``, ``effort``), so every search, and every metric
computed from it, is that of the index actually used.

A saved index is a directory (every file written atomically): ``index.faiss`` (the serialised
faiss index), ``items.parquet`` (image_id, patient_id, split, png_path and raw label columns,
row i = index id i), ``vectors.npy`` (the float32 database vectors, for rebuilding and
benchmarks) and ``index.json`` (kind, metric, dimension, count, configuration, label names).

:meth:`SearchIndex.search` can exclude, per query, every database image of a given patient
(retrieving a patient's own other images would flatter any metric); it asks faiss for
``k + (largest number of images of one patient)`` neighbours, so exactly ``k`` remain whenever
the database holds that many other patients' images.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from cxr.io import write_bytes, write_json, write_parquet
from cxr.errors import CxrError

log = logging.getLogger(__name__)

ITEM_COLUMNS = ("image_id", "patient_id", "split", "png_path")
FORMAT = 1
# k-means points per IVF cell (a seeded faiss subsample): faiss's default 256 makes training at 1M vectors
# (4000 cells) cost ~10 TFLOP; 40 (just above faiss's own warning level of 39) cuts that 6x, and the
# recall check absorbs a slightly coarser quantiser with a larger nprobe
IVF_TRAIN_PER_CELL = 40


class RetrievalError(CxrError, ValueError):
    """Bad retrieval input: missing index files, wrong vector shapes, unknown index kind (message names it)."""


@dataclass(frozen=True)
class IndexConfig:
    """How :meth:`SearchIndex.build` chooses and tunes the faiss index (params.yaml ``retrieve.index``).

    Attributes:
        kind: ``auto`` (exact up to ``exact_max`` items, else ``approximate``) or a forced
            ``flat`` / ``ivf`` / ``hnsw``.
        exact_max: largest database searched exactly when ``kind`` is ``auto``.
        approximate: index used above ``exact_max``.
        ivf_lists: IVF cells; 0 = ``round(4 * sqrt(N))`` (at most N).
        ivf_codec: how IVF stores vectors: ``flat`` (float32, 4 D bytes each), ``sq8`` (8-bit scalar
            quantiser, D bytes) or ``pq`` (``pq_m`` bytes; binary indexes always store bits).
        pq_m: product-quantiser sub-vectors (one byte each; must divide D).
        nprobe: IVF cells visited per query (the first effort tried).
        hnsw_m: HNSW links per node.
        ef_construction, ef_search: HNSW beam widths while building / searching (``ef_search`` is
            the first effort tried).
        deterministic: build HNSW graphs on one thread (multi-threaded insertion order varies).
        min_recall: recall@``recall_k`` an approximate index must reach against exact search on the
            sample; 0 measures and records it but never raises the effort nor falls back.
        recall_k: the k of that recall.
        recall_queries: queries in the seeded recall sample.
        max_nprobe, max_ef_search: the largest effort tried before falling back to exact search
            (``max_nprobe`` 0 = every cell).
    """

    kind: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    exact_max: int = 10_000
    approximate: Literal["ivf", "hnsw"] = "hnsw"
    ivf_lists: int = 0
    ivf_codec: Literal["flat", "sq8", "pq"] = "flat"
    pq_m: int = 64
    nprobe: int = 8
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 16
    deterministic: bool = True
    min_recall: float = 0.95
    recall_k: int = 10
    recall_queries: int = 1000
    max_nprobe: int = 256
    max_ef_search: int = 1024

    def resolve(self, n: int) -> str:
        """The index kind used for ``n`` database items."""
        if self.kind != "auto":
            return self.kind
        return "flat" if n <= self.exact_max else self.approximate


def pack_codes(vectors: np.ndarray) -> np.ndarray:
    """Binarise float codes (bit = value > 0) and pack them 8 per byte: uint8 ``[N, D / 8]``."""
    v = np.asarray(vectors)
    if v.ndim != 2 or v.shape[1] % 8:
        raise RetrievalError(f"binary codes need shape [N, bits] with bits a multiple of 8, got {v.shape}")
    return np.packbits(v > 0, axis=1)


def ivf_lists(n: int, cfg: IndexConfig) -> int:
    """IVF cells for ``n`` items: ``cfg.ivf_lists``, or ``round(4 sqrt(n))``, never more than ``n``."""
    return min(cfg.ivf_lists or max(1, round(4 * math.sqrt(n))), n)


def _faiss():
    import logging

    # faiss's loader logs every CPU-specific build it probes (AVX512, AVX2) at INFO before falling back
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss  # lazy: keeps `import cxr.retrieve` light for the CLI

    return faiss


def build_faiss(vectors: np.ndarray, kind: str, cfg: IndexConfig, binary: bool = False):
    """The bare faiss index of ``kind`` (flat / ivf / hnsw) over float32 ``vectors`` (binarised when
    ``binary``), at the configured effort, without the recall check (benchmarks use it)."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    return _build_binary(pack_codes(v), v.shape[1], kind, cfg) if binary else _build_float(v, kind, cfg)


def _build_float(v: np.ndarray, kind: str, cfg: IndexConfig):
    faiss = _faiss()
    n, d = v.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = ivf_lists(n, cfg)
        quantizer = faiss.IndexFlatIP(d)
        if cfg.ivf_codec == "sq8":
            index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_INNER_PRODUCT)
        elif cfg.ivf_codec == "pq":
            if d % cfg.pq_m:
                raise RetrievalError(f"ivf_codec pq needs pq_m dividing the dimension {d}, got pq_m={cfg.pq_m}")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, cfg.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.max_points_per_centroid = IVF_TRAIN_PER_CELL
        index.train(v)
        index.nprobe = min(cfg.nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
    else:
        raise RetrievalError(f"unknown index kind {kind!r}; choose one of flat, ivf, hnsw")
    _add(index, v, kind, cfg)
    return index


def _build_binary(codes: np.ndarray, bits: int, kind: str, cfg: IndexConfig):
    faiss = _faiss()
    n = codes.shape[0]
    if kind == "flat":
        index = faiss.IndexBinaryFlat(bits)
    elif kind == "ivf":
        nlist = ivf_lists(n, cfg)
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, nlist)
        index.cp.max_points_per_centroid = IVF_TRAIN_PER_CELL
        index.train(codes)
        index.nprobe = min(cfg.nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexBinaryHNSW(bits, cfg.hnsw_m)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
    else:
        raise RetrievalError(f"unknown index kind {kind!r}; choose one of flat, ivf, hnsw")
    _add(index, codes, kind, cfg)
    return index


def _add(index, data: np.ndarray, kind: str, cfg: IndexConfig) -> None:
    faiss = _faiss()
    if kind == "hnsw" and cfg.deterministic:
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            index.add(data)
        finally:
            faiss.omp_set_num_threads(threads)
    else:
        index.add(data)


def _effort(index, kind: str) -> dict[str, int]:
    return {"nprobe": int(index.nprobe)} if kind == "ivf" else {"ef_search": int(index.hnsw.efSearch)}


def _set_effort(index, kind: str, value: int) -> None:
    if kind == "ivf":
        index.nprobe = int(value)
    else:
        index.hnsw.efSearch = int(value)


def _drop_own(rows: np.ndarray, own: np.ndarray | None, k: int) -> np.ndarray:
    """The first ``k`` of each row of ``rows`` after removing the query's own database row ``own`` (-1 = none)."""
    if own is None:
        return rows[:, :k]
    keep = rows != own[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(rows, order, 1), -1)


def _similarity(db: np.ndarray, q: np.ndarray, rows: np.ndarray, binary: bool) -> np.ndarray:
    """Exact similarity of query i to database rows ``rows[i]`` (-inf for -1): inner product, or minus the
    Hamming distance of packed codes (integers, so ties are exact)."""
    r = np.maximum(rows, 0)
    if binary:
        s = -np.bitwise_count(q[:, None, :] ^ db[r]).sum(-1).astype(np.float64)
    else:
        s = np.einsum("qd,qkd->qk", q.astype(np.float64), db[r].astype(np.float64))
    return np.where(rows >= 0, s, -np.inf)


def recall_at_k(index, db: np.ndarray, queries: np.ndarray, truth: np.ndarray, k: int, binary: bool,
                own: np.ndarray | None = None) -> float:
    """Recall@k of a faiss ``index`` against the exact neighbours ``truth`` ``[Q, >= k]``.

    A returned item counts when it is at least as similar (recomputed exactly from ``db``) as the exact
    k-th neighbour, so an item tied with it is as correct as the one exact search happened to return
    (Hamming distances of short codes tie often). ``db`` / ``queries`` are float32 vectors, or packed
    codes for ``binary``; ``own``: each query's own database row, left out of both lists (-1 = none).
    """
    extra = 0 if own is None else 1
    _, rows = index.search(queries, k + extra)
    got = _drop_own(rows.astype(np.int64), own, k)
    tol = 0.0 if binary else 1e-5
    kth = _similarity(db, queries, truth[:, k - 1:k], binary)
    return float(np.mean(_similarity(db, queries, got, binary) >= kth - tol))


def exact_neighbours(db: np.ndarray, queries: np.ndarray, k: int, binary: bool,
                     own: np.ndarray | None = None) -> np.ndarray:
    """Rows ``[Q, k]`` of the exact top ``k`` (brute force, no index kept; ``own`` as in :func:`recall_at_k`)."""
    faiss = _faiss()
    extra = 0 if own is None else 1
    kk = min(k + extra, len(db))
    if binary:
        _, rows = faiss.knn_hamming(queries, db, kk)
    else:
        _, rows = faiss.knn(queries, db, kk, metric=faiss.METRIC_INNER_PRODUCT)
    rows = _drop_own(np.asarray(rows, np.int64), own, k)
    if rows.shape[1] < k:
        rows = np.pad(rows, ((0, 0), (0, k - rows.shape[1])), constant_values=-1)
    return rows


def recall_sample(n_db: int, queries: np.ndarray | None, count: int, seed: int) -> tuple[np.ndarray | None, np.ndarray]:
    """The fixed recall sample: ``(own, picked)``: seeded rows of the held-out ``queries`` (own = None), or
    without them, seeded database rows (own = those rows, excluded from their own results)."""
    rng = np.random.default_rng(seed)
    pool = n_db if queries is None else len(queries)
    picked = np.sort(rng.choice(pool, size=min(count, pool), replace=False)) if pool else np.zeros(0, np.int64)
    return (picked if queries is None else None), picked


def tune_recall(index, kind: str, db: np.ndarray, queries: np.ndarray, own: np.ndarray | None, binary: bool,
                cfg: IndexConfig, source: str) -> dict[str, Any]:
    """Measure the recall of an approximate ``index`` and raise its effort until ``cfg.min_recall`` holds.

    The effort (``nprobe`` for IVF, ``efSearch`` for HNSW) starts at the configured value and doubles up
    to ``max_nprobe`` (at most every cell) / ``max_ef_search``; the index is left at the first effort
    that reaches ``min_recall``, or at the last one tried.

    Returns:
        ``{"k", "queries", "source", "min_recall", "trials": [{effort: value, "recall": r}, ...],
        "recall", "effort", "met"}``.
    """
    k = min(cfg.recall_k, len(db) - (0 if own is None else 1))
    if k < 1 or len(queries) == 0:
        raise RetrievalError(f"the recall check needs a database of at least 2 items and a query; got {len(db)} / {len(queries)}")
    truth = exact_neighbours(db, queries, k, binary, own)
    if kind == "ivf":
        name, start, cap = "nprobe", int(index.nprobe), min(cfg.max_nprobe or index.nlist, index.nlist)
    else:
        name, start, cap = "ef_search", int(index.hnsw.efSearch), cfg.max_ef_search
    ladder = [min(start, cap)]
    while ladder[-1] < cap:
        ladder.append(min(2 * ladder[-1], cap))
    trials = []
    for value in ladder:
        _set_effort(index, kind, value)
        r = recall_at_k(index, db, queries, truth, k, binary, own)
        trials.append({name: value, "recall": round(r, 6)})
        log.info("%s index, %s=%d: recall@%d %.4f on %d queries (need %.3f)", kind, name, value, k, r, len(queries),
                 cfg.min_recall)
        if r >= cfg.min_recall or cfg.min_recall <= 0:
            break
    best = trials[-1]["recall"]
    return {"k": k, "queries": int(len(queries)), "source": source, "min_recall": cfg.min_recall, "trials": trials,
            "recall": best, "effort": _effort(index, kind), "met": bool(best >= cfg.min_recall)}


def _fmt_effort(effort: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in effort.items())


class SearchIndex:
    """Embeddings of a database of images in a faiss index, with the item table row-aligned to it.

    Build with :meth:`build`, persist with :meth:`save` / :meth:`load`, query with :meth:`search`
    (arrays) or :meth:`results` (a table). Attributes: ``items`` (DataFrame), ``label_names``,
    ``binary``, ``kind``, ``dim`` (vector size = bits for binary indexes), ``vectors`` (float32).
    """

    def __init__(self, index: Any, items: pd.DataFrame, vectors: np.ndarray, meta: dict[str, Any]):
        self.index, self.items, self.vectors, self.meta = index, items.reset_index(drop=True), vectors, dict(meta)
        self.binary, self.kind, self.dim = bool(meta["binary"]), str(meta["kind"]), int(meta["dim"])
        self.label_names = list(meta.get("label_names", []))
        # the patient cluster: dataset:patient_id when the items carry it (ids repeat across datasets)
        pcol = "patient_key" if "patient_key" in self.items.columns else "patient_id"
        codes, uniques = pd.factorize(self.items[pcol].astype(str))
        self._patient_codes = np.asarray(codes, dtype=np.int64)
        self._patient_lookup = {p: i for i, p in enumerate(uniques)}
        self._max_per_patient = int(np.bincount(self._patient_codes).max()) if len(codes) else 0

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def build(cls, vectors: np.ndarray, items: pd.DataFrame, *, binary: bool = False, config: IndexConfig | None = None,
              label_names: Sequence[str] = (), recall_queries: np.ndarray | None = None, seed: int = 0) -> SearchIndex:
        """Index ``vectors [N, D]`` (row i describes ``items`` row i); an approximate index is checked and
        tuned by :func:`tune_recall` (and replaced by the exact one when ``min_recall`` never holds).

        Args:
            vectors: float embeddings; L2-normalised for float indexes (inner product = cosine),
                float codes (sign = bit) for ``binary`` indexes.
            items: one row per vector with the columns of :data:`ITEM_COLUMNS` (+ label columns).
            binary: Hamming search over the binarised codes (D must be a multiple of 8).
            config: index choice and tuning (:class:`IndexConfig`).
            label_names: the label columns of ``items`` (recorded in ``index.json``).
            recall_queries: held-out queries ``[Q, D]`` for the recall check (a seeded sample of
                ``config.recall_queries`` of them); None = a sample of database rows, own row left out.
            seed: seeds that sample.

        Raises:
            RetrievalError: empty or non-finite vectors, misaligned items, missing columns, recall
                queries of the wrong width.
        """
        cfg = config or IndexConfig()
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        if v.ndim != 2 or len(v) == 0:
            raise RetrievalError(f"need a non-empty [N, D] array of vectors, got shape {v.shape}")
        if not np.isfinite(v).all():
            raise RetrievalError(f"{int((~np.isfinite(v)).any(1).sum())} vector(s) contain NaN/inf; check the model")
        if len(items) != len(v):
            raise RetrievalError(f"items has {len(items)} rows but there are {len(v)} vectors")
        missing = [c for c in (*ITEM_COLUMNS, *label_names) if c not in items.columns]
        if missing:
            raise RetrievalError(f"items lack column(s) {missing}")
        kind = cfg.resolve(len(v))
        data = pack_codes(v) if binary else v
        index = _build_binary(data, v.shape[1], kind, cfg) if binary else _build_float(v, kind, cfg)
        recall: dict[str, Any] = {"exact": True, "recall": 1.0, "note": "exact search"}
        if kind != "flat":
            if recall_queries is not None:
                q = np.ascontiguousarray(recall_queries, dtype=np.float32)
                if q.ndim != 2 or q.shape[1] != v.shape[1] or not np.isfinite(q).all():
                    raise RetrievalError(f"recall queries need finite values of shape [Q, {v.shape[1]}], got {q.shape}")
                own, pick = recall_sample(len(v), q, cfg.recall_queries, seed)
                sample, source = q[pick], "held-out queries"
            if recall_queries is None or len(sample) == 0:
                own, pick = recall_sample(len(v), None, cfg.recall_queries, seed)
                sample, source = v[pick], "database rows (own row left out)"
            sample = pack_codes(sample) if binary else sample
            recall = tune_recall(index, kind, data, sample, own, binary, cfg, source)
            recall["exact"] = False
            if recall["met"] or cfg.min_recall <= 0:
                recall["note"] = (f"{kind} at {_fmt_effort(recall['effort'])}: recall@{recall['k']} {recall['recall']:.3f} "
                                  f">= {cfg.min_recall} against exact search on {recall['queries']} {source}")
            else:
                recall["note"] = (f"{kind} reached recall@{recall['k']} {recall['recall']:.3f} < {cfg.min_recall} at its "
                                  f"largest effort ({_fmt_effort(recall['effort'])}); fell back to exact search")
                recall.update(fallback_from=kind, recall=1.0)
                log.warning("%s", recall["note"])
                kind = "flat"
                index = _build_binary(data, v.shape[1], kind, cfg) if binary else _build_float(v, kind, cfg)
        meta = {"format": FORMAT, "kind": kind, "binary": binary, "metric": "hamming" if binary else "inner_product",
                "dim": int(v.shape[1]), "count": int(len(v)), "config": asdict(cfg), "label_names": list(label_names),
                "effort": _effort(index, kind) if kind != "flat" else {}, "recall": recall}
        return cls(index, items, v, meta)

    # ------------------------------------------------------------------ persistence

    def save(self, out_dir: str | Path) -> None:
        """Write ``index.faiss``, ``items.parquet``, ``vectors.npy`` and ``index.json`` into ``out_dir`` (atomically, per file)."""
        import io

        faiss = _faiss()
        d = Path(out_dir)
        blob = faiss.serialize_index_binary(self.index) if self.binary else faiss.serialize_index(self.index)
        write_bytes(d / "index.faiss", np.asarray(blob, dtype=np.uint8).tobytes())
        write_parquet(d / "items.parquet", self.items)
        buf = io.BytesIO()
        np.save(buf, self.vectors, allow_pickle=False)
        write_bytes(d / "vectors.npy", buf.getvalue())
        write_json(d / "index.json", self.meta)

    @classmethod
    def load(cls, in_dir: str | Path) -> SearchIndex:
        """Load a directory written by :meth:`save` (e.g. ``data/processed/retrieval/<M>``).

        Raises:
            RetrievalError: a file is missing or the parts disagree (count, format).
        """
        faiss = _faiss()
        d = Path(in_dir)
        missing = [f for f in ("index.faiss", "items.parquet", "vectors.npy", "index.json") if not (d / f).is_file()]
        if missing:
            raise RetrievalError(f"{d}: not a search index dir (missing {missing}); run the retrieve stage for this model")
        meta = json.loads((d / "index.json").read_text())
        if meta.get("format") != FORMAT:
            raise RetrievalError(f"{d}: index format {meta.get('format')!r}, this code reads format {FORMAT}")
        blob = np.frombuffer((d / "index.faiss").read_bytes(), dtype=np.uint8)
        index = faiss.deserialize_index_binary(blob) if meta["binary"] else faiss.deserialize_index(blob)
        effort = meta.get("effort") or {}  # the effort the recall check settled on
        if meta["kind"] == "ivf":
            index.nprobe = min(int(effort.get("nprobe", meta["config"]["nprobe"])), index.nlist)
        elif meta["kind"] == "hnsw":
            index.hnsw.efSearch = int(effort.get("ef_search", meta["config"]["ef_search"]))
        items = pd.read_parquet(d / "items.parquet")
        vectors = np.load(d / "vectors.npy", allow_pickle=False)
        if not (index.ntotal == len(items) == len(vectors) == meta["count"]):
            raise RetrievalError(f"{d}: index ({index.ntotal}), items ({len(items)}) and vectors ({len(vectors)}) "
                                 f"disagree with index.json count {meta['count']}")
        return cls(index, items, vectors, meta)

    # ------------------------------------------------------------------ search

    def search(self, queries: np.ndarray, k: int, exclude_patients: Sequence[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest database items of each query.

        Args:
            queries: ``[Q, D]`` float (L2-normalised embeddings, or float codes for a binary index:
                they are binarised here like the database).
            k: results per query.
            exclude_patients: None, or one patient id per query (None for "no exclusion"); every
                database image of that patient is left out of the query's results.

        Returns:
            ``(scores, rows)``, both ``[Q, k]``: similarity (higher = closer; NaN where fewer than
            ``k`` results exist) and row numbers into :attr:`items` (-1 there), best first.

        Raises:
            RetrievalError: wrong query shape, ``k < 1``, ``exclude_patients`` of the wrong length.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise RetrievalError(f"queries have shape {q.shape}, this index expects [Q, {self.dim}]")
        if k < 1:
            raise RetrievalError(f"k must be >= 1, got {k}")
        if not np.isfinite(q).all():
            raise RetrievalError("queries contain NaN/inf")
        if exclude_patients is not None and len(exclude_patients) != len(q):
            raise RetrievalError(f"exclude_patients has {len(exclude_patients)} entries for {len(q)} queries")
        n = len(self)
        kk = min(n, k + (self._max_per_patient if exclude_patients is not None else 0))
        if self.binary:
            dist, rows = self.index.search(pack_codes(q), kk)
            scores = 1.0 - 2.0 * dist.astype(np.float64) / self.dim
        else:
            scores, rows = self.index.search(q, kk)
        rows = rows.astype(np.int64)
        keep = rows >= 0
        if exclude_patients is not None:
            excl = np.array([-2 if p is None else self._patient_lookup.get(str(p), -2) for p in exclude_patients], np.int64)
            keep &= self._patient_codes[np.where(keep, rows, 0)] != excl[:, None]
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        rows = np.take_along_axis(rows, order, 1)
        scores = np.take_along_axis(np.asarray(scores, np.float64), order, 1)
        valid = np.take_along_axis(keep, order, 1)
        if rows.shape[1] < k:  # fewer database items than k
            pad = k - rows.shape[1]
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)))
            valid = np.pad(valid, ((0, 0), (0, pad)), constant_values=False)
        rows[~valid] = -1
        scores[~valid] = np.nan
        return scores.astype(np.float32), rows

    def results(self, queries: np.ndarray, k: int, exclude_patients: Sequence[Any] | None = None) -> pd.DataFrame:
        """:meth:`search` as a long table: query (0-based), rank (1..k), score and the item columns of each hit."""
        scores, rows = self.search(queries, k, exclude_patients)
        qi, rank = np.nonzero(rows >= 0)
        hits = self.items.iloc[rows[qi, rank]].reset_index(drop=True)
        head = pd.DataFrame({"query": qi.astype(np.int64), "rank": (rank + 1).astype(np.int64), "score": scores[qi, rank]})
        return pd.concat([head, hits], axis=1)
