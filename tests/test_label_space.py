"""Explicit label lists as the target space (base.label_space: [names...])."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr.label_build import build_labels
from cxr.labels import LabelError, label_names, resolve_space, to_space
from cxr.params import ParamsError, parse_section


def test_resolve_named_and_listed_spaces():
    assert resolve_space("chexpert14")[1][:2] == ["No Finding", "Enlarged Cardiomediastinum"]
    assert resolve_space(["Edema", "Cardiomegaly"]) == ("chexpert14", ["Edema", "Cardiomegaly"])
    assert resolve_space(["Effusion", "Nodule"]) == ("chestxray14", ["Effusion", "Nodule"])
    assert label_names(["pleural effusion", "pneumothorax"]) == ["pleural effusion", "pneumothorax"]


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ([], "empty label list"),
        (["Edema", "Edema"], "more than once"),
        (["Edema", "Frobnication"], "unknown label(s) ['Frobnication']"),
        (["Pleural Effusion", "Effusion"], "do not all belong to one of"),
        ("nih15", "unknown label space 'nih15'"),
    ],
)
def test_bad_specs_are_named(spec, needle):
    with pytest.raises(LabelError) as exc:
        resolve_space(spec)
    assert needle in str(exc.value)


def test_params_accept_lists_and_reject_bad_ones():
    assert parse_section("base", {"label_space": ["Edema", "Cardiomegaly"]}).label_space == ["Edema", "Cardiomegaly"]
    with pytest.raises(ParamsError, match=r"base.label_space = \['Edema', 'Nope'\]: unknown label"):
        parse_section("base", {"label_space": ["Edema", "Nope"]})


def test_to_space_keeps_listed_columns_in_listed_order():
    native = pd.DataFrame({"image_id": ["a", "b"], "pleural effusion": [1.0, 0.0], "cardiomegaly": [np.nan, 1.0]})
    full = to_space(native, "padchest", "chexpert14")
    sub = to_space(native, "padchest", ["Pleural Effusion", "Cardiomegaly"])
    assert list(sub.columns) == ["image_id", "Pleural Effusion", "Cardiomegaly"]
    pd.testing.assert_frame_equal(sub, full[["image_id", "Pleural Effusion", "Cardiomegaly"]])


def test_build_labels_with_a_list(tiny_cohort):
    names = ["Pleural Effusion", "Edema", "No Finding"]
    labels, summary = build_labels(raw_dir=tiny_cohort, space=names, vocabulary="chexpert14",
                                   sections=("findings", "impression"),
                                   precedence=("chexpert", "nih", "padchest", "mimic", "labeller", "imagenome"),
                                   unknown="error", progress=False)
    assert [c for c in labels.columns if c in names] == names
    assert summary["labels"] == names
    full, _ = build_labels(raw_dir=tiny_cohort, space="chexpert14", vocabulary="chexpert14",
                           sections=("findings", "impression"),
                           precedence=("chexpert", "nih", "padchest", "mimic", "labeller", "imagenome"),
                           unknown="error", progress=False)
    pd.testing.assert_frame_equal(labels[["image_id", *names]].reset_index(drop=True),
                                  full[["image_id", *names]].reset_index(drop=True))
