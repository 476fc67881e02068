"""Labeller scoring: the F1 arithmetic, and the label stage's score against synthetic truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr.labeler.score import scores


def test_scores_arithmetic():
    gold = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]], bool)
    pred = np.array([[1, 0, 0], [0, 1, 1], [0, 1, 0], [1, 0, 0]], bool)
    df = scores(pred, gold, ["a", "b", "c"])
    # a: tp1 fp1 fn1 -> F1 .5 ; b: tp2 -> 1.0 ; c: no positives -> excluded from micro/macro
    assert df.loc["a", "F1"] == pytest.approx(0.5)
    assert df.loc["b", "F1"] == pytest.approx(1.0)
    assert np.isnan(df.loc["c", "R"])
    assert df.loc["micro", "F1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert df.loc["macro", "F1"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="shapes differ"):
        scores(pred[:, :2], gold, ["a", "b", "c"])


def test_label_stage_scores_labeller_on_synthetic_truth(tmp_path, tiny_cohort):
    import stages.label as stage

    params = tmp_path / "params.yaml"
    params.write_text("base: {label_space: chexpert14}\n")
    rc = stage.main(["--params", str(params), "--raw", str(tiny_cohort), "--out", str(tmp_path / "labels.parquet"),
                     "--metrics", str(tmp_path / "label.json")])
    assert rc == 0
    summary = json.loads((tmp_path / "label.json").read_text())
    synth = summary["labeller"]["synthetic_truth"]
    assert synth["reports"] == summary["labeller"]["reports"] > 10
    assert synth["micro_f1"] >= 0.9
    assert synth["micro_f1"] > synth["keyword_micro_f1"]
