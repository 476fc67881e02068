"""The common tables every dataset adapter produces (see DESIGN.md, "Data contracts").

An adapter turns one dataset's native layout into a :class:`SourceTables`:

* ``images``: one row per image - ``image_id, dataset, patient_id, study_id, view, sex, age,
  source_path`` (``source_path`` relative to the dataset folder; ``image_id`` follows the
  convert stage's rule: the file stem with unsafe characters replaced, see :func:`safe_id`).
* ``reports``: one row per study - ``dataset, patient_id, study_id, report`` (free text), or None.
* ``labels``: native labels, one row per image (``label_level == "image"``) or per study,
  keyed by ``image_id`` or ``study_id``, one column per term of ``label_vocab`` with values
  1 / 0 / -1 / NaN, or None.
* ``boxes``: ``image_id, label, x, y, w, h`` in the source image's pixels, or None.
* ``issues``: malformed rows that were skipped, each counted with file, row and reason -
  never dropped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from cxr.errors import CxrError

#: HIPAA safe harbour: ages above 89 are reported as 90. Kept here, not imported from cxr.dicom,
#: so the stages that read sources (label, split, coco, localize) do not depend on the decoder.
AGE_CAP = 90.0

IMAGE_COLUMNS = ("image_id", "dataset", "patient_id", "study_id", "view", "sex", "age", "source_path")
REPORT_COLUMNS = ("dataset", "patient_id", "study_id", "report")
BOX_COLUMNS = ("image_id", "label", "x", "y", "w", "h")


#: Top-level folder spellings of the raw layout -> dataset / adapter name (shared with cxr.convert).
DATASET_FOLDERS = {
    "mimic-cxr": "mimic",
    "mimic-cxr-jpg": "mimic",
    "mimic": "mimic",
    "chest-imagenome": "imagenome",
    "imagenome": "imagenome",
    "padchest": "padchest",
    "nih": "nih",
    "chestxray14": "nih",
    "chestx-ray14": "nih",
    "chexpert": "chexpert",
    "chexpert-v1.0": "chexpert",
    "chexpert-v1.0-small": "chexpert",
    "openi": "openi",
    "jsrt": "jsrt",
    "scr": "jsrt",
}

class SourceError(CxrError, ValueError):
    """A dataset file cannot be used at all (missing, wrong columns, unreadable)."""


@dataclass(frozen=True)
class Issue:
    """One malformed record that was skipped (and counted)."""

    file: str
    row: str
    reason: str


@dataclass
class SourceTables:
    """What one adapter read (see the module docstring for each table's columns)."""

    dataset: str
    images: pd.DataFrame
    reports: pd.DataFrame | None = None
    labels: pd.DataFrame | None = None
    label_vocab: str | None = None
    label_level: str = "image"
    boxes: pd.DataFrame | None = None
    issues: list[Issue] = field(default_factory=list)


def safe_id(s: str) -> str:
    """The convert stage's image-id rule: unsafe characters -> ``_`` (ids join across stages)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", s).strip("._") or "image"


def image_id_from_name(name: str) -> str:
    """Image id of a source file name or path: its stem, made safe."""
    return safe_id(Path(str(name)).stem)


def read_csv(path: str | Path, required: tuple[str, ...], **kw) -> pd.DataFrame:
    """Read a CSV as strings and check its columns.

    Raises:
        SourceError: file missing, not parseable, or without the ``required`` columns.
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, **kw)
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise SourceError(f"{path}: not a readable CSV ({type(exc).__name__}: {exc})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SourceError(f"{path}: missing column(s) {missing}; found {list(df.columns)[:20]}")
    return df


def empty_images() -> pd.DataFrame:
    """An images table with no rows (right columns and dtypes)."""
    return pd.DataFrame({c: pd.Series(dtype="float64" if c == "age" else "object") for c in IMAGE_COLUMNS})


def finish_images(rows: list[dict], dataset: str) -> pd.DataFrame:
    """Build the images table from row dicts: fixed columns, sorted by image_id."""
    if not rows:
        return empty_images()
    df = pd.DataFrame(rows)
    df["dataset"] = dataset
    for c in IMAGE_COLUMNS:
        if c not in df.columns:
            df[c] = None
    # HIPAA safe harbour: ages above 89 are reported as 90 ("90 or older")
    df["age"] = pd.to_numeric(df["age"], errors="coerce").astype("float64").clip(upper=AGE_CAP)
    return df[list(IMAGE_COLUMNS)].sort_values("image_id", kind="stable").reset_index(drop=True)


def clean(v: object) -> str | None:
    """A stripped string, or None for blanks / NaN markers."""
    if v is None:
        return None
    s = str(v).strip()
    return None if s in ("", "nan", "NaN", "None") else s


def parse_value(v: object, where: str, issues: list[Issue], file: str) -> float | None:
    """A CheXpert-style cell (1 / 0 / -1 / blank) as float; a bad cell is an issue (returns None)."""
    s = clean(v)
    if s is None:
        return float("nan")
    try:
        f = float(s)
    except ValueError:
        f = None
    if f not in (1.0, 0.0, -1.0):
        issues.append(Issue(file, where, f"label value {s!r} is not one of 1, 0, -1 or blank"))
        return None
    return f
