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
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from cxr.io import write_bytes, write_json, write_parquet
from cxr.errors import CxrError

ITEM_COLUMNS = ("image_id", "patient_id", "split", "png_path")
FORMAT = 1


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
        nprobe: IVF cells visited per query.
        hnsw_m: HNSW links per node.
        ef_construction, ef_search: HNSW beam widths while building / searching.
        deterministic: build HNSW graphs on one thread (multi-threaded insertion order varies).
    """

    kind: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    exact_max: int = 100_000
    approximate: Literal["ivf", "hnsw"] = "hnsw"
    ivf_lists: int = 0
    nprobe: int = 16
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    deterministic: bool = True

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


def _faiss():
    import logging

    # faiss's loader logs every CPU-specific build it probes (AVX512, AVX2) at INFO before falling back
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss  # lazy: keeps `import cxr.retrieve` light for the CLI

    return faiss


def _build_float(v: np.ndarray, kind: str, cfg: IndexConfig):
    faiss = _faiss()
    n, d = v.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = min(cfg.ivf_lists or max(1, round(4 * math.sqrt(n))), n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
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
        nlist = min(cfg.ivf_lists or max(1, round(4 * math.sqrt(n))), n)
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, nlist)
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
              label_names: Sequence[str] = ()) -> SearchIndex:
        """Index ``vectors [N, D]`` (row i describes ``items`` row i).

        Args:
            vectors: float embeddings; L2-normalised for float indexes (inner product = cosine),
                float codes (sign = bit) for ``binary`` indexes.
            items: one row per vector with the columns of :data:`ITEM_COLUMNS` (+ label columns).
            binary: Hamming search over the binarised codes (D must be a multiple of 8).
            config: index choice and tuning (:class:`IndexConfig`).
            label_names: the label columns of ``items`` (recorded in ``index.json``).

        Raises:
            RetrievalError: empty or non-finite vectors, misaligned items, missing columns.
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
        if binary:
            index = _build_binary(pack_codes(v), v.shape[1], kind, cfg)
        else:
            index = _build_float(v, kind, cfg)
        meta = {"format": FORMAT, "kind": kind, "binary": binary, "metric": "hamming" if binary else "inner_product",
                "dim": int(v.shape[1]), "count": int(len(v)), "config": asdict(cfg), "label_names": list(label_names)}
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
        cfg = meta["config"]
        if meta["kind"] == "ivf":
            index.nprobe = min(int(cfg["nprobe"]), index.nlist)
        elif meta["kind"] == "hnsw":
            index.hnsw.efSearch = int(cfg["ef_search"])
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
