"""Decode one radiograph (DICOM, 16-bit PNG, 8-bit PNG/JPEG) into a display-ready float image.

Every reader returns a :class:`Decoded`: a float32 array in ``[0, 1]`` where **0 is dark and lungs
are dark** (MONOCHROME2 orientation), plus the non-identifying header facts that go into
``images.parquet``. DICOM decoding follows PS3.3 C.11 in the order the standard prescribes:

1. stored values masked to *Bits Stored* (sign-extended when *Pixel Representation* is 1);
2. modality LUT (*Rescale Slope/Intercept* or a *Modality LUT Sequence*);
3. VOI: a *VOI LUT Sequence* or *Window Center/Width* (with *VOI LUT Function*) when present and
   ``voi="window"``; otherwise the full range of the image (min..max);
4. MONOCHROME1 inverted, so every output shows lungs dark.

Problems the caller should record rather than crash on raise :class:`DecodeError` (a failure:
truncated file, missing pixel data, unsupported transfer syntax, decompression bomb) or
:class:`NotRadiograph` (a valid object that is not a chest radiograph: structured reports, CT,
a knee; recorded as *skipped*).

No PHI leaves this module: only the header fields named in :data:`SAFE_FIELDS` are read into
the metadata, patient/study identifiers are replaced by pseudonyms (:func:`pseudonym`: HMAC-SHA256
keyed by a per-project secret salt, see :func:`pseudonym_salt`; plain SHA-256 without one) so that
patient-level splits still work on datasets without a metadata table, and ages above 89 are 90.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from cxr.errors import CxrError

log = logging.getLogger(__name__)

Voi = Literal["window", "full"]

#: Modalities of projection radiography. Anything else with pixel data is skipped.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "OT"})
#: Modalities that never carry an image (reports, presentation states, key objects ...).
NON_IMAGE_MODALITIES = frozenset(
    {"SR", "PR", "KO", "DOC", "REG", "RWV", "SEG", "PLAN", "AU", "ECG", "RTPLAN", "RTSTRUCT", "RTRECORD"}
)
#: Substrings of BodyPartExamined that mean "chest" (English, Spanish, Latin spellings seen in the wild).
CHEST_WORDS = ("CHEST", "THORAX", "TORAX", "TÓRAX", "LUNG", "PULM", "PECHO", "THORAC", "TORACIC")
#: The only header fields copied out of a DICOM (besides pseudonymised identifiers).
SAFE_FIELDS = (
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "PatientSex",
    "PatientAge",
    "Rows",
    "Columns",
    "BitsStored",
    "PhotometricInterpretation",
    "PixelSpacing",
    "ImagerPixelSpacing",
)


class DecodeError(CxrError, RuntimeError):
    """The file could not be decoded into an image (truncated, no pixel data, unsupported ...).

    ``meta`` holds whatever the header did tell (size, bits, transfer syntax ...), or is empty.
    """

    meta: dict[str, Any] = {}


class NotRadiograph(CxrError, RuntimeError):
    """A readable object that is not a chest radiograph; the converter records it as skipped."""

    meta: dict[str, Any] = {}


@dataclass
class Decoded:
    """One decoded image and its non-identifying facts.

    Attributes:
        image: float32 ``[H, W]`` array in ``[0, 1]``, lungs dark (MONOCHROME2 orientation).
        meta: ``rows``, ``cols`` (original size), ``bits``, ``photometric``, ``transfer_syntax``,
            ``pixel_spacing`` (mm, row direction, or NaN), ``view``, ``sex``, ``age`` and, for
            DICOM, ``patient_pseudonym`` / ``study_pseudonym`` (see :func:`pseudonym`).
    """

    image: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


#: Environment variables naming the per-project pseudonym salt (the value, or a file holding it).
SALT_ENV, SALT_FILE_ENV = "CXR_PSEUDONYM_SALT", "CXR_PSEUDONYM_SALT_FILE"
#: HIPAA safe harbour: ages above 89 are reported as 90 ("90 or older").
AGE_CAP = 90.0


class SaltError(CxrError, ValueError):
    """The pseudonym salt is configured but unusable (empty, unreadable file, inside the repository)."""


def pseudonym_salt(env: dict[str, str] | None = None, repo: Path | None = None) -> str | None:
    """The per-project secret salt of :func:`pseudonym`, or None when none is configured.

    ``$CXR_PSEUDONYM_SALT`` holds the salt itself; ``$CXR_PSEUDONYM_SALT_FILE`` names a file holding
    it, which must lie outside the repository (``repo``, default: the working directory), so that
    neither git nor DVC ever stores it.

    Raises:
        SaltError: an empty salt, a missing or empty file, or a file inside the repository.
    """
    import os

    env = os.environ if env is None else env
    if env.get(SALT_ENV) is not None:
        salt = env[SALT_ENV].strip()
        if not salt:
            raise SaltError(f"${SALT_ENV} is set but empty; unset it or give it a long random value")
        return salt
    path = env.get(SALT_FILE_ENV)
    if not path:
        return None
    p = Path(path).expanduser().resolve()
    if p.is_relative_to((repo or Path.cwd()).resolve()):
        raise SaltError(f"${SALT_FILE_ENV}={path} lies inside the repository; keep the salt file outside it")
    try:
        salt = p.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SaltError(f"${SALT_FILE_ENV}={path}: cannot read the salt file ({exc})") from None
    if not salt:
        raise SaltError(f"${SALT_FILE_ENV}={path}: the salt file is empty")
    return salt


def pseudonym(value: str, kind: str, salt: str | None = None) -> str:
    """Stable stand-in for a header identifier (``kind`` keeps patients and studies apart).

    With a ``salt`` (:func:`pseudonym_salt`) it is HMAC-SHA256 keyed by the salt: without the salt
    nobody can test candidate ids. Without one it is the plain SHA-256 of the id, which anyone can
    reverse by hashing every id of a small id space (``MRN-0001`` ... ``MRN-9999``); the convert
    stage warns when it writes such pseudonyms.
    """
    msg = f"{kind}:{value}".encode()
    if salt is None:
        return hashlib.sha256(msg).hexdigest()[:16]
    return hmac.new(salt.encode(), msg, hashlib.sha256).hexdigest()[:16]


def cap_age(age: float | None) -> float | None:
    """Ages above 89 -> :data:`AGE_CAP` (90, read as "90 or older"); None / NaN unchanged."""
    if age is None or not isinstance(age, (int, float, np.integer, np.floating)) or np.isnan(age):
        return age
    return min(float(age), AGE_CAP)


def parse_age(value: Any) -> float:
    """DICOM ``AgeString`` (``045Y``, ``006M``, ``010W``, ``003D``) or a number -> age in years (NaN if unknown).

    Ages above 89 come back as 90 (HIPAA safe harbour: "90 or older").
    """
    if value is None:
        return float("nan")
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
        return min(v, AGE_CAP) if 0 <= v < 150 else float("nan")
    m = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY]?)\s*", str(value).upper())
    if not m:
        return float("nan")
    n = float(m.group(1))
    scale = {"Y": 1.0, "": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}[m.group(2)]
    return min(round(n * scale, 3), AGE_CAP)


def normalise_sex(value: Any) -> str | None:
    """``M``/``F``/``O`` (any case, also ``Male``/``Female``) or None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    v = str(value).strip().upper()[:1]
    return v if v in ("M", "F", "O") else None


# --------------------------------------------------------------------------------------- DICOM


def _first(value: Any) -> Any:
    """First item of a multi-valued element (Window Center may hold several), else the value."""
    if value is None:
        return None
    try:
        if not isinstance(value, (str, bytes)) and len(value) > 0:
            return value[0]
    except TypeError:
        pass
    return value


def _spacing(ds: Any) -> float:
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        v = ds.get(key)
        if v is None:
            continue
        try:
            s = float(_first(v))
        except (TypeError, ValueError):
            continue
        if s > 0:
            return s
    return float("nan")


def window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Apply a VOI window (PS3.3 C.11.2.1.2) and return values in ``[0, 1]``.

    Args:
        x: values after the modality LUT.
        center: Window Center.
        width: Window Width (> 0; >= 1 for LINEAR).
        function: VOI LUT Function: ``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID``.

    Raises:
        DecodeError: an invalid width or an unknown function.
    """
    function = (function or "LINEAR").strip().upper()
    # float32 is exact for stored values up to 2**24 and plenty for an 8/16-bit output.
    x = np.asarray(x).astype(np.float32, copy=False)
    f32 = np.float32
    if function == "LINEAR":
        if width < 1:
            raise DecodeError(f"Window Width {width} < 1 is invalid for VOI LUT Function LINEAR")
        if width > 1:
            y = (x - f32(center - 0.5)) * f32(1 / (width - 1)) + f32(0.5)
        else:
            y = (x > center - 0.5).astype(np.float32)
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise DecodeError(f"Window Width {width} <= 0 is invalid for VOI LUT Function LINEAR_EXACT")
        y = (x - f32(center)) * f32(1 / width) + f32(0.5)
    elif function == "SIGMOID":
        if width <= 0:
            raise DecodeError(f"Window Width {width} <= 0 is invalid for VOI LUT Function SIGMOID")
        y = f32(1) / (f32(1) + np.exp(f32(-4 / width) * (x - f32(center))))
    else:
        raise DecodeError(f"unknown VOI LUT Function {function!r}; expected LINEAR, LINEAR_EXACT or SIGMOID")
    return np.clip(y, 0.0, 1.0, out=y).astype(np.float32, copy=False)


def full_range(x: np.ndarray) -> np.ndarray:
    """Scale ``x`` linearly from its own min..max to ``[0, 1]`` (a constant image becomes 0)."""
    x = x.astype(np.float32, copy=False)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float32)
    return (x - lo) * np.float32(1.0 / (hi - lo))


def _mask_bits(arr: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Keep only the low ``bits_stored`` bits (overlay bits or garbage above them are ignored)."""
    if arr.dtype.kind not in "iu" or bits_stored >= arr.dtype.itemsize * 8 or bits_stored <= 0:
        return arr
    mask = (1 << bits_stored) - 1
    if not signed and arr.dtype.kind == "u":
        return arr & arr.dtype.type(mask)  # stays uint8/uint16: no widening copy
    a = arr.astype(np.int32) & mask
    if signed:
        sign = 1 << (bits_stored - 1)
        a = (a ^ sign) - sign
    return a


def _check_rescale(ds: Any) -> None:
    """Refuse a modality LUT that would map every pixel to one value or to NaN / inf.

    A Rescale Slope of 0, NaN or inf (or a non-finite intercept) turns the whole image into a
    constant or NaN, which the VOI step would quietly write as a black PNG marked ok.
    """
    if "ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence) > 0:
        return  # pydicom prefers the LUT; Rescale Slope/Intercept are then unused
    for keyword, tag, zero_ok in (("RescaleSlope", "(0028,1053)", False), ("RescaleIntercept", "(0028,1052)", True)):
        raw = ds.get(keyword)
        if raw is None or raw == "":
            continue
        try:
            value = float(_first(raw))
        except (TypeError, ValueError):
            raise DecodeError(f"invalid {keyword} {tag} {raw!r}: not a number") from None
        if not math.isfinite(value) or (value == 0 and not zero_ok):
            allowed = "a finite number" if zero_ok else "a finite, non-zero number"
            raise DecodeError(f"invalid {keyword} {tag} {value}: must be {allowed}")


def _first_fragment(pixel_data: bytes, limit: int = 1 << 16) -> bytes | None:
    """The first ``limit`` bytes of the first fragment of encapsulated Pixel Data (PS3.5 A.4), or None."""
    item = b"\xfe\xff\x00\xe0"
    if len(pixel_data) < 16 or pixel_data[:4] != item:
        return None
    off = 8 + int.from_bytes(pixel_data[4:8], "little")  # skip the Basic Offset Table item
    if pixel_data[off : off + 4] != item:
        return None
    n = int.from_bytes(pixel_data[off + 4 : off + 8], "little")
    return pixel_data[off + 8 : off + 8 + min(n, limit)]


#: JPEG start-of-frame markers (every SOFn but DHT C4, JPG C8, DAC CC), plus JPEG-LS SOF55 (F7).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}


def codestream_size(frame: bytes) -> tuple[int, int] | None:
    """``(rows, cols)`` a JPEG / JPEG-LS / JPEG 2000 codestream declares, read from its header only.

    JPEG 2000: the SIZ marker (``Xsiz - XOsiz`` by ``Ysiz - YOsiz``), also inside a JP2 box.
    JPEG / JPEG-LS: the first SOF segment. None when the header cannot be read (the decoder decides).
    """
    at = frame.find(b"\xff\x4f\xff\x51")  # SOC + SIZ
    if at >= 0 and len(frame) >= at + 24:
        x, y, xo, yo = (int.from_bytes(frame[at + 8 + 4 * i : at + 12 + 4 * i], "big") for i in range(4))
        return (y - yo, x - xo) if x > xo and y > yo else None
    if not frame.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 4 <= len(frame):
        if frame[i] != 0xFF:
            return None
        marker = frame[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        length = int.from_bytes(frame[i + 2 : i + 4], "big")
        if marker in _SOF_MARKERS:
            if i + 9 > len(frame):
                return None
            rows, cols = int.from_bytes(frame[i + 5 : i + 7], "big"), int.from_bytes(frame[i + 7 : i + 9], "big")
            return (rows, cols) if rows and cols else None  # rows 0: set later by a DNL marker
        if marker == 0xDA or length < 2:  # scan data before any SOF: not a frame header we know
            return None
        i += 2 + length
    return None


def _check_codestream(ds: Any, meta: dict[str, Any], max_pixels: int) -> None:
    """Refuse a compressed frame whose own header exceeds the pixel budget or disagrees with Rows/Columns.

    The header check alone is not enough: a 1.3 KB JPEG 2000 file whose codestream says
    12000x12000 under a 96x80 header was decoded in full (856 MB peak) before it failed.
    """
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        if tsyntax is None or not tsyntax.is_encapsulated or "PixelData" not in ds:
            return
    except (AttributeError, ValueError):
        return
    frag = _first_fragment(ds.PixelData)
    size = codestream_size(frag) if frag else None
    if size is None:
        return
    rows, cols = size
    if rows * cols > max_pixels:
        raise DecodeError(
            f"refused: the compressed frame declares {rows}x{cols} = {rows * cols} pixels "
            f"(header says {meta['rows']}x{meta['cols']}), exceeding convert.max_pixels={max_pixels}"
        )
    if (rows, cols) != (meta["rows"], meta["cols"]):
        raise DecodeError(
            f"compressed frame size {rows}x{cols} disagrees with the header's Rows x Columns "
            f"{meta['rows']}x{meta['cols']}"
        )


def _has_pixel_data_tag(path: Path) -> bool:
    """True if the bytes of the Pixel Data tag (7FE0,0010), little or big endian, occur in the file."""
    try:
        raw = path.read_bytes()
    except OSError:
        return False
    return b"\xe0\x7f\x10\x00" in raw or b"\x7f\xe0\x00\x10" in raw


def _check_native_length(ds: Any, meta: dict[str, Any]) -> None:
    """Refuse native (uncompressed) Pixel Data longer than Rows x Columns x samples x bits need.

    PS3.5 8.1.1 allows one trailing padding byte to reach an even length, nothing more. Extra
    bytes mean the header's geometry is wrong (e.g. Rows 50 over a 200-row image), and decoding
    would silently keep the first rows only.
    """
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is None or "PixelData" not in ds:
        return
    try:
        if tsyntax.is_encapsulated:
            return
    except (AttributeError, ValueError):  # an unknown private UID: the decoder decides
        return
    bits_alloc = int(ds.get("BitsAllocated") or 0)
    samples = int(ds.get("SamplesPerPixel") or 1)
    if bits_alloc <= 0:
        return
    n = meta["rows"] * meta["cols"] * samples * max(int(ds.get("NumberOfFrames") or 1), 1)
    need = -(-n * bits_alloc // 8)
    have = len(ds.PixelData)
    if have > need + (need % 2):
        raise DecodeError(
            f"pixel data longer than the header's image size: {have} bytes, but Rows={meta['rows']} x "
            f"Columns={meta['cols']} x SamplesPerPixel={samples} x BitsAllocated={bits_alloc} need {need} "
            "(+1 padding byte); the header's Rows / Columns are wrong"
        )


def check_image(img: np.ndarray) -> None:
    """Refuse a decoded image that holds NaN / inf or a single value (nothing a model could learn from).

    Raises:
        DecodeError: non-finite values, or a constant image (all-black or all-white after the
            modality LUT and VOI; usually a broken rescale/window or blank pixel data).
    """
    if img.size == 0:
        raise DecodeError("decoded image is empty")
    if not np.isfinite(img).all():
        n = int(img.size - np.count_nonzero(np.isfinite(img)))
        raise DecodeError(f"non-finite pixels in the decoded image: {n} NaN/inf values; check Rescale / Window values")
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        raise DecodeError(
            f"constant image (every pixel {lo:.4g} in [0, 1]): blank pixel data, or a rescale / window "
            "that maps every stored value to one output value"
        )


def _check_chest(ds: Any) -> None:
    modality = str(ds.get("Modality") or "").strip().upper()
    if modality in NON_IMAGE_MODALITIES:
        raise NotRadiograph(f"non-image object (Modality={modality})")
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise NotRadiograph(f"not a projection radiograph (Modality={modality})")
    body = str(ds.get("BodyPartExamined") or "").strip().upper()
    if body and not any(w in body for w in CHEST_WORDS):
        raise NotRadiograph(f"not a chest image (BodyPartExamined={body})")


_J2K_SYNTAXES = (
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
)
_JPEG_SYNTAXES = ("1.2.840.10008.1.2.4.50",)  # JPEG Baseline (8 bit): SIIM, RSNA, many CR exports


def _draft_decode(ds: Any, draft: tuple[int, str] | None) -> np.ndarray | None:
    """Decode a single-frame grey JPEG 2000 / JPEG Baseline image at reduced resolution, or return None.

    JPEG 2000 stores a wavelet pyramid: decoding only ``r`` levels down gives the low-pass image
    at ``1 / 2**r`` of the size for a fraction of the work; baseline JPEG can likewise scale its
    DCT blocks by 1/2, 1/4 or 1/8 while decoding (``PIL.Image.draft``). The
    level is chosen so that the side the caller will resize to ``size`` stays at least ``size``
    long, so the final area-resize still only shrinks. Anything unusual (signed, colour,
    multi-frame, too few levels) returns None and takes the normal full decode.
    """
    if draft is None:
        return None
    ts = str(getattr(ds.file_meta, "TransferSyntaxUID", ""))
    if ts not in _J2K_SYNTAXES + _JPEG_SYNTAXES or int(ds.get("NumberOfFrames") or 1) != 1:
        return None
    if ts in _JPEG_SYNTAXES and int(ds.get("BitsAllocated") or 8) != 8:
        return None
    if int(ds.get("SamplesPerPixel") or 1) != 1 or int(ds.get("PixelRepresentation") or 0) != 0:
        return None
    size, side = draft
    rows, cols = int(ds.Rows), int(ds.Columns)
    ref = max(rows, cols) if side == "long" else min(rows, cols)
    r, max_r = 0, (5 if ts in _J2K_SYNTAXES else 3)  # JPEG's DCT scales down to 1/8 at most
    while -(-ref // 2 ** (r + 1)) >= size and r < max_r:
        r += 1
    if r == 0:
        return None
    import io

    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        precision = None
        if ts in _J2K_SYNTAXES:
            import openjpeg

            j2k = openjpeg.get_parameters(frame)  # header only
            if j2k["is_signed"] or j2k["samples_per_pixel"] != 1:
                return None
            precision = int(j2k["precision"])
        with Image.open(io.BytesIO(frame)) as im:
            if ts in _J2K_SYNTAXES:
                im.reduce = r  # Pillow's JPEG 2000 plugin: decode r resolution levels fewer
            else:  # JPEG: DCT scaling by 1/2, 1/4, 1/8
                if im.mode != "L":
                    return None
                im.draft("L", (-(-cols // 2**r), -(-rows // 2**r)))
            im.load()
            arr = np.asarray(im)
    except Exception:  # too few decomposition levels, odd codestream ...: the full decoder decides
        return None
    if arr.shape != (-(-rows // 2**r), -(-cols // 2**r)):
        return None
    if precision is not None:
        # Pillow left-aligns samples of a lower precision into its 8/16-bit modes (a 15-bit
        # sample comes back x2); shift them back so BitsStored and the window still apply.
        shift = arr.dtype.itemsize * 8 - precision
        if shift < 0:
            return None
        if shift:
            arr = arr >> shift
    return arr


def read_dicom(
    path: str | Path,
    *,
    voi: Voi = "window",
    max_pixels: int = 60_000_000,
    check_chest: bool = True,
    draft: tuple[int, str] | None = None,
    salt: str | None = None,
) -> Decoded:
    """Decode a DICOM chest radiograph.

    Args:
        path: the DICOM file.
        voi: ``"window"`` applies the VOI LUT or Window Center/Width when present (full range
            otherwise); ``"full"`` always scales the modality-LUT output from min to max.
        max_pixels: refuse images with more pixels (Rows x Columns x frames) than this before
            decoding anything (decompression-bomb guard).
        check_chest: skip objects whose Modality / BodyPartExamined say they are not chest
            radiographs (tests turn it off to decode pydicom's MR/CT sample files).
        draft: ``(size, side)`` when the caller will shrink the image so that its ``side``
            (``long``/``short``) is ``size`` px: JPEG 2000 may then be decoded at a reduced
            resolution that keeps that side >= ``size``; baseline JPEG likewise (much faster;
            see :func:`_draft_decode`).
            ``meta["rows"]``/``["cols"]`` always give the original size.
        salt: the per-project secret of :func:`pseudonym` (None: unsalted SHA-256).

    Returns:
        The decoded image (lungs dark, ``[0, 1]``) and its safe metadata.

    Raises:
        DecodeError: unreadable, truncated, no pixel data, unsupported transfer syntax or
            photometric interpretation, too many pixels.
        NotRadiograph: a non-image object, another modality, or another body part.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            # Header quirks (wrong VR, odd lengths) are logged by pydicom's own logger; the
            # checks below decide what matters, so they need not reach the user twice.
            warnings.simplefilter("always", UserWarning)
            ds = pydicom.dcmread(path)
        # pydicom returns an empty dataset when an encapsulated PixelData is cut short by the end
        # of the file (with a warning): read the header alone, for the failure row.
        truncated = any("End of file reached" in str(w.message) for w in caught)
        damage = None
        if truncated and "PixelData" not in ds:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            if any("End of file reached" in str(w.message) for w in caught):
                # even the header alone runs into the end of the file: an element before the
                # pixel data claims more bytes than there are, i.e. the header is corrupt
                damage = "corrupt header: an element before the pixel data claims more bytes than the file holds"
            else:
                damage = "truncated file: pixel data cut short by the end of the file"
        elif "PixelData" not in ds and _has_pixel_data_tag(path):
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            damage = (
                "corrupt header or wrong transfer syntax: the file holds a Pixel Data element (7FE0,0010) that "
                f"the header, read as {ts.name if ts is not None else 'unknown syntax'}, does not lead to"
            )
    except InvalidDicomError as exc:
        raise DecodeError(f"not a DICOM file: {exc}") from None
    except Exception as exc:  # pydicom raises many types on truncated input (EOFError, ValueError, ...)
        raise DecodeError(f"unreadable DICOM ({type(exc).__name__}: {exc})") from None

    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    ts_name = tsyntax.name if tsyntax is not None else "unknown"
    try:
        meta: dict[str, Any] = {
            "rows": int(ds.get("Rows") or 0),
            "cols": int(ds.get("Columns") or 0),
            "bits": int(ds.get("BitsStored") or 0),
            "photometric": str(ds.get("PhotometricInterpretation") or ""),
            "transfer_syntax": ts_name,
            "pixel_spacing": _spacing(ds),
            "view": str(ds.get("ViewPosition") or "").strip().upper() or None,
            "sex": normalise_sex(ds.get("PatientSex")),
            "age": parse_age(ds.get("PatientAge")),
            "modality": str(ds.get("Modality") or "").strip().upper() or None,
            "patient_pseudonym": pseudonym(str(ds.PatientID), "patient", salt) if ds.get("PatientID") else None,
            "study_pseudonym": (
                pseudonym(str(ds.StudyInstanceUID), "study", salt) if ds.get("StudyInstanceUID") else None
            ),
        }
    except Exception as exc:  # a header too damaged to read the basic elements
        raise DecodeError(f"unreadable DICOM header ({type(exc).__name__}: {exc})") from None

    try:
        return _decode_pixels(
            ds, meta, voi=voi, max_pixels=max_pixels, check_chest=check_chest, draft=draft, damage=damage
        )
    except (DecodeError, NotRadiograph) as exc:
        exc.meta = meta  # what the header did say, for the failure row
        raise


def _decode_pixels(
    ds: Any,
    meta: dict[str, Any],
    *,
    voi: Voi,
    max_pixels: int,
    check_chest: bool,
    draft: tuple[int, str] | None,
    damage: str | None,
) -> Decoded:
    """The pixel half of :func:`read_dicom` (same errors); ``meta`` comes from the header.

    ``damage`` says why a file without a parsed Pixel Data element lacks it (truncated, corrupt
    header, wrong transfer syntax); None when the element is simply not in the file.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ts_name = meta["transfer_syntax"]
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if meta["modality"] in NON_IMAGE_MODALITIES:
            raise NotRadiograph(f"non-image object (Modality={meta['modality']})")
        if damage:
            raise DecodeError(damage)
        raise DecodeError("missing pixel data (no PixelData element)")
    if check_chest:
        _check_chest(ds)

    frames = int(ds.get("NumberOfFrames") or 1)
    n_pixels = meta["rows"] * meta["cols"] * max(frames, 1)
    if meta["rows"] <= 0 or meta["cols"] <= 0:
        raise DecodeError(f"invalid image size Rows={meta['rows']} Columns={meta['cols']}")
    if n_pixels > max_pixels:
        raise DecodeError(
            f"refused: {meta['rows']}x{meta['cols']}x{frames} = {n_pixels} pixels "
            f"exceeds convert.max_pixels={max_pixels}"
        )
    if frames > 1:
        raise NotRadiograph(f"multi-frame object ({frames} frames) is not a single radiograph")
    photometric = meta["photometric"].upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422"):
        raise DecodeError(f"unsupported PhotometricInterpretation {photometric!r}")
    _check_native_length(ds, meta)
    _check_codestream(ds, meta, max_pixels)

    try:
        with warnings.catch_warnings():
            # pydicom warns about benign header quirks; we validate what matters ourselves.
            warnings.simplefilter("ignore", UserWarning)
            arr = _draft_decode(ds, draft)
            if arr is None:
                arr = ds.pixel_array
    except NotImplementedError as exc:
        raise DecodeError(f"unsupported transfer syntax {ts_name}: {exc}") from None
    except Exception as exc:  # truncated / corrupt pixel data
        raise DecodeError(f"pixel data could not be decoded ({type(exc).__name__}: {exc})") from None

    if arr.ndim == 3:  # colour (secondary captures of radiographs): luminance
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        photometric = "MONOCHROME2"
    elif arr.ndim != 2:
        raise DecodeError(f"unexpected pixel array shape {arr.shape}")
    else:
        arr = _mask_bits(arr, meta["bits"], signed=int(ds.get("PixelRepresentation") or 0) == 1)

    if arr.dtype.kind in "iu":
        _check_rescale(ds)
        x = apply_modality_lut(arr, ds)
    else:
        x = arr
    out = None
    if voi == "window":
        if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
            try:
                lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
                y = apply_voi_lut(np.asarray(x), ds, index=0, prefer_lut=True)
                lo, hi = float(lut.min()), float(lut.max())
                out = np.clip((y - lo) / (hi - lo), 0, 1).astype(np.float32) if hi > lo else None
            except Exception as exc:
                raise DecodeError(f"invalid VOI LUT Sequence ({type(exc).__name__}: {exc})") from None
        elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
            try:
                center, width = float(_first(ds.WindowCenter)), float(_first(ds.WindowWidth))
            except (TypeError, ValueError):
                raise DecodeError(f"invalid Window Center/Width {ds.WindowCenter!r}/{ds.WindowWidth!r}") from None
            for tag, value in (("Window Center (0028,1050)", center), ("Window Width (0028,1051)", width)):
                if not math.isfinite(value):
                    raise DecodeError(f"invalid {tag} {value}: must be a finite number")
            out = window(np.asarray(x), center, width, str(_first(ds.get("VOILUTFunction")) or "LINEAR"))
    elif voi != "full":
        raise ValueError(f"voi must be 'window' or 'full', got {voi!r}")
    if out is None:
        out = full_range(np.asarray(x))
    check_image(out)
    if photometric == "MONOCHROME1":
        out = np.float32(1.0) - out
    return Decoded(image=np.ascontiguousarray(out, dtype=np.float32), meta=meta)


# ------------------------------------------------------------------------------ PNG / JPEG


def read_raster(
    path: str | Path,
    *,
    max_pixels: int = 60_000_000,
    photometric: str | None = None,
    draft: tuple[int, str] | None = None,
) -> Decoded:
    """Decode a PNG or JPEG radiograph.

    8-bit images are taken as already windowed (value / 255). 16-bit images (PadChest) carry raw
    detector values without a window, so they are scaled from their own min to max.

    Args:
        path: the image file.
        max_pixels: refuse larger images before decoding (decompression-bomb guard).
        photometric: ``MONOCHROME1`` when a metadata table says the stored image is inverted
            (PadChest has a few); the output is then inverted so lungs are dark.
        draft: ``(size, side)``: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale as long as its
            ``side`` stays >= ``size`` (see :func:`read_dicom`). ``meta`` keeps the original size.

    Raises:
        DecodeError: unreadable or truncated file, unsupported mode, too many pixels.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise DecodeError(f"refused: {h}x{w} = {w * h} pixels exceeds convert.max_pixels={max_pixels}")
            mode = im.mode
            if draft is not None and im.format == "JPEG" and mode == "L":
                size, side = draft
                ref = max(w, h) if side == "long" else min(w, h)
                if ref > 2 * size:
                    im.draft("L", (max(1, w * size // ref), max(1, h * size // ref)))
            im.load()
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(im)
                bits = 16 if mode.startswith("I;16") else (32 if mode in ("I", "F") else 8)
                if mode == "I":  # PIL opens most 16-bit grey PNGs as 32-bit "I"
                    bits = 16 if int(arr.max(initial=0)) < 65536 and int(arr.min(initial=0)) >= 0 else 32
                img = full_range(arr)
            elif mode in ("L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "1"):
                arr = np.asarray(im.convert("L"))
                bits = 8
                img = arr.astype(np.float32) * np.float32(1 / 255)
            else:
                raise DecodeError(f"unsupported image mode {mode!r}")
            fmt = (im.format or path.suffix.lstrip(".")).upper()
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"refused by Pillow as a decompression bomb: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DecodeError(f"unreadable image ({type(exc).__name__}: {exc})") from None
    check_image(img)
    pm = (photometric or "MONOCHROME2").strip().upper()
    if pm == "MONOCHROME1":
        img = np.float32(1.0) - img
    meta = {
        "rows": h,
        "cols": w,
        "bits": bits,
        "photometric": pm,
        "transfer_syntax": fmt,
        "pixel_spacing": float("nan"),
        "view": None,
        "sex": None,
        "age": float("nan"),
        "modality": None,
        "patient_pseudonym": None,
        "study_pseudonym": None,
    }
    return Decoded(image=np.ascontiguousarray(img, dtype=np.float32), meta=meta)


DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_image(path: str | Path, **kw: Any) -> Decoded:
    """Dispatch on the file suffix to :func:`read_dicom` or :func:`read_raster`.

    Raises:
        DecodeError: unknown suffix (the message lists the known ones), or a reader's error.
    """
    suffix = Path(path).suffix.lower()
    if suffix in DICOM_SUFFIXES:
        kw.pop("photometric", None)
        return read_dicom(path, **kw)
    if suffix in RASTER_SUFFIXES:
        kw.pop("voi", None)
        kw.pop("salt", None)
        return read_raster(path, **kw)
    raise DecodeError(f"unknown image type {suffix!r}; known: {', '.join(DICOM_SUFFIXES + RASTER_SUFFIXES)}")
