"""Patient-level iterative stratified splits: no leakage (synthetic cohort and real NIH table),
ratios, determinism, official splits, errors, and the `split` stage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxr.params import ParamsError, parse_section
from cxr.sources import nih
from cxr.split import SplitError, iterative_stratification, make_splits, patient_labels, seeded_numpy, stratified_folds
from stages import split as split_stage

FR = {"train": 0.7, "val": 0.1, "test": 0.2}


def assert_no_leakage(splits: pd.DataFrame) -> None:
    per_patient = splits.assign(pk=splits["dataset"] + ":" + splits["patient_id"].astype(str)).groupby("pk")["split"].nunique()
    assert (per_patient == 1).all(), per_patient[per_patient > 1].head()


@pytest.fixture(scope="module")
def nih_tables(realdata):
    t = nih.read_folder(realdata / "nih")
    return t.images.assign(status="ok"), t.labels.assign(dataset="nih")


def test_real_nih_split_has_no_patient_in_two_splits(nih_tables):
    images, labels = nih_tables
    splits, summary = make_splits(images, labels, FR, seed=42)
    assert len(splits) == len(images)
    assert_no_leakage(splits)
    patients = {s: summary["splits"][s]["patients"] for s in FR}
    total = sum(patients.values())
    assert total == 30_805
    for s, f in FR.items():
        assert abs(patients[s] / total - f) < 0.02, patients
    # Stratification keeps rare labels in every split.
    for s in FR:
        assert summary["splits"][s]["prevalence"]["Hernia"] > 0


def test_synthetic_cohort_split_has_no_leakage(tiny_cohort):
    from cxr.label_build import build_labels
    from cxr.sources import read_raw

    labels, _ = build_labels(tiny_cohort, progress=False)
    tables = read_raw(tiny_cohort, progress=False)
    images = pd.concat([tables["mimic"].images, tables["padchest"].images], ignore_index=True).assign(status="ok")
    images.loc[0, "status"] = "error"
    splits, summary = make_splits(images, labels, FR, seed=1)
    assert_no_leakage(splits)
    assert len(splits) == len(images) - 1 and summary["excluded"]["images_not_ok"] == 1
    assert set(splits["split"]) == {"train", "val", "test"}


def test_iterative_stratification_is_seeded_and_restores_numpy_state():
    y = np.random.default_rng(0).integers(0, 2, size=(300, 5))
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = iterative_stratification(y, [0.7, 0.1, 0.2], seed=5)
    assert (np.random.get_state()[1] == before).all()
    assert (a == iterative_stratification(y, [0.7, 0.1, 0.2], seed=5)).all()
    assert (a != iterative_stratification(y, [0.7, 0.1, 0.2], seed=6)).any()
    counts = np.bincount(a, minlength=3) / len(y)
    assert np.allclose(counts, [0.7, 0.1, 0.2], atol=0.03)
    # every label's prevalence is similar across folds
    for fold in range(3):
        assert np.allclose(y[a == fold].mean(0), y.mean(0), atol=0.12)


def test_iterative_stratification_edge_cases():
    y = np.zeros((3, 2), dtype=int)
    out = iterative_stratification(y, [0.7, 0.1, 0.2], seed=0)  # too few rows: seeded permutation
    assert len(out) == 3 and set(out) <= {0, 1, 2}
    out = iterative_stratification(np.ones((50, 2), dtype=int), [0.8, 0.0, 0.2], seed=0)
    assert set(out) == {0, 2} and abs((out == 0).mean() - 0.8) < 0.05
    assert len(iterative_stratification(np.zeros((0, 2)), [0.5, 0.5, 0.0], seed=0)) == 0
    with pytest.raises(SplitError, match="sum to 1"):
        iterative_stratification(y, [0.5, 0.2, 0.2], seed=0)
    with seeded_numpy(3):
        x = np.random.rand()
    with seeded_numpy(3):
        assert np.random.rand() == x


def _toy(n_patients=40, per_patient=3):
    rows = [(f"p{p}", f"i{p}_{k}") for p in range(n_patients) for k in range(per_patient)]
    images = pd.DataFrame({"dataset": "nih", "patient_id": [r[0] for r in rows], "image_id": [r[1] for r in rows],
                           "status": "ok"})
    rng = np.random.default_rng(0)
    labels = pd.DataFrame({"dataset": "nih", "image_id": images["image_id"], "A": rng.choice([1, 0, -1, np.nan], len(rows)),
                           "label_source": "nih"})
    return images, labels


def test_patient_label_is_any_positive():
    t = pd.DataFrame({"patient_key": ["a", "a", "b"], "A": [0, 1, -1], "B": [np.nan, 0, 1]})
    pl = patient_labels(t, ["A", "B"])
    assert pl.loc["a"].tolist() == [1, 0] and pl.loc["b"].tolist() == [0, 1]


def test_official_splits_are_honoured():
    images, labels = _toy()
    official = {"i0_0": "test", "i1_2": "val", **{f"i{p}_0": "trainval" for p in range(2, 20)}}
    splits, summary = make_splits(images, labels, FR, seed=0, official=official)
    by_patient = splits.groupby("patient_id")["split"].first()
    assert by_patient["p0"] == "test" and by_patient["p1"] == "val"
    assert set(by_patient[[f"p{p}" for p in range(2, 20)]]) <= {"train", "val"}
    assert summary["official_patients"] == 20
    assert_no_leakage(splits)
    with pytest.raises(SplitError, match="official split values"):
        make_splits(images, labels, FR, seed=0, official={"i0_0": "holdout"})


def test_split_is_deterministic_and_depends_on_seed():
    images, labels = _toy(200)
    a, _ = make_splits(images, labels, FR, seed=0)
    b, _ = make_splits(images, labels, FR, seed=0)
    c, _ = make_splits(images, labels, FR, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not a["split"].equals(c["split"])


def test_split_input_errors():
    images, labels = _toy()
    with pytest.raises(SplitError, match=r"images table lacks column\(s\) \['status'\]"):
        make_splits(images.drop(columns="status"), labels, FR, seed=0)
    with pytest.raises(SplitError, match="summing to 1"):
        make_splits(images, labels, {"train": 0.5, "val": 0.1, "test": 0.1}, seed=0)
    with pytest.raises(SplitError, match="summing to 1"):
        make_splits(images, labels, {"train": 0.9, "holdout": 0.1}, seed=0)


def test_split_params_validation():
    assert parse_section("split", {}).train == 0.7
    with pytest.raises(ParamsError, match="must be 1"):
        parse_section("split", {"train": 0.5})
    with pytest.raises(ParamsError, match="split.official"):
        parse_section("split", {"official": ["padchest"]})


def test_split_stage_end_to_end(tmp_path, repo_root):
    images, labels = _toy()
    images.loc[0, "status"] = "error"
    images.to_parquet(tmp_path / "images.parquet")
    labels.to_parquet(tmp_path / "labels.parquet")
    out, metrics = tmp_path / "splits.parquet", tmp_path / "split.json"
    argv = ["--params", str(repo_root / "params.yaml"), "--images", str(tmp_path / "images.parquet"),
            "--labels", str(tmp_path / "labels.parquet"), "--out", str(out), "--metrics", str(metrics)]
    assert split_stage.main(argv) == 0
    s = pd.read_parquet(out)
    assert list(s.columns) == ["image_id", "dataset", "patient_id", "split"] and len(s) == len(images) - 1
    summary = json.loads(metrics.read_text())
    assert sum(v["images"] for v in summary["splits"].values()) == len(s) and "A" in summary["splits"]["train"]["prevalence"]
    first = out.read_bytes()
    assert split_stage.main(argv) == 0 and out.read_bytes() == first  # same bytes on a rerun
    p = tmp_path / "params.yaml"
    p.write_text("split:\n  official: [nih]\n")
    assert split_stage.main(["--params", str(p), *argv[2:]]) == 1  # official needs --raw
    raw = tmp_path / "raw" / "nih"
    raw.mkdir(parents=True)
    (raw / "test_list.txt").write_text("i0_1.png\n")
    (raw / "train_val_list.txt").write_text("i1_0.png\n")
    assert split_stage.main(["--params", str(p), *argv[2:], "--raw", str(tmp_path / "raw")]) == 0
    s = pd.read_parquet(out).groupby("patient_id")["split"].first()
    assert s["p0"] == "test" and s["p1"] in ("train", "val")


@pytest.mark.parametrize("n, labels, order, fractions", [(400, 14, 1, [0.7, 0.1, 0.2]), (300, 5, 2, [0.5, 0.5]),
                                                         (150, 3, 1, [0.8, 0.2])])
def test_stratified_folds_equal_scikit_multilearn(n, labels, order, fractions):
    """The linear-time replica gives scikit-multilearn's folds exactly (same seeded draws)."""
    from skmultilearn.model_selection import IterativeStratification

    y = (np.random.default_rng(n).random((n, labels)) < 0.15).astype(int)
    with seeded_numpy(3):
        ref = [sorted(t) for _, t in IterativeStratification(
            n_splits=len(fractions), order=order, sample_distribution_per_fold=fractions).split(np.zeros((n, 1)), y)]
    with seeded_numpy(3):
        ours = [sorted(f) for f in stratified_folds(y, fractions, order)]
    assert ours == ref
    assert sorted(i for f in ours for i in f) == list(range(n))
