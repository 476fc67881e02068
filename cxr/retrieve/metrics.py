"""Retrieval metrics with the CheXtriev definitions (DESIGN.md), named without ambiguity.

Relevance is per class: for class c, the queries are the query images POSITIVE for c (raw label
1; uncertain -1 and blank are not positive), and a retrieved image is relevant when it is
positive for c. For one query with the top-``k`` relevance vector ``rel[1..k]``:

* ``ap`` (AP@k): mean of precision@i over the ranks i with ``rel[i]``; 0 when none is relevant.
  (CheXtriev's AP: normalised by the relevant items retrieved, not by all relevant items.)
* ``precision`` (precision@k): relevant retrieved / k. CheXtriev calls this "HR" (mHR); it is a
  precision, so it carries that name here.
* ``hit`` (hit@k): 1 when at least one of the k is relevant, else 0 (the usual "hit rate").
* ``rr`` (RR@k): 1 / rank of the first relevant item; 0 when none is within k.

Averages: per class over its queries, then ``class_average`` (mean over the classes that have at
least one query; CheXtriev counted classes without queries as 0) and ``query_weighted`` (mean
over all (query, class) pairs, i.e. classes weighted by their query counts).

``no_skip`` averages every query. ``skip`` (CheXtriev's ``skip=True``) leaves out the queries
with no relevant item in their top k; these are counted per class (``no_relevant_in_top_k``),
as are the queries for which the database holds no relevant item at all
(``no_relevant_in_database``: those can never score).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

METRICS = ("ap", "precision", "hit", "rr")
DEFINITIONS = {
    "ap": "AP@k: mean precision@i over the ranks i <= k holding a relevant item (0 if none); CheXtriev's AP",
    "precision": "precision@k: relevant items in the top k / k (what CheXtriev reports as HR / mHR)",
    "hit": "hit@k: 1 if any of the top k is relevant, else 0",
    "rr": "RR@k: 1 / rank of the first relevant item within the top k (0 if none)",
    "relevance": "per class c: queries are the test images positive (label 1) for c; a result is relevant if positive for c",
    "class_average": "mean over the classes with at least one query",
    "query_weighted": "mean over all (query, class) pairs (classes weighted by their query counts)",
    "skip": "queries with no relevant item in their top k left out (CheXtriev skip=True)",
    "no_skip": "every query counted",
}


def ranking_scores(rel: np.ndarray) -> dict[str, np.ndarray]:
    """Per-query AP@k, precision@k, hit@k and RR@k of a relevance matrix ``rel`` (bool ``[Q, k]``, rank 1 first)."""
    rel = np.asarray(rel, dtype=bool)
    if rel.ndim != 2 or rel.shape[1] == 0:
        raise ValueError(f"relevance must be [Q, k] with k >= 1, got shape {rel.shape}")
    k = rel.shape[1]
    ranks = np.arange(1, k + 1, dtype=np.float64)
    cum = np.cumsum(rel, axis=1)
    n_rel = cum[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(n_rel > 0, ((cum / ranks) * rel).sum(1) / np.maximum(n_rel, 1), 0.0)
    hit = n_rel > 0
    rr = np.where(hit, 1.0 / (rel.argmax(1) + 1), 0.0)
    return {"ap": ap, "precision": n_rel / k, "hit": hit.astype(np.float64), "rr": rr}


def _means(scores: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, float] | None:
    if not keep.any():
        return None
    return {m: round(float(scores[m][keep].mean()), 6) for m in METRICS}


def retrieval_metrics(query_labels: np.ndarray, db_labels: np.ndarray, rows: np.ndarray, names: Sequence[str],
                      ks: Sequence[int] = (3, 5, 10), available: np.ndarray | None = None) -> dict:
    """Per-class and averaged retrieval metrics at each k (definitions: module docstring).

    Args:
        query_labels: raw labels ``[Q, C]`` of the queries (1 = positive; 0, -1, NaN = not).
        db_labels: raw labels ``[N, C]`` of the database items.
        rows: ``[Q, K]`` database rows retrieved per query, best first (-1 = no result), ``K >= max(ks)``;
            the query itself and its patient's images must already be excluded.
        names: the C class names.
        ks: cut-offs.
        available: optional ``[Q, C]`` counts of relevant database items each query could retrieve
            (after the patient exclusion); gives ``no_relevant_in_database``.

    Returns:
        ``{str(k): {"per_class": {name: {...}}, "no_skip": {...}, "skip": {...}}}``.
    """
    q_pos = np.asarray(query_labels, dtype=np.float64) == 1
    d_pos = np.asarray(db_labels, dtype=np.float64) == 1
    rows = np.asarray(rows, dtype=np.int64)
    if q_pos.shape[1] != len(names) or d_pos.shape[1] != len(names):
        raise ValueError(f"label arrays have {q_pos.shape[1]} / {d_pos.shape[1]} columns for {len(names)} class names")
    if rows.shape[0] != q_pos.shape[0] or rows.shape[1] < max(ks):
        raise ValueError(f"rows has shape {rows.shape}; need [{q_pos.shape[0]}, >= {max(ks)}]")
    out: dict[str, dict] = {}
    for k in ks:
        r = rows[:, :k]
        per_class, pooled = {}, {"no_skip": {m: [] for m in METRICS}, "skip": {m: [] for m in METRICS}}
        for c, name in enumerate(names):
            qs = np.flatnonzero(q_pos[:, c])
            entry = {"queries": int(len(qs)), "no_relevant_in_top_k": 0, "no_relevant_in_database": None,
                     "no_skip": None, "skip": None}
            if available is not None:
                entry["no_relevant_in_database"] = int((np.asarray(available)[qs, c] == 0).sum())
            if len(qs):
                rc = r[qs]
                rel = np.where(rc >= 0, d_pos[np.maximum(rc, 0), c], False)
                s = ranking_scores(rel)
                found = s["hit"] > 0
                entry["no_relevant_in_top_k"] = int((~found).sum())
                entry["no_skip"] = _means(s, np.ones(len(qs), bool))
                entry["skip"] = _means(s, found)
                for m in METRICS:
                    pooled["no_skip"][m].append(s[m])
                    pooled["skip"][m].append(s[m][found])
            per_class[name] = entry
        res: dict = {"per_class": per_class}
        for mode in ("no_skip", "skip"):
            cls = [e[mode] for e in per_class.values() if e[mode] is not None]
            n_pairs = int(sum(len(a) for a in pooled[mode]["ap"]))
            res[mode] = {
                "class_average": {m: round(float(np.mean([e[m] for e in cls])), 6) for m in METRICS} if cls else None,
                "query_weighted": ({m: round(float(np.concatenate(pooled[mode][m]).mean()), 6) for m in METRICS}
                                   if n_pairs else None),
                "classes": len(cls), "query_class_pairs": n_pairs,
            }
        res["no_relevant_in_top_k"] = int(sum(e["no_relevant_in_top_k"] for e in per_class.values()))
        if available is not None:
            res["no_relevant_in_database"] = int(sum(e["no_relevant_in_database"] for e in per_class.values()))
        out[str(k)] = res
    return out


def relevant_available(query_patients: Sequence, db_labels: np.ndarray, db_patients: Sequence) -> np.ndarray:
    """``[Q, C]`` counts of database items positive for each class, minus those of the query's own patient."""
    import pandas as pd

    d_pos = (np.asarray(db_labels, dtype=np.float64) == 1).astype(np.int64)
    per_patient = pd.DataFrame(d_pos).groupby(np.asarray([str(p) for p in db_patients])).sum()
    own = per_patient.reindex([str(p) for p in query_patients], fill_value=0).to_numpy(np.int64)
    return d_pos.sum(0)[None, :] - own.reshape(len(query_patients), d_pos.shape[1])


def chance_metrics(query_labels: np.ndarray, db_labels: np.ndarray, query_patients: Sequence, db_patients: Sequence,
                   names: Sequence[str], ks: Sequence[int] = (3, 5, 10), repeats: int = 10, seed: int = 0,
                   max_cells: int = 20_000_000) -> dict:
    """No-skip averages of a random ranking (the chance level a model must beat), mean of ``repeats`` seeded draws.

    Each query ranks the database at random, its own patient excluded, as the real search. When
    queries x database exceeds ``max_cells``, each draw ranks a uniform sample of the database
    (same label prevalence, so the estimate barely moves while ``k`` is small against the sample).

    Returns:
        ``{str(k): {"class_average": {...}, "query_weighted": {...}}}`` (values None without queries).
    """
    return _tiered_random_metrics(query_labels, db_labels, query_patients, db_patients, names, ks, None, None,
                                  repeats, seed, max_cells)


#: Metadata ranking tiers: a shared view counts more than a shared sex.
METADATA_WEIGHTS = {"view": 2.0, "sex": 1.0}


def metadata_metrics(query_labels: np.ndarray, db_labels: np.ndarray, query_patients: Sequence, db_patients: Sequence,
                     query_meta: Mapping[str, Sequence], db_meta: Mapping[str, Sequence], names: Sequence[str],
                     ks: Sequence[int] = (3, 5, 10), repeats: int = 10, seed: int = 0,
                     max_cells: int = 20_000_000) -> dict:
    """No-skip averages of a metadata-only ranking: database images of the query's view AND sex first,
    then same view, then same sex, then the rest, in seeded random order within each tier (mean of
    ``repeats`` draws; own patient excluded; sampling as :func:`chance_metrics`). A model's embedding
    that does not beat it has learnt no more than the view and the sex.

    ``query_meta`` / ``db_meta``: ``{"view": [...], "sex": [...]}`` aligned with the labels.
    """
    return _tiered_random_metrics(query_labels, db_labels, query_patients, db_patients, names, ks, query_meta, db_meta,
                                  repeats, seed, max_cells)


def _tiered_random_metrics(query_labels, db_labels, query_patients, db_patients, names, ks, query_meta, db_meta,
                           repeats, seed, max_cells) -> dict:
    rng = np.random.default_rng(seed)
    q_pids = np.asarray([str(p) for p in query_patients])
    d_pids = np.asarray([str(p) for p in db_patients])
    n_db = len(d_pids)
    kmax = max(ks)
    size = int(min(n_db, max(kmax * 20, max_cells // max(len(q_pids), 1))))

    def norm(v) -> np.ndarray:
        return np.asarray([str(x).strip().upper() for x in v])

    attrs = [(w, norm(query_meta[a]), norm(db_meta[a])) for a, w in METADATA_WEIGHTS.items()] if query_meta else []
    acc: dict[str, dict[str, list]] = {str(k): {"class_average": [], "query_weighted": []} for k in ks}
    for _ in range(repeats):
        sub = np.sort(rng.choice(n_db, size=size, replace=False)) if size < n_db else np.arange(n_db)
        keys = rng.random((len(q_pids), len(sub)))  # in [0, 1): the random order within a tier
        for w, qa, da in attrs:
            keys -= w * (qa[:, None] == da[sub][None, :])  # a better tier sorts first
        keys[q_pids[:, None] == d_pids[sub][None, :]] = np.inf  # own patient never retrieved
        top = np.argpartition(keys, min(kmax, len(sub)) - 1, axis=1)[:, :kmax] if len(sub) > kmax else np.argsort(keys, 1)
        top = np.take_along_axis(top, np.argsort(np.take_along_axis(keys, top, 1), axis=1), 1)
        rows = np.where(np.isfinite(np.take_along_axis(keys, top, 1)), sub[top], -1)
        if rows.shape[1] < kmax:
            rows = np.pad(rows, ((0, 0), (0, kmax - rows.shape[1])), constant_values=-1)
        res = retrieval_metrics(query_labels, db_labels, rows, names, ks)
        for k in ks:
            for avg in ("class_average", "query_weighted"):
                acc[str(k)][avg].append(res[str(k)]["no_skip"][avg])
    out = {}
    for k, d in acc.items():
        out[k] = {avg: (None if any(v is None for v in vals) else
                        {m: round(float(np.mean([v[m] for v in vals])), 6) for m in METRICS}) for avg, vals in d.items()}
    return out
