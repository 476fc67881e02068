"""PadChest (Bustos et al., Med Image Anal 2020): one CSV
``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` plus 16-bit PNGs in ``images/<ImageDir>/``.

``Labels`` is a Python-list string (``"['pleural effusion', 'cardiomegaly']"``) of PadChest
terms (about 190; see ``cxr/labelmaps/padchest.csv``), exhaustive per image: a term
not listed is absent. Real files contain quirks such as leading spaces (``' hemidiaphragm
elevation'``), which are stripped.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.labels import load_map
from cxr.sources.common import Issue, SourceError, SourceTables, clean, finish_images, image_id_from_name, read_csv

log = logging.getLogger(__name__)

DATASET = "padchest"
_COLUMNS = ("ImageID", "ImageDir", "PatientID", "StudyID", "Labels")


def parse_labels(cell: str) -> list[str]:
    """Parse one ``Labels`` cell into lower-cased, stripped terms (empty strings removed).

    Raises:
        ValueError: the cell is not a Python list of strings.
    """
    try:
        value = ast.literal_eval(cell)
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"not a Python list literal ({exc.__class__.__name__})") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("not a list of strings")
    return sorted({v.strip().lower() for v in value if v.strip()})


def read_table(path: str | Path, known_terms: set[str] | None = None, unknown: str = "error") -> SourceTables:
    """Read the PadChest CSV into images + image-level labels (vocabulary ``padchest``).

    Args:
        path: the CSV.
        known_terms: allowed (lower-case) terms; default: the terms of the packaged map.
        unknown: ``"error"`` raises on a term not in ``known_terms``; ``"count"`` records an
            issue and keeps the term in an ``other`` column.

    Raises:
        SourceError: unreadable file, missing columns, or an unknown term with ``unknown="error"``.
    """
    if unknown not in ("error", "count"):
        raise ValueError(f"unknown must be 'error' or 'count', got {unknown!r}")
    if known_terms is None:
        known_terms = set(load_map("padchest")["term"])
    path = Path(path)
    df = read_csv(path, _COLUMNS)
    issues: list[Issue] = []
    rows, label_sets = [], []
    seen: set[str] = set()
    for i, r in enumerate(df.to_dict("records"), start=2):
        image, patient = clean(r["ImageID"]), clean(r["PatientID"])
        if not image or not patient:
            issues.append(Issue(path.name, f"line {i}", "empty ImageID or PatientID"))
            continue
        try:
            terms = parse_labels(r["Labels"])
        except ValueError as exc:
            issues.append(Issue(path.name, f"line {i}", f"Labels {r['Labels']!r}: {exc}"))
            continue
        if not terms:
            issues.append(Issue(path.name, f"line {i}", "empty Labels list"))
            continue
        bad = [t for t in terms if t not in known_terms]
        if bad:
            if unknown == "error":
                raise SourceError(
                    f"{path}: line {i}: unknown PadChest label(s) {bad}; add them to "
                    "cxr/labelmaps/padchest.csv or set label.unknown_labels: count"
                )
            issues.append(Issue(path.name, f"line {i}", f"unknown PadChest label(s) {bad} (kept as 'other')"))
            terms = [t for t in terms if t in known_terms] + (["other"] if bad else [])
        iid = image_id_from_name(image)
        if iid in seen:
            issues.append(Issue(path.name, f"line {i}", f"duplicate ImageID {image!r}"))
            continue
        seen.add(iid)
        age = np.nan
        birth, date = clean(r.get("PatientBirth")), clean(r.get("StudyDate_DICOM"))
        if birth and date:
            try:
                age = float(int(date[:4]) - int(float(birth)))
            except ValueError:
                age = np.nan
        proj = clean(r.get("Projection"))
        rows.append({
            "image_id": iid,
            "patient_id": patient,
            "study_id": clean(r["StudyID"]) or iid,
            "view": "LATERAL" if proj in ("L", "LL", "RL") else proj,
            "sex": clean(r.get("PatientSex_DICOM")),
            "age": age,
            "source_path": f"images/{clean(r['ImageDir']) or ''}/{image}".replace("//", "/"),
        })
        label_sets.append((iid, terms))
    images = finish_images(rows, DATASET)
    columns = sorted({t for _, ts in label_sets for t in ts})
    mat = np.zeros((len(label_sets), len(columns)))
    index = {c: j for j, c in enumerate(columns)}
    for k, (_, ts) in enumerate(label_sets):
        for t in ts:
            mat[k, index[t]] = 1.0
    lab = pd.DataFrame(mat, columns=columns)
    lab.insert(0, "image_id", [iid for iid, _ in label_sets])
    lab = lab.sort_values("image_id", kind="stable").reset_index(drop=True)
    return SourceTables(DATASET, images, labels=lab, label_vocab="padchest", label_level="image", issues=issues)


def read_folder(folder: str | Path, unknown: str = "error") -> SourceTables:
    """Read a PadChest folder (the ``PADCHEST_*.csv`` table)."""
    folder = Path(folder)
    found = sorted(folder.glob("PADCHEST*.csv*"))
    if not found:
        raise SourceError(f"{folder}: no PADCHEST_*.csv label table")
    return read_table(found[0], unknown=unknown)
