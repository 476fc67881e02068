"""Dataset adapters on real samples (NIH, CheXpert, PadChest, OpenI) and on hand-made fixtures that
follow the documented schemas (MIMIC-CXR csvs and reports, Chest ImaGenome scene graphs)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest

from cxr.sources import SourceError, chexpert, imagenome, mimic, nih, openi, padchest, read_raw
from cxr.sources.common import image_id_from_name
from cxr.sources.synthetic import read_synthetic, read_truth

# --- NIH ChestX-ray14 (real tables) ------------------------------------------------------------


@pytest.fixture(scope="module")
def nih_real(realdata):
    return nih.read_folder(realdata / "nih")


def test_nih_real_data_entry(nih_real):
    im, lab = nih_real.images, nih_real.labels
    assert len(im) == 112_120 and im["patient_id"].nunique() == 30_805 and not nih_real.issues
    row = lab.set_index("image_id").loc["00000001_000"]
    assert row["Cardiomegaly"] == 1 and row[list(nih.FINDINGS)].sum() == 1 and row["No Finding"] == 0
    assert lab.set_index("image_id").loc["00027426_000", "No Finding"] == 1
    assert set(np.unique(lab[list(nih.FINDINGS)].to_numpy())) == {0.0, 1.0}
    assert im.set_index("image_id").loc["00000001_000", ["patient_id", "view", "sex", "age"]].tolist() == ["1", "PA", "M", 57.0]


def test_nih_real_boxes_rename_infiltrate(nih_real):
    b = nih_real.boxes
    assert len(b) == 984 and "Infiltration" in set(b["label"]) and "Infiltrate" not in set(b["label"])
    assert (b[["w", "h"]] > 0).all().all() and b["image_id"].isin(nih_real.images["image_id"]).all()


def _nih_entry(tmp_path, rows):
    p = tmp_path / "Data_Entry_2017_v2020.csv"
    head = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
    p.write_text(head + "".join(r + "\n" for r in rows), encoding="utf-8")
    return p


def test_nih_malformed_rows_are_counted(tmp_path):
    p = _nih_entry(tmp_path, [
        "a.png,Effusion|Mass,0,1,50,F,PA",
        "b.png,No Finding,0,,50,F,PA",  # no patient id
        "c.png,No Finding|Mass,0,2,50,F,PA",  # contradictory
        "a.png,Mass,1,1,51,F,PA",  # duplicate image
        "d.png,Infiltrate,0,3,40Y,M,AP",  # alias, old age format
    ])
    t = nih.read_data_entry(p)
    assert t.images["image_id"].tolist() == ["a", "d"] and len(t.issues) == 3
    assert t.labels.set_index("image_id").loc["d", "Infiltration"] == 1 and t.images["age"].tolist() == [50.0, 40.0]
    assert {i.row for i in t.issues} == {"line 3", "line 4", "line 5"}


def test_nih_unknown_label_is_an_error_or_counted(tmp_path):
    p = _nih_entry(tmp_path, ["a.png,Effusion|Dragon,0,1,50,F,PA"])
    with pytest.raises(SourceError, match="unknown finding label 'Dragon'"):
        nih.read_data_entry(p)
    t = nih.read_data_entry(p, unknown="count")
    assert len(t.images) == 1 and "Dragon" in t.issues[0].reason


def test_nih_bad_boxes_and_split_lists(tmp_path):
    p = tmp_path / "BBox_List_2017.csv"
    p.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                 "a.png,Mass,1,2,3,4\nb.png,Mass,x,2,3,4\nc.png,Mass,1,2,0,4\n", encoding="utf-8")
    boxes, issues = nih.read_boxes(p)
    assert boxes["image_id"].tolist() == ["a"] and len(issues) == 2
    p.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Dragon,1,2,3,4\n", encoding="utf-8")
    with pytest.raises(SourceError, match="unknown box label 'Dragon'"):
        nih.read_boxes(p)
    p.write_text("Image Index,Finding Label\na.png,Mass\n", encoding="utf-8")
    with pytest.raises(SourceError, match="expected 6 columns"):
        nih.read_boxes(p)
    (tmp_path / "test_list.txt").write_text("00000003_000.png\n\n00000004_000.png\n", encoding="utf-8")
    assert nih.read_split_list(tmp_path / "test_list.txt") == {"00000003_000", "00000004_000"}
    with pytest.raises(SourceError, match="not found"):
        nih.read_split_list(tmp_path / "nope.txt")


# --- CheXpert (real table) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def chexpert_subset(realdata, tmp_path_factory):
    df = pd.read_csv(realdata / "chexpert" / "chexpert_train.csv.gz", nrows=3000, dtype=str, keep_default_na=False)
    p = tmp_path_factory.mktemp("chexpert") / "train.csv"
    df.to_csv(p, index=False)
    return p, df


def test_chexpert_real_rows(chexpert_subset):
    path, raw = chexpert_subset
    t = chexpert.read_table(path)
    assert len(t.images) == len(raw) and not t.issues
    first = t.images.set_index("image_id").loc["patient00001_study1_view1_frontal"]
    assert first[["patient_id", "study_id", "view", "sex", "age"]].tolist() == ["patient00001", "patient00001_study1", "AP", "F", 68.0]
    lab = t.labels.set_index("image_id")
    assert lab.loc["patient00002_study2_view1_frontal", "Cardiomegaly"] == -1
    assert lab.loc["patient00001_study1_view1_frontal", "Support Devices"] == 1
    assert np.isnan(lab.loc["patient00001_study1_view1_frontal", "Edema"])
    vals = lab.to_numpy().ravel()
    assert set(vals[~np.isnan(vals)]) <= {1.0, 0.0, -1.0}
    assert set(t.images["view"].dropna()) <= {"AP", "PA", "LATERAL", "LL", "RL"}


def test_chexpert_bad_rows_counted_and_missing_columns(chexpert_subset, tmp_path):
    _, raw = chexpert_subset
    bad = raw.head(3).copy()
    bad.loc[0, "Path"] = "somewhere/else.jpg"
    bad.loc[1, "Edema"] = "2"
    p = tmp_path / "train.csv"
    bad.to_csv(p, index=False)
    t = chexpert.read_table(p)
    assert len(t.images) == 1 and len(t.issues) == 2
    assert any("'2'" in i.reason for i in t.issues)
    raw.drop(columns=["Edema"]).head(2).to_csv(p, index=False)
    with pytest.raises(SourceError, match=r"missing column\(s\) \['Edema'\]"):
        chexpert.read_table(p)


# --- MIMIC-CXR (hand-made fixture following the documented schema) -----------------------------

META_HEADER = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
               "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
               "PatientOrientationCodeSequence_CodeMeaning\n")


@pytest.fixture
def mimic_dir(tmp_path):
    root = tmp_path / "mimic-cxr"
    rows = [
        "d1,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21800506,213014.531,CHEST (PA AND LAT),postero-anterior,Erect",
        "d2,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544,21800506,213014.531,CHEST (PA AND LAT),lateral,Erect",
        "d3,10000764,57375967,CHEST (PORTABLE AP),AP,2705,2539,21321015,074104.812,CHEST (PORTABLE AP),antero-posterior,Erect",
        "d4,abc,57375967,CHEST,AP,1,1,1,1,x,y,z",  # malformed subject id
        "d1,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21800506,213014.531,CHEST (PA AND LAT),postero-anterior,Erect",
    ]
    root.mkdir()
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text(META_HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    for subject, study, text in (("10000032", "50414267", "FINDINGS: Small left pleural effusion.\nIMPRESSION: Effusion."),
                                 ("10000764", "57375967", "")):
        d = root / "files" / f"p{subject[:2]}" / f"p{subject}"
        (d / f"s{study}").mkdir(parents=True)
        (d / f"s{study}.txt").write_text(text, encoding="utf-8")
    (root / "files/p10/p10000032/s50414267/d1.dcm").write_bytes(b"")
    return root


def test_mimic_metadata_reports_and_counted_issues(mimic_dir):
    t = mimic.read_folder(mimic_dir, progress=False)
    assert t.images["image_id"].tolist() == ["d1", "d2", "d3"]
    assert t.images.set_index("image_id").loc["d2", "view"] == "LATERAL"
    assert t.images.set_index("image_id").loc["d1", "source_path"] == "files/p10/p10000032/s50414267/d1.dcm"
    assert t.reports["study_id"].tolist() == ["50414267"] and "pleural effusion" in t.reports["report"][0]
    reasons = " ".join(i.reason for i in t.issues)
    assert "bad ids" in reasons and "duplicate dicom_id" in reasons and "empty report" in reasons
    assert t.labels is None


def test_mimic_label_and_split_tables(mimic_dir):
    obs = ",".join(chexpert.OBSERVATIONS)
    (mimic_dir / "mimic-cxr-2.0.0-chexpert.csv").write_text(
        f"subject_id,study_id,{obs}\n10000032,50414267,,,1.0,,,,,,,,-1.0,,,\n10000764,x,,,,,,,,,,,,,,\n", encoding="utf-8")
    t = mimic.read_folder(mimic_dir, progress=False)
    assert t.label_level == "study" and t.labels["study_id"].tolist() == ["50414267"]
    assert t.labels.iloc[0]["Cardiomegaly"] == 1 and t.labels.iloc[0]["Pleural Effusion"] == -1
    assert any("bad study_id" in i.reason for i in t.issues)
    (mimic_dir / "mimic-cxr-2.0.0-split.csv").write_text("dicom_id,study_id,subject_id,split\nd1,1,1,validate\nd3,2,2,test\n")
    assert mimic.read_split(mimic_dir / "mimic-cxr-2.0.0-split.csv")["split"].tolist() == ["val", "test"]
    (mimic_dir / "bad-split.csv").write_text("dicom_id,split\nd1,holdout\n")
    with pytest.raises(SourceError, match="unknown split value"):
        mimic.read_split(mimic_dir / "bad-split.csv")


def test_mimic_missing_metadata_is_an_error(tmp_path):
    with pytest.raises(SourceError, match="no mimic-cxr-2.0.0-metadata.csv"):
        mimic.read_folder(tmp_path, progress=False)
    (tmp_path / "mimic-cxr-2.0.0-metadata.csv").write_text("dicom_id,subject\nx,1\n")
    with pytest.raises(SourceError, match="missing column"):
        mimic.read_folder(tmp_path, progress=False)


# --- PadChest (real rows) ----------------------------------------------------------------------


def test_padchest_real_rows(realdata):
    t = padchest.read_table(realdata / "padchest" / "padchest_sample.csv")
    assert len(t.images) == 10 and not t.issues
    assert "hemidiaphragm elevation" in t.labels.columns  # leading space in the real file stripped
    lab = t.labels.set_index("image_id")
    normal = lab.index[lab["normal"] == 1]
    assert len(normal) == 2 and (lab.loc[normal].drop(columns="normal").sum(axis=1) == 0).all()
    first = t.images.set_index("image_id").loc["125374151943505747025890313053997514922_j5rk5q"]
    assert first["source_path"] == "images/0/125374151943505747025890313053997514922_j5rk5q.png"
    assert first["age"] == 2017 - 1953 and first["sex"] == "F" and first["view"] == "PA"


def test_padchest_unknown_and_malformed_labels(realdata, tmp_path):
    df = pd.read_csv(realdata / "padchest" / "padchest_sample.csv", dtype=str, keep_default_na=False)
    df.loc[0, "Labels"] = "['scoliosis', 'dragon scales']"
    df.loc[1, "Labels"] = "['unterminated"
    df.loc[2, "Labels"] = "[]"
    p = tmp_path / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    df.to_csv(p, index=False)
    with pytest.raises(SourceError, match=r"unknown PadChest label\(s\) \['dragon scales'\]"):
        padchest.read_folder(tmp_path)
    t = padchest.read_folder(tmp_path, unknown="count")
    assert len(t.images) == 8 and len(t.issues) == 3 and "other" in t.labels.columns
    with pytest.raises(ValueError, match="not a list of strings"):
        padchest.parse_labels("[1, 2]")


# --- OpenI (real XML archive) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def openi_real(realdata):
    return openi.read_reports(realdata / "openi" / "NLMCXR_reports.tgz")


def test_openi_real_reports(openi_real):
    rep = openi_real.reports.set_index("study_id")
    assert len(rep) == 3955 and not openi_real.issues
    text = rep.loc["CXR1000", "report"]
    assert text.startswith("FINDINGS: There is XXXX increased opacity") and "\n\nIMPRESSION: 1. Increased" in text
    assert "INDICATION" not in text and "Pulmonary Atelectasis" in rep.loc["CXR1000", "mesh"]
    ims = openi_real.images.set_index("image_id")
    assert ims.loc["CXR1000_IM-0003-1001", "patient_id"] == "CXR1000"
    assert openi_real.images["image_id"].is_unique


def test_openi_malformed_xml_counted(tmp_path, realdata):
    d = tmp_path / "ecgen-radiology"
    d.mkdir()
    (d / "1.xml").write_text("<eCitation><uId id='CXR1'/><Abstract><AbstractText Label='FINDINGS'>No effusion."
                             "</AbstractText></Abstract><parentImage id='CXR1_IM-1'/></eCitation>")
    (d / "2.xml").write_text("<eCitation><uId id='CXR2'/>")
    (d / "3.xml").write_text("<eCitation/>")
    t = openi.read_folder(tmp_path)
    assert t.reports["report"].tolist() == ["FINDINGS: No effusion."] and len(t.issues) == 2
    with pytest.raises(SourceError, match="no NLMCXR_reports.tgz"):
        openi.read_folder(tmp_path / "empty")
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"not a tar")
    with pytest.raises(SourceError, match="not a readable tar"):
        openi.read_reports(bad)


# --- Chest ImaGenome (hand-made scene graphs) --------------------------------------------------


def _graph(dicom="d1", attributes=None, objects=None):
    objs = objects if objects is not None else [
        {"object_id": f"{dicom}_right lung", "bbox_name": "right lung", "x1": 10, "y1": 10, "x2": 100, "y2": 200,
         "width": 90, "height": 190, "original_x1": 40, "original_y1": 40, "original_x2": 400, "original_y2": 800,
         "original_width": 360, "original_height": 760},
        {"object_id": f"{dicom}_cardiac silhouette", "bbox_name": "cardiac silhouette", "x1": 80, "y1": 100,
         "x2": 150, "y2": 180, "width": 70, "height": 80, "original_x1": 320, "original_y1": 400,
         "original_x2": 600, "original_y2": 720, "original_width": 280, "original_height": 320},
    ]
    attrs = attributes if attributes is not None else [
        {"bbox_name": "right lung", "attributes": [["anatomicalfinding|yes|lung opacity", "nlp|yes|abnormal"]]},
        {"bbox_name": "right lung", "attributes": [["anatomicalfinding|no|pleural effusion"],
                                                   ["anatomicalfinding|yes|atelectasis"]]},
        {"bbox_name": "cardiac silhouette", "attributes": [["anatomicalfinding|no|enlarged cardiac silhouette"]]},
    ]
    return json.dumps({"image_id": dicom, "objects": objs, "attributes": attrs})


def test_imagenome_scene_graph_merges_attribute_entries(tmp_path):
    g = imagenome.read_scene_graph(_graph(), "d1_SceneGraph.json")
    assert g["image_id"] == "d1" and len(g["regions"]) == 2  # a region in two attribute entries is one region
    assert g["findings"]["right lung"] == {"lung opacity": 1.0, "pleural effusion": 0.0, "atelectasis": 1.0}
    assert imagenome.image_findings(g["findings"]) == {
        "lung opacity": 1.0, "pleural effusion": 0.0, "atelectasis": 1.0, "enlarged cardiac silhouette": 0.0}
    assert g["regions"]["right lung"] == [40.0, 40.0, 400.0, 800.0]


def test_imagenome_folder_counts_bad_graphs_and_unknown_findings(tmp_path):
    d = tmp_path / "silver_dataset" / "scene_graph"
    d.mkdir(parents=True)
    (d / "d1_SceneGraph.json").write_text(_graph())
    (d / "d2_SceneGraph.json").write_text("{not json")
    (d / "d3_SceneGraph.json").write_text(_graph("d3", attributes=[{"bbox_name": "right lung", "attributes": [["oops"]]}]))
    (d / "d4_SceneGraph.json").write_text(_graph("d4", objects=[{"bbox_name": "trachea", "original_x1": 5,
                                                                 "original_y1": 5, "original_x2": 5, "original_y2": 9}]))
    t = imagenome.read_scene_graphs(d, progress=False)
    assert t.labels["image_id"].tolist() == ["d1"] and len(t.issues) == 3
    assert t.boxes.set_index("label").loc["right lung", "findings"] == "atelectasis=1;lung opacity=1;pleural effusion=0"
    (d / "d5_SceneGraph.json").write_text(_graph("d5", attributes=[{"bbox_name": "right lung",
                                                                     "attributes": [["anatomicalfinding|yes|dragon"]]}]))
    with pytest.raises(SourceError, match="unknown ImaGenome finding 'dragon'"):
        imagenome.read_scene_graphs(d, progress=False)
    t = imagenome.read_scene_graphs(d, unknown="count", progress=False)
    assert "d5" in set(t.labels["image_id"]) and any("dragon" in i.reason for i in t.issues)
    with pytest.raises(SourceError, match="not found"):
        imagenome.read_scene_graphs(tmp_path / "nope")


@pytest.mark.parametrize("s", ["a|b", "cat|maybe|x", "|yes|x", "cat|yes|"])
def test_imagenome_bad_attribute_strings(s):
    with pytest.raises(ValueError, match="category\\|yes/no\\|name"):
        imagenome.parse_attribute(s)


# --- synthetic cohort through the real adapters ------------------------------------------------


def test_synthetic_cohort_reads_with_real_adapters(tiny_cohort):
    tables = read_synthetic(tiny_cohort)
    truth = read_truth(tiny_cohort)
    assert {"mimic", "imagenome", "padchest"} <= set(tables)
    for name, ds in (("mimic", "mimic"), ("padchest", "padchest")):
        t = tables[name]
        want = truth[truth["dataset"] == ds]
        assert set(t.images["image_id"]) == {image_id_from_name(i) for i in want["image_id"]}
        assert set(t.images["patient_id"]) == set(want["patient_id"].astype(str))
        assert not t.issues
    assert set(tables["mimic"].reports["study_id"]) == set(truth.loc[truth["dataset"] == "mimic", "study_id"].astype(str))
    assert set(tables["imagenome"].labels["image_id"]) <= set(tables["mimic"].images["image_id"])


def test_read_raw_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        read_raw(tmp_path / "nope")
    (tmp_path / "other").mkdir()
    with pytest.raises(SourceError, match="no known dataset folder"):
        read_raw(tmp_path)
    with pytest.raises(SourceError, match="only synthetic"):
        read_truth(tmp_path)


def test_read_csv_reports_unreadable_files(tmp_path):
    from cxr.sources.common import read_csv

    p = tmp_path / "x.csv.gz"
    p.write_bytes(gzip.compress(b"a,b\n1,2\n")[:10])
    with pytest.raises(SourceError, match="not a readable CSV"):
        read_csv(p, ("a",))
    with pytest.raises(SourceError, match="file not found"):
        read_csv(tmp_path / "missing.csv", ("a",))


def test_source_tables_report_ages_above_89_as_90():
    """HIPAA safe harbour: a table's 95-year-old is recorded as 90 ("90 or older")."""
    from cxr.sources.common import finish_images

    rows = [{"image_id": i, "dataset": "nih", "patient_id": i, "age": a} for i, a in (("a", 45), ("b", 95), ("c", None))]
    ages = finish_images(rows, "nih").set_index("image_id")["age"]
    assert ages["a"] == 45 and ages["b"] == 90 and ages.isna()["c"]
