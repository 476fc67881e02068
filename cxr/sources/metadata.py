"""What each dataset's metadata table says about one image file, for the convert stage.

The adapters (:mod:`cxr.sources.mimic`, ``padchest``, ``nih``) read the same tables for labels
and patients; this module answers convert's narrower question per file: patient, study, view,
sex, age (never a birth date), and hints for decoding (PadChest photometric, pixel spacing).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pandas as pd

from cxr.sources.common import clean
from cxr.sources.mimic import metadata_conflicts

log = logging.getLogger(__name__)

VIEWS = {
    "POSTEROANTERIOR": "PA",
    "ANTEROPOSTERIOR": "AP",
    "AP_HORIZONTAL": "AP",
    "AP SUPINE": "AP",
    "L": "LATERAL",
    "LL": "LATERAL",
    "RL": "LATERAL",
    "LAT": "LATERAL",
    "LATERAL": "LATERAL",
}


def normalise_view(view: Any) -> str | None:
    """Map the spellings of MIMIC, PadChest, NIH and DICOM ViewPosition to PA / AP / LATERAL / other (upper case)."""
    v = clean(view)
    if v is None:
        return None
    v = v.upper()
    return VIEWS.get(v, v)



def read_table(path: Path, **kw: Any) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, **kw)
    except Exception as exc:  # a broken metadata table should not stop conversion
        log.warning("cannot read metadata table %s (%s: %s); falling back to headers", path, type(exc).__name__, exc)
        return None


def mimic_table(folder: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for path in sorted(folder.glob("mimic-cxr-2.0.0-metadata.csv*")):
        df = read_table(path)
        if df is None or "dicom_id" not in df.columns:
            continue
        conflicts = metadata_conflicts(df.astype(str), path.name) if {"subject_id", "study_id"} <= set(df.columns) else {}
        for r in df.to_dict("records"):
            if str(r["dicom_id"]).strip() in conflicts:
                out[str(r["dicom_id"]).strip()] = {"conflict": conflicts[str(r["dicom_id"]).strip()]}
                continue
            out[r["dicom_id"]] = {
                "patient_id": clean(r.get("subject_id")),
                "study_id": clean(r.get("study_id")),
                "view": clean(r.get("ViewPosition")),
            }
    return out


def padchest_table(folder: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for path in sorted(folder.glob("PADCHEST*.csv*")):
        df = read_table(path)
        if df is None or "ImageID" not in df.columns:
            continue
        for r in df.to_dict("records"):
            age = None
            birth, date = clean(r.get("PatientBirth")), clean(r.get("StudyDate_DICOM"))
            if birth and date:
                try:  # only the age leaves this function, never the birth year
                    age = float(int(date[:4]) - int(float(birth)))
                except ValueError:
                    age = None
            view = clean(r.get("ViewPosition_DICOM")) or clean(r.get("Projection"))
            spacing = clean(r.get("SpatialResolution_DICOM"))
            out[r["ImageID"]] = {
                "pixel_spacing": float(spacing) if spacing and re.fullmatch(r"[0-9.]+", spacing) else None,
                "patient_id": clean(r.get("PatientID")),
                "study_id": clean(r.get("StudyID")),
                "view": view,
                "sex": clean(r.get("PatientSex_DICOM")),
                "age": age,
                "photometric": clean(r.get("PhotometricInterpretation_DICOM")),
            }
    return out


def nih_table(folder: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for path in sorted(folder.glob("Data_Entry_2017*.csv*")):
        df = read_table(path)
        if df is None or "Image Index" not in df.columns:
            continue
        for r in df.to_dict("records"):
            age = clean(r.get("Patient Age"))
            out[r["Image Index"]] = {
                "patient_id": clean(r.get("Patient ID")),
                "view": clean(r.get("View Position")),
                "sex": clean(r.get("Patient Gender")),
                "age": float(re.sub(r"\D", "", age)) if age and re.sub(r"\D", "", age) else None,
            }
    return out


#: dataset -> reader of its metadata table(s) in its folder: file stem -> what the table says about that image
METADATA_TABLES = {"mimic": mimic_table, "padchest": padchest_table, "nih": nih_table}
MIMIC_PATH = re.compile(r"(?:^|/)p(\d+)/s(\d+)/[^/]+$")
CHEXPERT_PATH = re.compile(r"(?:^|/)(patient\d+)/(study\d+)/([^/]+)$")
