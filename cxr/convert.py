"""The ``convert`` stage: every source image under ``data/raw`` -> a normalised PNG + ``images.parquet``.

Discovery (kept deliberately simple; the dataset adapters in ``cxr.sources`` own the rich
per-dataset logic):

* Every ``*.dcm`` / ``*.dicom`` / ``*.png`` / ``*.jpg`` / ``*.jpeg`` below ``raw_dir`` is a source
  image, except in the folders of :data:`NOT_IMAGES` (organ masks, ground truth, scene graphs).
* The dataset is named after the top-level folder (:data:`DATASET_FOLDERS` maps known spellings,
  e.g. ``mimic-cxr`` -> ``mimic``); files directly in ``raw_dir`` belong to ``local``.
* Ids come from the dataset's own metadata table when one is present
  (MIMIC ``mimic-cxr-2.0.0-metadata.csv``, PadChest ``PADCHEST_*.csv``, NIH ``Data_Entry_2017*.csv``),
  then from path conventions (MIMIC ``p<subject>/s<study>/<dicom_id>``, CheXpert
  ``patient<N>/study<M>/view<K>``), then from pseudonymised DICOM ``PatientID`` /
  ``StudyInstanceUID``, and last from the image id itself.

Conversion: decode with :mod:`cxr.dicom` (lungs dark, ``[0, 1]``), resize with area interpolation
so that the chosen side (``long`` / ``short``) equals ``size``, then pad or centre-crop to a square
(or not), and write an 8- or 16-bit PNG atomically to ``<images_dir>/<dataset>/<image_id>.png``.
``scale``, ``offset_x`` and ``offset_y`` map original pixel coordinates to PNG pixels
(``x_png = x * scale + offset_x``), so boxes drawn on the originals can follow; ``pixel_spacing``
(mm) is that of the original, so a PNG pixel measures ``pixel_spacing / scale``.

Privacy: DICOM patient / study ids become pseudonyms keyed by a secret salt from the environment
(:func:`cxr.dicom.pseudonym_salt`; unsalted, with a loud warning, when none is set, as for the
synthetic cohort) and ages above 89 are recorded as 90 (HIPAA safe harbour).

``images.parquet`` has one row per source file (status ``ok``, ``error`` with a reason, or
``skipped`` for valid non-chest / non-image objects), sorted by ``source_path``; ``source_path``
is relative to ``raw_dir`` and ``png_path`` relative to ``images_dir``, so the table is the same
bytes on every machine. Nothing identifying is copied from DICOM headers.

Storage (``convert.storage``): ``files`` writes one PNG per image; ``shards`` packs them into tar
shards of ``convert.shard_size`` images plus an offset index (:mod:`cxr.shards`), so that ``dvc push``
/ ``dvc pull`` move a few hundred objects instead of one per image. ``png_path`` is the same in both,
and every reader resolves ``<images_dir>/<png_path>`` to a file or a shard member, so the images
table, the training cache and the predictions do not depend on the layout. With shards, new PNGs
are written to a staging folder beside the output and packed (with the unchanged members of the
previous shards) when the run completes; the staging folder is then removed.

Incremental: a small state file beside the images dir remembers each source's size and mtime
and the options used; a rerun converts only new or changed files and deletes PNGs whose source
disappeared. The state is also saved every ``convert.checkpoint_images`` images, so a killed run
resumes where it stopped instead of decoding the whole set again.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from PIL import Image

import cxr.dicom
import cxr.sources.metadata
from cxr.dicom import (
    DICOM_SUFFIXES,
    RASTER_SUFFIXES,
    SALT_ENV,
    SALT_FILE_ENV,
    Decoded,
    DecodeError,
    NotRadiograph,
    cap_age,
    pseudonym_salt,
    read_image,
)
from cxr import shards
from cxr.executor import Executor, make_executor
from cxr.io import sha256_file, write_bytes, write_json, write_parquet
from cxr.params import ConvertParams, load_section
from cxr.sources.common import DATASET_FOLDERS, safe_id  # unknown folders fall back to their own name
from cxr.sources.metadata import CHEXPERT_PATH, METADATA_TABLES, MIMIC_PATH, normalise_view  # noqa: F401 (re-export)
from cxr.errors import CxrError

log = logging.getLogger(__name__)

#: Top-level folders of data/raw that hold no source images (masks are labels, not inputs).
NOT_IMAGES = frozenset({"masks", "truth", "chest-imagenome", "imagenome"})
#: Column order of images.parquet.
COLUMNS = (
    "image_id",
    "dataset",
    "patient_id",
    "study_id",
    "view",
    "sex",
    "age",
    "source_path",
    "png_path",
    "rows",
    "cols",
    "out_rows",
    "out_cols",
    "scale",
    "offset_x",
    "offset_y",
    "pixel_spacing",
    "bits",
    "photometric",
    "transfer_syntax",
    "status",
    "error",
)
_STATE_VERSION = 1


class ConvertError(CxrError, RuntimeError):
    """The stage as a whole failed (too many broken images, bad input directory)."""


@dataclass(frozen=True)
class Options:
    """What a worker needs to convert one image (a picklable subset of ConvertParams)."""

    size: int = 512
    side: str = "long"
    square: str = "pad"
    bits: int = 8
    voi: str = "window"
    max_pixels: int = 60_000_000
    png_compress_level: int = 3
    draft: bool = True
    upscale: bool = True
    #: pseudonym salt (cxr.dicom.pseudonym_salt); not a param: it must never reach params.yaml or git
    salt: str | None = field(default=None, repr=False)

    @classmethod
    def from_params(cls, p: ConvertParams, salt: str | None = None) -> "Options":
        return cls(**{k: getattr(p, k) for k in cls.__dataclass_fields__ if k != "salt"}, salt=salt)

    def digest(self) -> str:
        """Hash of the options, the converter's code and the decoders' versions.

        Any change invalidates every cached PNG: DVC reruns the stage when the code changes, and
        the rerun must then not keep images an older decoder made. A new salt changes every
        pseudonym, so it counts too (as a hash: the state file must not hold the secret).
        """
        opts = asdict(self)
        opts["salt"] = None if self.salt is None else hashlib.sha256(self.salt.encode()).hexdigest()
        blob = json.dumps([_STATE_VERSION, opts, _code_fingerprint()], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: The ``convert`` settings that decide a PNG's pixels; model cards record them (``card["convert"]``) so
#: that ``cxr predict`` / ``cxr segment`` decode new files as the model's training images were decoded.
PIXEL_SETTINGS = ("size", "side", "square", "bits", "voi", "max_pixels", "draft", "upscale")


def card_settings(p: ConvertParams | Options) -> dict[str, Any]:
    """The pixel-deciding convert settings of ``p``, as a model card records them."""
    return {k: getattr(p, k) for k in PIXEL_SETTINGS}


def options_from_card(settings: dict[str, Any]) -> Options:
    """:class:`Options` from a card's ``convert`` record (settings it lacks keep their defaults).

    Raises:
        ValueError: a setting that is not a convert setting, or a value the convert schema refuses.
    """
    unknown = sorted(set(settings) - set(PIXEL_SETTINGS))
    if unknown:
        raise ValueError(f"model card convert settings {unknown} are not among {list(PIXEL_SETTINGS)}")
    return Options.from_params(ConvertParams(**settings))


def options_for_model(card: dict[str, Any], params: str | Path | None = None, where: str = "model") -> Options:
    """How to decode new files for a model: the convert settings its card records.

    Args:
        card: the model card (``card["convert"]``: :func:`card_settings` of the training run).
        params: a params.yaml whose ``convert`` section overrides the card (a warning names the
            settings that differ from the card's); None = the card's. A card without a ``convert``
            record (an older model dir) falls back to ``params``, or ./params.yaml, or the defaults,
            with a warning.
        where: the model dir, for messages.

    Raises:
        ParamsError: ``params`` is unreadable or its convert section is invalid.
        ValueError: the card's convert record is malformed.
    """
    recorded = card.get("convert")
    if recorded is not None and not isinstance(recorded, dict):
        raise ValueError(f"{where}: model card field 'convert' must be a mapping of convert settings, got "
                         f"{type(recorded).__name__}")
    if params is None:
        if recorded:
            return options_from_card(recorded)
        if Path("params.yaml").is_file():
            params = "params.yaml"
            log.warning("%s: the model card does not record its convert settings (trained before they were "
                        "recorded): decoding with the convert section of ./params.yaml", where)
        else:
            log.warning("%s: the model card does not record its convert settings and there is no ./params.yaml: "
                        "decoding with the default convert settings", where)
            return Options()
    opt = Options.from_params(load_section("convert", params))
    if recorded:
        card_opt = options_from_card(recorded)
        diff = {k: (getattr(card_opt, k), getattr(opt, k)) for k in PIXEL_SETTINGS if getattr(card_opt, k) != getattr(opt, k)}
        if diff:
            log.warning("%s: --params %s decodes differently from the model's training images: %s "
                        "(setting: card value -> value used)", where, params,
                        ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()))
    return opt


def _code_fingerprint() -> list[str]:
    # the code that decides a row: this module, the decoder and the per-dataset metadata readers
    parts = [hashlib.sha256(Path(m).read_bytes()).hexdigest()
             for m in (__file__, cxr.dicom.__file__, cxr.sources.metadata.__file__)]
    for dist in ("pydicom", "pillow", "numpy", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "pylibjpeg-rle"):
        try:
            parts.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} missing")
    return parts


@dataclass
class Source:
    """One discovered source image and what the metadata tables say about it."""

    source_path: str  # relative to raw_dir, POSIX separators
    dataset: str
    image_id: str
    patient_id: str | None = None
    study_id: str | None = None
    view: str | None = None
    sex: str | None = None
    age: float | None = None
    photometric: str | None = None  # a table's hint for rasters (PadChest MONOCHROME1 rows)
    pixel_spacing: float | None = None  # mm per pixel of the original, from a table (PadChest)
    conflict: str | None = None  # the metadata contradicts itself about this image: an error row, not converted


# ---------------------------------------------------------------------------------- discovery

def discover(raw_dir: str | Path) -> list[Source]:
    """Find every source image below ``raw_dir`` and attach what the metadata tables know.

    Returns:
        Sources sorted by ``source_path``; ``image_id`` is unique (collisions get a path hash).

    Raises:
        ConvertError: ``raw_dir`` is not a directory.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise ConvertError(f"raw directory {raw_dir} does not exist or is not a directory; run the ingest stage first")
    suffixes = set(DICOM_SUFFIXES) | set(RASTER_SUFFIXES)
    found: list[str] = []
    seen: set[tuple[int, int]] = set()  # (device, inode) of visited folders: symlink loops end here
    for root, dirs, files in os.walk(raw_dir, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        rel_root = Path(root).relative_to(raw_dir)
        if rel_root == Path("."):
            dirs[:] = [d for d in dirs if d.lower() not in NOT_IMAGES]
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in suffixes:
                found.append((rel_root / name).as_posix())
    found.sort()

    tables: dict[str, dict[str, dict]] = {}
    sources: list[Source] = []
    for rel in found:
        parts = rel.split("/")
        folder = parts[0] if len(parts) > 1 else ""
        dataset = DATASET_FOLDERS.get(folder.lower(), safe_id(folder.lower())) if folder else "local"
        if folder and dataset in METADATA_TABLES and folder not in tables:
            tables[folder] = METADATA_TABLES[dataset](raw_dir / folder)
        table = tables.get(folder, {})
        name, stem = parts[-1], Path(parts[-1]).stem
        info = table.get(stem) or table.get(name) or {}
        src = Source(source_path=rel, dataset=dataset, image_id=safe_id(stem))
        m = MIMIC_PATH.search(rel) if dataset == "mimic" else None
        if m:
            src.patient_id, src.study_id = m.group(1), m.group(2)
        m = CHEXPERT_PATH.search(rel) if dataset == "chexpert" else None
        if m:
            src.patient_id, src.study_id = m.group(1), f"{m.group(1)}_{m.group(2)}"
            src.image_id = safe_id(f"{m.group(1)}_{m.group(2)}_{Path(m.group(3)).stem}")
        for key, value in info.items():
            if value is not None:
                setattr(src, key, value)
        sources.append(src)

    counts: dict[tuple[str, str], int] = {}
    for s in sources:
        counts[(s.dataset, s.image_id)] = counts.get((s.dataset, s.image_id), 0) + 1
    for s in sources:
        if counts[(s.dataset, s.image_id)] > 1:
            s.image_id = f"{s.image_id}_{hashlib.sha1(s.source_path.encode()).hexdigest()[:8]}"
    return sources


# ------------------------------------------------------------------------------ image geometry


def fit(
    img: np.ndarray, size: int, side: str = "long", square: str = "pad", orig_shape: tuple[int, int] | None = None,
    upscale: bool = True,
) -> tuple[np.ndarray, dict]:
    """Resize with area interpolation, keeping the aspect ratio, then pad or centre-crop.

    Args:
        img: float32 ``[H, W]`` in ``[0, 1]``.
        size: target length of the chosen side (and of both sides when ``square`` is not ``none``).
        side: ``long`` or ``short``: the side that becomes ``size`` long.
        orig_shape: ``(rows, cols)`` of the original when ``img`` was decoded at reduced
            resolution (draft decoding); sizes and ``scale`` then refer to the original.
        square: ``pad``: pad sides shorter than ``size`` (centred, black); ``crop``: centre-crop
            sides longer than ``size``; ``none``. So ``long`` + ``pad`` and ``short`` + ``crop`` give
            ``size x size`` images; ``short`` + ``pad`` and ``long`` + ``crop`` change nothing.
        upscale: False: an image whose chosen side is shorter than ``size`` keeps its own size
            (``size`` becomes that side's length, for the square too): thumbnails are never enlarged.

    Returns:
        The new image and ``{"scale", "offset_x", "offset_y"}`` mapping original pixel coordinates
        to output pixels (``x_out = x * scale + offset_x``).
    """
    if side not in ("long", "short"):
        raise ValueError(f"side must be 'long' or 'short', got {side!r}")
    if square not in ("none", "pad", "crop"):
        raise ValueError(f"square must be 'none', 'pad' or 'crop', got {square!r}")
    h, w = orig_shape or img.shape
    ref = max(h, w) if side == "long" else min(h, w)
    if not upscale:
        size = min(size, ref)
    scale = size / ref
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != img.shape:
        # BOX = exact area averaging when shrinking (what cv2.INTER_AREA does).
        img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BOX), dtype=np.float32)
    ox = oy = 0
    if square != "none":
        th = tw = size
        if square == "pad" and (nh < th or nw < tw):
            oy, ox = max(0, (th - nh) // 2), max(0, (tw - nw) // 2)
            out = np.zeros((max(th, nh), max(tw, nw)), np.float32)
            out[oy : oy + nh, ox : ox + nw] = img
            img, nh, nw = out, out.shape[0], out.shape[1]
        if square == "crop" and (nh > th or nw > tw):
            cy, cx = max(0, (nh - th) // 2), max(0, (nw - tw) // 2)
            img = img[cy : cy + th, cx : cx + tw]
            oy, ox = oy - cy, ox - cx
    return np.ascontiguousarray(img), {"scale": float(scale), "offset_x": int(ox), "offset_y": int(oy)}


def encode_png(img: np.ndarray, bits: int = 8, compress_level: int = 6) -> bytes:
    """Quantise ``[0, 1]`` floats to 8 or 16 bits and encode a PNG (deterministic bytes, no metadata)."""
    import io

    buf = io.BytesIO()
    Image.fromarray(quantise(img, bits)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def quantise(img: np.ndarray, bits: int = 8) -> np.ndarray:
    """``[0, 1]`` floats -> uint8 (``bits=8``) or uint16 (``bits=16``), rounded to nearest."""
    if bits == 8:
        return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    if bits == 16:
        return np.clip(np.rint(img * 65535), 0, 65535).astype(np.uint16)
    raise ValueError(f"bits must be 8 or 16, got {bits}")


# ------------------------------------------------------------------------------ one image


def _row(src: Source) -> dict[str, Any]:
    row = {c: None for c in COLUMNS}
    row.update(
        image_id=src.image_id,
        dataset=src.dataset,
        patient_id=src.patient_id,
        study_id=src.study_id,
        view=src.view,
        sex=src.sex,
        age=src.age,
        source_path=src.source_path,
    )
    return row


def _fill(row: dict[str, Any], m: dict[str, Any], src: Source) -> None:
    """Complete a row from decoded header facts ``m`` (empty when the header was unreadable)."""
    # Table values win; headers fill the gaps; pseudonyms keep patient-level splits possible.
    row["patient_id"] = row["patient_id"] or m.get("patient_pseudonym") or src.image_id
    row["study_id"] = row["study_id"] or m.get("study_pseudonym") or row["patient_id"]
    row["view"] = normalise_view(row["view"] or m.get("view"))
    row["sex"] = row["sex"] or m.get("sex")
    if row["age"] is None or (isinstance(row["age"], float) and np.isnan(row["age"])):
        row["age"] = m.get("age")
    for k in ("rows", "cols", "bits", "photometric", "transfer_syntax"):
        row[k] = m.get(k) or None  # 0 / "" = not in the header
    row["age"] = cap_age(row["age"])  # a table's 97 too: HIPAA safe harbour reports 90+ as 90
    row["pixel_spacing"] = m.get("pixel_spacing")
    if src.pixel_spacing and not (row["pixel_spacing"] and row["pixel_spacing"] > 0):
        row["pixel_spacing"] = src.pixel_spacing


def decode_file(path: str | Path, opt: Options, photometric: str | None = None) -> Decoded:
    """Decode one source file exactly as the stage does (VOI, rescale, MONOCHROME1, draft decoding).

    Raises:
        DecodeError, NotRadiograph: see :func:`cxr.dicom.read_image`.
    """
    return read_image(
        path,
        voi=opt.voi,
        max_pixels=opt.max_pixels,
        photometric=photometric,
        draft=(opt.size, opt.side) if opt.draft else None,
        salt=opt.salt,
    )


def convert_file(path: str | Path, opt: Options, photometric: str | None = None) -> tuple[np.ndarray, dict, dict]:
    """One source file -> the stage's output image in memory, for callers outside the stage (``cxr predict``).

    Returns:
        ``(png, geo, meta)``: ``png`` is the array the stage writes as a PNG (uint8 or uint16 per
        ``opt.bits``, the same quantisation as :func:`encode_png`), ``geo`` maps original pixels to
        ``png`` pixels (:func:`fit`), ``meta`` is the decoder's header facts.

    Raises:
        DecodeError, NotRadiograph: see :func:`cxr.dicom.read_image`.
    """
    dec = decode_file(path, opt, photometric)
    m = dec.meta
    img, geo = fit(dec.image, opt.size, opt.side, opt.square, orig_shape=(m["rows"], m["cols"]), upscale=opt.upscale)
    return quantise(img, opt.bits), geo, m


def convert_one(task: tuple[str, str, Source, Options]) -> dict[str, Any]:
    """Convert one source image and return its images.parquet row (never raises on bad input).

    Args:
        task: ``(raw_dir, images_dir, source, options)``.
    """
    raw_dir, images_dir, src, opt = task
    row = _row(src)
    if src.conflict:  # same rule as the label stage (cxr.sources.mimic.metadata_conflicts)
        row.update(status="error", error=src.conflict)
        return row
    try:
        dec = decode_file(Path(raw_dir) / src.source_path, opt, photometric=src.photometric)
    except NotRadiograph as exc:
        _fill(row, exc.meta, src)
        row.update(status="skipped", error=str(exc))
        return row
    except DecodeError as exc:
        _fill(row, exc.meta, src)
        row.update(status="error", error=str(exc))
        return row
    except Exception as exc:  # a decoder bug must not take the whole stage down; it is counted
        log.warning("unexpected %s on %s: %s", type(exc).__name__, src.source_path, exc)
        row.update(status="error", error=f"internal error ({type(exc).__name__}: {exc})")
        return row
    m = dec.meta
    _fill(row, m, src)
    img, geo = fit(dec.image, opt.size, opt.side, opt.square, orig_shape=(m["rows"], m["cols"]), upscale=opt.upscale)
    png_rel = f"{src.dataset}/{src.image_id}.png"
    # No fsync per PNG (it would cost more than the encoding): convert() syncs once before it
    # records the run as complete in the state file.
    write_bytes(Path(images_dir) / png_rel, encode_png(img, opt.bits, opt.png_compress_level), fsync=False)
    row.update(geo, png_path=png_rel, out_rows=int(img.shape[0]), out_cols=int(img.shape[1]), status="ok", error=None)
    return row


def convert_chunk(tasks: list[tuple[str, str, Source, Options]]) -> list[dict[str, Any]]:
    """Convert several images in one worker call (amortises task overhead)."""
    return [convert_one(t) for t in tasks]


# ------------------------------------------------------------------------------ the stage


def _state_path(images_dir: Path) -> Path:
    # Beside, not inside, the DVC output: it holds mtimes, which must not reach tracked bytes.
    return images_dir.parent / f".{images_dir.name}.convert-state.json"


def _staging_path(images_dir: Path) -> Path:
    # storage: shards: new PNGs wait here (beside the DVC output) until they are packed
    return images_dir.parent / f".{images_dir.name}.staging"


def _unpack(images_dir: Path) -> None:
    """A shard folder back into one file per member (``storage`` changed from shards to files)."""
    with shards.ShardReader(images_dir) as reader:
        for name in reader.names():
            write_bytes(images_dir / name, reader.read(name), fsync=False)
    for f in images_dir.glob("shard-*.tar"):
        f.unlink()
    (images_dir / shards.INDEX).unlink()
    log.info("convert: storage is files: unpacked the previous shards into %d PNG files", len(reader))


def _load_state(path: Path, digest: str) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    if state.get("options") != digest:
        log.info("convert options changed since the last run: converting everything again")
        return {}
    return state


def _sha256(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except FileNotFoundError:
        return None


def _fingerprint(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows), columns=list(COLUMNS))
    for c in ("rows", "cols", "out_rows", "out_cols", "offset_x", "offset_y", "bits"):
        df[c] = df[c].astype("Int64")
    for c in ("age", "scale", "pixel_spacing"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in COLUMNS:
        if df[c].dtype == object:
            df[c] = df[c].astype("string")
    return df.sort_values("source_path", kind="stable").reset_index(drop=True)


def convert(
    raw_dir: str | Path,
    images_dir: str | Path,
    table_path: str | Path,
    params: ConvertParams,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Convert every source image below ``raw_dir``; write PNGs and ``images.parquet``.

    Args:
        raw_dir: the ingested raw tree (``data/raw``).
        images_dir: PNG output folder (``data/interim/images``).
        table_path: the images table (``data/interim/images.parquet``).
        params: the ``convert`` section.
        executor: where to run; default from ``params.workers`` / ``params.scheduler``.

    Returns:
        Summary: counts per status, per dataset, converted vs reused, failure fraction.

    Raises:
        ConvertError: no source image found, or the error fraction exceeds
            ``params.max_failure_fraction`` (the table is written first, for inspection).
    """
    raw_dir, images_dir, table_path = Path(raw_dir), Path(images_dir), Path(table_path)
    try:
        salt = pseudonym_salt()
    except ValueError as exc:  # SaltError: configured but unusable; never fall back silently
        raise ConvertError(str(exc)) from None
    opt = Options.from_params(params, salt=salt)
    sources = discover(raw_dir)
    if salt is None and any(s.source_path.lower().endswith(DICOM_SUFFIXES) for s in sources):
        log.warning(
            "NO PSEUDONYM SALT: patient/study ids read from DICOM headers become UNSALTED SHA-256 "
            "pseudonyms, which can be reversed by hashing every candidate id (MRN-0001 ...). Fine for "
            "synthetic data; for real data set $%s (a long random secret) or $%s (a file outside "
            "the repository) before running convert.", SALT_ENV, SALT_FILE_ENV,
        )
    if not sources:
        raise ConvertError(
            f"no source images (*.dcm, *.png, *.jpg) found below {raw_dir}; "
            f"folders {sorted(NOT_IMAGES)} are ignored by design"
        )
    images_dir.mkdir(parents=True, exist_ok=True)
    sharded = params.storage == "shards"
    if not sharded and shards.is_shard_folder(images_dir):
        _unpack(images_dir)
    old = shards.ShardReader(images_dir) if sharded and shards.is_shard_folder(images_dir) else None
    out_dir = _staging_path(images_dir) if sharded else images_dir  # where new PNGs are written

    def have(png: str) -> bool:
        if (out_dir / png).is_file():
            return True
        if not sharded:
            return False
        return png in old if old is not None else (images_dir / png).is_file()  # files -> shards: reused

    state_path = _state_path(images_dir)
    digest = opt.digest()
    state = _load_state(state_path, digest)
    cache = state.get("files", {})

    rows: dict[str, dict[str, Any]] = {}
    fingerprints: dict[str, list[int]] = {}
    todo: list[tuple[str, str, Source, Options]] = []
    for src in sources:
        fp = _fingerprint(raw_dir / src.source_path)
        fingerprints[src.source_path] = fp
        hit = cache.get(src.source_path)
        if hit and hit["fingerprint"] == fp and hit["source"] == vars(src):
            png = hit["row"].get("png_path")
            if png is None or have(png):
                rows[src.source_path] = hit["row"]
                continue
        todo.append((str(raw_dir), str(out_dir), src, opt))
    log.info("convert: %d source images, %d to convert, %d unchanged", len(sources), len(todo), len(rows))

    if todo:
        chunk = params.chunk_size
        chunks = [todo[i : i + chunk] for i in range(0, len(todo), chunk)]
        # Progress is saved after every group of ~checkpoint_images images: a killed run keeps
        # what it finished, and the rerun converts only the rest (the state file is the resume point).
        per_group = len(chunks) if params.checkpoint_images == 0 else max(1, -(-params.checkpoint_images // chunk))
        groups = [chunks[i : i + per_group] for i in range(0, len(chunks), per_group)]
        own = executor is None
        ex = executor or make_executor(params.workers if len(chunks) > 1 else 1, params.scheduler)
        try:
            for g, group in enumerate(groups):
                desc = "convert" if len(groups) == 1 else f"convert {g + 1}/{len(groups)}"
                for part in ex.map(convert_chunk, group, desc=desc):
                    for row in part:
                        rows[row["source_path"]] = row
                if g < len(groups) - 1:
                    os.sync()  # the PNGs before the state that claims them
                    _write_state(state_path, digest, None, sources, fingerprints, rows)
                    log.info("convert: progress saved (%d of %d images done)", len(rows), len(sources))
        finally:
            if own:
                ex.close()

    df = _frame(rows[s.source_path] for s in sources)
    keep = set(df["png_path"].dropna())
    if sharded:
        removed = _pack(images_dir, out_dir, old, keep, params.shard_size, bool(todo))
    else:
        removed = 0
        for png in sorted(images_dir.rglob("*.png")):
            if png.relative_to(images_dir).as_posix() not in keep:
                png.unlink()
                removed += 1
        for d in sorted((p for p in images_dir.rglob("*") if p.is_dir()), reverse=True):
            if not any(d.iterdir()):
                d.rmdir()
    unchanged = (
        not todo and not removed and set(cache) == set(fingerprints) and _sha256(table_path) == state.get("table")
    )
    if not unchanged:  # a rerun over an unchanged tree writes nothing (and so is ~100x faster)
        os.sync()  # the PNGs were written without fsync: make them durable before the state claims them
        write_parquet(table_path, df)
        _write_state(state_path, digest, _sha256(table_path), sources, fingerprints, rows)

    status = df["status"].value_counts().to_dict()
    n_err = int(status.get("error", 0))
    frac = n_err / len(df)
    summary = {
        "images": len(df),
        "ok": int(status.get("ok", 0)),
        "error": n_err,
        "skipped": int(status.get("skipped", 0)),
        "converted": len(todo),
        "reused": len(sources) - len(todo),
        "removed_stale_png": removed,
        "failure_fraction": round(frac, 6),
        "per_dataset": {k: int(v) for k, v in df.groupby("dataset")["status"].count().items()},
        "errors_by_reason": _reasons(df),
    }
    log.info("convert summary: %s", summary)
    if frac > params.max_failure_fraction:
        raise ConvertError(
            f"{n_err} of {len(df)} images failed ({frac:.1%}) > convert.max_failure_fraction="
            f"{params.max_failure_fraction}; see the 'error' column of {table_path}. "
            f"Most common: {summary['errors_by_reason']}"
        )
    return summary


def _pack(images_dir: Path, staging: Path, old: shards.ShardReader | None, keep: set[str], per_shard: int,
          converted: bool) -> int:
    """``storage: shards``: write ``images_dir`` as shards of the ``keep`` PNGs (sorted by name), each from
    the staging folder, the previous shards or a previous PNG file; remove the staging folder.

    Returns:
        How many previous images are not kept (stale); 0 and nothing written when nothing changed.
    """
    before = set(old.names()) if old is not None else {
        p.relative_to(images_dir).as_posix() for p in images_dir.rglob("*.png")}
    staged = staging.is_dir() and any(p.is_file() for p in staging.rglob("*"))
    stale = len(before - keep)
    if old is not None and not converted and not staged and before == keep:
        return 0

    def source(png: str):
        if (staging / png).is_file():
            return (staging / png).read_bytes
        if old is not None:
            return lambda: old.read(png)
        return (images_dir / png).read_bytes

    written = shards.write_members(((png, source(png)) for png in sorted(keep)), images_dir, per_shard)
    if old is not None:
        old.close()
    shutil.rmtree(staging, ignore_errors=True)
    log.info("convert: %d images packed into %d shard(s) of up to %d (%d stale removed)",
             len(keep), len(written), per_shard, stale)
    return stale


def _write_state(
    path: Path,
    digest: str,
    table_hash: str | None,
    sources: list[Source],
    fingerprints: dict[str, list[int]],
    rows: dict[str, dict[str, Any]],
) -> None:
    """Record the rows done so far (``table_hash`` None: a partial run whose table is not written yet)."""
    state = {
        "options": digest,
        "table": table_hash,
        "files": {
            s.source_path: {"fingerprint": fingerprints[s.source_path], "source": vars(s), "row": rows[s.source_path]}
            for s in sources
            if s.source_path in rows
        },
    }
    write_json(path, json.loads(json.dumps(state, default=_jsonable)))


def _reasons(df: pd.DataFrame) -> dict[str, int]:
    err = df.loc[df["status"] == "error", "error"].fillna("").str.split(r" \(|:", n=1, regex=True).str[0]
    # most common first (ties alphabetical), so the stage's failure message leads with the main cause
    counts = sorted(err.value_counts().items(), key=lambda kv: (-kv[1], kv[0]))
    return {k: int(v) for k, v in counts[:10]}


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)
