"""The synthetic cohort: determinism, readable native formats, broken files, geometry, statistics."""

from __future__ import annotations

import ast
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from cxr.params import SyntheticParams
from cxr.synth import generate, plan_cohort
from cxr.synth.cohort import Finding, iter_images
from cxr.synth.labels import CHEXPERT14, build_pattern_table, load_pattern_table, reference_prevalence
from cxr.synth.render import ORGANS, REGIONS, Anatomy, render

NIH_BOX_LABELS = {"Atelectasis", "Cardiomegaly", "Effusion", "Infiltrate", "Mass", "Nodule", "Pneumonia", "Pneumothorax"}


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_any_worker_count(tmp_path, tiny_cohort):
    generate(tmp_path / "a", "tiny", seed=7, params=SyntheticParams(workers=2), progress=False)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tiny_cohort)  # fixture used workers=1
    generate(tmp_path / "b", "tiny", seed=8, params=SyntheticParams(workers=2), progress=False)
    other = _tree_digest(tmp_path / "b")
    same = _tree_digest(tiny_cohort)
    assert set(other) != set(same)  # new ids
    assert sorted(other.values()) != sorted(same.values())


def test_failed_generation_leaves_previous_output(tmp_path, monkeypatch, tiny_cohort):
    import importlib

    gen = importlib.import_module("cxr.synth.generate")

    out = tmp_path / "raw"
    generate(out, "tiny", seed=7, params=SyntheticParams(workers=1), progress=False)
    before = _tree_digest(out)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gen.cio, "write_parquet", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(out, "tiny", seed=9, params=SyntheticParams(workers=1), progress=False)
    assert _tree_digest(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]  # no temp dirs left behind


def test_layout_and_manifest(tiny_cohort):
    manifest = json.loads((tiny_cohort / "manifest.json").read_text())
    truth = pd.read_parquet(tiny_cohort / "truth/truth.parquet")
    assert manifest["counts"]["images"] == len(truth) > 25
    assert set(truth["dataset"]) == {"mimic", "padchest"}
    for f in truth["file"]:
        assert (tiny_cohort / f).is_file()
    mimic = truth[truth["dataset"] == "mimic"]
    for f in mimic["file"]:
        assert re.fullmatch(r"mimic-cxr/files/p1\d/p1\d{7}/s5\d{7}/[0-9a-f]{8}(-[0-9a-f]{8}){4}\.dcm", f)
    for _, r in mimic.drop_duplicates("study_id").iterrows():
        report = tiny_cohort / "mimic-cxr" / f"files/p{r.patient_id[:2]}/p{r.patient_id}/s{r.study_id}.txt"
        text = report.read_text()
        assert "FINDINGS:" in text and "IMPRESSION:" in text
    assert {"LATERAL", "AP"} <= set(truth["view"])


def test_every_dicom_decodes_with_its_declared_encoding(tiny_cohort):
    truth = pd.read_parquet(tiny_cohort / "truth/truth.parquet")
    meta = pd.read_csv(tiny_cohort / "mimic-cxr/mimic-cxr-2.0.0-metadata.csv", dtype={"dicom_id": str})
    assert set(meta["dicom_id"]) == set(truth.loc[truth.dataset == "mimic", "image_id"])
    seen = {"syntax": set(), "photometric": set(), "bits": set(), "rescale": False, "window": False}
    for _, r in truth[(truth.dataset == "mimic") & (truth.broken == "")].iterrows():
        ds = pydicom.dcmread(tiny_cohort / r.file)
        arr = ds.pixel_array
        assert arr.shape == (r.rows, r.cols) == (ds.Rows, ds.Columns)
        assert arr.max() <= (1 << ds.BitsStored) - 1
        assert ds.PhotometricInterpretation == r.photometric
        assert ds.BodyPartExamined == "CHEST"
        seen["syntax"].add(ds.file_meta.TransferSyntaxUID.name)
        seen["photometric"].add(ds.PhotometricInterpretation)
        seen["bits"].add(int(ds.BitsStored))
        seen["rescale"] |= "RescaleSlope" in ds
        seen["window"] |= "WindowCenter" in ds
        # fake PHI is present in the source, so converters can be tested for not copying it
        assert ds.PatientName and ds.PatientBirthDate and ds.InstitutionName and ds.AccessionNumber
    assert seen["syntax"] == {"Explicit VR Little Endian", "RLE Lossless", "JPEG 2000 Image Compression (Lossless Only)"}
    assert seen["photometric"] == {"MONOCHROME1", "MONOCHROME2"}
    assert seen["bits"] == {12, 14, 16}
    assert seen["rescale"] and seen["window"]


def test_monochrome1_is_inverted_relative_to_monochrome2(tiny_cohort):
    """Lungs are the darkest region after display mapping, whatever the photometric tag."""
    truth = pd.read_parquet(tiny_cohort / "truth/truth.parquet")
    rows = truth[(truth.dataset == "mimic") & (truth.broken == "") & truth.with_masks]
    assert set(rows.photometric) == {"MONOCHROME1", "MONOCHROME2"}
    for _, r in rows.iterrows():
        ds = pydicom.dcmread(tiny_cohort / r.file)
        arr = ds.pixel_array.astype(float)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            arr = arr.max() - arr
        lung = np.asarray(Image.open(tiny_cohort / r.mask_dir / "right_lung.png")) > 0
        heart = np.asarray(Image.open(tiny_cohort / r.mask_dir / "heart.png")) > 0
        assert arr[lung].mean() < arr[heart].mean()


def test_broken_files_present_in_configured_fraction(tmp_path):
    params = SyntheticParams(broken_fraction=0.2, workers=2)
    generate(tmp_path / "raw", "tiny", seed=11, params=params, progress=False)
    truth = pd.read_parquet(tmp_path / "raw/truth/truth.parquet")
    broken = truth[truth.broken != ""]
    assert len(broken) == round(0.2 * len(truth))
    assert set(broken.broken) <= {"truncated", "no_pixel_data"}
    for _, r in broken.iterrows():
        path = tmp_path / "raw" / r.file
        with pytest.raises(Exception):
            if path.suffix == ".dcm":
                pydicom.dcmread(path).pixel_array
            else:
                Image.open(path).load()
    manifest = json.loads((tmp_path / "raw/manifest.json").read_text())
    assert manifest["counts"]["broken"] == len(broken)


def test_zero_broken_fraction(tmp_path):
    generate(tmp_path / "raw", "tiny", seed=11, params=SyntheticParams(broken_fraction=0.0, workers=1), progress=False)
    assert (pd.read_parquet(tmp_path / "raw/truth/truth.parquet").broken == "").all()


def test_scene_graphs_follow_the_imagenome_schema(tiny_cohort):
    truth = pd.read_parquet(tiny_cohort / "truth/truth.parquet").set_index("image_id")
    graphs = sorted((tiny_cohort / "chest-imagenome/silver_dataset/scene_graph").glob("*_SceneGraph.json"))
    expected = truth[(truth.dataset == "mimic") & (truth.view != "LATERAL") & (truth.broken == "")]
    assert {g.name.removesuffix("_SceneGraph.json") for g in graphs} == set(expected.index)
    attr = re.compile(r"^[a-z]+\|(yes|no)\|[a-z /()-]+$")
    any_finding = False
    for g in graphs:
        sg = json.loads(g.read_text())
        image_id = sg["image_id"]
        rows, cols = truth.loc[image_id, ["rows", "cols"]]
        names = [o["bbox_name"] for o in sg["objects"]]
        assert names == list(REGIONS)  # 18 regions, each exactly once
        for o in sg["objects"]:
            assert o["object_id"] == f"{image_id}_{o['bbox_name']}"
            assert 0 <= o["original_x1"] < o["original_x2"] <= cols
            assert 0 <= o["original_y1"] < o["original_y2"] <= rows
            assert o["original_width"] == o["original_x2"] - o["original_x1"]
            assert 0 <= o["x1"] <= o["x2"] <= 224 and 0 <= o["y1"] <= o["y2"] <= 224
        assert [a["bbox_name"] for a in sg["attributes"]] == names
        for a in sg["attributes"]:
            for group in a["attributes"]:
                for s in group:
                    assert attr.match(s), s
                    any_finding |= "|yes|" in s and not s.startswith("nlp")
    assert any_finding


def test_padchest_csv_and_16bit_pngs(tiny_cohort):
    csv = tiny_cohort / "padchest/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    df = pd.read_csv(csv, index_col=0, dtype={"PatientID": str, "StudyID": str})
    real = pd.read_csv(Path(__file__).resolve().parents[2] / "shared/realdata/padchest/padchest_sample.csv", nrows=1)
    real_cols = [c for c in real.columns if not c.startswith("Unnamed") and c]
    assert set(real_cols) <= set(df.columns)
    truth = pd.read_parquet(tiny_cohort / "truth/truth.parquet").set_index("image_id")
    for _, r in df.iterrows():
        labels = ast.literal_eval(r.Labels)
        assert isinstance(labels, list) and labels
        path = tiny_cohort / "padchest/images" / str(r.ImageDir) / r.ImageID
        assert path.is_file()
        tid = r.ImageID.removesuffix(".png")  # truth uses the pipeline's id: the file stem
        if truth.loc[tid, "broken"]:
            continue
        img = Image.open(path)
        assert img.mode == "I;16" and img.size == (r.Columns_DICOM, r.Rows_DICOM)
        assert np.asarray(img).max() <= 4095
        assert ("normal" in labels) == bool(truth.loc[tid, "No Finding"] and not truth.loc[tid, "Support Devices"])


def test_masks_and_boxes_lie_inside_their_images(tiny_cohort, realdata):
    truth = pd.read_parquet(tiny_cohort / "truth/truth.parquet")
    by_name = {Path(f).name: r for f, (_, r) in zip(truth.file, truth.iterrows())}
    masked = truth[truth.mask_dir != ""]
    assert len(masked) >= 3
    for _, r in masked.iterrows():
        for organ in ORGANS:
            m = np.asarray(Image.open(tiny_cohort / r.mask_dir / f"{organ}.png"))
            assert m.shape == (r.rows, r.cols) and m.dtype == np.uint8
            assert set(np.unique(m)) <= {0, 255} and (m > 0).sum() > 20, organ
            ys, xs = np.nonzero(m)
            assert ys.min() > 0 and xs.min() > 0 and ys.max() < r.rows - 1 and xs.max() < r.cols - 1
    boxes = pd.read_csv(tiny_cohort / "nih/BBox_List_2017.csv")
    real = pd.read_csv(realdata / "nih/BBox_List_2017.csv.gz", nrows=2)
    assert list(boxes.columns) == list(real.columns)  # NIH's own header quirk included
    assert len(boxes) > 0 and set(boxes["Finding Label"]) <= NIH_BOX_LABELS
    for _, b in boxes.iterrows():
        r = by_name[b["Image Index"]]
        x, y, w, h = b.iloc[2:6].astype(float)
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= r.cols and y + h <= r.rows
        assert r.with_boxes and r.view != "LATERAL"


def test_findings_change_the_anatomy_where_they_belong():
    anatomy = Anatomy.sample(123, "M")
    kw = dict(view="PA", rows=320, cols=288, seed=5)
    normal = render(anatomy, [], **kw)
    big = render(anatomy, [Finding("Cardiomegaly", severity="severe")], **kw)

    def width(mask):
        return np.ptp(np.flatnonzero(mask.any(axis=0)))

    assert width(big.masks["heart"]) > 1.15 * width(normal.masks["heart"])
    assert [label for label, _ in big.boxes] == ["Cardiomegaly"]
    effusion = render(anatomy, [Finding("Pleural Effusion", side="right", severity="severe", seed=1)], **kw)
    lung, eff_lung = normal.masks["right_lung"], effusion.masks["right_lung"]
    (label, (x1, y1, x2, y2)), = effusion.boxes
    assert label == "Effusion"
    # the fluid sits in the lower part of the right hemithorax (image left)
    heart_x = np.flatnonzero(normal.masks["heart"].any(axis=0))
    assert (y1 + y2) / 2 > np.flatnonzero(lung.any(axis=1)).mean() and x2 < heart_x.mean()
    # and it is denser than the air it replaced
    region = np.zeros_like(lung)
    region[int(y1):int(y2), int(x1):int(x2)] = True
    assert effusion.image[region & lung].mean() > normal.image[region & lung].mean() + 0.03
    assert "right costophrenic angle" in {r for r, f in effusion.region_findings.items() if "Pleural Effusion" in f}
    assert not any("Pleural Effusion" in effusion.region_findings[r] for r in ("left lung", "left costophrenic angle"))
    assert eff_lung.sum() == lung.sum()  # organ masks describe anatomy, not disease


def test_signal_knob_scales_finding_contrast():
    anatomy = Anatomy.sample(7, "F")
    f = [Finding("Consolidation", side="left", zone="mid", severity="moderate", seed=3)]
    kw = dict(view="PA", rows=256, cols=256, seed=2, noise=0.0)
    base = render(anatomy, [], **kw).image
    weak = render(anatomy, f, signal=0.5, **kw).image
    strong = render(anatomy, f, signal=1.5, **kw).image
    weak_diff, strong_diff = np.abs(weak - base).sum(), np.abs(strong - base).sum()
    assert weak_diff > 0 and strong_diff > 1.6 * weak_diff


def test_signal_zero_is_a_true_null_and_the_view_confound_is_declared():
    """signal 0: the pixels of an image do not depend on its findings at all, whatever they are. What
    is left is the view (AP / PA), drawn with the label pattern as in CheXpert (a declared confound,
    measured by the metadata baseline); view_confound false draws it independently of the findings."""
    anatomy = Anatomy.sample(11, "M")
    every = [Finding("Cardiomegaly", severity="severe", seed=1), Finding("Pleural Effusion", side="bilateral", seed=2),
             Finding("Pneumothorax", side="left", seed=3), Finding("Edema", seed=4), Finding("Atelectasis", side="right", seed=5),
             Finding("Lung Lesion", side="right", zone="upper", kind="mass", size=0.07, seed=6),
             Finding("Support Devices", kind="ett,central_line,pacemaker", seed=7),
             Finding("Enlarged Cardiomediastinum", seed=8), Finding("Fracture", side="left", kind="rib5", seed=9)]
    for view in ("PA", "AP", "LATERAL"):
        kw = dict(view=view, rows=192, cols=160, seed=4, signal=0.0)
        np.testing.assert_array_equal(render(anatomy, every, **kw).image, render(anatomy, [], **kw).image)
    # the confound as CheXpert has it (default) and switched off
    def ap_rate(patients, name, positive):
        v = [s.view == "AP" for p in patients for s in p.studies if bool(s.truth[name]) == positive]
        return float(np.mean(v)), len(v)

    on = plan_cohort("default", 42, SyntheticParams())
    off = plan_cohort("default", 42, SyntheticParams(view_confound=False))
    (a1, n1), (a0, n0) = ap_rate(on, "Edema", True), ap_rate(on, "Edema", False)
    assert a1 - a0 > 0.1  # Edema is mostly an AP-film finding in CheXpert (0.98 vs 0.81 AP here)
    (b1, m1), (b0, m0) = ap_rate(off, "Edema", True), ap_rate(off, "Edema", False)
    se = np.sqrt(0.25 / m1 + 0.25 / m0)
    assert abs(b1 - b0) < 3 * se, (b1, b0, se)
    # the AP share itself is kept, and so are the label patterns of the studies
    assert abs(np.mean([s.view == "AP" for p in off for s in p.studies]) -
               np.mean([s.view == "AP" for p in on for s in p.studies])) < 0.08


def test_shipped_pattern_table_is_the_real_chexpert_statistics(realdata):
    rebuilt = build_pattern_table(realdata / "chexpert/chexpert_train.csv.gz")
    shipped = load_pattern_table()
    pd.testing.assert_frame_equal(rebuilt.reset_index(drop=True), shipped.reset_index(drop=True))


@pytest.mark.parametrize("seed", [42, 3])
def test_default_cohort_prevalence_matches_chexpert(seed):
    """Tolerance: 4 binomial standard errors at the patient level (a patient's studies are
    correlated by design: follow-ups often repeat the previous findings)."""
    params = SyntheticParams()
    patients = plan_cohort("default", seed, params)
    studies = [s for p in patients for s in p.studies]
    n_images = sum(1 for _ in iter_images(patients))
    assert 540 <= n_images <= 660
    ref = reference_prevalence(load_pattern_table(), params.uncertain_positive_rate)
    for name in CHEXPERT14:
        got = np.mean([s.truth[name] for s in studies])
        tol = 4 * np.sqrt(ref[name] * (1 - ref[name]) / len(patients))
        assert abs(got - ref[name]) <= tol, (name, got, ref[name], tol)


def test_reports_state_positive_and_negated_findings(tiny_cohort):
    patients = plan_cohort("tiny", 7, SyntheticParams(workers=1))
    checked = 0
    for p in patients:
        if p.dataset != "mimic":
            continue
        for s in p.studies:
            text = (tiny_cohort / "mimic-cxr" / f"files/p{p.patient_id[:2]}/p{p.patient_id}/s{s.study_id}.txt").read_text().lower()
            for f in s.findings:
                if f.name == "Pleural Effusion" and s.report_omits != f.name:
                    assert "effusion" in text
                    checked += 1
            if "Pneumothorax" in s.negated:
                assert "no pneumothorax" in text or "there is no pneumothorax" in text
                checked += 1
    assert checked > 0


def test_contact_sheet(tmp_path, tiny_cohort):
    from cxr.synth.preview import contact_sheet

    out = contact_sheet(tiny_cohort, tmp_path / "sheet.png", n=8, tile=128, cols=4)
    img = Image.open(out)
    assert img.size == (4 * 128, 2 * (128 + 28))
    assert np.asarray(img).std() > 20  # not blank


def test_cli_synth(tmp_path):
    from cxr.cli import main

    rc = main(["synth", "--out", str(tmp_path / "c"), "--profile", "tiny", "--seed", "1", "--preview", str(tmp_path / "p.png")])
    assert rc == 0 and (tmp_path / "p.png").is_file() and (tmp_path / "c/manifest.json").is_file()
    bad = tmp_path / "params.yaml"
    bad.write_text("ingest: {synthetic: {signal: -2}}\n")
    assert main(["synth", "--out", str(tmp_path / "d"), "--params", str(bad)]) == 2
    assert not (tmp_path / "d").exists()
