"""cxr.convert + cxr.executor + stages/convert.py: discovery, geometry, the stage end to end, executors."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from dicom_factory import FAKE_PHI, chest, make_dicom
from PIL import Image
from pydicom.uid import JPEG2000Lossless, RLELossless

from cxr.convert import COLUMNS, ConvertError, Options, convert, discover, encode_png, fit, normalise_view
from cxr.executor import (
    DaskExecutor,
    ExecutorError,
    ProcessExecutor,
    SerialExecutor,
    default_workers,
    make_executor,
)
from cxr.params import ConvertParams

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "stages"))
import convert as convert_stage  # noqa: E402  (stages/convert.py)

SERIAL = ConvertParams(workers=1, size=64, max_failure_fraction=0.5)  # the test tree is 25% broken


def _lungs_vs_mediastinum(img: np.ndarray) -> tuple[float, float]:
    h, w = img.shape
    rows = slice(h // 3, 2 * h // 3)
    lungs = (img[rows, w // 8 : w // 3].mean() + img[rows, 2 * w // 3 : 7 * w // 8].mean()) / 2
    return float(lungs), float(img[rows, 9 * w // 20 : 11 * w // 20].mean())


def build_raw(root: Path) -> Path:
    """A small raw tree in the native layouts, with every kind of broken and non-chest file."""
    mimic = root / "mimic-cxr"
    rows = []
    specs = [
        ("10000001", "50000001", "d-ok-plain", {}),
        ("10000001", "50000001", "d-lateral", {"view": "LATERAL"}),
        ("10000002", "50000002", "d-mono1-rle", {"photometric": "MONOCHROME1", "syntax": RLELossless}),
        ("10000003", "50000003", "d-j2k-window", {"syntax": JPEG2000Lossless, "center": 2047, "width": 4096}),
        ("10000004", "50000004", "d-truncated", {"truncate": 4000}),
        ("10000005", "50000005", "d-nopixels", {"drop_pixels": True}),
        ("10000006", "50000006", "d-knee", {"body_part": "KNEE"}),
    ]
    for subject, study, dicom_id, kw in specs:
        folder = mimic / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True, exist_ok=True)
        arr = chest(96, 80)
        if kw.get("photometric") == "MONOCHROME1":
            arr = (4095 - arr).astype(np.uint16)
        make_dicom(folder / f"{dicom_id}.dcm", arr, patient_id=f"MRN-{subject}", **kw)
        rows.append({"dicom_id": dicom_id, "subject_id": subject, "study_id": study,
                     "ViewPosition": kw.get("view", "PA"), "Rows": 96, "Columns": 80})
    (folder.parent / f"s{study}.txt").write_text("FINDINGS: none.\n")  # reports are not images
    pd.DataFrame(rows).to_csv(mimic / "mimic-cxr-2.0.0-metadata.csv", index=False)

    pc = root / "padchest"
    (pc / "images" / "0").mkdir(parents=True)
    pc_rows = []
    pngs = [("pc1_aaaaaa.png", {}), ("pc2_bbbbbb.png", {"mono1": True}), ("pc3_cccccc.png", {"truncate": True})]
    for i, (name, kw) in enumerate(pngs):
        arr = chest(72, 96, bits=12)
        if kw.get("mono1"):
            arr = (4095 - arr).astype(np.uint16)
        p = pc / "images" / "0" / name
        Image.fromarray(arr).save(p)
        if kw.get("truncate"):
            p.write_bytes(p.read_bytes()[:-300])
        pc_rows.append({"ImageID": name, "ImageDir": 0, "StudyDate_DICOM": "20150101", "StudyID": f"st{i}",
                        "PatientID": f"pat{i}", "PatientBirth": "1950.0", "PatientSex_DICOM": "F",
                        "ViewPosition_DICOM": "POSTEROANTERIOR", "Projection": "PA",
                        "PhotometricInterpretation_DICOM": "MONOCHROME1" if kw.get("mono1") else "MONOCHROME2",
                        "SpatialResolution_DICOM": "0.139"})
    pd.DataFrame(pc_rows).to_csv(pc / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv")

    # Masks and scene graphs are labels, not source images: discovery must skip them.
    (root / "masks" / "d-ok-plain").mkdir(parents=True)
    Image.new("L", (8, 8)).save(root / "masks" / "d-ok-plain" / "heart.png")
    (root / "chest-imagenome").mkdir()
    (root / "chest-imagenome" / "x_SceneGraph.json").write_text("{}")
    # A dataset without a table (DICOM headers -> pseudonyms) and a duplicate image id.
    (root / "hospital").mkdir()
    make_dicom(root / "hospital" / "same.dcm", chest(), patient_id="MRN-H1")
    (root / "hospital" / "sub").mkdir()
    make_dicom(root / "hospital" / "sub" / "same.dcm", chest(), patient_id="MRN-H2")
    return root


@pytest.fixture()
def raw(tmp_path) -> Path:
    return build_raw(tmp_path / "raw")


def _run(raw: Path, out: Path, params: ConvertParams = SERIAL, **kw) -> tuple[dict, pd.DataFrame]:
    summary = convert(raw, out / "images", out / "images.parquet", params, **kw)
    return summary, pd.read_parquet(out / "images.parquet")


# ---------------------------------------------------------------------- geometry & encoding


@pytest.mark.parametrize(
    "side, square, shape, geo",
    [
        ("long", "pad", (50, 50), {"scale": 0.25, "offset_x": 0, "offset_y": 12}),
        ("long", "none", (25, 50), {"scale": 0.25, "offset_x": 0, "offset_y": 0}),
        ("short", "crop", (50, 50), {"scale": 0.5, "offset_x": -25, "offset_y": 0}),
        ("short", "none", (50, 100), {"scale": 0.5, "offset_x": 0, "offset_y": 0}),
        ("short", "pad", (50, 100), {"scale": 0.5, "offset_x": 0, "offset_y": 0}),
        ("long", "crop", (25, 50), {"scale": 0.25, "offset_x": 0, "offset_y": 0}),
    ],
)
def test_fit_sizes_and_offsets(side, square, shape, geo):
    img = np.random.default_rng(0).random((100, 200), dtype=np.float32)
    out, g = fit(img, 50, side, square)
    assert out.shape == shape and g == geo
    if square == "pad" and side == "long":
        assert out[:12].max() == 0 and out[-13:].max() == 0 and out[12:37].min() >= 0


def test_fit_is_area_interpolation():
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    out, _ = fit(img, 2, "long", "none")
    np.testing.assert_allclose(out, [[2.5, 4.5], [10.5, 12.5]], atol=1e-5)


def test_fit_rejects_bad_options():
    with pytest.raises(ValueError, match="side"):
        fit(np.zeros((4, 4), np.float32), 2, "middle")
    with pytest.raises(ValueError, match="square"):
        fit(np.zeros((4, 4), np.float32), 2, "long", "circle")


@pytest.mark.parametrize("bits, dtype, top", [(8, np.uint8, 255), (16, np.uint16, 65535)])
def test_encode_png_roundtrip_and_determinism(bits, dtype, top):
    img = np.linspace(0, 1, 64 * 32, dtype=np.float32).reshape(64, 32)
    a, b = encode_png(img, bits), encode_png(img, bits)
    assert a == b
    back = np.asarray(Image.open(__import__("io").BytesIO(a)))
    assert back.dtype == dtype and back.max() == top and back.min() == 0


def test_encode_png_bad_bits():
    with pytest.raises(ValueError, match="bits"):
        encode_png(np.zeros((2, 2), np.float32), 12)


def test_normalise_view():
    assert [normalise_view(v) for v in ("POSTEROANTERIOR", "ap", "LL", "L", "", None, "AP AXIAL")] == [
        "PA", "AP", "LATERAL", "LATERAL", None, None, "AP AXIAL"
    ]


# ---------------------------------------------------------------------- discovery


def test_discover_uses_tables_paths_and_skips_label_folders(raw):
    src = {s.source_path: s for s in discover(raw)}
    assert not any(p.startswith(("masks/", "chest-imagenome/")) for p in src)
    assert not any(p.endswith(".txt") for p in src)
    m = src["mimic-cxr/files/p10/p10000001/s50000001/d-lateral.dcm"]
    assert (m.dataset, m.image_id, m.patient_id, m.study_id, m.view) == (
        "mimic", "d-lateral", "10000001", "50000001", "LATERAL"
    )
    p = src["padchest/images/0/pc2_bbbbbb.png"]
    assert (p.dataset, p.image_id, p.patient_id, p.study_id, p.photometric, p.age) == (
        "padchest", "pc2_bbbbbb", "pat1", "st1", "MONOCHROME1", 65.0
    )
    h = [s for k, s in src.items() if k.startswith("hospital/")]
    assert len({s.image_id for s in h}) == 2 and all(s.image_id.startswith("same_") for s in h)
    assert list(src) == sorted(src)


def test_discover_nih_table_chexpert_paths_and_symlink_loops(realdata, tmp_path):
    raw = tmp_path / "raw"
    (raw / "nih" / "images").mkdir(parents=True)
    shutil.copy(realdata / "nih" / "00000001_000.png", raw / "nih" / "images")
    table = pd.read_csv(realdata / "nih" / "Data_Entry_2017_v2020.csv.gz", nrows=50)  # the real NIH table
    table.to_csv(raw / "nih" / "Data_Entry_2017_v2020.csv", index=False)
    cx = raw / "CheXpert-v1.0-small" / "train" / "patient00001" / "study1"
    cx.mkdir(parents=True)
    shutil.copy(realdata / "lungmasks" / "1.jpg", cx / "view1_frontal.jpg")
    (raw / "nih" / "images" / "loop").symlink_to(raw / "nih")  # a symlink cycle must not hang discovery
    src = {s.dataset: s for s in discover(raw)}
    assert len(discover(raw)) == 2
    row = table.set_index("Image Index").loc["00000001_000.png"]
    nih = src["nih"]
    assert (nih.image_id, nih.patient_id, nih.sex, nih.age, nih.view) == (
        "00000001_000", str(row["Patient ID"]), row["Patient Gender"], float(row["Patient Age"]), row["View Position"]
    )
    c = src["chexpert"]
    assert (c.image_id, c.patient_id, c.study_id) == (
        "patient00001_study1_view1_frontal", "patient00001", "patient00001_study1"
    )


def test_discover_missing_dir(tmp_path):
    with pytest.raises(ConvertError, match="does not exist"):
        discover(tmp_path / "nope")


# ---------------------------------------------------------------------- the stage end to end


def test_convert_end_to_end(raw, tmp_path):
    summary, df = _run(raw, tmp_path / "a")
    assert list(df.columns) == list(COLUMNS)
    by = df.set_index("image_id")
    assert summary["images"] == len(df) == 12
    assert by.loc["d-truncated", "status"] == "error" and by.loc["d-nopixels", "status"] == "error"
    assert "missing pixel data" in by.loc["d-nopixels", "error"]
    assert by.loc["pc3_cccccc", "status"] == "error" and "unreadable" in by.loc["pc3_cccccc", "error"]
    assert by.loc["d-knee", "status"] == "skipped" and "KNEE" in by.loc["d-knee", "error"]
    assert (summary["ok"], summary["error"], summary["skipped"]) == (8, 3, 1)
    assert pd.isna(by.loc["d-knee", "png_path"])
    # failure rows still say what the header told (size, syntax), for triage
    assert (by.loc["d-nopixels", "rows"], by.loc["d-nopixels", "transfer_syntax"]) == (96, "Explicit VR Little Endian")
    assert by.loc["d-knee", "patient_id"] == "10000006"

    ok = df[df.status == "ok"]
    images = tmp_path / "a" / "images"
    for r in ok.itertuples():
        img = np.asarray(Image.open(images / r.png_path), np.float32) / 255
        assert img.shape == (64, 64) == (r.out_rows, r.out_cols)
        content = img[max(r.offset_y, 0) : max(r.offset_y, 0) + round(r.rows * r.scale),
                      max(r.offset_x, 0) : max(r.offset_x, 0) + round(r.cols * r.scale)]
        lungs, med = _lungs_vs_mediastinum(content)
        assert lungs < med, r.image_id  # MONOCHROME1 DICOM and PNG included
    assert sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png")) == sorted(ok.png_path)

    # headers -> pseudonyms; tables -> their ids; padchest age from birth year, never the year
    h = df[df.dataset == "hospital"]
    assert h.patient_id.nunique() == 2 and not h.patient_id.str.contains("MRN").any()
    assert by.loc["pc1_aaaaaa", "age"] == 65.0 and by.loc["d-ok-plain", "sex"] == "F"
    assert by.loc["pc1_aaaaaa", "view"] == "PA"
    assert by.loc["pc1_aaaaaa", "pixel_spacing"] == 0.139 and by.loc["d-ok-plain", "pixel_spacing"] == 0.2

    # no PHI anywhere in the outputs
    blob = (tmp_path / "a" / "images.parquet").read_bytes() + b"".join(p.read_bytes() for p in images.rglob("*.png"))
    for secret in [*FAKE_PHI.values(), "MRN-1000", "1950"]:
        assert secret.encode() not in blob, secret


def test_convert_is_deterministic_across_runs_and_executors(raw, tmp_path):
    _run(raw, tmp_path / "a")
    _run(raw, tmp_path / "b", ConvertParams(workers=2, size=64, chunk_size=2, max_failure_fraction=0.5))

    def digest(out: Path) -> dict[str, str]:  # the two DVC outputs: images/ and images.parquet
        files = [p for p in sorted((out / "images").rglob("*")) if p.is_file()] + [out / "images.parquet"]
        return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert len(digest(tmp_path / "a")) == 9
    assert not any("state" in k for k in digest(tmp_path / "a"))  # the mtime state lives outside the outputs


def test_convert_on_local_dask_cluster(raw, tmp_path):
    from distributed import LocalCluster

    _run(raw, tmp_path / "serial")
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None, local_directory=str(tmp_path / "dask")
    ) as cluster:
        params = ConvertParams(size=64, scheduler=cluster.scheduler_address, chunk_size=3, max_failure_fraction=0.5)
        summary, _ = _run(raw, tmp_path / "dask", params)
    assert summary["converted"] == 12
    assert (tmp_path / "serial" / "images.parquet").read_bytes() == (tmp_path / "dask" / "images.parquet").read_bytes()


def test_incremental_rerun_converts_only_changes(raw, tmp_path):
    out = tmp_path / "o"
    first, _ = _run(raw, out)
    assert first["converted"] == 12
    again, _ = _run(raw, out)
    assert (again["converted"], again["reused"]) == (0, 12)

    new = raw / "mimic-cxr" / "files" / "p10" / "p10000009" / "s50000009"
    new.mkdir(parents=True)
    make_dicom(new / "d-new.dcm", chest())
    grown, df = _run(raw, out)
    assert (grown["converted"], grown["reused"]) == (1, 12)
    assert "d-new" in set(df.image_id)

    (raw / "padchest" / "images" / "0" / "pc1_aaaaaa.png").unlink()
    shrunk, df = _run(raw, out)
    assert shrunk["converted"] == 0 and shrunk["removed_stale_png"] == 1
    assert not (out / "images" / "padchest" / "pc1_aaaaaa.png").exists()

    os.remove(out / "images" / "mimic" / "d-lateral.png")  # an output lost behind our back
    healed, _ = _run(raw, out)
    assert healed["converted"] == 1 and (out / "images" / "mimic" / "d-lateral.png").is_file()

    bigger, df = _run(raw, out, ConvertParams(workers=1, size=32, max_failure_fraction=0.5))
    assert bigger["converted"] == len(df)
    assert set(df.loc[df.status == "ok", "out_rows"]) == {32}


class _DiesAfter(SerialExecutor):
    """A real serial executor that is killed (KeyboardInterrupt) when it is asked for group ``n + 1``."""

    def __init__(self, n: int) -> None:
        self.left = n

    def map(self, fn, items, *, desc=""):
        if self.left == 0:
            raise KeyboardInterrupt("killed")
        self.left -= 1
        return super().map(fn, items, desc=desc)


def test_killed_convert_resumes_from_its_saved_progress(raw, tmp_path):
    """Before: the state was written only at the end, so a killed run decoded the whole set again."""
    params = ConvertParams(workers=1, size=64, chunk_size=2, checkpoint_images=4, max_failure_fraction=0.5)
    with pytest.raises(KeyboardInterrupt):
        _run(raw, tmp_path / "a", params, executor=_DiesAfter(2))  # two groups of 4 images done, then killed
    assert not (tmp_path / "a" / "images.parquet").exists()
    summary, df = _run(raw, tmp_path / "a", params)
    assert summary["reused"] == 8 and summary["converted"] == 4
    _, full = _run(raw, tmp_path / "b", params)  # the same bytes as a run never interrupted
    pd.testing.assert_frame_equal(df, full)
    for png in full.png_path.dropna():
        assert (tmp_path / "a" / "images" / png).read_bytes() == (tmp_path / "b" / "images" / png).read_bytes()


def test_16bit_short_side_crop_and_full_range(raw, tmp_path):
    params = ConvertParams(
        workers=1, size=40, side="short", square="crop", bits=16, voi="full", max_failure_fraction=0.5
    )
    _, df = _run(raw, tmp_path / "o", params)
    ok = df[df.status == "ok"]
    for r in ok.itertuples():
        png = Image.open(tmp_path / "o" / "images" / r.png_path)
        assert png.mode.startswith("I") and png.size == (40, 40)
        assert np.asarray(png).max() > 255  # really 16-bit
        assert min(r.rows, r.cols) * r.scale == pytest.approx(40)
        assert min(r.offset_x, r.offset_y) <= 0


def test_too_many_failures_fail_the_stage_but_write_the_table(raw, tmp_path):
    with pytest.raises(ConvertError, match=r"3 of 12 images failed \(25.0%\) > convert.max_failure_fraction=0.2"):
        params = ConvertParams(workers=1, size=64, max_failure_fraction=0.2)
        convert(raw, tmp_path / "images", tmp_path / "images.parquet", params)
    assert (pd.read_parquet(tmp_path / "images.parquet").status == "error").sum() == 3


def test_failure_message_lists_reasons_most_common_first(tmp_path):
    """Before: the 'most common' reasons came in alphabetical order, not by count."""
    raw = tmp_path / "raw" / "hospital"
    raw.mkdir(parents=True)
    make_dicom(raw / "ok.dcm", chest())
    for i in range(3):  # three of one reason ...
        make_dicom(raw / f"nopix{i}.dcm", chest(), drop_pixels=True)
    make_dicom(raw / "black.dcm", chest(), slope=0)  # ... one of an alphabetically earlier reason
    with pytest.raises(ConvertError) as info:
        convert(raw.parent, tmp_path / "images", tmp_path / "t.parquet", ConvertParams(workers=1, size=64))
    assert "Most common: {'missing pixel data': 3, 'invalid RescaleSlope': 1}" in str(info.value)
    df = pd.read_parquet(tmp_path / "t.parquet")
    # the zero-slope file is an error row, not a black PNG marked ok
    assert df.set_index("source_path").loc["hospital/black.dcm", "status"] == "error"


def test_pseudonyms_are_salted_from_the_environment_and_ages_capped(tmp_path, monkeypatch, caplog):
    """Before: unsalted SHA-256 pseudonyms (reversible for small id spaces) and ages above 89 as given."""
    from cxr.dicom import pseudonym

    raw = tmp_path / "raw" / "hospital"
    raw.mkdir(parents=True)
    p = make_dicom(raw / "a.dcm", chest(), patient_id="MRN-0001")
    ds = __import__("pydicom").dcmread(p)
    ds.PatientAge = "102Y"
    ds.save_as(p)
    params = ConvertParams(workers=1, size=64)
    caplog.set_level("WARNING")
    convert(raw.parent, tmp_path / "i1", tmp_path / "t1.parquet", params)
    plain = pd.read_parquet(tmp_path / "t1.parquet").iloc[0]
    assert plain.patient_id == pseudonym("MRN-0001", "patient") and plain.age == 90.0
    assert "NO PSEUDONYM SALT" in caplog.text  # the default works, but says loudly what it means

    caplog.clear()
    monkeypatch.setenv("CXR_PSEUDONYM_SALT", "a-long-random-project-secret")
    convert(raw.parent, tmp_path / "i2", tmp_path / "t2.parquet", params)
    salted = pd.read_parquet(tmp_path / "t2.parquet").iloc[0]
    assert salted.patient_id == pseudonym("MRN-0001", "patient", "a-long-random-project-secret") != plain.patient_id
    assert "NO PSEUDONYM SALT" not in caplog.text
    state = (tmp_path / ".i2.convert-state.json").read_text()
    assert "a-long-random-project-secret" not in state  # the secret never reaches a file
    monkeypatch.setenv("CXR_PSEUDONYM_SALT", "")
    with pytest.raises(ConvertError, match="CXR_PSEUDONYM_SALT is set but empty"):
        convert(raw.parent, tmp_path / "i3", tmp_path / "t3.parquet", params)


def test_no_images_is_an_error(tmp_path):
    (tmp_path / "raw" / "masks").mkdir(parents=True)
    Image.new("L", (4, 4)).save(tmp_path / "raw" / "masks" / "m.png")
    with pytest.raises(ConvertError, match="no source images"):
        convert(tmp_path / "raw", tmp_path / "images", tmp_path / "t.parquet", SERIAL)


def test_tiny_synthetic_cohort_broken_files_are_counted(tiny_cohort, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_cohort, raw)
    summary, df = _run(raw, tmp_path / "o", ConvertParams(size=64, workers=2))
    assert summary["images"] == len(df) >= 30 and summary["error"] >= 1
    assert set(df.dataset) >= {"mimic", "padchest"}
    assert df.image_id.is_unique and df.loc[df.status == "ok", "png_path"].notna().all()
    assert df.loc[df.status == "error", "error"].str.len().gt(0).all()
    truth = pd.read_parquet(tiny_cohort / "truth" / "truth.parquet")
    assert len(truth)  # present in the raw tree, never read by convert (it is not an image)


def test_real_samples_convert(realdata, tmp_path):
    raw = tmp_path / "raw"
    for sub in ("siim", "rsna", "cr", "nih"):
        for p in sorted((realdata / sub).rglob("*")):
            if p.suffix.lower() in (".dcm", ".png"):
                (raw / sub).mkdir(parents=True, exist_ok=True)
                shutil.copy(p, raw / sub / p.name)
    summary, df = _run(raw, tmp_path / "o", ConvertParams(size=256, workers=2))
    assert summary["ok"] == len(df) == 21
    for r in df.itertuples():
        img = np.asarray(Image.open(tmp_path / "o" / "images" / r.png_path), np.float32) / 255
        assert img.shape == (256, 256)
        assert max(r.rows, r.cols) * r.scale == pytest.approx(256)
        if r.image_id != "Fake_MONOHR1":  # the twin's tag says "inverted": it shows the negative
            lungs, med = _lungs_vs_mediastinum(img)
            assert lungs < med, r.image_id
    cr = df.set_index("image_id").loc["RG1_J2KI"]
    assert (cr.offset_x, cr.offset_y, round(cr.cols * cr.scale)) == (7, 0, 241)  # 1841x1955 kept its aspect


@pytest.mark.parametrize(
    "name, size",
    [
        ("cr/RG1_J2KI.dcm", 512),  # 15-bit lossy JPEG 2000: one wavelet level fewer
        ("rsna/dicom/0004cfab-14fd-4e49-80ba-63a80b6bddd6.dcm", 256),  # JPEG baseline: DCT scaled by 1/4
    ],
)
def test_draft_decoding_matches_full_decoding(realdata, tmp_path, name, size):
    """Reduced-resolution decoding (JPEG 2000 levels / JPEG DCT scaling) barely changes the output."""
    import pydicom

    from cxr.convert import Source, convert_one
    from cxr.dicom import _draft_decode

    path = realdata / name
    if not path.exists():  # the RSNA file may sit one level up in other copies of realdata
        path = next((realdata / "rsna").rglob(Path(name).name))
    assert _draft_decode(pydicom.dcmread(path), (size, "long")) is not None  # the fast path is taken
    src = Source(source_path=path.name, dataset="x", image_id="img")
    out = {}
    for draft in (True, False):
        row = convert_one((str(path.parent), str(tmp_path / str(draft)), src, Options(size=size, draft=draft)))
        assert row["status"] == "ok" and (row["rows"], row["cols"]) == pydicom_shape(path)
        out[draft] = np.asarray(Image.open(tmp_path / str(draft) / row["png_path"]), np.float32)
    assert np.abs(out[True] - out[False]).mean() < 2.0  # gray levels out of 255


def pydicom_shape(path: Path) -> tuple[int, int]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return int(ds.Rows), int(ds.Columns)


# ---------------------------------------------------------------------- the thin stage script


def _params_file(tmp_path: Path, **convert_kw) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"convert": {"workers": 1, "size": 64, "max_failure_fraction": 0.5, **convert_kw}}))
    return p


def test_stage_main(raw, tmp_path):
    args = ["--raw", str(raw), "--images", str(tmp_path / "images"), "--table", str(tmp_path / "images.parquet")]
    assert convert_stage.main(["--params", str(_params_file(tmp_path)), *args]) == 0
    assert len(pd.read_parquet(tmp_path / "images.parquet")) == 12
    assert convert_stage.main(["--params", str(_params_file(tmp_path, max_failure_fraction=0.1)), *args]) == 1
    assert convert_stage.main(["--params", str(_params_file(tmp_path, bits=12)), *args]) == 2


def test_stage_parser_requires_paths():
    with pytest.raises(SystemExit):
        convert_stage.get_args_parser().parse_args([])


# ---------------------------------------------------------------------- executors


def _square(x: int) -> int:
    return x * x


def _die(x: int) -> int:
    os._exit(3)


@pytest.mark.parametrize("ex", [SerialExecutor(), ProcessExecutor(2, max_inflight=1)], ids=["serial", "processes"])
def test_executors_keep_input_order(ex):
    with ex:
        assert ex.map(_square, list(range(25)), desc="t") == [i * i for i in range(25)]


def test_process_executor_worker_crash_is_a_clear_error():
    with ProcessExecutor(1) as ex, pytest.raises(ExecutorError, match="worker process died"):
        ex.map(_die, [1, 2])


def test_make_executor_choices():
    assert isinstance(make_executor(1), SerialExecutor)
    ex = make_executor(2)
    assert isinstance(ex, ProcessExecutor) and ex.workers == 2
    ex.close()
    assert default_workers() >= 1
    with pytest.raises(ValueError, match="workers"):
        ProcessExecutor(0)


def test_dask_unreachable_scheduler():
    with pytest.raises(ExecutorError, match="cannot reach the Dask scheduler"):
        DaskExecutor("tcp://127.0.0.1:9", timeout=1)


def test_options_digest_changes_with_output_options():
    a = Options.from_params(ConvertParams())
    assert a.digest() == Options.from_params(ConvertParams(workers=3, chunk_size=2)).digest()
    assert a.digest() != Options.from_params(ConvertParams(size=256)).digest()


# ---------------------------------------------------------------------- the real DVC pipeline


@pytest.mark.slow
def test_dvc_repro_ingest_convert_then_noop(tmp_path, repo_root):
    """`dvc repro convert` on synthetic://tiny runs ingest + convert; the second run does nothing."""
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("cxr", "stages"):
        shutil.copytree(repo_root / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(repo_root / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["ingest"]["source"] = "synthetic://tiny"
    params["convert"].update(size=64, workers=1)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(repo)}

    def run(*args: str) -> str:
        res = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"{args}:\n{res.stdout}\n{res.stderr}"
        return res.stdout + res.stderr

    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    first = run(sys.executable, "-m", "dvc", "repro", "convert")
    assert "Running stage 'ingest'" in first and "Running stage 'convert'" in first
    df = pd.read_parquet(repo / "data" / "interim" / "images.parquet")
    assert len(df) >= 30 and (df.status == "error").sum() >= 1 and (df.status == "ok").sum() >= 25
    second = run(sys.executable, "-m", "dvc", "repro", "convert")
    assert "Running stage" not in second and "didn't change" in second


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"scheduler": "localhost:8786"}, "malformed Dask scheduler address"),
        ({"side": "middle"}, "convert.side"),
        ({"size": 8}, r"convert.size = 8: .*>= 16"),
        ({"max_failure_fraction": 2}, "convert.max_failure_fraction"),
    ],
)
def test_convert_params_are_validated(raw, match):
    from cxr.params import ParamsError, parse_section

    with pytest.raises(ParamsError, match=match):
        parse_section("convert", raw)
    assert parse_section("convert", {"scheduler": " "}).scheduler is None


def test_bench_script_runs(tiny_cohort, capsys):
    """bench/convert.py stays runnable (its figures are not asserted: they depend on the machine)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_convert", REPO / "bench" / "convert.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--raw", str(tiny_cohort), "--repeat", "1", "--size", "64", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "ratio stage / naive" in out and "ratio first / rerun" in out


def test_mimic_dicom_id_listed_for_two_patients_is_one_counted_error_in_convert_and_label(tmp_path):
    """label keeps neither row, convert converts neither: one image never carries two patients."""
    from cxr.sources import mimic as mimic_source

    root = tmp_path / "raw"
    folder = root / "mimic-cxr" / "files" / "p10" / "p10000001" / "s50000001"
    folder.mkdir(parents=True)
    make_dicom(folder / "dup.dcm", chest(96, 80), patient_id="MRN-1")
    make_dicom(folder / "fine.dcm", chest(96, 80), patient_id="MRN-1")
    pd.DataFrame([
        {"dicom_id": "dup", "subject_id": "10000001", "study_id": "50000001", "ViewPosition": "PA"},
        {"dicom_id": "fine", "subject_id": "10000001", "study_id": "50000001", "ViewPosition": "PA"},
        {"dicom_id": "dup", "subject_id": "10000002", "study_id": "50000002", "ViewPosition": "PA"},
    ]).to_csv(root / "mimic-cxr" / "mimic-cxr-2.0.0-metadata.csv", index=False)
    images, issues = mimic_source.read_metadata(root / "mimic-cxr")
    assert images["image_id"].tolist() == ["fine"]
    dup_issues = [i for i in issues if "'dup'" in i.reason]
    assert [i.row for i in dup_issues] == ["line 2", "line 4"]
    assert "mimic-cxr-2.0.0-metadata.csv" in dup_issues[0].reason and "subject 10000002" in dup_issues[0].reason
    summary, df = _run(root, tmp_path / "out", ConvertParams(workers=1, size=64, max_failure_fraction=0.9))
    row = df.set_index("image_id").loc["dup"]
    assert row["status"] == "error" and "listed for different patients" in row["error"] and pd.isna(row["png_path"])
    assert df.set_index("image_id").loc["fine", "status"] == "ok" and summary["error"] == 1
