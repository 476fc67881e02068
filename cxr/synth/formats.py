"""Writers for the native file formats of the datasets the synthetic cohort imitates.

* DICOM (MIMIC-CXR): MONOCHROME1/2, 12/14/16 bits stored, rescale slope/intercept, window
  centre/width, Explicit VR Little Endian, RLE Lossless or JPEG 2000 Lossless, fake PHI in the
  header (so converters can prove they never copy it), deterministic UIDs.
* 16-bit PNG (PadChest), 8-bit organ masks, Chest ImaGenome scene graphs.
"""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000Lossless,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from cxr.synth.cohort import ImagePlan, Patient, Study

TRANSFER_SYNTAXES = {"explicit_le": ExplicitVRLittleEndian, "rle": RLELossless, "j2k": JPEG2000Lossless}
SOP_CLASS = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}
_FAKE_NAMES = ("DOE^JANE", "ROE^RICHARD", "MUSTERMANN^ERIKA", "SMITH^ALEX", "GARCIA^MARIA", "NGUYEN^LINH")
_UID_PREFIX = "1.2.826.0.1.3680043.10.543."  # an example root; suffixes are hashed from the ids


def _uid(*parts: object) -> str:
    return generate_uid(prefix=_UID_PREFIX, entropy_srcs=[str(p) for p in parts])


def study_date(patient: Patient, study: Study) -> str:
    """Deterministic, MIMIC-like shifted date (years 2110-2190) for a study."""
    h = int(patient.patient_id[-6:]) % 80
    return f"{2110 + h:04d}{1 + study.study_index * 3 % 12:02d}{1 + h % 28:02d}"


def to_stored(image01: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Map a [0, 1] MONOCHROME2 image onto most of a ``bits``-bit unsigned range."""
    maxv = (1 << bits) - 1
    lo = rng.uniform(0.01, 0.06) * maxv
    hi = rng.uniform(0.85, 0.98) * maxv
    return np.clip(np.rint(lo + image01 * (hi - lo)), 0, maxv).astype(np.uint16)


def dicom_bytes(image01: np.ndarray, patient: Patient, study: Study, im: ImagePlan, rng: np.random.Generator) -> bytes:
    """Encode ``image01`` (float [0, 1], brighter = denser) as a DICOM file per ``im.acquisition``."""
    acq = im.acquisition
    bits = int(acq["bits_stored"])
    maxv = (1 << bits) - 1
    stored = to_stored(image01, bits, rng)
    if acq["photometric"] == "MONOCHROME1":
        stored = (maxv - stored).astype(np.uint16)
    slope, intercept = acq["rescale"]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASS[acq["modality"]]
    meta.MediaStorageSOPInstanceUID = _uid("sop", im.image_id)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _UID_PREFIX + "1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = _uid("study", study.study_id)
    ds.SeriesInstanceUID = _uid("series", study.study_id, im.view)
    ds.Modality = acq["modality"]
    ds.Manufacturer = "cxr-pipeline synthetic"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "LL" if im.view == "LATERAL" else im.view
    ds.StudyDate = ds.SeriesDate = study_date(patient, study)
    ds.StudyTime = "101500"
    # Fake identifying data: converters must never copy these into their outputs.
    ds.PatientName = f"{_FAKE_NAMES[int(patient.patient_id[-2:]) % len(_FAKE_NAMES)]}{patient.patient_id[-3:]}"
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = f"{int(ds.StudyDate[:4]) - patient.age:04d}0704"
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{patient.age:03d}Y"
    ds.InstitutionName = "Synthetic General Hospital"
    ds.AccessionNumber = f"ACC{study.study_id[-7:]}"
    ds.ReferringPhysicianName = "HOUSE^GREGORY"
    ds.StudyID = study.study_id[-8:]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = acq["photometric"]
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.ImagerPixelSpacing = [acq["spacing"], acq["spacing"]]
    ds.PixelSpacing = [acq["spacing"], acq["spacing"]]
    if (slope, intercept) != (1.0, 0.0):
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleType = "US"
    if acq["window"]:
        lo, hi = np.percentile(stored, [0.5, 99.5])
        mlo, mhi = sorted((slope * lo + intercept, slope * hi + intercept))
        ds.WindowCenter = f"{(mlo + mhi) / 2:.1f}"
        ds.WindowWidth = f"{max(mhi - mlo, 1.0):.1f}"
    if im.broken != "no_pixel_data":
        syntax = TRANSFER_SYNTAXES[acq["transfer_syntax"]]
        if syntax == ExplicitVRLittleEndian:
            ds.PixelData = stored.tobytes()
        else:
            # openjpeg logs one INFO line per encoded tile; keep its warnings, drop the chatter
            logging.getLogger("openjpeg").setLevel(logging.WARNING)
            ds.compress(
                syntax,
                stored,
                encoding_plugin="pylibjpeg" if syntax == JPEG2000Lossless else "",
                generate_instance_uid=False,  # keep the deterministic UID
            )
    else:
        meta.TransferSyntaxUID = TRANSFER_SYNTAXES[acq["transfer_syntax"]]
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    data = buf.getvalue()
    if im.broken == "truncated":
        data = data[: int(len(data) * 0.55)]
    return data


def png16_bytes(image01: np.ndarray, im: ImagePlan, rng: np.random.Generator) -> bytes:
    """A 16-bit grayscale PNG holding 12-bit values (as PadChest ships its images)."""
    stored = to_stored(image01, int(im.acquisition["bits_stored"]), rng)
    buf = io.BytesIO()
    Image.fromarray(stored.astype("<u2")).save(buf, format="PNG")  # uint16 -> mode I;16
    data = buf.getvalue()
    if im.broken == "truncated":
        data = data[: int(len(data) * 0.55)]
    return data


def mask_png_bytes(mask: np.ndarray) -> bytes:
    """A binary mask as an 8-bit PNG with values 0 / 255."""
    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# ImaGenome: which attribute strings a drawn finding produces inside a region.
_IMAGENOME = {
    "Lung Opacity": ["anatomicalfinding|yes|lung opacity"],
    "Consolidation": ["anatomicalfinding|yes|lung opacity", "anatomicalfinding|yes|consolidation"],
    "Pneumonia": ["anatomicalfinding|yes|lung opacity", "disease|yes|pneumonia"],
    "Atelectasis": ["anatomicalfinding|yes|lung opacity", "anatomicalfinding|yes|atelectasis"],
    "Edema": ["anatomicalfinding|yes|pulmonary edema/hazy opacity"],
    "Pleural Effusion": ["anatomicalfinding|yes|pleural effusion"],
    "Pneumothorax": ["anatomicalfinding|yes|pneumothorax"],
    "Lung Lesion": ["anatomicalfinding|yes|mass/nodule (not otherwise specified)"],
    "Pleural Other": ["anatomicalfinding|yes|pleural/parenchymal scarring"],
    "Enlarged Cardiomediastinum": ["anatomicalfinding|yes|mediastinal widening"],
}
_NEGATED = {
    "Pleural Effusion": ("costophrenic angle", "anatomicalfinding|no|pleural effusion"),
    "Pneumothorax": ("apical zone", "anatomicalfinding|no|pneumothorax"),
    "Consolidation": (" lung", "anatomicalfinding|no|consolidation"),
    "Edema": (" lung", "anatomicalfinding|no|pulmonary edema/hazy opacity"),
    "Cardiomegaly": ("cardiac silhouette", "anatomicalfinding|no|enlarged cardiac silhouette"),
}


def scene_graph(patient: Patient, study: Study, im: ImagePlan, regions: dict, region_findings: dict) -> dict:
    """A Chest ImaGenome scene graph for one frontal image.

    Boxes: ``original_*`` in the pixel grid of the stored image (``original_width/height`` are
    the box's width and height there), ``x1..y2/width/height`` the same box on a 224 x 224 grid.
    """
    names = {f.name for f in study.findings if f.name != study.report_omits}
    objects, attributes = [], []
    sx, sy = 224.0 / im.cols, 224.0 / im.rows
    for name, (x1, y1, x2, y2) in regions.items():
        ox1, oy1, ox2, oy2 = (int(round(v)) for v in (x1, y1, x2, y2))
        objects.append({
            "object_id": f"{im.image_id}_{name}",
            "x1": int(round(x1 * sx)), "y1": int(round(y1 * sy)),
            "x2": int(round(x2 * sx)), "y2": int(round(y2 * sy)),
            "width": int(round((x2 - x1) * sx)), "height": int(round((y2 - y1) * sy)),
            "bbox_name": name,
            "name": name.capitalize(),
            "original_x1": ox1, "original_y1": oy1, "original_x2": ox2, "original_y2": oy2,
            "original_width": ox2 - ox1, "original_height": oy2 - oy1,
        })
        found: list[str] = []
        for fname in sorted(region_findings.get(name, ())):
            if fname in names:
                found += _IMAGENOME.get(fname, [])
        if name == "cardiac silhouette" and "Cardiomegaly" in names:
            found.append("anatomicalfinding|yes|enlarged cardiac silhouette")
            if "Edema" in names:
                found.append("disease|yes|fluid overload/heart failure")
        for neg in study.negated:
            where, attr = _NEGATED.get(neg, ("", ""))
            if where and where in name:
                found.append(attr)
        entries = [list(dict.fromkeys(found))] if found else [["nlp|yes|normal"]]
        attributes.append({
            "bbox_name": name,
            "name": name.capitalize(),
            "object_id": f"{im.image_id}_{name}",
            "attributes": entries,
            "phrases": [],
        })
    return {
        "image_id": im.image_id,
        "patient_id": int(patient.patient_id),
        "study_id": int(study.study_id),
        "viewpoint": im.view,
        "gender": patient.sex,
        "age_decile": f"{patient.age // 10 * 10}-{patient.age // 10 * 10 + 10}",
        "objects": objects,
        "attributes": attributes,
        "relationships": [],
    }


def scene_graph_bytes(graph: dict) -> bytes:
    return (json.dumps(graph, indent=1, sort_keys=False) + "\n").encode()
