"""Label spaces, vocabulary maps, uncertainty policy, merge with provenance, and the `label` stage."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from cxr.labels import (
    LABEL_SPACES,
    SOURCE_VOCABS,
    LabelError,
    apply_uncertainty,
    disagreement,
    label_names,
    load_map,
    merge_sources,
    to_space,
)
from cxr.label_build import build_labels
from cxr.params import ParamsError, parse_section
from cxr.sources import padchest
from cxr.sources.synthetic import read_truth
from stages import label as label_stage

NAN = math.nan


def test_label_spaces_and_maps_are_consistent():
    assert len(label_names("chexpert14")) == 14 and len(label_names("anaxnet9")) == 9
    assert len(label_names("padchest22")) == 22 and len(label_names("chestxray14")) == 15
    for vocab in SOURCE_VOCABS:
        m = load_map(vocab)
        assert m["term"].is_unique and list(m.columns[1:]) == ["chexpert14", "chestxray14", "anaxnet9", "padchest22"]
    with pytest.raises(LabelError, match="unknown label space 'cxr99'"):
        label_names("cxr99")
    with pytest.raises(LabelError, match="no map for vocabulary"):
        load_map("klingon")


#: One finding's name in each mapped space (None: the space has no such label).
CONCEPTS = [
    ("Atelectasis", "Atelectasis", "atelectasis", "atelectasis"),
    ("Cardiomegaly", "Cardiomegaly", "enlarged cardiac silhouette", "cardiomegaly"),
    ("Pleural Effusion", "Effusion", "pleural effusion", "pleural effusion"),
    ("Edema", "Edema", "pulmonary edema/hazy opacity", "pulmonary edema"),
    ("Pneumothorax", "Pneumothorax", "pneumothorax", "pneumothorax"),
    ("Pneumonia", "Pneumonia", "pneumonia", "pneumonia"),
    ("Consolidation", "Consolidation", "consolidation", None),
    ("Lung Opacity", None, "lung opacity", None),
    (None, "Infiltration", None, "infiltrates"),
    (None, None, "fluid overload/heart failure", "heart insufficiency"),
    (None, "Emphysema", None, "emphysema"),
    (None, "Fibrosis", None, "pulmonary fibrosis"),
    (None, "Mass", None, "mass"),
    (None, "Nodule", None, "nodule"),
]
SPACES4 = ("chexpert14", "chestxray14", "anaxnet9", "padchest22")


def _strong(cell: str) -> set[str]:
    return {t for t in cell.split("|") if t and not t.endswith("?")}


def test_a_term_means_the_same_finding_in_every_target_space_unless_noted():
    bad = []
    for vocab in SOURCE_VOCABS:
        m = load_map(vocab, notes=True)
        for r in m.to_dict("records"):
            if r["note"]:
                continue
            for concept in CONCEPTS:
                for i, a in enumerate(SPACES4):
                    for j, b in enumerate(SPACES4):
                        ca, cb = concept[i], concept[j]
                        sa, sb = _strong(r[a]), _strong(r[b])
                        if ca and cb and sa and sb and (ca in sa) != (cb in sb):
                            bad.append(f"{vocab}:{r['term']} {a}={r[a]!r} vs {b}={r[b]!r}")
    assert not bad, sorted(set(bad))


def test_a_term_means_the_same_in_every_map_unless_noted():
    seen: dict[str, tuple[str, tuple, str]] = {}
    bad = []
    for vocab in SOURCE_VOCABS:
        m = load_map(vocab, notes=True)
        for r in m.to_dict("records"):
            key = r["term"].lower().replace("_", " ")
            cells = tuple(r[s] for s in SPACES4)
            if key in seen and seen[key][1] != cells and not (r["note"] or seen[key][2]):
                bad.append(f"{key!r}: {seen[key][0]} {seen[key][1]} vs {vocab} {cells}")
            seen.setdefault(key, (vocab, cells, r["note"]))
    assert not bad, bad


def test_heart_failure_terms_imply_at_most_uncertain_cardiomegaly():
    native = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "heart insufficiency": [1, 1, 0, -1],
                           "cardiomegaly": [NAN, 0, NAN, 1], "pericardial effusion": [NAN, NAN, 1, NAN]})
    out = to_space(native, "padchest", "chexpert14").set_index("image_id")["Cardiomegaly"]
    assert out["a"] == -1 and out["b"] == -1 and np.isnan(out["c"]) and out["d"] == 1
    ex = to_space(native, "padchest", "chexpert14", exhaustive=True).set_index("image_id")["Cardiomegaly"]
    assert ex["c"] == 0 and ex["a"] == -1  # pericardial effusion is not cardiomegaly
    air = to_space(pd.DataFrame({"image_id": ["a"], "air bronchogram": [1]}), "padchest", "chexpert14")
    assert air.loc[0, "Consolidation"] == 1


def test_every_real_padchest_term_is_known(realdata):
    t = padchest.read_table(realdata / "padchest" / "padchest_sample.csv")
    for space in LABEL_SPACES:
        out = to_space(t.labels, "padchest", space, exhaustive=True)
        assert len(out) == 10


def test_to_space_combines_mentions_like_the_labeller():
    native = pd.DataFrame({"image_id": ["a", "b", "c", "d"],
                           "Pneumonia": [1, 0, NAN, -1], "Consolidation": [0, -1, NAN, 0],
                           "No Finding": [NAN, NAN, 1, NAN]})
    out = to_space(native, "chestxray14", "chexpert14").set_index("image_id")
    # Pneumonia and Consolidation both map to Lung Opacity: 1 wins, then -1, then 0.
    assert out["Lung Opacity"].fillna(9).tolist() == [1, -1, 9, -1]
    assert out["Pneumonia"].fillna(9).tolist() == [1, 0, 9, -1]
    assert out.loc["c", "No Finding"] == 1 and np.isnan(out.loc["a", "No Finding"])
    assert out["Edema"].isna().all()  # no source term maps there


def test_no_finding_rule_after_mapping():
    native = pd.DataFrame({"image_id": ["a", "b", "c"], "No Finding": [1, 1, 0],
                           "Support Devices": [1, NAN, NAN], "Edema": [NAN, -1, NAN]})
    out = to_space(native, "chexpert14", "chexpert14").set_index("image_id")
    assert out.loc["a", "No Finding"] == 1  # devices do not block
    assert np.isnan(out.loc["b", "No Finding"])  # an uncertain finding blocks
    assert np.isnan(out.loc["c", "No Finding"])  # never 0


def test_exhaustive_sources_fill_absent_findings_with_zero():
    native = pd.DataFrame({"image_id": ["a", "b"], "normal": [1, 0], "pleural effusion": [0, 1]})
    out = to_space(native, "padchest", "chexpert14", exhaustive=True).set_index("image_id")
    assert out.loc["a", "Pleural Effusion"] == 0 and out.loc["b", "Pleural Effusion"] == 1
    assert out.loc["a", "Edema"] == 0 and out.loc["a", "No Finding"] == 1 and np.isnan(out.loc["b", "No Finding"])
    sparse = to_space(native, "padchest", "chexpert14", exhaustive=False).set_index("image_id")
    assert np.isnan(sparse.loc["a", "Edema"])


def test_exhaustive_nih_never_invents_negatives_it_cannot_express():
    native = pd.DataFrame({"image_id": ["a", "b"], "No Finding": [1, NAN], "Effusion": [NAN, 1]})
    cx = to_space(native, "chestxray14", "chexpert14", exhaustive=True).set_index("image_id")
    assert cx.loc["a", "Pleural Effusion"] == 0 and cx.loc["b", "Atelectasis"] == 0  # NIH annotates these
    for n in ("Enlarged Cardiomediastinum", "Fracture", "Support Devices"):  # no NIH term expresses them
        assert cx[n].isna().all(), n
    pc = to_space(native, "chestxray14", "padchest22", exhaustive=True).set_index("image_id")
    assert pc.loc["a", "emphysema"] == 0 and pc.loc["b", "pleural effusion"] == 1
    for n in ("catheter", "electrical device", "nsg tube", "surgery", "tuberculosis", "aortic elongation",
              "thoracic cage deformation"):
        assert pc[n].isna().all(), n
    assert pc.loc["a", "normal"] == 1  # a missing device label does not block No Finding


def test_binary_space():
    native = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "normal": [1, 0, 0, 0],
                           "pleural effusion": [0, 1, 0, 0], "nsg tube": [0, 0, 1, 0], "suboptimal study": [0, 0, 0, 1]})
    out = to_space(native, "padchest", "binary", exhaustive=False)["Abnormal"].tolist()
    assert out[:2] == [0.0, 1.0] and np.isnan(out[2]) and np.isnan(out[3])  # devices / study quality are neutral
    assert to_space(native, "padchest", "binary", exhaustive=True)["Abnormal"].tolist() == [0, 1, 0, 0]


def test_to_space_errors():
    with pytest.raises(LabelError, match=r"\['Dragon'\] are not terms of vocabulary 'chexpert14'"):
        to_space(pd.DataFrame({"image_id": ["a"], "Dragon": [1]}), "chexpert14", "chexpert14")
    with pytest.raises(LabelError, match="label value 2.0 in column 'Edema'"):
        to_space(pd.DataFrame({"image_id": ["a"], "Edema": [2]}), "chexpert14", "chexpert14")
    with pytest.raises(LabelError, match="unknown label space"):
        to_space(pd.DataFrame({"image_id": ["a"]}), "chexpert14", "nope")


def test_uncertainty_policies():
    df = pd.DataFrame({"A": [1, 0, -1, NAN], "B": [-1, -1, NAN, 1]})
    t, m = apply_uncertainty(df, ["A", "B"], {"A": "ones", "B": "zeros"})
    assert t[:, 0].tolist() == [1, 0, 1, 0] and t[:, 1].tolist() == [0, 0, 0, 1] and m.all()
    t, m = apply_uncertainty(df, ["A", "B"], default="ignore", blank="ignore")
    assert m[:, 0].tolist() == [True, True, False, False] and m[:, 1].tolist() == [False, False, False, True]
    assert t.dtype == np.float32 and set(np.unique(t)) <= {0.0, 1.0}
    with pytest.raises(LabelError, match="policy for 'A' is 'maybe'"):
        apply_uncertainty(df, ["A", "B"], {"A": "maybe"})
    with pytest.raises(LabelError, match=r"unknown class\(es\) \['C'\]"):
        apply_uncertainty(df, ["A", "B"], {"C": "ones"})
    with pytest.raises(LabelError, match="blank policy"):
        apply_uncertainty(df, ["A", "B"], blank="ones")
    with pytest.raises(LabelError, match="other than 1, 0, -1"):
        apply_uncertainty(pd.DataFrame({"A": [3]}), ["A"])


def test_blank_ignore_still_gives_no_finding_negatives():
    # No Finding is only ever 1 or blank; a blank beside a positive / uncertain finding means "not normal".
    df = pd.DataFrame({"No Finding": [1, NAN, NAN, NAN], "Edema": [NAN, 1, -1, NAN],
                       "Support Devices": [NAN, NAN, NAN, 1]})
    t, m = apply_uncertainty(df, list(df.columns), default="ignore", blank="ignore")
    assert m[:, 0].tolist() == [True, True, True, False]  # row 4: devices only -> unknown, masked
    assert t[:, 0].tolist() == [1, 0, 0, 0]
    assert m[:, 1].tolist() == [False, True, False, False]  # other classes keep the blank policy
    pc = pd.DataFrame({"normal": [1, NAN, NAN], "cardiomegaly": [NAN, 1, NAN], "catheter": [NAN, NAN, 1]})
    t, m = apply_uncertainty(pc, list(pc.columns), blank="ignore")
    assert m[:, 0].tolist() == [True, True, False] and t[:, 0].tolist() == [1, 0, 0]


def _cand(src_vals, ids=("a", "b", "c")):
    return pd.DataFrame({"dataset": "mimic", "image_id": list(ids), "patient_id": "p", "study_id": "s", "X": src_vals})


def test_merge_takes_the_strongest_source_and_reports_disagreement():
    cands = {"labeller": _cand([1, 0, NAN]), "imagenome": _cand([1, 1, 1, 0], ids=("a", "b", "c", "d"))}
    merged, stats = merge_sources(cands, ["X"], ["labeller", "imagenome"])
    assert merged["label_source"].tolist() == ["labeller", "labeller", "labeller", "imagenome"]
    assert merged["X"].fillna(9).tolist() == [1, 0, 9, 0]
    d = stats["labeller vs imagenome"]
    assert (d["images"], d["cells"], d["disagree"], d["rate"]) == (3, 2, 1, 0.5)
    merged, _ = merge_sources(cands, ["X"], ["imagenome", "labeller"])
    assert set(merged["label_source"]) == {"imagenome"}
    with pytest.raises(LabelError, match=r"not in label.precedence"):
        merge_sources(cands, ["X"], ["labeller"])


def test_disagreement_ignores_blanks():
    a = pd.DataFrame({"image_id": ["a", "b"], "X": [1, NAN]})
    b = pd.DataFrame({"image_id": ["a", "b"], "X": [-1, 0]})
    assert disagreement(a, b, ["X"])["per_label"]["X"] == {"cells": 1, "disagree": 1, "rate": 1.0}


@pytest.fixture(scope="module")
def tiny_labels(tiny_cohort):
    return build_labels(tiny_cohort, progress=False)


def test_build_labels_on_synthetic_cohort(tiny_cohort, tiny_labels):
    labels, summary = tiny_labels
    truth = read_truth(tiny_cohort)
    assert len(labels) == len(truth) and labels[["dataset", "image_id"]].duplicated().sum() == 0
    assert set(labels["label_source"]) == {"labeller", "padchest"}
    assert (labels.loc[labels["dataset"] == "mimic", "label_source"] == "labeller").all()
    vals = labels[label_names("chexpert14")].to_numpy().ravel()
    assert set(vals[~np.isnan(vals)]) <= {1.0, 0.0, -1.0}
    assert summary["merged"]["images_without_labels"] == 0 and summary["labeller"]["reports_per_s"] > 200
    assert "labeller vs imagenome" in summary["disagreement"]
    json.dumps(summary, allow_nan=False)  # valid JSON, no NaN


def test_labeller_agrees_with_synthetic_truth(tiny_cohort, tiny_labels):
    labels, _ = tiny_labels
    truth = read_truth(tiny_cohort)
    mimic = labels[labels["dataset"] == "mimic"].merge(truth, on="image_id", suffixes=("", "_t"))
    names = [n for n in label_names("chexpert14") if n != "No Finding"]
    omitted = mimic["report_omits"].astype(bool)
    p = np.isin(mimic[names].to_numpy(), (1, -1))  # U-Ones: hedged findings are present in truth
    g = mimic[[f"{n}_t" for n in names]].to_numpy() == 1
    p, g = p[~omitted.to_numpy()], g[~omitted.to_numpy()]
    f1 = 2 * (p & g).sum() / (2 * (p & g).sum() + (p & ~g).sum() + (~p & g).sum())
    assert f1 >= 0.95


def test_build_labels_is_deterministic_and_respects_space(tiny_cohort, tiny_labels):
    again, _ = build_labels(tiny_cohort, progress=False)
    pd.testing.assert_frame_equal(again, tiny_labels[0])
    ana, _ = build_labels(tiny_cohort, space="anaxnet9", vocabulary="chestxray14", progress=False)
    assert list(ana.columns[4:-1]) == label_names("anaxnet9")


def test_label_params_validation():
    assert parse_section("label", {}).vocabulary == "chexpert14"
    with pytest.raises(ParamsError, match="label.vocabulary"):
        parse_section("label", {"vocabulary": "klingon"})
    with pytest.raises(ParamsError, match="at most once"):
        parse_section("label", {"precedence": ["labeller", "labeller"]})
    with pytest.raises(ParamsError, match="label.precedence"):
        parse_section("label", {"precedence": ["nih", "klingon"]})
    # sources left out follow in the default order (jsrt joined after the six older ones)
    assert parse_section("label", {"precedence": ["nih"]}).precedence == [
        "nih", "chexpert", "padchest", "mimic", "labeller", "imagenome", "jsrt"]
    with pytest.raises(ParamsError, match="label.uncertainty.default"):
        parse_section("label", {"uncertainty": {"default": "maybe"}})
    with pytest.raises(ParamsError, match="unknown key label.colour"):
        parse_section("label", {"colour": 1})


def test_label_stage_end_to_end(tiny_cohort, tmp_path, repo_root):
    out, metrics = tmp_path / "labels.parquet", tmp_path / "label.json"
    argv = ["--params", str(repo_root / "params.yaml"), "--raw", str(tiny_cohort), "--out", str(out), "--metrics", str(metrics)]
    assert label_stage.main(argv) == 0
    df = pd.read_parquet(out)
    assert list(df.columns[:4]) == ["dataset", "image_id", "patient_id", "study_id"] and df.columns[-1] == "label_source"
    summary = json.loads(metrics.read_text())
    assert summary["merged"]["images"] == len(df) and summary["sources"]["padchest"]["images"] > 0


def test_label_stage_fails_clearly_on_unknown_label(tiny_cohort, tmp_path, repo_root, caplog):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_cohort / "padchest", raw / "padchest", ignore=shutil.ignore_patterns("images"))
    csv = next((raw / "padchest").glob("PADCHEST*.csv"))
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    df.loc[0, "Labels"] = "['dragon scales']"
    df.to_csv(csv, index=False)
    argv = ["--params", str(repo_root / "params.yaml"), "--raw", str(raw), "--out", str(tmp_path / "l.parquet"),
            "--metrics", str(tmp_path / "l.json")]
    assert label_stage.main(argv) == 1
    assert "dragon scales" in caplog.text and not (tmp_path / "l.parquet").exists()
    bad = tmp_path / "params.yaml"
    bad.write_text("label:\n  vocabulary: klingon\n")
    assert label_stage.main(["--params", str(bad), *argv[2:]]) == 2


def test_labelling_through_process_pool_and_dask_gives_the_serial_table(tiny_cohort, tiny_labels, tmp_path):
    """label.workers / label.scheduler change where the labeller runs, never what it writes."""
    from distributed import LocalCluster

    serial, s_summary = tiny_labels
    pooled, p_summary = build_labels(tiny_cohort, progress=False, workers=2, chunk_size=4)
    assert p_summary["labeller"]["executor"] == "2 processes" and s_summary["labeller"]["executor"] == "in process"
    pd.testing.assert_frame_equal(pooled, serial)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None,
                      local_directory=str(tmp_path / "dask")) as cluster:
        dask, d_summary = build_labels(tiny_cohort, progress=False, scheduler=cluster.scheduler_address, chunk_size=4)
    assert d_summary["labeller"]["executor"] == "dask"
    pd.testing.assert_frame_equal(dask, serial)
    assert d_summary["merged"] == s_summary["merged"] and d_summary["disagreement"] == s_summary["disagreement"]
