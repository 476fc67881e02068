"""K-fold phrase selection of the labeller (cxr.labeler.crossval): folds, attribution, pruning."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.labeler import Labeler
from cxr.labeler.crossval import (
    PhraseIndex,
    asserted_phrases,
    fold_ids,
    labeller_from_spec,
    phrase_of,
    phrase_precision,
    prune_spec,
    select_phrases,
    vocabulary_spec,
)


def test_folds_are_a_seeded_partition():
    f = fold_ids(23, 5, seed=1)
    assert sorted(np.bincount(f)) == [4, 4, 5, 5, 5]
    assert (f == fold_ids(23, 5, seed=1)).all() and not (f == fold_ids(23, 5, seed=2)).all()
    with pytest.raises(ValueError, match="2 <= k <= 3"):
        fold_ids(3, 4)


def test_phrases_chosen_on_training_reports_only():
    spec, source = vocabulary_spec("chestxray14")
    lab = Labeler("chestxray14")
    index = PhraseIndex.from_spec(spec)
    assert phrase_of(index, "Effusion", "Pleural  Effusion") == "(pleural )?effusions?"
    reports = ["Small left pleural effusion.", "Right effusion.", "Effusion at the left base.", "Clear lungs.",
               "Hiatal hernia.", "Hiatal hernia.", "Hiatal hernia.", "No effusion."]
    asserted = asserted_phrases(lab, index, reports)
    assert ("Effusion", "(pleural )?effusions?") in asserted[0] and not asserted[7]  # a negated mention asserts nothing
    gold = {"Effusion": np.array([1, 1, 1, 0, 0, 0, 0, 0], bool), "Hernia": np.zeros(8, bool)}
    stats = phrase_precision(asserted, gold, helpers=["Other Abnormality"], normal=np.array([0, 0, 0, 1, 0, 0, 0, 1], bool))
    assert stats[("Effusion", "(pleural )?effusions?")] == (3, 3)
    assert stats[("Hernia", "hernia\\w*")] == (3, 0)
    drop = select_phrases(stats, min_count=3, min_precision=0.5)
    assert drop == {("Hernia", "hernia\\w*")}
    pruned = labeller_from_spec(prune_spec(spec, drop), source)
    assert pruned.label("Hiatal hernia.")["Hernia"] != 1 and pruned.label("Right effusion.")["Effusion"] == 1
    assert Labeler("chestxray14").label("Hiatal hernia.")["Hernia"] == 1  # the packaged lists are untouched
