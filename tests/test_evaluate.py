"""Metrics against sklearn, the patient bootstrap, validation thresholds, and the comparison table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr.evaluate.bootstrap import paired_p_value, patient_resamples, percentile_ci
from cxr.evaluate.classification import classification_metrics, curve_tables, region_auroc
from cxr.evaluate.metrics import (
    auprc,
    auroc,
    expected_calibration_error,
    macro_auroc,
    operating_point,
    youden_threshold,
)
from cxr.evaluate.report_table import models_table, paired_comparison
from cxr.train import val_thresholds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_and_auprc_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200).astype(bool)
    s = np.round(rng.random(200) + 0.3 * y, 1)  # rounding creates ties
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert auprc(s, y) == pytest.approx(average_precision_score(y, s))
    assert np.isnan(auroc(s, np.zeros(200, bool)))


def test_bootstrap_wrappers_agree_with_sklearn():
    # the rank AUROC (the bootstrap hot path) through per_class / macro / micro, on patient-bootstrap
    # replicates with ties and masks, against sklearn's roc_auc_score on the same rows
    from cxr.evaluate.metrics import micro_auroc, per_class_auroc, roc_curve

    rng = np.random.default_rng(3)
    n, c = 120, 4
    targets = rng.integers(0, 2, (n, c)).astype(float)
    probs = np.round(rng.random((n, c)) + 0.4 * targets, 1)
    mask = rng.random((n, c)) > 0.1
    for rows in patient_resamples(np.arange(n) // 2, 5, seed=0):
        p, t, m = probs[rows], targets[rows], mask[rows]
        want = [roc_auc_score(t[m[:, k], k], p[m[:, k], k]) for k in range(c)]
        assert per_class_auroc(p, t, m) == pytest.approx(want, abs=1e-12)
        assert macro_auroc(p, t, m) == pytest.approx(np.mean(want), abs=1e-12)
        assert micro_auroc(p, t, m) == pytest.approx(roc_auc_score(t[m], p[m]), abs=1e-12)
    fpr, tpr, _ = roc_curve(probs[:, 0], targets[:, 0])
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(targets[:, 0], probs[:, 0]))


def test_macro_skips_undefined_classes_and_respects_mask():
    p = np.array([[0.9, 0.1], [0.1, 0.2], [0.8, 0.3], [0.2, 0.4]])
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]], float)
    m = np.ones_like(y, bool)
    assert macro_auroc(p, y, m) == 1.0  # class 1 has no positive: left out, not NaN-poisoning
    m2 = m.copy()
    m2[0, 0] = False
    p2 = p.copy()
    p2[0, 0] = 0.0  # a masked wrong score changes nothing
    assert macro_auroc(p2, y, m2) == 1.0


def test_patient_bootstrap_keeps_patients_whole_and_is_seeded():
    pids = np.array(["a", "a", "b", "c", "c", "c"])
    res = patient_resamples(pids, 20, seed=1)
    for rows in res:
        for p in set(pids[rows]):
            assert (pids[rows] == p).sum() % (pids == p).sum() == 0  # all images of a drawn patient
    again = patient_resamples(pids, 20, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(res, again))
    with pytest.raises(ValueError, match="at least 2 patients"):
        patient_resamples(["a", "a"], 5, 0)


def test_ci_and_paired_p_value():
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 2, (n, 2)).astype(float)
    pids = np.repeat(np.arange(n // 3), 3)
    good = np.clip(y * 0.6 + rng.random((n, 2)) * 0.5, 0, 1)
    bad = rng.random((n, 2))
    m = np.ones_like(y, bool)
    met = classification_metrics(good, y, m, pids, ["A", "B"], {"A": 0.5, "B": 0.5}, n_boot=200, seed=0)
    assert met["macro_auroc_ci_low"] <= met["macro_auroc"] <= met["macro_auroc_ci_high"]
    assert met["per_class"]["A"]["auroc_ci_low"] <= met["per_class"]["A"]["auroc"]
    assert met["test_patients"] == n // 3 and met["classes_evaluated"] == 2
    lo, hi = percentile_ci(np.array([np.nan, 1.0, 2.0, 3.0]), 0.5)
    assert 1.0 <= lo <= hi <= 3.0

    def frame(p):
        d = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "patient_id": pids.astype(str)})
        for c, name in enumerate("AB"):
            d[f"p:{name}"], d[f"y:{name}"], d[f"m:{name}"] = p[:, c], y[:, c], True
        return d

    same = paired_comparison(frame(good), frame(good), ["A", "B"], 100)
    assert same["p_value"] == 1.0 and same["difference"] == 0
    better = paired_comparison(frame(good), frame(bad), ["A", "B"], 200)
    assert better["difference"] > 0.2 and better["p_value"] < 0.05
    assert np.isnan(paired_p_value(np.array([np.nan])))
    text, data = models_table({"densenet121": met, "anaxnet": met}, {"densenet121": frame(good), "anaxnet": frame(bad)},
                              ["A", "B"], n_boot=100)
    assert "| densenet121 |" in text and "reference" in text and data["anaxnet"]["vs_reference"]["p_value"] < 0.05


def test_thresholds_come_from_validation_and_are_applied_as_given():
    rng = np.random.default_rng(3)
    yv = rng.integers(0, 2, 100).astype(bool)
    sv = rng.random(100) * 0.5 + 0.4 * yv
    t = youden_threshold(sv, yv)
    op = operating_point(sv, yv, t)
    assert op["sensitivity"] + op["specificity"] - 1 >= max(
        operating_point(sv, yv, x)["sensitivity"] + operating_point(sv, yv, x)["specificity"] - 1 for x in np.linspace(0, 1, 21)
    ) - 1e-9
    th = val_thresholds(sv[:, None], yv[:, None].astype(float), np.ones((100, 1), bool), ["A"])
    assert th == {"A": t}
    assert youden_threshold(sv, np.ones(100, bool)) == 0.5  # not estimable -> 0.5
    # the test metrics use the given (validation) threshold; they never choose one
    yt = rng.integers(0, 2, (50, 1)).astype(float)
    st = rng.random((50, 1))
    a = classification_metrics(st, yt, np.ones_like(yt, bool), np.arange(50), ["A"], {"A": 0.0}, n_boot=10)
    b = classification_metrics(st, yt, np.ones_like(yt, bool), np.arange(50), ["A"], {"A": 1.1}, n_boot=10)
    assert a["per_class"]["A"]["sensitivity"] == 1.0 and b["per_class"]["A"]["sensitivity"] == 0.0


def test_ece_curves_and_region_auroc():
    rng = np.random.default_rng(0)
    p = rng.random((20000, 1))
    y = (rng.random((20000, 1)) < p).astype(float)
    m = np.ones_like(y, bool)
    assert expected_calibration_error(p, y, m) < 0.02
    assert expected_calibration_error(np.full_like(p, 0.99), np.zeros_like(y), m) > 0.9
    roc, pr = curve_tables(p[:200], y[:200], m[:200], ["A"])
    assert roc.iloc[0][["fpr", "tpr"]].tolist() == [0, 0] and roc.iloc[-1][["fpr", "tpr"]].tolist() == [1, 1]
    assert set(pr.columns) == {"class", "recall", "precision"}
    node = rng.random((30, 3, 2))
    rt = (node > 0.5).astype(float)
    ra = region_auroc(node, rt, np.ones_like(rt, bool), ["r0", "r1", "r2"])
    assert ra == {"r0": 1.0, "r1": 1.0, "r2": 1.0}


def test_bootstrap_reports_replicates_a_rare_class_lost_and_classes_left_out():
    rng = np.random.default_rng(0)
    n = 40
    probs = rng.random((n, 3))
    targets = np.zeros((n, 3))
    targets[::2, 0] = 1
    targets[0, 1] = 1  # one positive only: many replicates never draw it
    targets[:, 2] = 1  # only one value: no AUROC at all
    pids = [f"nih:{i}" for i in range(n)]
    out = classification_metrics(probs, targets, np.ones_like(targets, bool), pids, ["A", "B", "C"], {}, n_boot=200)
    pc = out["per_class"]
    assert pc["A"]["bootstrap_dropped"] == 0
    assert 0 < pc["B"]["bootstrap_dropped"] < 200  # (1 - 1/40)^40 ~ 36 % of replicates miss the positive
    assert pc["C"]["bootstrap_dropped"] == 200 and pc["C"]["auroc"] is None
    assert out["classes_not_evaluated"] == {"C": "40 positive / 0 negative test labels"}
    assert out["classes_evaluated"] == 2


def test_patient_key_keeps_same_id_of_two_datasets_apart():
    from cxr.data import join_split

    splits = pd.DataFrame({"image_id": ["a", "b"], "dataset": ["nih", "mimic"], "patient_id": ["1", "1"],
                           "split": ["test", "test"]})
    images = pd.DataFrame({"image_id": ["a", "b"], "png_path": ["a.png", "b.png"], "view": ["PA", "PA"], "status": ["ok", "ok"]})
    labels = pd.DataFrame({"image_id": ["a", "b"], "A": [1.0, 0.0]})
    df = join_split(images, labels, splits, ["A"], "test")
    assert sorted(df["patient_key"]) == ["mimic:1", "nih:1"]
    assert all(len(r) == 2 for r in patient_resamples(df["patient_key"], 3, 0))  # two clusters, not one


def test_models_table_names_classes_left_out_of_the_macro_average():
    n = 20
    pred = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "patient_id": [str(k) for k in range(n)],
                         "p:A": np.linspace(0, 1, n), "y:A": (np.arange(n) % 2).astype(float), "m:A": True,
                         "p:No Finding": np.linspace(0, 1, n), "y:No Finding": 1.0, "m:No Finding": True})
    probs = pred[["p:A", "p:No Finding"]].to_numpy()
    targets = pred[["y:A", "y:No Finding"]].to_numpy()
    met = classification_metrics(probs, targets, np.ones_like(targets, bool), pred["patient_id"], ["A", "No Finding"],
                                 {}, n_boot=20)
    text, data = models_table({"densenet121": met}, {"densenet121": pred}, ["A", "No Finding"], n_boot=20)
    assert "left out" in text and "No Finding (20 positive / 0 negative test labels)" in text
    assert data["densenet121"]["classes_not_evaluated"] == {"No Finding": "20 positive / 0 negative test labels"}


def test_models_table_shows_auroc_per_view_and_flags_gt_boxes_at_test():
    from cxr.evaluate.classification import by_view, region_box_note

    n = 40
    rng = np.random.default_rng(0)
    views = np.array(["AP", "PA"] * (n // 2))
    y = (np.arange(n) % 4 < 2).astype(float)[:, None]
    # the score reads the view only: AP images score high, PA low; within a view it is noise
    p = np.where(views == "AP", 0.8, 0.2)[:, None] + rng.normal(0, 0.01, (n, 1))
    y[views == "AP"] = (rng.random((n // 2, 1)) < 0.8)
    y[views == "PA"] = (rng.random((n // 2, 1)) < 0.2)
    pids = np.array([str(k) for k in range(n)])
    met = classification_metrics(p, y, np.ones_like(y, bool), pids, ["A"], {}, n_boot=20)
    met["by_view"] = by_view(p, y, np.ones_like(y, bool), pids, views, ["A"], {}, 20, 0.95, 0, 1)
    met["region_boxes"] = region_box_note({"input": {"kind": "region_features", "box_source": "gt"}})
    # overall the view shortcut looks good; within each view it is at chance
    assert met["macro_auroc"] > 0.7
    assert met["by_view"]["AP"]["test_images"] == n // 2 and abs(met["by_view"]["AP"]["macro_auroc"] - 0.5) < 0.3
    pred = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "patient_id": pids, "p:A": p[:, 0], "y:A": y[:, 0],
                         "m:A": True})
    text, data = models_table({"anaxnet": met}, {"anaxnet": pred}, ["A"], n_boot=20)
    assert "anaxnet (GT boxes at test)" in text and "oracle" in text
    assert "AP views" in text and data["anaxnet"]["by_view"]["PA"]["test_images"] == n // 2
    assert data["anaxnet"]["region_boxes"]["source"] == "gt"
    assert region_box_note({"input": {"box_source": "pred"}})["source"] == "pred"
    # and what described each box: the classifier backbone (default) or, in older cards, the detector's box head
    note = region_box_note({"input": {"box_source": "pred", "extractor": {
        "kind": "backbone", "architecture": "densenet121", "maps": ["final", "features.denseblock3"]}}})
    assert note["features"] == "densenet121" and "densenet121 feature maps (final, features.denseblock3) pooled" in note["note"]
    assert "box-head" in region_box_note({"input": {"box_source": "pred"}})["note"]


def test_reliability_bins_give_back_the_ece_and_counts_add_up():
    rng = np.random.default_rng(1)
    n = 200
    probs = rng.random((n, 2))
    targets = (rng.random((n, 2)) < probs ** 2).astype(float)  # over-confident: observed < predicted
    mask = np.ones_like(targets, bool)
    mask[:20, 1] = False
    met = classification_metrics(probs, targets, mask, [str(k) for k in range(n)], ["A", "B"], {"A": 0.5, "B": 0.3},
                                 n_boot=10, ece_bins=5)
    bins = met["reliability"]
    assert len(bins) == 5 and sum(b["n"] for b in bins) == int(mask.sum())
    ece = sum(b["n"] / mask.sum() * abs(b["observed"] - b["confidence"]) for b in bins if b["n"])
    assert ece == pytest.approx(met["ece"], abs=1e-5)
    assert all(b["observed"] <= b["confidence"] + 0.1 for b in bins if b["n"] > 20)
    for c, thr in (("A", 0.5), ("B", 0.3)):
        v, k = met["per_class"][c], ["A", "B"].index(c)
        assert v["tp"] + v["fn"] == v["positives"] and v["fp"] + v["tn"] == v["negatives"]
        m = mask[:, k]
        assert v["tp"] == int(((probs[m, k] >= thr) & (targets[m, k] == 1)).sum())
        assert v["sensitivity"] == pytest.approx(v["tp"] / v["positives"], abs=1e-6)


def test_weighted_bootstrap_auroc_equals_auroc_of_each_resample():
    """bootstrap_auroc (counts as weights, one sort per class) = AUROC on the copied replicate rows."""
    from cxr.evaluate.bootstrap import bootstrap_auroc, patient_resamples
    from cxr.evaluate.metrics import micro_auroc, per_class_auroc

    rng = np.random.default_rng(0)
    n, c = 120, 4
    probs = np.round(rng.random((n, c)), 1)  # many ties
    targets = (rng.random((n, c)) < [0.3, 0.1, 0.5, 0.02]).astype(np.float32)
    mask = rng.random((n, c)) < 0.9
    mask[:, 3] &= targets[:, 3] == 0  # a class with no positive at all: NaN in every replicate
    res = patient_resamples(rng.integers(0, 40, n), 50, seed=1)
    per, micro = bootstrap_auroc(probs, targets, mask, res)
    ref_per = np.array([per_class_auroc(probs[r], targets[r], mask[r]) for r in res])
    ref_micro = np.array([micro_auroc(probs[r], targets[r], mask[r]) for r in res])
    np.testing.assert_allclose(per, ref_per, rtol=0, atol=1e-12)
    np.testing.assert_allclose(micro, ref_micro, rtol=0, atol=1e-12)
    assert np.isnan(per[:, 3]).all() and np.isfinite(per[:, 0]).all()


def test_paired_replicate_macro_equals_macro_auroc_per_replicate():
    """The weighted-bootstrap macro of every replicate is macro_auroc on the resampled rows (ties, masks, NaN classes)."""
    from cxr.evaluate.report_table import _replicate_macro

    rng = np.random.default_rng(11)
    n = 60
    probs = np.round(rng.random((n, 3)), 1)  # rounded: many ties
    y = (rng.random((n, 3)) < 0.3).astype(float)
    y[:, 2] = 0
    y[:2, 2] = 1  # rare class: undefined in the replicates that miss both positives
    mask = rng.random((n, 3)) > 0.1
    res = patient_resamples(np.repeat(np.arange(n // 2), 2), 200, seed=5)
    fast = _replicate_macro(probs, y, mask, res)
    slow = np.array([macro_auroc(probs[r], y[r], mask[r]) for r in res])
    assert np.allclose(fast, slow, rtol=0, atol=1e-12, equal_nan=True)
    assert np.isfinite(fast).all()  # classes 0 and 1 always have both kinds
