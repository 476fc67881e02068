"""Write a synthetic cohort in the native layouts of the real datasets.

Layout under ``out_dir`` (what real copies look like, so one set of adapters reads both)::

    mimic-cxr/mimic-cxr-2.0.0-metadata.csv
    mimic-cxr/files/pXX/p<subject>/s<study>/<dicom_id>.dcm
    mimic-cxr/files/pXX/p<subject>/s<study>.txt                   free-text report
    chest-imagenome/silver_dataset/scene_graph/<dicom_id>_SceneGraph.json   (frontal images)
    padchest/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv
    padchest/images/<ImageDir>/<ImageID>                            16-bit PNG
    nih/BBox_List_2017.csv                                          finding boxes, NIH format
    masks/<image_id>/<organ>.png                                    organ masks (subset)
    truth/truth.parquet                                             true findings: NOT pipeline input
    manifest.json                                                   counts, seed, profile, params

All coordinates (scene graph ``original_*``, NIH boxes, masks) are in the pixel grid of the
stored image. Same (profile, seed, params) -> byte-identical files, whatever the worker count.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from cxr import io as cio
from cxr.params import SyntheticParams
from cxr.progress import tqdm
from cxr.synth import formats, reports
from cxr.synth.cohort import PROFILES, ImagePlan, Patient, Study, iter_images, plan_cohort, truth_frame
from cxr.synth.render import Anatomy, render

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
PADCHEST_COLUMNS = (
    "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
    "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Modality_DICOM", "Manufacturer_DICOM",
    "PhotometricInterpretation_DICOM", "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM",
    "SpatialResolution_DICOM", "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM",
    "Columns_DICOM", "XRayTubeCurrent_DICOM", "Exposure_DICOM", "ExposureInuAs_DICOM", "ExposureTime",
    "RelativeXRayExposure_DICOM", "ReportID", "Report", "MethodLabel", "Labels", "Localizations",
    "LabelsLocalizationsBySentence", "labelCUIS", "LocalizationsCUIS",
)
NIH_BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"


def mimic_dir(subject: str) -> str:
    return f"files/p{subject[:2]}/p{subject}"


def image_relpath(patient: Patient, study: Study, im: ImagePlan, padchest_dir: int = 0) -> str:
    """Path of an image file relative to the cohort root."""
    if patient.dataset == "mimic":
        return f"mimic-cxr/{mimic_dir(patient.patient_id)}/s{study.study_id}/{im.image_id}.dcm"
    return f"padchest/images/{padchest_dir}/{im.image_id}"


def _make_image(task: tuple) -> dict:
    """Worker: render one image and encode every file that belongs to it."""
    patient, study, im, seed, signal, noise = task
    anatomy = Anatomy.sample(patient.anatomy_seed, patient.sex)
    r = render(anatomy, study.findings, im.view, im.rows, im.cols, seed=(seed << 24) + im.index, signal=signal, noise=noise)
    enc_rng = np.random.default_rng([seed, im.index, 99])
    if patient.dataset == "mimic":
        data = formats.dicom_bytes(r.image, patient, study, im, enc_rng)
    else:
        data = formats.png16_bytes(r.image, im, enc_rng)
    out = {"data": data, "boxes": r.boxes if im.with_boxes else [], "graph": None, "masks": {}}
    if im.with_masks:
        out["masks"] = {name: formats.mask_png_bytes(m) for name, m in r.masks.items()}
    if patient.dataset == "mimic" and im.view != "LATERAL" and not im.broken:
        out["graph"] = formats.scene_graph(patient, study, im, r.regions, r.region_findings)
    return out


def generate(
    out_dir: str | Path,
    profile: str,
    seed: int,
    params: SyntheticParams,
    progress: bool = True,
    source: str | None = None,
) -> dict:
    """Generate a cohort into ``out_dir`` (replaced atomically when complete).

    Args:
        out_dir: destination directory (e.g. ``data/raw``).
        profile: ``default`` (about 600 images) or ``tiny`` (a few dozen, for tests).
        seed: master seed.
        params: the ``ingest.synthetic`` params section.
        progress: show a progress bar.
        source: the ``ingest.source`` string, recorded in the manifest (default ``synthetic://<profile>``).

    Returns:
        The summary also written to ``manifest.json``.
    """
    patients = plan_cohort(profile, seed, params)
    items = list(iter_images(patients))
    tasks = [(p, s, im, seed, params.signal, params.noise) for p, s, im in items]
    workers = params.workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(tasks)))

    with cio.atomic_dir(out_dir) as tmp:
        if workers == 1:
            results = map(_make_image, tasks)
            pool = None
        else:
            pool = ProcessPoolExecutor(max_workers=workers)
            results = pool.map(_make_image, tasks, chunksize=4)
        try:
            counts = _write_all(tmp, patients, items, results, seed, progress)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        summary = {
            "source": source or f"synthetic://{profile}",
            "generator": "cxr.synth",
            "generator_version": GENERATOR_VERSION,
            "profile": profile,
            "seed": seed,
            "params": params.model_dump(exclude={"workers"}),  # output does not depend on workers
            "counts": counts,
        }
        cio.write_json(tmp / "manifest.json", summary)
    return summary


def _write_all(root: Path, patients: list[Patient], items: list, results, seed: int, progress: bool) -> dict:
    meta_rows, pad_rows, box_rows = [], [], []
    written_reports: set[str] = set()
    counts = {"images": 0, "broken": 0, "scene_graphs": 0, "masked_images": 0, "boxes": 0, "reports": 0}
    bar = tqdm(zip(items, results), total=len(items), desc="synthetic cohort", unit="img", disable=not progress)
    for k, ((patient, study, im), res) in enumerate(bar):
        pad_dir = k % 4
        rel = image_relpath(patient, study, im, pad_dir)
        cio.write_bytes(root / rel, res["data"])
        counts["images"] += 1
        counts["broken"] += bool(im.broken)
        for name, png in res["masks"].items():
            cio.write_bytes(root / "masks" / _mask_key(im) / f"{name}.png", png)
        counts["masked_images"] += bool(res["masks"])
        index_name = Path(rel).name
        for label, (x1, y1, x2, y2) in res["boxes"]:
            box_rows.append(f"{index_name},{label},{x1:.1f},{y1:.1f},{x2 - x1:.1f},{y2 - y1:.1f}\n")
        counts["boxes"] += len(res["boxes"])
        if res["graph"] is not None:
            path = root / "chest-imagenome/silver_dataset/scene_graph" / f"{im.image_id}_SceneGraph.json"
            cio.write_bytes(path, formats.scene_graph_bytes(res["graph"]))
            counts["scene_graphs"] += 1
        if patient.dataset == "mimic":
            meta_rows.append(_mimic_meta_row(patient, study, im))
            if study.study_id not in written_reports:
                rng = np.random.default_rng([seed, int(study.study_id), 3])
                text = reports.mimic_report(study, rng)
                cio.write_text(root / "mimic-cxr" / mimic_dir(patient.patient_id) / f"s{study.study_id}.txt", text)
                written_reports.add(study.study_id)
                counts["reports"] += 1
        else:
            pad_rows.append(_padchest_row(patient, study, im, pad_dir, len(pad_rows)))

    cio.write_csv(root / "mimic-cxr/mimic-cxr-2.0.0-metadata.csv", pd.DataFrame(meta_rows))
    pad = pd.DataFrame(pad_rows, columns=PADCHEST_COLUMNS)
    pad.index.name = None
    cio.write_csv(root / "padchest" / PADCHEST_CSV, pad, index=True)
    cio.write_text(root / "nih/BBox_List_2017.csv", NIH_BOX_HEADER + "".join(box_rows))
    truth = truth_frame(patients)
    truth["file"] = [image_relpath(p, s, im, k % 4) for k, (p, s, im) in enumerate(items)]
    truth["mask_dir"] = [f"masks/{_mask_key(im)}" if im.with_masks else "" for _, _, im in items]
    cio.write_parquet(root / "truth/truth.parquet", truth)
    counts["patients"] = len(patients)
    counts["studies"] = sum(len(p.studies) for p in patients)
    counts["by_dataset"] = {str(k): int(v) for k, v in truth["dataset"].value_counts().sort_index().items()}
    return counts


def _mask_key(im: ImagePlan) -> str:
    return Path(im.image_id).stem


def _mimic_meta_row(patient: Patient, study: Study, im: ImagePlan) -> dict:
    view_meaning = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}[im.view]
    return {
        "dicom_id": im.image_id,
        "subject_id": int(patient.patient_id),
        "study_id": int(study.study_id),
        "PerformedProcedureStepDescription": "CHEST (PA AND LAT)" if len(study.images) > 1 else f"CHEST ({study.view})",
        "ViewPosition": im.view,
        "Rows": im.rows,
        "Columns": im.cols,
        "StudyDate": int(formats.study_date(patient, study)),
        "StudyTime": 101500.0,
        "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)" if len(study.images) > 1 else f"CHEST ({study.view})",
        "ViewCodeSequence_CodeMeaning": view_meaning,
        "PatientOrientationCodeSequence_CodeMeaning": "Recumbent" if im.view == "AP" else "Erect",
    }


def _padchest_row(patient: Patient, study: Study, im: ImagePlan, pad_dir: int, n: int) -> dict:
    labels, locs, report = reports.padchest_labels(study)
    date = formats.study_date(patient, study)
    projection = {"PA": "PA", "AP": "AP", "LATERAL": "L"}[im.view]
    return {
        "ImageID": im.image_id,
        "ImageDir": pad_dir,
        "StudyDate_DICOM": int(date),
        "StudyID": study.study_id,
        "PatientID": patient.patient_id,
        "PatientBirth": float(int(date[:4]) - patient.age),
        "PatientSex_DICOM": patient.sex,
        "ViewPosition_DICOM": {"PA": "POSTEROANTERIOR", "AP": "ANTEROPOSTERIOR", "LATERAL": "LATERAL"}[im.view],
        "Projection": projection,
        "MethodProjection": "Manual review of DICOM fields",
        "Pediatric": "No",
        "Modality_DICOM": im.acquisition["modality"],
        "Manufacturer_DICOM": "cxr-pipeline synthetic",
        "PhotometricInterpretation_DICOM": im.acquisition["photometric"],
        "PixelRepresentation_DICOM": 0,
        "PixelAspectRatio_DICOM": "None",
        "SpatialResolution_DICOM": im.acquisition["spacing"],
        "BitsStored_DICOM": im.acquisition["bits_stored"],
        "WindowCenter_DICOM": 2047.5,
        "WindowWidth_DICOM": 4095,
        "Rows_DICOM": im.rows,
        "Columns_DICOM": im.cols,
        "XRayTubeCurrent_DICOM": "None",
        "Exposure_DICOM": 1,
        "ExposureInuAs_DICOM": 1200,
        "ExposureTime": 5,
        "RelativeXRayExposure_DICOM": 369,
        "ReportID": 5_000_000 + n,
        "Report": report,
        "MethodLabel": "Physician",
        "Labels": str(labels),
        "Localizations": str(locs),
        "LabelsLocalizationsBySentence": str([[lab] for lab in labels]),
        "labelCUIS": "[]",
        "LocalizationsCUIS": "[]",
    }


def available_profiles() -> list[str]:
    return sorted(PROFILES)


def load_truth(root: str | Path) -> pd.DataFrame:
    """Read the truth table of a generated cohort (for scoring; never a pipeline input)."""
    return pd.read_parquet(Path(root) / "truth" / "truth.parquet")


def read_manifest(root: str | Path) -> dict:
    return json.loads((Path(root) / "manifest.json").read_text())
