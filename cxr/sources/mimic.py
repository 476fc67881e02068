"""MIMIC-CXR / MIMIC-CXR-JPG (Johnson et al., Sci Data 2019).

Layout: ``mimic-cxr-2.0.0-metadata.csv`` (dicom_id, subject_id, study_id, ViewPosition, ...),
images ``files/pXX/p<subject>/s<study>/<dicom_id>.dcm`` (``.jpg`` in -JPG), free-text reports
``files/pXX/p<subject>/s<study>.txt``, optional ``mimic-cxr-2.0.0-chexpert.csv`` /
``-negbio.csv`` (study-level CheXpert labels) and ``mimic-cxr-2.0.0-split.csv`` (the official
patient-level split: train / validate / test).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from cxr.progress import tqdm
from cxr.sources.chexpert import OBSERVATIONS
from cxr.sources.common import (
    REPORT_COLUMNS,
    Issue,
    SourceError,
    SourceTables,
    clean,
    finish_images,
    parse_value,
    read_csv,
    safe_id,
)

log = logging.getLogger(__name__)

DATASET = "mimic"
METADATA = "mimic-cxr-2.0.0-metadata.csv"
_META_COLUMNS = ("dicom_id", "subject_id", "study_id")
_REPORT = re.compile(r"^p(\d+)/s(\d+)\.txt$")
_SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}


def _strip_prefix(v: str, prefix: str) -> str:
    return v[1:] if v.startswith(prefix) and v[1:].isdigit() else v


def metadata_conflicts(df: pd.DataFrame, name: str) -> dict[str, str]:
    """dicom_ids that the metadata table ``name`` lists with different subject or study ids.

    One rule for every stage (label, convert, and split through convert's table): such an image
    is dropped, all of its rows, and counted with this message - keeping the first row in one
    stage and the last in another would give one image two patients and a patient two splits.

    Args:
        df: the metadata table as strings (``dicom_id, subject_id, study_id``).
        name: file name for the message.

    Returns:
        ``{dicom_id: message naming the file, the lines and the conflicting ids}``.
    """
    ids = df[list(_META_COLUMNS)].astype(str).apply(lambda c: c.str.strip())
    ids["line"] = range(2, len(ids) + 2)
    out: dict[str, str] = {}
    dup = ids[ids["dicom_id"].duplicated(keep=False) & (ids["dicom_id"] != "")]
    for dicom, g in dup.groupby("dicom_id", sort=True):
        if g[["subject_id", "study_id"]].drop_duplicates().shape[0] > 1:
            pairs = ", ".join(f"line {r.line}: subject {r.subject_id} study {r.study_id}" for r in g.itertuples())
            out[dicom] = f"{name}: dicom_id {dicom!r} is listed for different patients/studies ({pairs}); all its rows dropped"
    return out


def read_metadata(folder: str | Path) -> tuple[pd.DataFrame, list[Issue]]:
    """Images table from ``mimic-cxr-2.0.0-metadata.csv(.gz)`` in ``folder``.

    A dicom_id listed with two subjects or studies is dropped entirely and counted
    (:func:`metadata_conflicts`); an exact repeat of a row is counted and read once.

    Raises:
        SourceError: no metadata file or missing columns.
    """
    folder = Path(folder)
    found = sorted(folder.glob(METADATA + "*"))
    if not found:
        raise SourceError(f"{folder}: no {METADATA} (the MIMIC-CXR metadata table)")
    path = found[0]
    df = read_csv(path, _META_COLUMNS)
    issues: list[Issue] = []
    rows = []
    seen: set[str] = set()
    conflicts = metadata_conflicts(df, path.name)
    for i, r in enumerate(df.to_dict("records"), start=2):
        dicom, subject, study = (clean(r[c]) for c in _META_COLUMNS)
        if dicom in conflicts:
            issues.append(Issue(path.name, f"line {i}", conflicts[dicom]))
            continue
        if not dicom or not subject or not study or not subject.isdigit() or not study.isdigit():
            issues.append(Issue(path.name, f"line {i}", f"bad ids dicom_id={dicom!r} subject_id={subject!r} study_id={study!r}"))
            continue
        if dicom in seen:
            issues.append(Issue(path.name, f"line {i}", f"duplicate dicom_id {dicom!r}"))
            continue
        seen.add(dicom)
        rel = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}"
        ext = ".jpg" if not (folder / f"{rel}.dcm").exists() and (folder / f"{rel}.jpg").exists() else ".dcm"
        view = clean(r.get("ViewPosition"))
        rows.append({
            "image_id": safe_id(dicom),
            "patient_id": subject,
            "study_id": study,
            "view": "LATERAL" if view in ("LATERAL", "LL", "RL") else view,
            "source_path": rel + ext,
        })
    return finish_images(rows, DATASET), issues


def read_reports(folder: str | Path, progress: bool = True) -> tuple[pd.DataFrame, list[Issue]]:
    """All ``files/pXX/p<subject>/s<study>.txt`` reports below ``folder`` (one row per study).

    Empty or undecodable reports are issues. Sorted by study_id for deterministic output.
    """
    folder = Path(folder)
    files = sorted((folder / "files").glob("p*/p*/s*.txt"))
    issues: list[Issue] = []
    rows = []
    for f in tqdm(files, desc="mimic reports", unit="report", disable=not progress or len(files) < 1000, mininterval=2):
        rel = f"{f.parent.name}/{f.name}"
        m = _REPORT.match(rel)
        if m is None:
            issues.append(Issue(f.name, rel, "report path is not p<subject>/s<study>.txt"))
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            issues.append(Issue(f.name, rel, f"not UTF-8 text ({exc})"))
            continue
        if not text.strip():
            issues.append(Issue(f.name, rel, "empty report"))
            continue
        rows.append({"dataset": DATASET, "patient_id": m.group(1), "study_id": m.group(2), "report": text})
    df = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))
    return df.sort_values("study_id", kind="stable").reset_index(drop=True), issues


def read_label_table(path: str | Path) -> tuple[pd.DataFrame, list[Issue]]:
    """Study-level labels from ``mimic-cxr-2.0.0-chexpert.csv`` or ``-negbio.csv`` (vocabulary chexpert14).

    Returns:
        (``study_id`` + 14 observation columns, issues).
    """
    path = Path(path)
    df = read_csv(path, ("subject_id", "study_id", *OBSERVATIONS))
    issues: list[Issue] = []
    rows = []
    for i, r in enumerate(df.to_dict("records"), start=2):
        study = _strip_prefix(clean(r["study_id"]) or "", "s")
        if not study.isdigit():
            issues.append(Issue(path.name, f"line {i}", f"bad study_id {r['study_id']!r}"))
            continue
        values = {o: parse_value(r[o], f"line {i} {o}", issues, path.name) for o in OBSERVATIONS}
        if any(v is None for v in values.values()):
            continue
        rows.append({"study_id": study, **values})
    return pd.DataFrame(rows, columns=["study_id", *OBSERVATIONS]), issues


def read_split(path: str | Path) -> pd.DataFrame:
    """The official split ``mimic-cxr-2.0.0-split.csv``: ``image_id, split`` (train / val / test).

    Raises:
        SourceError: unreadable file, missing columns or an unknown split name.
    """
    path = Path(path)
    df = read_csv(path, ("dicom_id", "split"))
    bad = sorted(set(df["split"]) - set(_SPLITS))
    if bad:
        raise SourceError(f"{path}: unknown split value(s) {bad}; expected {sorted(_SPLITS)}")
    return pd.DataFrame({"image_id": df["dicom_id"].map(safe_id), "split": df["split"].map(_SPLITS)})


def read_folder(folder: str | Path, progress: bool = True) -> SourceTables:
    """Read a MIMIC-CXR folder: metadata, reports, and the CheXpert label table if present."""
    folder = Path(folder)
    images, issues = read_metadata(folder)
    reports, rep_issues = read_reports(folder, progress=progress)
    tables = SourceTables(DATASET, images, reports=reports, issues=issues + rep_issues)
    for name in ("mimic-cxr-2.0.0-chexpert.csv", "mimic-cxr-2.0.0-negbio.csv"):
        found = sorted(folder.glob(name + "*"))
        if found:
            tables.labels, lab_issues = read_label_table(found[0])
            tables.label_vocab, tables.label_level = "chexpert14", "study"
            tables.issues += lab_issues
            break
    return tables
