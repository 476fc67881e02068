"""Build small, valid (or deliberately broken) chest DICOMs in tests, with fake PHI in the header."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

FAKE_PHI = {
    "PatientName": "Doe^Jane^Phi",
    "PatientBirthDate": "19450704",
    "InstitutionName": "Saint Fake Hospital PHI",
    "AccessionNumber": "ACC-PHI-98765",
}


def chest(h: int = 96, w: int = 80, bits: int = 12) -> np.ndarray:
    """A crude chest: bright mediastinum and body, two dark lung fields (MONOCHROME2 sense)."""
    top = (1 << bits) - 1
    img = np.full((h, w), 0.75 * top)
    img[h // 6 : 5 * h // 6, w // 8 : 7 * w // 16] = 0.2 * top  # right lung (image left)
    img[h // 6 : 5 * h // 6, 9 * w // 16 : 7 * w // 8] = 0.2 * top  # left lung
    return np.rint(img).astype(np.uint16)


def make_dicom(
    path: Path,
    arr: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    slope: float | None = None,
    intercept: float | None = None,
    center: float | None = None,
    width: float | None = None,
    voi_function: str | None = None,
    modality: str = "DX",
    body_part: str | None = "CHEST",
    view: str | None = "PA",
    syntax: str = ExplicitVRLittleEndian,
    patient_id: str = "MRN-0001",
    drop_pixels: bool = False,
    truncate: int | None = None,
    frames: int = 1,
) -> Path:
    """Write ``arr`` (uint16) as a DICOM file; optionally compress, drop pixel data or truncate."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient_id, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(path), "series"])
    for k, v in FAKE_PHI.items():
        setattr(ds, k, v)
    ds.PatientID = patient_id
    ds.PatientSex = "F"
    ds.PatientAge = "063Y"
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if view is not None:
        ds.ViewPosition = view
    ds.PixelSpacing = [0.2, 0.2]
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0
    if center is not None:
        ds.WindowCenter = center
        ds.WindowWidth = width
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if not drop_pixels:
        data = np.ascontiguousarray(np.broadcast_to(arr, (frames, *arr.shape[-2:])) if frames > 1 else arr, "<u2")
        ds.PixelData = data.tobytes()
        if syntax != ExplicitVRLittleEndian:
            ds.compress(syntax, data if frames == 1 else None)
    ds.save_as(path, enforce_file_format=True)
    if truncate is not None:
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) - truncate])
    return path
