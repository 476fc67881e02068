"""CheXpert (Irvin et al., AAAI 2019): ``train.csv`` / ``valid.csv``.

Columns: Path (``CheXpert-v1.0-small/train/patientN/studyM/viewK_frontal.jpg``), Sex, Age,
Frontal/Lateral, AP/PA, then 14 observations with 1 / 0 / -1 (uncertain) / blank (not mentioned),
produced by the CheXpert labeller from the reports. Vocabulary ``chexpert14``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from cxr.sources.common import Issue, SourceTables, clean, finish_images, parse_value, read_csv, safe_id

DATASET = "chexpert"
OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
_PATH = re.compile(r"(?:^|/)(patient\d+)/(study\d+)/([^/]+)$")


def read_table(path: str | Path) -> SourceTables:
    """Read a CheXpert label table into images + image-level labels.

    Rows whose Path does not follow ``patientN/studyM/<view>`` or whose label cells are not
    1 / 0 / -1 / blank are counted as issues and skipped.

    Raises:
        SourceError: unreadable file or missing columns.
    """
    path = Path(path)
    df = read_csv(path, ("Path", *OBSERVATIONS))
    issues: list[Issue] = []
    rows, labels = [], []
    for i, r in enumerate(df.to_dict("records"), start=2):
        m = _PATH.search(str(r["Path"]).strip())
        if m is None:
            issues.append(Issue(path.name, f"line {i}", f"Path {r['Path']!r} is not patientN/studyM/<view>"))
            continue
        patient, study, view_file = m.groups()
        values = {o: parse_value(r[o], f"line {i} {o}", issues, path.name) for o in OBSERVATIONS}
        if any(v is None for v in values.values()):
            continue
        iid = safe_id(f"{patient}_{study}_{Path(view_file).stem}")
        fl = clean(r.get("Frontal/Lateral"))
        view = clean(r.get("AP/PA")) if fl == "Frontal" else ("LATERAL" if fl == "Lateral" else None)
        rows.append({
            "image_id": iid,
            "patient_id": patient,
            "study_id": f"{patient}_{study}",
            "view": view,
            "sex": {"Male": "M", "Female": "F"}.get(clean(r.get("Sex")) or "", None),
            "age": clean(r.get("Age")),
            "source_path": str(r["Path"]).strip(),
        })
        labels.append({"image_id": iid, **values})
    images = finish_images(rows, DATASET)
    lab = pd.DataFrame(labels, columns=["image_id", *OBSERVATIONS]).sort_values("image_id", kind="stable")
    return SourceTables(DATASET, images, labels=lab.reset_index(drop=True), label_vocab="chexpert14", issues=issues)
