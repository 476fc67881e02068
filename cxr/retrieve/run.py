"""The ``retrieve@M`` stage: embed the database and the test queries with one trained model,
index the database, search, and score with :mod:`cxr.retrieve.metrics`.

Database = the images of ``retrieve.database`` (train + val by default; DESIGN.md leaves the
choice open, and searching the training images is what a deployed system would do). Queries =
the test images. Every query's own patient (so the query itself) is excluded from its results,
whatever the database splits. Relevance uses the RAW labels of labels.parquet (1 = positive), in
the label space of the model card; the same images the model was evaluated on (frontal views,
and for anatomy models only images with region features).

Outputs (:func:`write_outputs`, into the retrieval dir ``data/processed/retrieval/<M>``): the
search index (:meth:`SearchIndex.save`: ``index.faiss``, ``items.parquet``, ``vectors.npy``,
``index.json``), ``queries.parquet`` + ``query_vectors.npy`` (the test side, for benchmarks),
``examples.parquet`` (a few test queries with their top 5: image ids, PNG paths, positive labels,
scores) and ``retrieval.json`` (metrics, computed with the index actually used; that index with its
recall check: recall@k against exact search on a sample of the test queries, the efforts tried, any
fallback to exact search; and the chance level of a random ranking of the same database, which the
metrics must beat: with common findings it is far from 0). The DVC metrics file
reports/<M>/retrieval.json holds its flat numbers (:func:`metrics_summary`).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr.inference import card_datasets, load_model_dir
from cxr.io import atomic_dir, write_bytes, write_json, write_parquet
from cxr.retrieve.embed import embed_dataset
from cxr.retrieve.index import ITEM_COLUMNS, IndexConfig, RetrievalError, SearchIndex
from cxr.retrieve.metrics import (DEFINITIONS, METRICS, chance_metrics, metadata_metrics, relevant_available,
                                  retrieval_metrics)

log = logging.getLogger(__name__)

EXAMPLE_K = 5


def _positives(raw: np.ndarray, names: Sequence[str]) -> list[str]:
    return ["; ".join(n for n, v in zip(names, row) if v == 1) for row in raw]


def example_table(q_items: pd.DataFrame, db_items: pd.DataFrame, scores: np.ndarray, rows: np.ndarray,
                  names: Sequence[str], n: int, seed: int) -> pd.DataFrame:
    """``n`` test queries (seeded choice among those with a positive label) and their top 5.

    One row per (query, rank): rank 0 is the query itself (score NaN), ranks 1..5 its results;
    columns query_image_id, rank, image_id, patient_id, png_path, labels (positive label names),
    score, relevant (shares a positive label with the query).
    """
    cols = ["query_image_id", "rank", "image_id", "patient_id", "png_path", "labels", "score", "relevant"]
    q_raw = q_items[list(names)].to_numpy(np.float64, na_value=np.nan)
    d_raw = db_items[list(names)].to_numpy(np.float64, na_value=np.nan)
    cand = np.flatnonzero((q_raw == 1).any(1))
    if n == 0 or len(cand) == 0:
        return pd.DataFrame(columns=cols)
    pick = np.sort(np.random.default_rng(seed).choice(cand, size=min(n, len(cand)), replace=False))
    q_lab, d_lab = _positives(q_raw, names), _positives(d_raw, names)
    out = []
    for qi in pick:
        q = q_items.iloc[qi]
        out.append([q["image_id"], 0, q["image_id"], str(q["patient_id"]), q["png_path"], q_lab[qi], np.nan, True])
        for rank, (r, s) in enumerate(zip(rows[qi, :EXAMPLE_K], scores[qi, :EXAMPLE_K]), start=1):
            if r < 0:
                continue
            d = db_items.iloc[r]
            rel = bool(((q_raw[qi] == 1) & (d_raw[r] == 1)).any())
            out.append([q["image_id"], rank, d["image_id"], str(d["patient_id"]), d["png_path"], d_lab[r], float(s), rel])
    return pd.DataFrame(out, columns=cols)


def retrieve_model(model_dir: str | Path, *, images: pd.DataFrame, labels: pd.DataFrame, splits: pd.DataFrame,
                   images_dir: str | Path, cache_dir: str | Path, params: Any, seed: int = 0,
                   features_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Embed, index, search and score one model dir (see the module docstring).

    Args:
        model_dir: a trained model dir (``models/<M>``).
        images, labels, splits: the tables of the convert, label and split stages.
        images_dir: the converted PNG directory.
        cache_dir: scratch dir for the image cache.
        params: the ``retrieve`` params section (:class:`cxr.params.RetrieveParams`).
        seed: picks the example queries.
        features_dir: region features (anatomy models).

    Returns:
        ``{"index", "metrics", "queries", "query_vectors", "examples"}``.

    Raises:
        RetrievalError: no test query or an empty database.
    """
    model, card = load_model_dir(model_dir)
    name, names = card["architecture"], list(card["label_names"])
    norm = card["input"].get("normalisation")
    db_splits = list(params.database)
    which = list(dict.fromkeys(["test", *db_splits]))
    ds = card_datasets(card, images=images, labels=labels, splits=splits, images_dir=images_dir, which=which,
                       uncertainty=card.get("uncertainty", {}), cache_dir=cache_dir, features_dir=features_dir,
                       progress=progress)
    vecs = {s: embed_dataset(model, ds[s], batch_size=params.batch_size, norm=norm, progress=progress) for s in which}
    # patient_key (dataset:patient_id, the split's key) is the patient cluster: ids repeat across datasets
    tables = {s: ds[s].meta[[*ITEM_COLUMNS, "patient_key", *names]].reset_index(drop=True) for s in which}
    q_items, q_vec = tables["test"], vecs["test"]
    db_items = pd.concat([tables[s] for s in db_splits], ignore_index=True)
    db_vec = np.concatenate([vecs[s] for s in db_splits])
    if len(q_items) == 0 or len(db_items) == 0:
        raise RetrievalError(f"{name}: {len(q_items)} test queries and {len(db_items)} database images; need both")
    binary = bool(getattr(model, "hashing", False))
    # an approximate index proves its recall on a seeded sample of the test queries (the searches it serves)
    index = SearchIndex.build(db_vec, db_items, binary=binary, config=IndexConfig(**params.index.model_dump()),
                              label_names=names, recall_queries=q_vec, seed=seed)
    ks = list(params.k)
    kmax = max(max(ks), EXAMPLE_K)
    q_pids = q_items["patient_key"].astype(str).tolist()
    d_pids = db_items["patient_key"].astype(str).tolist()
    scores, rows = index.search(q_vec, kmax, exclude_patients=q_pids)
    q_raw = q_items[names].to_numpy(np.float64, na_value=np.nan)
    d_raw = db_items[names].to_numpy(np.float64, na_value=np.nan)
    avail = relevant_available(q_pids, d_raw, d_pids)
    per_k = retrieval_metrics(q_raw, d_raw, rows, names, ks, available=avail)
    chance = chance_metrics(q_raw, d_raw, q_pids, d_pids, names, ks, seed=seed)
    info = images.drop_duplicates("image_id").set_index("image_id")
    meta_of = {side: {a: info.reindex(items["image_id"])[a].fillna("").astype(str).to_numpy() if a in info.columns
                      else np.full(len(items), "") for a in ("view", "sex")}
               for side, items in (("q", q_items), ("d", db_items))}
    metadata = metadata_metrics(q_raw, d_raw, q_pids, d_pids, meta_of["q"], meta_of["d"], names, ks, seed=seed)
    summary = {}
    for k in ks:
        avg = per_k[str(k)]["no_skip"]["class_average"] or {}
        summary.update({f"{m}@{k}": avg.get(m) for m in METRICS})
    metrics = {
        "model": name,
        "embedding": {"dim": int(db_vec.shape[1]), "binary": binary, "metric": index.meta["metric"]},
        "index": {"kind": index.kind, "config": index.meta["config"], "effort": index.meta["effort"],
                  "recall": index.meta["recall"]},
        "database": {"splits": db_splits, "images": int(len(db_items)), "patients": int(db_items["patient_key"].nunique())},
        "queries": {"split": "test", "images": int(len(q_items)), "patients": int(q_items["patient_key"].nunique())},
        "exclusion": "each query's own patient (hence the query itself) is removed from its results",
        "k": ks,
        "summary": summary,
        "summary_definition": "class average over the classes with a query, no-skip",
        "definitions": DEFINITIONS,
        "metrics": per_k,
        "chance": chance,
        "chance_definition": "no-skip averages of a seeded random ranking of the same database (mean of 10 draws)",
        "metadata": metadata,
        "metadata_definition": ("no-skip averages of a metadata-only ranking: same view and sex first, then same view, "
                                "then same sex, seeded random order within each (mean of 10 draws)"),
    }
    examples = example_table(q_items, db_items, scores, rows, names, params.examples, seed)
    log.info("%s: %d queries on %d database images (%s%s): %s", name, len(q_items), len(db_items), index.kind,
             ", binary" if binary else "", ", ".join(f"{k}={v:.3f}" for k, v in summary.items() if v is not None and "@5" in k))
    return {"index": index, "metrics": metrics, "queries": q_items, "query_vectors": q_vec, "examples": examples}


def metrics_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The flat numbers of a ``retrieval.json`` for ``dvc metrics show / diff`` (reports/<M>/retrieval.json).

    ``{"class_average", "query_weighted", "skip", "chance"}`` each ``{"ap@5": ..., ...}`` (no-skip unless
    named; ``skip`` and ``chance`` are class averages), the query and database sizes and, per k, the
    (query, class) pairs without a relevant item in the top k. The full tree stays in the retrieval dir.
    """
    out: dict[str, Any] = {"model": metrics["model"], "queries": metrics["queries"]["images"],
                           "database": metrics["database"]["images"]}
    rec = (metrics.get("index") or {}).get("recall") or {}
    out["index_recall"] = rec.get("recall")  # recall@k of the index used against exact search (1 = exact)
    parts = {"class_average": ("no_skip", "class_average"), "query_weighted": ("no_skip", "query_weighted"),
             "skip": ("skip", "class_average")}
    for name, (mode, avg) in parts.items():
        out[name] = {f"{m}@{k}": (metrics["metrics"][str(k)][mode][avg] or {}).get(m) for k in metrics["k"] for m in METRICS}
    out["chance"] = {f"{m}@{k}": (metrics["chance"][str(k)]["class_average"] or {}).get(m) for k in metrics["k"] for m in METRICS}
    if "metadata" in metrics:
        out["metadata"] = {f"{m}@{k}": (metrics["metadata"][str(k)]["class_average"] or {}).get(m)
                           for k in metrics["k"] for m in METRICS}
    out["no_relevant_in_top_k"] = {str(k): metrics["metrics"][str(k)]["no_relevant_in_top_k"] for k in metrics["k"]}
    return out


def write_outputs(out_dir: str | Path, result: Mapping[str, Any]) -> None:
    """Write the retrieval dir atomically (the whole dir appears at once; see the module docstring)."""
    with atomic_dir(out_dir) as tmp:
        result["index"].save(tmp)
        write_parquet(tmp / "queries.parquet", result["queries"])
        buf = io.BytesIO()
        np.save(buf, np.asarray(result["query_vectors"], np.float32), allow_pickle=False)
        write_bytes(tmp / "query_vectors.npy", buf.getvalue())
        write_parquet(tmp / "examples.parquet", result["examples"])
        write_json(tmp / "retrieval.json", result["metrics"])
