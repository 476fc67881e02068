"""cxr.dicom: decoding against known pixel values, real samples, pydicom's compressed files, error paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import chest, make_dicom
from PIL import Image
from pydicom.uid import JPEG2000Lossless, RLELossless

from cxr.dicom import (
    DecodeError,
    SaltError,
    check_image,
    NotRadiograph,
    full_range,
    normalise_sex,
    parse_age,
    pseudonym,
    pseudonym_salt,
    read_dicom,
    read_image,
    read_raster,
    window,
)

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # shipped in the wheel; never downloaded


def lungs_vs_mediastinum(img: np.ndarray) -> tuple[float, float]:
    """Mean of the two lung fields and of the central (mediastinal) strip of a frontal chest image."""
    h, w = img.shape
    rows = slice(h // 3, 2 * h // 3)
    lungs = (img[rows, w // 8 : w // 3].mean() + img[rows, 2 * w // 3 : 7 * w // 8].mean()) / 2
    mediastinum = img[rows, 9 * w // 20 : 11 * w // 20].mean()
    return float(lungs), float(mediastinum)


# ---------------------------------------------------------------- known values (synthetic DICOMs)


def test_full_range_monochrome2(tmp_path):
    arr = chest()
    d = read_dicom(make_dicom(tmp_path / "a.dcm", arr), voi="full")
    assert d.image.dtype == np.float32 and d.image.shape == arr.shape
    lo, hi = arr.min(), arr.max()
    np.testing.assert_allclose(d.image, (arr - lo) / (hi - lo), atol=1e-6)
    lungs, med = lungs_vs_mediastinum(d.image)
    assert lungs < med


def test_monochrome1_is_inverted(tmp_path):
    arr = chest()
    m2 = read_dicom(make_dicom(tmp_path / "m2.dcm", arr), voi="full").image
    inv = (4095 - arr).astype(np.uint16)  # what a MONOCHROME1 detector stores for the same anatomy
    m1 = read_dicom(make_dicom(tmp_path / "m1.dcm", inv, photometric="MONOCHROME1"), voi="full").image
    np.testing.assert_allclose(m1, m2, atol=1e-6)


def test_bits_stored_masks_high_bits(tmp_path):
    arr = chest(bits=12)
    junk = arr | np.uint16(0xF000)  # overlay/garbage bits above BitsStored=12
    a = read_dicom(make_dicom(tmp_path / "a.dcm", arr), voi="full").image
    b = read_dicom(make_dicom(tmp_path / "b.dcm", junk), voi="full").image
    np.testing.assert_array_equal(a, b)


def test_rescale_then_window_known_values(tmp_path):
    arr = np.array([[0, 100, 200, 300], [400, 500, 600, 700]], np.uint16)
    # modality LUT: y = 2x - 1000 -> [-1000 .. 400]; window 0/801 (LINEAR): 0 at <= -400.5, 1 above 399.5
    p = make_dicom(tmp_path / "w.dcm", arr, slope=2, intercept=-1000, center=0, width=801)
    got = read_dicom(p).image
    y = arr * 2.0 - 1000
    want = np.clip((y - (0 - 0.5)) / 800 + 0.5, 0, 1)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got[0, 0] == 0 and got[1, 3] == 1
    # voi="full" ignores the window: min..max of the rescaled values
    np.testing.assert_allclose(read_dicom(p, voi="full").image, (y - y.min()) / (y.max() - y.min()), atol=1e-6)


@pytest.mark.parametrize(
    "function, x, want",
    [
        ("LINEAR", [0.0, 50.0, 100.0], [0.0, (50 - 49.5) / 99 + 0.5, 1.0]),
        ("LINEAR_EXACT", [0.0, 50.0, 100.0], [0.0, 0.5, 1.0]),
        ("SIGMOID", [50.0], [0.5]),
    ],
)
def test_window_functions(function, x, want):
    np.testing.assert_allclose(window(np.array(x), 50, 100, function), want, atol=1e-6)


@pytest.mark.parametrize("function, width", [("LINEAR", 0.5), ("LINEAR_EXACT", 0), ("SIGMOID", -1), ("GAMMA", 10)])
def test_window_rejects_bad_width_or_function(function, width):
    with pytest.raises(DecodeError, match="Window Width|VOI LUT Function"):
        window(np.zeros(3), 0, width, function)


def test_voi_lut_function_from_header(tmp_path):
    arr = np.array([[0, 50, 100, 4000]], np.uint16)
    p = make_dicom(tmp_path / "s.dcm", arr, center=50, width=100, voi_function="SIGMOID")
    assert read_dicom(p).image[0, 1] == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_syntaxes_match_uncompressed(tmp_path, syntax):
    arr = chest()
    ref = read_dicom(make_dicom(tmp_path / "ref.dcm", arr)).image
    got = read_dicom(make_dicom(tmp_path / "c.dcm", arr, syntax=syntax))
    np.testing.assert_array_equal(got.image, ref)
    assert got.meta["transfer_syntax"].startswith(("RLE", "JPEG 2000"))


def test_metadata_has_no_phi_and_pseudonymises_ids(tmp_path):
    d = read_dicom(make_dicom(tmp_path / "a.dcm", chest(), patient_id="MRN-0042"))
    text = repr(d.meta)
    for secret in ("Doe", "1945", "Fake Hospital", "ACC-PHI", "MRN-0042"):
        assert secret not in text
    assert d.meta["patient_pseudonym"] == pseudonym("MRN-0042", "patient")
    assert d.meta["sex"] == "F" and d.meta["age"] == 63.0 and d.meta["view"] == "PA"
    assert d.meta["pixel_spacing"] == pytest.approx(0.2)


def test_salted_pseudonyms_resist_brute_force(tmp_path):
    """Before: unsalted SHA-256 of the header id; hashing MRN-0000..MRN-9999 recovered MRN-0001."""
    p = make_dicom(tmp_path / "a.dcm", chest(), patient_id="MRN-0001")
    candidates = [f"MRN-{i:04d}" for i in range(10_000)]
    plain = read_dicom(p).meta["patient_pseudonym"]
    assert plain in {pseudonym(c, "patient"): c for c in candidates}  # the weakness, still the default
    salted = read_dicom(p, salt="s3cret-project-salt").meta["patient_pseudonym"]
    assert salted == pseudonym("MRN-0001", "patient", "s3cret-project-salt") != plain
    assert salted not in {pseudonym(c, "patient") for c in candidates}  # without the salt: nothing matches
    assert read_dicom(p, salt="s3cret-project-salt").meta["patient_pseudonym"] == salted  # stable


def test_pseudonym_salt_from_environment_or_file(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    assert pseudonym_salt({}, repo) is None
    assert pseudonym_salt({"CXR_PSEUDONYM_SALT": " abc \n"}, repo) == "abc"
    outside = tmp_path / "secret.txt"
    outside.write_text("from-a-file\n")
    assert pseudonym_salt({"CXR_PSEUDONYM_SALT_FILE": str(outside)}, repo) == "from-a-file"
    inside = repo / "salt.txt"
    inside.write_text("oops")
    with pytest.raises(SaltError, match="inside the repository"):
        pseudonym_salt({"CXR_PSEUDONYM_SALT_FILE": str(inside)}, repo)
    with pytest.raises(SaltError, match="empty"):
        pseudonym_salt({"CXR_PSEUDONYM_SALT": "  "}, repo)
    with pytest.raises(SaltError, match="cannot read"):
        pseudonym_salt({"CXR_PSEUDONYM_SALT_FILE": str(tmp_path / "missing")}, repo)


def test_header_age_above_89_is_90(tmp_path):
    p = make_dicom(tmp_path / "old.dcm", chest())
    ds = pydicom.dcmread(p)
    ds.PatientAge = "097Y"
    ds.save_as(p)
    assert read_dicom(p).meta["age"] == 90.0


# ---------------------------------------------------------------- error paths


def test_truncated_file_is_decode_error(tmp_path):
    p = make_dicom(tmp_path / "t.dcm", chest(), truncate=3000)
    with pytest.raises(DecodeError, match="pixel data could not be decoded|unreadable"):
        read_dicom(p)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_truncated_encapsulated_pixel_data(tmp_path, syntax):
    """pydicom silently drops encapsulated PixelData cut by EOF; the reader still says 'truncated'."""
    p = make_dicom(tmp_path / "t.dcm", chest(), syntax=syntax, truncate=500)
    with pytest.raises(DecodeError, match="truncated file") as info:
        read_dicom(p)
    assert info.value.meta["transfer_syntax"] == syntax.name and info.value.meta["rows"] == 96


def test_truncated_header_is_decode_error(tmp_path):
    p = make_dicom(tmp_path / "t.dcm", chest())
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(DecodeError):
        read_dicom(p)


def test_missing_pixel_data_is_decode_error(tmp_path):
    with pytest.raises(DecodeError, match="missing pixel data"):
        read_dicom(make_dicom(tmp_path / "n.dcm", chest(), drop_pixels=True))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"slope": float("nan")}, r"RescaleSlope \(0028,1053\) nan"),
        ({"slope": float("inf")}, r"RescaleSlope \(0028,1053\) inf"),
        ({"slope": 0}, r"RescaleSlope \(0028,1053\) 0.0: must be a finite, non-zero"),
        ({"slope": 1, "intercept": float("-inf")}, r"RescaleIntercept \(0028,1052\) -inf"),
        ({"center": float("nan"), "width": 400}, r"Window Center \(0028,1050\) nan"),
        ({"center": 100, "width": float("nan")}, r"Window Width \(0028,1051\) nan"),
    ],
)
def test_invalid_rescale_or_window_is_an_error_naming_the_tag(tmp_path, kw, match):
    """Before: each of these decoded to an all-black image that convert marked ok."""
    p = make_dicom(tmp_path / "bad.dcm", chest(), **kw)
    with pytest.raises(DecodeError, match=match):
        read_dicom(p)
    if "center" in kw:  # voi="full" ignores the window, so that file is still a good image
        assert read_dicom(p, voi="full").image.std() > 0


@pytest.mark.parametrize(
    "kw",
    [
        {},  # blank pixel data: every stored value the same
        {"center": 60000, "width": 2},  # a window above every stored value: all black
    ],
)
def test_constant_decoded_image_is_an_error(tmp_path, kw):
    arr = np.full((32, 32), 1000, np.uint16) if not kw else chest()
    with pytest.raises(DecodeError, match="constant image"):
        read_dicom(make_dicom(tmp_path / "c.dcm", arr, **kw))
    png = tmp_path / "blank.png"
    Image.new("L", (16, 16), 128).save(png)
    with pytest.raises(DecodeError, match="constant image"):
        read_raster(png)


def test_check_image_refuses_non_finite_values():
    img = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    img[1, 1] = np.nan
    with pytest.raises(DecodeError, match="non-finite pixels in the decoded image: 1 NaN"):
        check_image(img)
    check_image(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4))  # a normal image passes


@pytest.mark.parametrize("rows, ok", [(200, True), (50, False), (199, False)])
def test_pixel_data_longer_than_the_header_geometry_is_an_error(tmp_path, rows, ok):
    """Before: Rows 50 over a 200-row image decoded to the top 50 rows, marked ok."""
    p = make_dicom(tmp_path / "g.dcm", chest(200, 40))
    ds = pydicom.dcmread(p)
    ds.Rows = rows
    ds.save_as(p)
    if ok:
        assert read_dicom(p).image.shape == (200, 40)
    else:
        with pytest.raises(DecodeError, match=rf"pixel data longer than the header's image size: 16000 bytes, but Rows={rows} .* need {rows * 80}"):
            read_dicom(p)


def test_one_padding_byte_is_allowed(tmp_path):
    """8-bit odd-sized pixel data is padded to an even length (PS3.5 8.1.1): still a good image."""
    arr = (chest(5, 5, bits=8)).astype(np.uint8)
    p = make_dicom(tmp_path / "odd.dcm", chest(5, 5))
    ds = pydicom.dcmread(p)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = arr.tobytes() + b"\x00"
    ds.save_as(p)
    assert read_dicom(p).image.shape == (5, 5)
    ds.PixelData = arr.tobytes() + b"\x00" * 3
    ds.save_as(p)
    with pytest.raises(DecodeError, match="pixel data longer than the header's image size: 28 bytes"):
        read_dicom(p)


def _patched(src: Path, dst: Path, old: bytes, new: bytes) -> Path:
    raw = src.read_bytes()
    assert raw.count(old) == 1 and len(old) == len(new)
    dst.write_bytes(raw.replace(old, new))
    return dst


def test_wrong_transfer_syntax_is_not_reported_as_missing_pixel_data(tmp_path):
    """Before: 'missing pixel data (no PixelData element)'."""
    p = make_dicom(tmp_path / "a.dcm", chest())
    bad = _patched(p, tmp_path / "be.dcm", b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.2\x00")  # says big endian
    with pytest.raises(DecodeError, match="corrupt header or wrong transfer syntax.*Explicit VR Big Endian"):
        read_dicom(bad)
    with pytest.raises(DecodeError, match="missing pixel data"):  # a file really without pixel data still says so
        read_dicom(make_dicom(tmp_path / "n.dcm", chest(), drop_pixels=True))


def test_corrupt_element_length_is_not_reported_as_truncation(tmp_path):
    p = make_dicom(tmp_path / "a.dcm", chest())
    raw = p.read_bytes()
    at = raw.index(b"Doe^Jane") - 4  # VR + length of Patient Name -> garbage claiming ~2 GB
    bad = tmp_path / "corrupt.dcm"
    bad.write_bytes(raw[:at] + b"\xff\xff\xff\x7f" + raw[at + 4 :])
    with pytest.raises(DecodeError, match="corrupt header"):
        read_dicom(bad)


def test_not_a_dicom(tmp_path):
    p = tmp_path / "x.dcm"
    p.write_bytes(b"this is not a DICOM file at all" * 10)
    with pytest.raises(DecodeError, match="DICOM"):
        read_dicom(p)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"modality": "CT"}, "not a projection radiograph"),
        ({"body_part": "KNEE"}, "not a chest image"),
        ({"modality": "SR", "drop_pixels": True}, "non-image object"),
        ({"frames": 2}, "multi-frame"),
    ],
)
def test_non_chest_objects_are_skipped(tmp_path, kw, match):
    with pytest.raises(NotRadiograph, match=match):
        read_dicom(make_dicom(tmp_path / "o.dcm", chest(), **kw))


def test_decompression_bomb_refused_before_decoding(tmp_path):
    p = make_dicom(tmp_path / "big.dcm", chest(200, 200))
    with pytest.raises(DecodeError, match="max_pixels"):
        read_dicom(p, max_pixels=200 * 200 - 1)
    assert read_dicom(p, max_pixels=200 * 200).image.shape == (200, 200)


def _patch_j2k_size(src: Path, dst: Path, rows: int, cols: int) -> Path:
    raw = bytearray(src.read_bytes())
    at = raw.index(b"\xff\x4f\xff\x51")  # SOC + SIZ: Xsiz, Ysiz follow Lsiz and Rsiz
    raw[at + 8 : at + 16] = cols.to_bytes(4, "big") + rows.to_bytes(4, "big")
    dst.write_bytes(bytes(raw))
    return dst


def test_jpeg2000_codestream_bomb_refused_before_decoding(tmp_path):
    """Before: a tiny J2K DICOM whose SIZ says 12000x12000 under a 96x80 header was decoded in full (856 MB)."""
    p = make_dicom(tmp_path / "j.dcm", chest(), syntax=JPEG2000Lossless)
    bomb = _patch_j2k_size(p, tmp_path / "bomb.dcm", 12000, 12000)
    assert bomb.stat().st_size < 20_000
    with pytest.raises(DecodeError, match=r"compressed frame declares 12000x12000 = 144000000 pixels \(header says 96x80\)"):
        read_dicom(bomb)
    liar = _patch_j2k_size(p, tmp_path / "liar.dcm", 192, 160)  # within budget, but not the header's size
    with pytest.raises(DecodeError, match="compressed frame size 192x160 disagrees with the header's Rows x Columns 96x80"):
        read_dicom(liar)
    assert read_dicom(p).image.shape == (96, 80)  # the untouched file is fine


def test_jpeg_sof_size_checked_against_header_and_budget(realdata, tmp_path):
    src = realdata / "siim" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
    raw = bytearray(src.read_bytes())
    at = raw.index(b"\xff\xc0")  # baseline SOF0: length(2) precision(1) rows(2) cols(2)
    assert raw[at + 5 : at + 9] == (1024).to_bytes(2, "big") * 2
    raw[at + 5 : at + 9] = (30000).to_bytes(2, "big") * 2
    (tmp_path / "big.dcm").write_bytes(bytes(raw))
    with pytest.raises(DecodeError, match="declares 30000x30000 = 900000000 pixels"):
        read_dicom(tmp_path / "big.dcm")
    raw[at + 5 : at + 9] = (512).to_bytes(2, "big") * 2
    (tmp_path / "small.dcm").write_bytes(bytes(raw))
    with pytest.raises(DecodeError, match="512x512 disagrees with the header's Rows x Columns 1024x1024"):
        read_dicom(tmp_path / "small.dcm")


def test_unsupported_photometric(tmp_path):
    with pytest.raises(DecodeError, match="PALETTE COLOR"):
        read_dicom(PYDICOM_FILES / "examples_palette.dcm", check_chest=False)


def test_bad_voi_argument(tmp_path):
    with pytest.raises(ValueError, match="voi"):
        read_dicom(make_dicom(tmp_path / "a.dcm", chest()), voi="auto")  # type: ignore[arg-type]


# ---------------------------------------------------------------- pydicom's own compressed files


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ],
)
def test_pydicom_lossless_syntaxes_equal_uncompressed(name):
    ref = read_dicom(PYDICOM_FILES / "MR_small.dcm", check_chest=False, voi="full").image
    got = read_dicom(PYDICOM_FILES / name, check_chest=False, voi="full")
    np.testing.assert_array_equal(got.image, ref)
    assert got.meta["transfer_syntax"] != "Explicit VR Little Endian"


@pytest.mark.parametrize(
    "name, syntax",
    [
        ("JPGExtended.dcm", "JPEG Extended"),
        ("JPEG2000.dcm", "JPEG 2000"),
        ("693_J2KI.dcm", "JPEG 2000"),
        ("J2K_pixelrep_mismatch.dcm", "JPEG 2000"),
        ("SC_rgb_jpeg.dcm", "JPEG Baseline"),
        ("CT_small.dcm", "Explicit VR Little Endian"),
    ],
)
def test_pydicom_lossy_and_other_syntaxes_decode(name, syntax):
    d = read_dicom(PYDICOM_FILES / name, check_chest=False)
    assert d.meta["transfer_syntax"].startswith(syntax)
    assert d.image.ndim == 2 and np.isfinite(d.image).all()
    assert 0 <= d.image.min() and d.image.max() <= 1 and d.image.max() > d.image.min()


@pytest.mark.parametrize(
    "name, err, match",
    [
        ("MR_truncated.dcm", DecodeError, "less than expected"),
        ("JPEG-lossy.dcm", DecodeError, "could not be decoded"),  # 12-bit lossy JPEG no installed plugin reads
        ("rtplan.dcm", NotRadiograph, "non-image"),
        ("test-SR.dcm", NotRadiograph, "non-image"),
    ],
)
def test_pydicom_problem_files(name, err, match):
    with pytest.raises(err, match=match):
        read_dicom(PYDICOM_FILES / name, check_chest=False)


# ---------------------------------------------------------------- real chest radiographs


def _siim(realdata: Path) -> tuple[Path, Path]:
    folder = realdata / "siim"
    twin = folder / "Fake_MONOHR1.dcm"
    orig = next(p for p in sorted(folder.glob("*.dcm")) if p != twin)
    return orig, twin


def test_siim_monochrome1_twin_is_inverted_original(realdata):
    """The twin holds the *same stored pixels* tagged MONOCHROME1, so a correct reader shows the
    inverse of the original (torchxrayvision's test asserts the same: 8 vs 255 - 9)."""
    orig, twin = _siim(realdata)
    a, b = read_dicom(orig).image, read_dicom(twin).image
    assert pydicom.dcmread(orig).PixelData == pydicom.dcmread(twin).PixelData
    np.testing.assert_allclose(b, 1 - a, atol=1e-6)
    lungs, med = lungs_vs_mediastinum(a)
    assert lungs < med - 0.1


def test_rsna_dicoms_lungs_dark(realdata):
    files = sorted((realdata / "rsna").rglob("*.dcm"))
    assert len(files) == 16
    for f in files:
        d = read_dicom(f)
        lungs, med = lungs_vs_mediastinum(d.image)
        assert lungs < med, f.name
        assert d.meta["transfer_syntax"].startswith("JPEG Baseline") and d.meta["view"] in ("PA", "AP")


def test_cr_lossy_j2k_monochrome1_15bit(realdata):
    p = realdata / "cr" / "RG1_J2KI.dcm"
    d = read_dicom(p)
    assert d.image.shape == (1955, 1841)
    assert d.meta["bits"] == 15 and d.meta["photometric"] == "MONOCHROME1"
    lungs, med = lungs_vs_mediastinum(d.image)
    assert lungs < med - 0.1
    # Window 15000/30000 is applied: raw stored values map linearly then invert.
    ds = pydicom.dcmread(p)
    raw = ds.pixel_array.astype(np.float64)
    want = 1 - np.clip((raw - 14999.5) / 29999 + 0.5, 0, 1)
    np.testing.assert_allclose(d.image, want, atol=1e-5)
    full = read_dicom(p, voi="full").image
    assert full.min() == 0 and full.max() == 1  # full range stretches, the window does not


# ---------------------------------------------------------------- PNG / JPEG


def test_real_8bit_png_and_jpeg(realdata):
    for p in [realdata / "nih" / "00000001_000.png", realdata / "lungmasks" / "1.jpg"]:
        d = read_image(p)
        raw = np.asarray(Image.open(p).convert("L"), np.float32) / 255
        np.testing.assert_allclose(d.image, raw, atol=1e-6)
        lungs, med = lungs_vs_mediastinum(d.image)
        assert lungs < med
        assert d.meta["bits"] == 8


def test_16bit_png_full_range_and_monochrome1_hint(tmp_path):
    arr = chest(bits=12)
    p = tmp_path / "pc.png"
    Image.fromarray(arr.astype(np.uint16)).save(p)
    d = read_raster(p)
    assert d.meta["bits"] == 16
    np.testing.assert_allclose(d.image, full_range(arr), atol=1e-6)
    inv = read_raster(p, photometric="MONOCHROME1")
    np.testing.assert_allclose(inv.image, 1 - d.image, atol=1e-6)


def test_truncated_png_is_decode_error(tmp_path):
    p = tmp_path / "t.png"
    Image.fromarray(chest(bits=12)).save(p)
    p.write_bytes(p.read_bytes()[:-400])
    with pytest.raises(DecodeError, match="unreadable"):
        read_raster(p)


def test_png_pixel_limit(tmp_path):
    p = tmp_path / "b.png"
    Image.new("L", (300, 300)).save(p)
    with pytest.raises(DecodeError, match="max_pixels"):
        read_raster(p, max_pixels=1000)


def test_unknown_suffix(tmp_path):
    p = tmp_path / "a.tif"
    p.write_bytes(b"x")
    with pytest.raises(DecodeError, match="unknown image type"):
        read_image(p)


@pytest.mark.parametrize(
    "value, want",
    [("045Y", 45.0), ("006M", 0.5), (" 3Y", 3.0), (71, 71.0), ("abc", None), (None, None), (-4, None),
     ("089Y", 89.0), ("090Y", 90.0), ("104Y", 90.0), (97, 90.0)],  # HIPAA safe harbour: 90 = "90 or older"
)
def test_parse_age(value, want):
    got = parse_age(value)
    assert (np.isnan(got) if want is None else got == want)


def test_normalise_sex():
    assert [normalise_sex(v) for v in ("M", "female", "o", "", None, float("nan"), "X")] == [
        "M", "F", "O", None, None, None, None
    ]


@pytest.mark.parametrize("bits", [12, 16])
def test_draft_jpeg2000_keeps_values(tmp_path, bits):
    """Reduced-resolution JPEG 2000 decoding keeps the stored value range (Pillow left-aligns low
    precisions; the reader shifts back) and so the same window/normalisation applies."""
    from cxr.convert import fit

    arr = chest(200, 160, bits=bits)
    p = make_dicom(
        tmp_path / "j.dcm", arr, bits_stored=bits, syntax=JPEG2000Lossless, center=(1 << bits) / 2, width=1 << bits
    )
    small = read_dicom(p, draft=(50, "long"))
    full = read_dicom(p)
    assert small.image.shape == (50, 40) and (small.meta["rows"], small.meta["cols"]) == (200, 160)
    ref, _ = fit(full.image, 50, "long", "none")
    diff = np.abs(small.image - ref)
    assert np.median(diff) < 1e-3 and diff.mean() < 0.05  # equal away from the hard synthetic edges
    assert small.image.max() <= 1 and small.image.max() > 0.6
