"""Report labeller: CheXpert sample reproduction, every aggregation rule, ConText, sections, errors."""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest
import yaml

from cxr.labeler import (
    ConText,
    Labeler,
    VocabularyError,
    aggregate,
    extract_sections,
    load_vocabulary,
    split_sections,
    split_sentences,
)
from cxr.labeler.cli import label_csv, main as label_main, read_reports_csv
from cxr.labeler.vocabulary import parse_vocabulary


@pytest.fixture(scope="module")
def chex() -> Labeler:
    return Labeler("chexpert14")


@pytest.fixture(scope="module")
def nih() -> Labeler:
    return Labeler("chestxray14")


def value(lab: Labeler, text: str, name: str) -> float:
    return lab.label(text)[name]


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# --- the CheXpert labeller's own sample -------------------------------------------------------

def test_chexpert_sample_reports_reproduced_exactly(realdata, chex):
    d = realdata / "chexpert_labeler"
    reports = pd.read_csv(d / "sample_reports.csv", header=None, dtype=str, keep_default_na=False)[0].tolist()
    expected = pd.read_csv(d / "labeled_reports.csv")
    got = chex.label_many(reports, progress=False)
    assert list(got.columns) == list(expected.columns[1:])
    pd.testing.assert_frame_equal(got, expected[got.columns].astype(float))


def test_cli_output_is_byte_identical_to_chexpert_labeller(realdata, tmp_path):
    out = tmp_path / "labels.csv"
    assert label_main([str(realdata / "chexpert_labeler" / "sample_reports.csv"), "-o", str(out)]) == 0
    assert out.read_bytes() == (realdata / "chexpert_labeler" / "labeled_reports.csv").read_bytes()


def test_cxr_command_has_label_subcommand(realdata, tmp_path):
    from cxr.cli import main as cxr_main

    out = tmp_path / "o.csv"
    assert cxr_main(["label", str(realdata / "chexpert_labeler" / "sample_reports.csv"), "-o", str(out)]) == 0
    assert pd.read_csv(out).shape == (4, 15)


# --- aggregation -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "values, expected",
    [([], math.nan), ([1], 1.0), ([0], 0.0), ([-1], -1.0), ([1, 0], 1.0), ([1, -1], 1.0),
     ([0, -1], -1.0), ([0, 0], 0.0), ([-1, -1], -1.0), ([0, -1, 1], 1.0)],
)
def test_aggregation_rules(values, expected):
    assert same(aggregate(values), expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Pleural effusion. No pleural effusion on the left.", 1.0),  # positive wins over negative
        ("No pleural effusion. Possible small effusion.", -1.0),  # negative + uncertain -> uncertain
        ("Possible effusion. Effusion is likely.", -1.0),
        ("No effusion. No pleural effusion.", 0.0),
        ("The lungs are clear.", math.nan),  # no mention -> blank
    ],
)
def test_aggregation_across_mentions_in_reports(chex, text, expected):
    assert same(value(chex, text, "Pleural Effusion"), expected)


def test_heart_failure_adds_an_uncertain_cardiomegaly_mention(chex):
    assert value(chex, "Findings consistent with congestive heart failure.", "Cardiomegaly") == -1.0
    assert value(chex, "Possible CHF.", "Cardiomegaly") == -1.0
    # the reference appends -1 to the Cardiomegaly mentions: negative + uncertain -> -1
    assert value(chex, "Heart size is normal. Findings suggest CHF.", "Cardiomegaly") == -1.0
    assert value(chex, "CHF. The heart is not enlarged.", "Cardiomegaly") == -1.0
    assert value(chex, "Cardiomegaly with CHF.", "Cardiomegaly") == 1.0
    assert math.isnan(value(chex, "No evidence of CHF.", "Cardiomegaly"))


@pytest.mark.parametrize(
    "text, name, expected",
    [
        # congestion, vascular prominence and indistinctness are uncertain edema (reference patterns)
        ("Mild pulmonary vascular congestion.", "Edema", -1.0),
        ("Pulmonary vascular congestion.", "Edema", -1.0),
        ("Mild vascular prominence.", "Edema", -1.0),
        ("No pulmonary vascular congestion.", "Edema", 0.0),
        ("Pulmonary edema and vascular congestion.", "Edema", 1.0),  # any positive wins
        # "consider X" is uncertain, not dropped
        ("Consider pneumonia.", "Pneumonia", -1.0),
        ("Consider pneumonia.", "No Finding", math.nan),
        # alternatives joined by "or" are uncertain, both of them
        ("Atelectasis or pneumonia.", "Atelectasis", -1.0),
        ("Atelectasis or pneumonia.", "Pneumonia", -1.0),
        ("Left basilar opacity, atelectasis, consolidation or pneumonia.", "Consolidation", -1.0),
        ("Left basilar opacity, atelectasis, consolidation or pneumonia.", "Atelectasis", -1.0),
        ("Bibasilar atelectasis and/or pneumonia.", "Atelectasis", -1.0),
        ("No pneumothorax or pleural effusion.", "Pneumothorax", 0.0),  # negation comes first
        ("No pneumothorax or pleural effusion.", "Pleural Effusion", 0.0),
        ("Cardiomegaly. Atelectasis or pneumonia.", "Cardiomegaly", 1.0),  # another sentence: untouched
        ("Right lower lobe opacity may represent atelectasis or pneumonia.", "Lung Opacity", 1.0),
    ],
)
def test_parity_with_the_chexpert_labeller_rules(chex, text, name, expected):
    assert same(value(chex, text, name), expected), [(m.text, m.value) for m in chex.mentions(text)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("No acute cardiopulmonary process.", 1.0),
        ("No pneumothorax. No pleural effusion.", 1.0),  # negatives do not block
        ("Endotracheal tube in place. No pneumothorax.", 1.0),  # support devices do not block
        ("Small left pleural effusion.", math.nan),  # positive blocks
        ("Possible pneumonia.", math.nan),  # uncertain blocks
    ],
)
def test_no_finding_rule(chex, text, expected):
    assert same(value(chex, text, "No Finding"), expected)


def test_no_finding_is_never_zero(chex):
    texts = ["Cardiomegaly.", "No edema.", "Possible effusion.", "", "Pacemaker."]
    assert all(chex.label(t)["No Finding"] != 0.0 for t in texts)


# --- mentions, unmentions, negation, uncertainty ----------------------------------------------

@pytest.mark.parametrize(
    "text, name, expected",
    [
        ("Small pericardial effusion.", "Pleural Effusion", math.nan),  # unmention
        ("Large right pleural effusion.", "Pleural Effusion", 1.0),
        ("No pneumothorax.", "Pneumothorax", 0.0),
        ("There is no evidence of pneumothorax.", "Pneumothorax", 0.0),
        ("Cardiomegaly without pulmonary edema.", "Edema", 0.0),
        ("Cardiomegaly without pulmonary edema.", "Cardiomegaly", 1.0),
        ("The pneumothorax has resolved.", "Pneumothorax", 0.0),
        ("Pleural effusion is not seen.", "Pleural Effusion", 0.0),
        ("Negative for pneumonia.", "Pneumonia", 0.0),
        ("The heart is not enlarged.", "Cardiomegaly", 0.0),
        ("The heart is mildly enlarged.", "Cardiomegaly", 1.0),
        ("Heart size is normal.", "Cardiomegaly", 0.0),
        ("Pneumonia cannot be excluded.", "Pneumonia", -1.0),  # pre-negation uncertainty
        ("Cannot exclude a small pneumothorax.", "Pneumothorax", -1.0),
        ("Findings may represent atelectasis.", "Atelectasis", -1.0),  # post-negation uncertainty
        ("Possible right lower lobe pneumonia.", "Pneumonia", -1.0),
        ("Questionable small nodule.", "Lung Lesion", -1.0),
        ("Atelectasis versus consolidation.", "Atelectasis", -1.0),
        ("Atelectasis versus consolidation.", "Consolidation", -1.0),
        ("No focal consolidation to suggest pneumonia.", "Pneumonia", 0.0),  # negation before uncertainty
        ("No change in the left pleural effusion.", "Pleural Effusion", 1.0),  # pseudo-negation
        ("No pneumothorax but there is a left effusion.", "Pleural Effusion", 1.0),  # terminator
        ("No pneumothorax but there is a left effusion.", "Pneumothorax", 0.0),
        ("History of pneumonia.", "Pneumonia", math.nan),  # hypothetical / historical
        ("Unchanged widening of the mediastinum compared to the prior study.", "Enlarged Cardiomediastinum", 1.0),
        ("Nasogastric tube courses below the diaphragm.", "Support Devices", 1.0),
        ("Acute fracture of the left 5th rib.", "Fracture", 1.0),
        ("Patchy airspace disease in the lingula.", "Lung Opacity", 1.0),
    ],
)
def test_mention_classification(chex, text, name, expected):
    assert same(value(chex, text, name), expected), [(m.text, m.value) for m in chex.mentions(text)]


@pytest.mark.parametrize(
    "text, name, expected",
    [
        ("Hyperexpanded lungs consistent with emphysema.", "Emphysema", 1.0),
        ("Subcutaneous emphysema in the neck.", "Emphysema", math.nan),
        ("Calcified granuloma in the right upper lobe.", "No Finding", math.nan),  # other abnormality blocks
        ("Heart size and mediastinum are within normal limits. Lungs are clear.", "No Finding", 1.0),
        ("Right lower lobe infiltrate.", "Infiltration", 1.0),
        ("Small left effusion.", "Effusion", 1.0),
        ("Left apical pleural thickening.", "Pleural_Thickening", 1.0),
        ("Borderline cardiomegaly.", "Cardiomegaly", 1.0),
        ("Atelectasis or scarring at the left base.", "Atelectasis", 1.0),  # its annotators' convention
        ("Interlobar fissural thickening.", "Pleural_Thickening", 1.0),  # a fissure is pleura
        ("There is mild thickening in the minor fissure.", "Pleural_Thickening", 1.0),
        ("Minimal apical capping.", "Pleural_Thickening", 1.0),
        ("No fissural thickening.", "Pleural_Thickening", 0.0),
    ],
)
def test_chestxray14_vocabulary(nih, text, name, expected):
    assert same(value(nih, text, name), expected)


def test_keyword_baseline_ignores_negation():
    kw = Labeler("chexpert14", use_context=False)
    assert kw.label("No pneumothorax.")["Pneumothorax"] == 1.0
    assert math.isnan(kw.label("Heart size is normal.")["Cardiomegaly"])


# --- sections and sentences --------------------------------------------------------------------

MIMIC_STYLE = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  Evaluate for pneumonia.

 COMPARISON:  None.

 FINDINGS:

 Small left pleural effusion.

 IMPRESSION:

 No pneumothorax.
"""


def test_sections_are_split_and_chosen():
    names = [n for n, _ in split_sections(MIMIC_STYLE)]
    assert names == ["examination", "indication", "comparison", "findings", "impression"]
    assert extract_sections(MIMIC_STYLE, ("impression",)) == "No pneumothorax."
    assert "Evaluate" not in extract_sections(MIMIC_STYLE)
    assert extract_sections("Plain text without headers.") == "Plain text without headers."


def test_indication_is_not_labelled(chex):
    labels = chex.label(MIMIC_STYLE)
    assert math.isnan(labels["Pneumonia"])
    assert labels["Pleural Effusion"] == 1.0 and labels["Pneumothorax"] == 0.0
    only_impression = Labeler("chexpert14", sections=("impression",)).label(MIMIC_STYLE)
    assert math.isnan(only_impression["Pleural Effusion"])


def test_sentence_split_keeps_numbers_and_lists():
    assert split_sentences("1. Stable mild cardiomegaly. 2. A 1.5 cm nodule.\n\nNo effusion") == [
        "1.", "Stable mild cardiomegaly.", "2.", "A 1.5 cm nodule.", "No effusion"]


# --- quality and speed on real reports ---------------------------------------------------------

@pytest.fixture(scope="module")
def openi_heldout(realdata):
    from cxr.sources import openi

    t = openi.read_reports(realdata / "openi" / "NLMCXR_reports.tgz")
    gold = pd.read_csv(realdata / "openi" / "openi_gold_dev.csv")
    df = gold.merge(t.reports[["study_id", "report"]], left_on="filename", right_on="study_id")
    return df[df["filename"].str[3:].astype(int) % 2 == 1].reset_index(drop=True)


def test_openi_heldout_quality_meets_targets(openi_heldout, nih):
    cols = [c for c in openi_heldout.columns[1:16]]
    pred = nih.label_many(openi_heldout["report"].tolist(), progress=False).rename(columns={"No Finding": "normal"})
    p, g = pred[cols].to_numpy() == 1, openi_heldout[cols].to_numpy() == 1
    tp, fp, fn = (p & g).sum(0), (p & ~g).sum(0), (~p & g).sum(0)
    has = g.sum(0) > 0
    micro = 2 * tp[has].sum() / (2 * tp[has].sum() + fp[has].sum() + fn[has].sum())
    macro = (2 * tp / (2 * tp + fp + fn))[has].mean()
    assert micro >= 0.90 and macro >= 0.80, (micro, macro)


def test_speed_at_least_200_reports_per_second(openi_heldout, chex):
    reports = openi_heldout["report"].tolist()[:600]
    t0 = time.perf_counter()
    chex.label_many(reports, progress=False)
    assert len(reports) / (time.perf_counter() - t0) >= 200


# --- errors ------------------------------------------------------------------------------------

def _vocab(**over):
    spec = {"name": "t", "observations": [{"name": "A", "mentions": ["alpha"]}]}
    spec.update(over)
    return spec


@pytest.mark.parametrize(
    "spec, match",
    [
        ([], "top level must be a mapping"),
        (_vocab(colour="red"), "unknown key"),
        (_vocab(observations=[]), "non-empty list"),
        (_vocab(observations=[{"name": "A"}]), "at least one mention"),
        (_vocab(observations=[{"name": "A", "mentions": ["(unclosed"]}]), "not a valid pattern"),
        (_vocab(observations=[{"name": "A", "mentions": ["a"], "colour": 1}]), "unknown key"),
        (_vocab(observations=[{"name": "A", "mentions": ["a"]}, {"name": "A", "mentions": ["b"]}]), "duplicate"),
        (_vocab(observations=[{"name": "A", "mentions": "alpha"}]), "must be a list"),
        (_vocab(observations=[{"name": "A", "mentions": ["a"], "output": "yes"}]), "true or false"),
        (_vocab(rules=[{"when": "B", "values": [1], "set": "A", "to": -1}]), "is not an observation"),
        (_vocab(rules=[{"when": "A", "values": [2], "set": "A", "to": -1}]), "values and to"),
        (_vocab(no_finding={"name": "A"}), "clashes"),
        (_vocab(no_finding={"name": "NF", "ignore": ["Z"]}), "unknown observation"),
        (_vocab(no_finding="NF"), "must be a mapping"),
    ],
)
def test_bad_vocabulary_is_rejected_with_a_message(spec, match):
    with pytest.raises(VocabularyError, match=match):
        parse_vocabulary(spec, "test.yaml")


def test_alternatives_uncertain_must_be_a_bool():
    with pytest.raises(VocabularyError, match="alternatives_uncertain must be true or false"):
        parse_vocabulary(_vocab(alternatives_uncertain="yes"), "t.yaml")


def test_vocabulary_loading_errors(tmp_path):
    with pytest.raises(VocabularyError, match="unknown vocabulary"):
        load_vocabulary("no-such-vocab")
    bad = tmp_path / "v.yaml"
    bad.write_text("observations: [unclosed", encoding="utf-8")
    with pytest.raises(VocabularyError, match="not valid YAML"):
        load_vocabulary(bad)
    good = tmp_path / "g.yaml"
    good.write_text(yaml.safe_dump(_vocab()), encoding="utf-8")
    assert Labeler(good).label("alpha seen")["A"] == 1.0


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"negation": {"sideways": ["no"]}}, "unknown direction"),
        ({"negation": ["no"]}, "must map directions"),
        ({"negation": {"forward": "no"}}, "must be a list"),
        ({"colour": []}, "unknown key"),
        ({"pseudo": "no change"}, "must be a list"),
        ("text", "top level must be a mapping"),
    ],
)
def test_bad_context_file_is_rejected(spec, match):
    with pytest.raises(VocabularyError, match=match):
        ConText(spec, "ctx.yaml")


def test_context_file_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("negation: {forward: [no", encoding="utf-8")
    with pytest.raises(VocabularyError, match="not valid YAML"):
        ConText.from_file(p)


def test_non_string_report_is_an_error(chex):
    with pytest.raises(TypeError, match="report must be a string"):
        chex.label(None)  # type: ignore[arg-type]


def test_cli_input_errors(tmp_path):
    empty = tmp_path / "e.csv"
    empty.write_text('"No effusion."\n""\n', encoding="utf-8")
    with pytest.raises(ValueError, match="empty report on line"):
        read_reports_csv(empty)
    hdr = tmp_path / "h.csv"
    hdr.write_text("text\nNo effusion.\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no column 'report'"):
        read_reports_csv(hdr, column="report")
    with pytest.raises(ValueError, match="cannot read"):
        read_reports_csv(tmp_path / "missing.csv")
    out = tmp_path / "o.csv"
    assert label_csv(hdr, out, column="text")["reports"] == 1
    assert pd.read_csv(out)["Pleural Effusion"].tolist() == [0.0]
    assert label_main([str(empty), "-o", str(tmp_path / "x.csv")]) == 1
    assert not (tmp_path / "x.csv").exists()
