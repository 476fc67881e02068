"""NIH ChestX-ray14 (Wang et al., CVPR 2017): ``Data_Entry_2017(_v2020).csv``, ``BBox_List_2017.csv``
and the official ``train_val_list.txt`` / ``test_list.txt``.

Labels: the 14 findings + No Finding, text-mined from reports by NIH; exhaustive per image
(a finding not listed is 0). "Finding Labels" joins names with ``|``. In the box table the
finding "Infiltrate" means "Infiltration". Boxes are ``[x, y, w, h]`` in the 1024-px images.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.sources.common import (
    BOX_COLUMNS,
    Issue,
    SourceError,
    SourceTables,
    clean,
    finish_images,
    image_id_from_name,
    read_csv,
)

log = logging.getLogger(__name__)

DATASET = "nih"
FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
NO_FINDING = "No Finding"
#: Spellings in NIH files -> canonical names.
ALIASES = {"Infiltrate": "Infiltration", "Pleural Thickening": "Pleural_Thickening"}
_ENTRY_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")


def canonical_label(name: str) -> str | None:
    """Canonical ChestX-ray14 name of ``name`` (None if it is not a ChestX-ray14 label)."""
    name = ALIASES.get(name.strip(), name.strip())
    return name if name in FINDINGS or name == NO_FINDING else None


def read_data_entry(path: str | Path, unknown: str = "error") -> SourceTables:
    """Read ``Data_Entry_2017*.csv`` into images + image-level labels (vocabulary ``chestxray14``).

    Args:
        path: the CSV (plain or gzipped).
        unknown: what to do with a label string that is not a ChestX-ray14 name: ``"error"``
            raises, ``"count"`` records an issue per occurrence and ignores that label.

    Raises:
        SourceError: unreadable file, missing columns, or an unknown label with ``unknown="error"``.
    """
    if unknown not in ("error", "count"):
        raise ValueError(f"unknown must be 'error' or 'count', got {unknown!r}")
    path = Path(path)
    df = read_csv(path, _ENTRY_COLUMNS)
    issues: list[Issue] = []
    rows, labels = [], []
    seen: set[str] = set()
    for i, r in enumerate(df.to_dict("records"), start=2):
        name, patient = clean(r["Image Index"]), clean(r["Patient ID"])
        if not name or not patient:
            issues.append(Issue(path.name, f"line {i}", "empty Image Index or Patient ID"))
            continue
        iid = image_id_from_name(name)
        if iid in seen:
            issues.append(Issue(path.name, f"line {i}", f"duplicate image {name!r}"))
            continue
        values = dict.fromkeys((NO_FINDING, *FINDINGS), 0.0)
        terms = [t for t in str(r["Finding Labels"]).split("|") if t.strip()]
        if not terms:
            issues.append(Issue(path.name, f"line {i}", "empty Finding Labels"))
            continue
        for t in terms:
            c = canonical_label(t)
            if c is None:
                if unknown == "error":
                    raise SourceError(
                        f"{path}: line {i}: unknown finding label {t.strip()!r}; "
                        f"known: {[NO_FINDING, *FINDINGS]} (or set label.unknown_labels: count)"
                    )
                issues.append(Issue(path.name, f"line {i}", f"unknown finding label {t.strip()!r} (ignored)"))
                continue
            values[c] = 1.0
        if values[NO_FINDING] == 1.0 and any(values[f] == 1.0 for f in FINDINGS):
            issues.append(Issue(path.name, f"line {i}", "'No Finding' together with findings"))
            continue
        seen.add(iid)
        age = re.sub(r"\D", "", str(r.get("Patient Age", "")))
        follow = clean(r.get("Follow-up #")) or "0"
        rows.append({
            "image_id": iid,
            "patient_id": patient,
            "study_id": f"{patient}_{follow}",
            "view": clean(r.get("View Position")),
            "sex": clean(r.get("Patient Gender")),
            "age": float(age) if age else np.nan,
            "source_path": f"images/{name}",
        })
        labels.append({"image_id": iid, **values})
    images = finish_images(rows, DATASET)
    lab = pd.DataFrame(labels, columns=["image_id", NO_FINDING, *FINDINGS])
    lab = lab.sort_values("image_id", kind="stable").reset_index(drop=True)
    if issues:
        log.warning("%s: %d malformed rows skipped (see issues)", path.name, len(issues))
    return SourceTables(DATASET, images, labels=lab, label_vocab="chestxray14", label_level="image", issues=issues)


def read_boxes(path: str | Path, unknown: str = "error") -> tuple[pd.DataFrame, list[Issue]]:
    """Read ``BBox_List_2017.csv``: ``image_id, label, x, y, w, h`` (label canonical, e.g. Infiltration).

    The file's header is ``Image Index,Finding Label,Bbox [x,y,w,h],,,``; columns are taken by
    position. Rows with non-numeric or non-positive sizes are issues.

    Raises:
        SourceError: unreadable file, too few columns, or an unknown label with ``unknown="error"``.
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, header=None, skiprows=1, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise SourceError(f"{path}: not a readable CSV ({type(exc).__name__}: {exc})") from None
    if df.shape[1] < 6:
        raise SourceError(f"{path}: expected 6 columns (Image Index, Finding Label, x, y, w, h), found {df.shape[1]}")
    issues: list[Issue] = []
    out = []
    for i, r in enumerate(df.itertuples(index=False), start=2):
        name, lab = clean(r[0]), clean(r[1])
        c = canonical_label(lab or "")
        if not name or c is None or c == NO_FINDING:
            if lab and c is None and unknown == "error":
                raise SourceError(f"{path}: line {i}: unknown box label {lab!r}; known: {list(FINDINGS)}")
            issues.append(Issue(path.name, f"line {i}", f"bad image name or label {name!r} / {lab!r}"))
            continue
        try:
            x, y, w, h = (float(v) for v in r[2:6])
        except ValueError:
            issues.append(Issue(path.name, f"line {i}", f"non-numeric box {list(r[2:6])}"))
            continue
        if not (np.isfinite([x, y, w, h]).all() and w > 0 and h > 0):
            issues.append(Issue(path.name, f"line {i}", f"invalid box {[x, y, w, h]}"))
            continue
        out.append({"image_id": image_id_from_name(name), "label": c, "x": x, "y": y, "w": w, "h": h})
    boxes = pd.DataFrame(out, columns=list(BOX_COLUMNS))
    return boxes, issues


#: NIH boxes are in the pixel grid of the released 1024 x 1024 PNGs.
BOX_GRID = (1024, 1024)


def boxes_on_grid(boxes: pd.DataFrame, images: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep the boxes whose image can carry them: NIH images must be 1024 x 1024 (the boxes' grid).

    Boxes of ``nih`` images of any other size (thumbnails, re-exports) are dropped and counted;
    boxes of other datasets' images (the synthetic cohort's NIH-format boxes, drawn in their own
    source pixels) are kept.

    Args:
        boxes: :func:`read_boxes` output.
        images: images.parquet rows with ``image_id, dataset, rows, cols``.

    Returns:
        The boxes kept and the number skipped.
    """
    info = images[["image_id", "dataset", "rows", "cols"]].drop_duplicates("image_id").set_index("image_id")
    ds = boxes["image_id"].map(info["dataset"])
    shape_ok = ((boxes["image_id"].map(info["rows"]) == BOX_GRID[0])
                & (boxes["image_id"].map(info["cols"]) == BOX_GRID[1]))
    keep = (ds != DATASET) | shape_ok
    return boxes[keep.to_numpy()].reset_index(drop=True), int((~keep).sum())


def read_split_list(path: str | Path) -> set[str]:
    """Image ids listed in ``train_val_list.txt`` or ``test_list.txt`` (one file name per line)."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: file not found")
    return {image_id_from_name(line.strip()) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def read_folder(folder: str | Path, unknown: str = "error") -> SourceTables:
    """Read an NIH folder: the newest ``Data_Entry_2017*.csv(.gz)`` plus ``BBox_List_2017.csv`` if present.

    A folder with only a box list (the synthetic cohort's NIH-style boxes over other datasets'
    images) yields an empty images table and the boxes.
    """
    folder = Path(folder)
    entries = sorted(folder.glob("Data_Entry_2017*.csv*"))
    if entries:
        tables = read_data_entry(entries[-1], unknown=unknown)
    else:
        tables = SourceTables(DATASET, finish_images([], DATASET))
    bbox = sorted(folder.glob("BBox_List_2017.csv*"))
    if bbox:
        tables.boxes, issues = read_boxes(bbox[-1], unknown=unknown)
        tables.issues += issues
    return tables
