"""Image search: metrics against hand-computed values, the faiss index (patient exclusion, round
trip, IVF/HNSW switch, binary Hamming codes), embeddings of every registered model, ATH through
the training engine, and the retrieve stage on the tiny cohort."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch.utils.data import Dataset

from conftest import tiny_params, tiny_workdir
from cxr.models.zoo import create_model, list_models
from cxr.models.ath import similar_pairs, triplet_loss
from cxr.retrieve import IndexConfig, RetrievalError, SearchIndex, embed, embed_dataset
from cxr.retrieve.index import build_faiss, exact_neighbours, pack_codes, recall_at_k
from cxr.retrieve.metrics import chance_metrics, ranking_scores, relevant_available, retrieval_metrics

REPO = Path(__file__).resolve().parents[1]


def _items(n: int, patients: list[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "patient_id": patients or [f"p{i}" for i in range(n)],
                         "split": "train", "png_path": [f"x/{i}.png" for i in range(n)]})


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# ---------------------------------------------------------------- metrics by hand


def test_ranking_scores_by_hand():
    rel = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0]], bool)
    s = ranking_scores(rel)
    assert s["ap"] == pytest.approx([(1 / 1 + 2 / 3) / 2, 0.0, 1 / 2])
    assert s["precision"] == pytest.approx([2 / 5, 0.0, 1 / 5])  # CheXtriev's "HR"
    assert s["hit"] == pytest.approx([1.0, 0.0, 1.0])  # a hit, not a precision
    assert s["rr"] == pytest.approx([1.0, 0.0, 0.5])


def test_retrieval_metrics_by_hand():
    names = ["A", "B"]
    db = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [-1, 0], [np.nan, 1]], float)  # -1 / NaN are not positive
    queries = np.array([[1, 0], [1, 1], [0, -1]], float)  # q2 has no positive: a query of no class
    rows = np.array([[3, 0, 4], [1, 5, 3], [0, 1, 2]])
    avail = np.array([[1, 2], [0, 3], [1, 2]])
    m = retrieval_metrics(queries, db, rows, names, ks=(2, 3), available=avail)
    a3, b3 = m["3"]["per_class"]["A"], m["3"]["per_class"]["B"]
    # class A: q0 finds item 0 at rank 2 (item 4 is uncertain); q1 finds nothing
    assert a3["queries"] == 2 and a3["no_relevant_in_top_k"] == 1 and a3["no_relevant_in_database"] == 1
    assert a3["no_skip"] == pytest.approx({"ap": 0.25, "precision": 1 / 6, "hit": 0.5, "rr": 0.25}, abs=1e-6)
    assert a3["skip"] == pytest.approx({"ap": 0.5, "precision": 1 / 3, "hit": 1.0, "rr": 0.5}, abs=1e-6)
    # class B: q1 finds items 1 and 5 at ranks 1, 2
    assert b3["queries"] == 1 and b3["no_relevant_in_top_k"] == 0
    assert b3["no_skip"] == pytest.approx({"ap": 1.0, "precision": 2 / 3, "hit": 1.0, "rr": 1.0}, abs=1e-6)
    ns, sk = m["3"]["no_skip"], m["3"]["skip"]
    assert ns["class_average"]["ap"] == pytest.approx((0.25 + 1.0) / 2)
    assert ns["query_weighted"]["ap"] == pytest.approx((0.5 + 0.0 + 1.0) / 3, abs=1e-6)
    assert ns["query_class_pairs"] == 3 and sk["query_class_pairs"] == 2
    assert sk["class_average"]["ap"] == pytest.approx(0.75) and sk["query_weighted"]["ap"] == pytest.approx(0.75)
    assert m["3"]["no_relevant_in_top_k"] == 1 and m["3"]["no_relevant_in_database"] == 1
    a2 = m["2"]["per_class"]["A"]["no_skip"]  # the cut-off matters: q0 at k=2
    assert a2 == pytest.approx({"ap": 0.25, "precision": 0.25, "hit": 0.5, "rr": 0.25}, abs=1e-6)
    with pytest.raises(ValueError, match="rows has shape"):
        retrieval_metrics(queries, db, rows[:, :2], names, ks=(3,))


def test_relevant_available_subtracts_the_query_patient():
    db = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], float)
    got = relevant_available(["p1", "p9", "p2"], db, ["p1", "p1", "p2", "p3"])
    assert got.tolist() == [[1, 1], [2, 2], [1, 1]]


def test_chance_level_of_a_random_ranking():
    # the query's own patient holds every positive: a random ranking that excludes it never scores
    db = np.array([[1]] * 8 + [[0]] * 2, float)
    pids = ["p"] * 8 + ["x", "y"]
    c = chance_metrics(np.array([[1.0]]), db, ["p"], pids, ["A"], ks=(2,), repeats=3)
    assert c["2"]["class_average"] == {"ap": 0.0, "precision": 0.0, "hit": 0.0, "rr": 0.0}
    # 30 % prevalence: precision@10 ~ 0.3 and hit@10 ~ 1 - 0.7^10, also when each draw ranks a database sample
    rng = np.random.default_rng(0)
    db = (rng.random((1000, 1)) < 0.3).astype(float)
    q = np.ones((50, 1))
    for cells in (20_000_000, 50 * 300):
        c = chance_metrics(q, db, [f"q{i}" for i in range(50)], [f"d{i}" for i in range(1000)], ["A"], ks=(10,),
                           repeats=10, max_cells=cells)["10"]["query_weighted"]
        assert c["precision"] == pytest.approx(db.mean(), abs=0.03) and c["hit"] == pytest.approx(1 - 0.7 ** 10, abs=0.03)


def test_metadata_ranking_puts_same_view_and_sex_first():
    from cxr.retrieve.metrics import metadata_metrics

    # database: positives are exactly the AP women; the query is an AP woman of another patient
    views = ["AP"] * 4 + ["AP"] * 4 + ["PA"] * 4 + ["PA"] * 4
    sexes = ["F"] * 4 + ["M"] * 4 + ["F"] * 4 + ["M"] * 4
    db = np.array([[1.0]] * 4 + [[0.0]] * 12)
    pids = [f"d{i}" for i in range(16)]
    q = np.array([[1.0]])
    m = metadata_metrics(q, db, ["q"], pids, {"view": ["ap"], "sex": ["F"]}, {"view": views, "sex": sexes}, ["A"],
                         ks=(4, 8), repeats=3)
    assert m["4"]["class_average"]["precision"] == 1.0  # the whole first tier is relevant
    assert m["8"]["class_average"]["precision"] == 0.5  # the second tier (AP men) is not
    # a PA man query gets the AP women last: nothing relevant in its top 8
    m = metadata_metrics(q, db, ["q"], pids, {"view": ["PA"], "sex": ["M"]}, {"view": views, "sex": sexes}, ["A"],
                         ks=(8,), repeats=3)
    assert m["8"]["class_average"]["hit"] == 0.0
    # without metadata agreement it is the chance ranking, draw for draw
    same = {"view": ["X"] * 16, "sex": ["X"] * 16}
    assert (metadata_metrics(q, db, ["q"], pids, {"view": ["Y"], "sex": ["Y"]}, same, ["A"], ks=(4,), seed=3)
            == chance_metrics(q, db, ["q"], pids, ["A"], ks=(4,), seed=3))


# ---------------------------------------------------------------- index


def test_search_excludes_the_query_patient_and_pads():
    ang = np.deg2rad([0, 10, 25, 45, 90])
    v = np.stack([np.cos(ang), np.sin(ang)], 1).astype(np.float32)
    items = _items(5, ["a", "a", "b", "c", "d"])
    index = SearchIndex.build(v, items)
    scores, rows = index.search(v[:1], 3)
    assert rows[0].tolist() == [0, 1, 2] and scores[0] == pytest.approx(v[[0, 1, 2]] @ v[0])
    scores, rows = index.search(v[:1], 3, exclude_patients=["a"])
    assert rows[0].tolist() == [2, 3, 4]  # the query and its patient's other image are gone
    scores, rows = index.search(v[:2], 5, exclude_patients=["a", None])
    assert rows[0].tolist() == [2, 3, 4, -1, -1] and np.isnan(scores[0, 3:]).all()  # fewer than k: padded
    assert rows[1].tolist() == [1, 0, 2, 3, 4]  # None: no exclusion
    table = index.results(v[:1], 2, exclude_patients=["a"])
    assert table["rank"].tolist() == [1, 2] and table["image_id"].tolist() == ["i2", "i3"]
    assert table["png_path"].tolist() == ["x/2.png", "x/3.png"]
    with pytest.raises(RetrievalError, match="expects"):
        index.search(np.zeros((1, 3), np.float32), 1)
    with pytest.raises(RetrievalError, match="k must be"):
        index.search(v[:1], 0)
    with pytest.raises(RetrievalError, match="exclude_patients"):
        index.search(v[:2], 1, exclude_patients=["a"])


def test_index_round_trip_and_approximate_switch(tmp_path):
    rng = np.random.default_rng(0)
    v, q = _unit(rng, 400, 16), _unit(rng, 20, 16)
    items = _items(400).assign(L=rng.integers(0, 2, 400).astype(float))
    exact = SearchIndex.build(v, items, label_names=["L"])
    assert exact.kind == "flat"
    assert SearchIndex.build(v, items, config=IndexConfig(exact_max=100, approximate="ivf")).kind == "ivf"
    assert SearchIndex.build(v, items, config=IndexConfig(exact_max=100, approximate="hnsw")).kind == "hnsw"
    _, ref = exact.search(q, 10)
    for kind, cfg in (("flat", IndexConfig(kind="flat")), ("ivf", IndexConfig(kind="ivf", ivf_lists=8, nprobe=8)),
                      ("hnsw", IndexConfig(kind="hnsw", hnsw_m=16, ef_search=200))):
        idx = SearchIndex.build(v, items, config=cfg, label_names=["L"])
        idx.save(tmp_path / kind)
        back = SearchIndex.load(tmp_path / kind)
        assert back.kind == kind and back.label_names == ["L"] and back.items.equals(idx.items)
        s1, r1 = idx.search(q, 10)
        s2, r2 = back.search(q, 10)
        assert (r1 == r2).all() and np.allclose(s1, s2)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(r1, ref)])
        assert recall == 1.0 if kind != "hnsw" else recall > 0.95  # IVF probing every cell is exact
    with pytest.raises(RetrievalError, match="not a search index dir"):
        SearchIndex.load(tmp_path / "nothing")
    with pytest.raises(RetrievalError, match="NaN"):
        SearchIndex.build(np.full((2, 4), np.nan, np.float32), _items(2))
    with pytest.raises(RetrievalError, match="items has"):
        SearchIndex.build(v, _items(3))


def _recall_by_hand(rows: np.ndarray, db: np.ndarray, q: np.ndarray, k: int) -> float:
    """Share of the returned top k at least as close as the exact k-th neighbour (numpy brute force)."""
    sims = q @ db.T
    kth = np.sort(sims, axis=1)[:, -k]
    got = np.take_along_axis(sims, np.maximum(rows[:, :k], 0), 1)
    return float(np.mean((got >= kth[:, None] - 1e-5) & (rows[:, :k] >= 0)))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_recall_check_raises_the_effort_until_min_recall_holds(kind, tmp_path):
    rng = np.random.default_rng(0)
    v, q = _unit(rng, 3000, 32), _unit(rng, 150, 32)  # random vectors: low effort finds few true neighbours
    items = _items(3000)
    low = (IndexConfig(kind="ivf", ivf_lists=64, nprobe=1) if kind == "ivf"
           else IndexConfig(kind="hnsw", hnsw_m=8, ef_construction=40, ef_search=4))
    # measured only (min_recall 0): the check reports the true, too-low recall of the effort asked for
    probe = SearchIndex.build(v, items, config=replace(low, min_recall=0.0), recall_queries=q)
    rec = probe.meta["recall"]
    _, rows = probe.search(q, 10)
    assert len(rec["trials"]) == 1 and rec["recall"] < 0.5 and not rec["exact"]
    assert rec["recall"] == pytest.approx(_recall_by_hand(rows, v, q, 10), abs=1e-6)
    assert rec["source"] == "held-out queries" and rec["queries"] == 150 and rec["k"] == 10
    # with min_recall 0.95 the effort doubles until it holds; the index keeps that effort, also after a reload
    index = SearchIndex.build(v, items, config=low, recall_queries=q)
    rec = index.meta["recall"]
    assert index.kind == kind and rec["met"] and rec["recall"] >= 0.95 and len(rec["trials"]) > 2
    assert [t["recall"] for t in rec["trials"][:-1]] == [t["recall"] for t in rec["trials"][:-1] if t["recall"] < 0.95]
    knob = "nprobe" if kind == "ivf" else "ef_search"
    assert [t[knob] for t in rec["trials"]] == [rec["trials"][0][knob] * 2 ** i for i in range(len(rec["trials"]))]
    _, rows = index.search(q, 10)
    assert _recall_by_hand(rows, v, q, 10) == pytest.approx(rec["recall"], abs=1e-6) and index.meta["effort"] == {knob: rec["trials"][-1][knob]}
    index.save(tmp_path / kind)
    back = SearchIndex.load(tmp_path / kind)
    assert (back.search(q, 10)[1] == rows).all()
    # the largest effort allowed is too low: exact search replaces the index, and says so
    cap = {"max_nprobe": 2} if kind == "ivf" else {"max_ef_search": 8}
    fell = SearchIndex.build(v, items, config=replace(low, **cap), recall_queries=q)
    rec = fell.meta["recall"]
    assert fell.kind == "flat" and rec["fallback_from"] == kind and not rec["met"] and "fell back to exact" in rec["note"]
    assert max(t["recall"] for t in rec["trials"]) < 0.95 and rec["recall"] == 1.0 and fell.meta["effort"] == {}
    assert (fell.search(q, 10)[1] == exact_neighbours(v, q, 10, False)).all()


def test_recall_check_without_held_out_queries_and_on_binary_codes():
    rng = np.random.default_rng(1)
    v = _unit(rng, 2000, 32)
    index = SearchIndex.build(v, _items(2000), config=IndexConfig(kind="ivf", ivf_lists=32, nprobe=1, recall_queries=200))
    rec = index.meta["recall"]
    assert rec["source"].startswith("database rows") and rec["queries"] == 200 and rec["met"]
    # the own row is no hit: a database row's recall is judged on the other items
    own = np.arange(5)
    truth = exact_neighbours(v, v[:5], 3, False, own)
    sims = v[:5] @ v.T
    sims[own, own] = -np.inf
    assert (truth == np.argsort(-sims, axis=1, kind="stable")[:, :3]).all()
    assert recall_at_k(build_faiss(v, "flat", IndexConfig()), v, v[:5], truth, 3, False, own) == 1.0
    codes = rng.uniform(-1, 1, size=(1500, 32)).astype(np.float32)
    b = SearchIndex.build(codes, _items(1500), binary=True, config=IndexConfig(kind="ivf", ivf_lists=32, nprobe=1),
                          recall_queries=rng.uniform(-1, 1, size=(100, 32)).astype(np.float32))
    assert b.meta["recall"]["met"] and b.meta["recall"]["trials"][0]["recall"] < b.meta["recall"]["recall"]
    with pytest.raises(RetrievalError, match="recall queries"):
        SearchIndex.build(v, _items(2000), config=IndexConfig(kind="ivf", ivf_lists=8), recall_queries=np.ones((3, 5)))
    with pytest.raises(RetrievalError, match="pq_m"):
        SearchIndex.build(v, _items(2000), config=IndexConfig(kind="ivf", ivf_codec="pq", pq_m=5, ivf_lists=8))


def test_binary_index_is_hamming_over_signs(tmp_path):
    rng = np.random.default_rng(1)
    codes = rng.uniform(-1, 1, size=(50, 16)).astype(np.float32)
    q = rng.uniform(-1, 1, size=(3, 16)).astype(np.float32)
    index = SearchIndex.build(codes, _items(50), binary=True)
    assert index.binary and index.meta["metric"] == "hamming"
    scores, rows = index.search(q, 50)
    ham = ((q[:, None, :] > 0) != (codes[None] > 0)).sum(-1)  # [3, 50]
    for i in range(3):
        assert sorted(ham[i, rows[i]].tolist()) == ham[i, rows[i]].tolist()  # best (smallest distance) first
        assert scores[i] == pytest.approx(1 - 2 * ham[i, rows[i]] / 16)
    index.save(tmp_path / "b")
    assert (SearchIndex.load(tmp_path / "b").search(q, 5)[1] == rows[:, :5]).all()
    for kind in ("ivf", "hnsw"):
        approx = SearchIndex.build(codes, _items(50), binary=True, config=IndexConfig(kind=kind, ivf_lists=4, nprobe=4))
        s, _ = approx.search(q, 5)
        assert np.allclose(s, scores[:, :5])  # same distances (ties may reorder rows)
    with pytest.raises(RetrievalError, match="multiple of 8"):
        pack_codes(np.zeros((1, 12)))


# ---------------------------------------------------------------- embeddings of the registry

SMALL = {"anaxnet": {"feature_dim": 32, "hidden": 32}, "graph_transformer": {"feature_dim": 32, "hidden": 32, "edge_dim": 4},
         "ath": {"image_size": 64, "widths": [8, 16], "bits": 16}}


def _raw_inputs(model, batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if model.input_keys == ("image",):
        return {"image": torch.randint(0, 256, (batch, 1, 64, 64), generator=g, dtype=torch.uint8)}
    presence = torch.ones(batch, model.num_regions, dtype=torch.bool)
    presence[1, :2] = False
    return {"features": torch.randn(batch, model.num_regions, model.feature_dim, generator=g).half(), "presence": presence,
            "boxes": torch.rand(batch, model.num_regions, 4, generator=g)}


@pytest.mark.parametrize("name", list_models())
def test_every_model_embeds(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, **SMALL.get(name, {"image_size": 64}))
    x = _raw_inputs(model)
    v = embed(model, x)
    assert v.ndim == 2 and v.shape[0] == 2 and v.shape[1] >= 8 and v.dtype == torch.float32
    assert torch.isfinite(v).all() and torch.allclose(v.norm(dim=1), torch.ones(2), atol=1e-5)
    if name in ("densenet121", "resnet50"):  # the pooled vector the linear head reads
        assert v.shape[1] == model.head.fc.in_features
    with pytest.raises(RetrievalError, match="lack key"):
        embed(model, {})


# ---------------------------------------------------------------- ATH


def test_triplet_loss_and_similarity_by_hand():
    t = torch.tensor([[1, 0], [1, 1], [0, 0], [0, 0]], dtype=torch.float32)
    s = similar_pairs(t, torch.ones_like(t, dtype=torch.bool))
    assert s.tolist() == [[True, True, False, False], [True, True, False, False],
                          [False, False, True, True], [False, False, True, True]]
    codes = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, 1.0]])
    sim = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    # d01 = 0.5, d02 = 0, d12 = 0.5: triplets (0,1,2) -> 0.75 and (1,0,2) -> 0.25
    assert triplet_loss(codes, sim, margin=0.25).item() == pytest.approx(0.5)
    assert triplet_loss(codes, torch.ones(3, 3, dtype=torch.bool), 0.25).item() == 0.0  # no negative: no triplet


class _Toy(Dataset):
    """Bright-square images (class 0) vs dark ones (class 1)."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 2
        self.x = torch.randint(0, 60, (n, 1, 64, 64), generator=g, dtype=torch.uint8)
        self.x[self.y == 0, :, 16:48, 16:48] = 220

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        t = torch.tensor([1.0 - self.y[i], float(self.y[i])])
        return {"image": self.x[i], "targets": t, "mask": torch.ones(2, dtype=torch.bool), "index": i}


def test_ath_trains_through_the_engine_and_gives_codes():
    from cxr.train import fit

    torch.manual_seed(0)
    model = create_model("ath", num_classes=2, **SMALL["ath"])
    calls = []
    own = model.training_loss

    def counted(batch, inputs):
        calls.append(1)
        return own(batch, inputs)

    model.training_loss = counted  # the engine must use the model's own objective
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = fit(model, _Toy(16, 0), _Toy(8, 1), seed=0, epochs=1, batch_size=8, lr=1e-2, device="cpu", precision="32",
              progress=False, augment_images=False)
    assert calls and out["epochs_run"] >= 1 and math.isfinite(out["best_val_macro_auroc"])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    codes = embed_dataset(model, _Toy(8, 2), batch_size=4)
    assert codes.shape == (8, 16) and codes.dtype == np.float32 and np.isfinite(codes).all()
    index = SearchIndex.build(codes, _items(8), binary=True)
    assert index.search(codes[:2], 3)[1].shape == (2, 3)


# ---------------------------------------------------------------- the stage on the tiny cohort


@pytest.fixture(scope="module")
def tiny_ath(tiny_processed, tmp_path_factory):
    """The shared processed tiny cohort (conftest), then ATH trained one epoch by the train stage."""
    sys.path.insert(0, str(REPO))
    from stages import train as train_stage

    root = tiny_workdir(tiny_processed, tmp_path_factory.mktemp("retrieve"))
    params = tiny_params(root / "params.yaml", train={"ath": {"widths": [8, 16, 32], "bits": 16}},
                         retrieve={"k": [1, 3], "examples": 2})
    p = ["--params", str(params)]
    common = ["--images", str(root / "images"), "--table", str(root / "images.parquet"), "--labels",
              str(root / "labels.parquet"), "--splits", str(root / "splits.parquet")]
    assert train_stage.main([*p, "--model", "ath", "--out", str(root / "ath"), *common]) == 0
    return root, p, common


def test_retrieve_stage_on_tiny_cohort(tiny_ath):
    from cxr.evaluate.report_table import retrieval_table
    from stages import retrieve as retrieve_stage

    root, p, common = tiny_ath
    out, rep = root / "retrieval" / "ath", root / "rep" / "retrieval.json"
    assert retrieve_stage.main([*p, "--model-dir", str(root / "ath"), *common, "--out-dir", str(out), "--metrics", str(rep)]) == 0
    from cxr.retrieve.run import metrics_summary

    met = json.loads((out / "retrieval.json").read_text())
    flat = json.loads(rep.read_text())
    assert flat == metrics_summary(met) and flat["class_average"] == met["summary"]
    assert flat["queries"] == met["queries"]["images"] and set(flat["chance"]) == set(met["summary"])
    assert met["embedding"] == {"dim": 16, "binary": True, "metric": "hamming"} and met["k"] == [1, 3]
    assert met["database"]["splits"] == ["train", "val"]
    assert set(met["chance"]) == {"1", "3"} and met["summary"].keys() == {f"{m}@{k}" for m in ("ap", "precision", "hit", "rr")
                                                                          for k in (1, 3)}
    index = SearchIndex.load(out)
    splits = pd.read_parquet(root / "splits.parquet")
    assert set(index.items["split"]) <= {"train", "val"}
    queries = pd.read_parquet(out / "queries.parquet")
    assert set(queries["image_id"]) <= set(splits.loc[splits["split"] == "test", "image_id"])
    assert met["queries"]["images"] == len(queries) and met["database"]["images"] == len(index)
    for k in ("1", "3"):
        for mode in ("no_skip", "skip"):
            avg = met["metrics"][k][mode]["class_average"]
            assert avg is None or all(0 <= avg[x] <= 1 for x in ("ap", "precision", "hit", "rr"))
    ex = pd.read_parquet(out / "examples.parquet")
    assert set(ex["rank"]) <= set(range(6)) and (ex["rank"] == 0).sum() == ex["query_image_id"].nunique() <= 2
    assert set(ex.loc[ex["rank"] > 0, "image_id"]) <= set(index.items["image_id"])
    # the stage output is deterministic
    assert retrieve_stage.main([*p, "--model-dir", str(root / "ath"), *common, "--out-dir", str(root / "again"),
                                "--metrics", str(root / "again.json")]) == 0
    assert (root / "again.json").read_text() == rep.read_text()
    assert (root / "again" / "retrieval.json").read_text() == (out / "retrieval.json").read_text()
    assert (root / "again" / "index.faiss").read_bytes() == (out / "index.faiss").read_bytes()
    assert met["index"]["recall"] == {"exact": True, "recall": 1.0, "note": "exact search"} and flat["index_recall"] == 1.0
    # a forced approximate index at too low an effort: the stage measures its recall on the test queries, raises
    # the effort (or falls back to exact search), and its metrics are those of the index it kept
    params = yaml.safe_load(Path(p[1]).read_text())
    params["retrieve"]["index"].update(kind="ivf", ivf_lists=8, nprobe=1)
    (root / "ivf.yaml").write_text(yaml.safe_dump(params))
    assert retrieve_stage.main(["--params", str(root / "ivf.yaml"), "--model-dir", str(root / "ath"), *common, "--out-dir",
                                str(root / "ivf"), "--metrics", str(root / "ivf.json")]) == 0
    ivf = json.loads((root / "ivf" / "retrieval.json").read_text())
    rec = ivf["index"]["recall"]
    assert rec["source"] == "held-out queries" and rec["queries"] == met["queries"]["images"] and rec["trials"][0]["nprobe"] == 1
    assert rec["met"] and rec["recall"] >= 0.95 or ivf["index"]["kind"] == "flat" and rec["fallback_from"] == "ivf"
    assert json.loads((root / "ivf.json").read_text())["index_recall"] == rec["recall"]
    kept = SearchIndex.load(root / "ivf")
    assert kept.kind == ivf["index"]["kind"] and kept.meta["recall"] == rec
    table = retrieval_table({"ath": met})
    assert "| ath | 16 bits, Hamming, flat |" in table and "AP@1" in table and "hit@3" in table
    assert retrieve_stage.main([*p, "--model-dir", str(root / "nope"), *common, "--out-dir", str(root / "x"),
                                "--metrics", str(root / "x.json")]) == 1
