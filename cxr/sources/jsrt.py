"""JSRT (Shiraishi et al., AJR 2000) with the SCR organ masks (van Ginneken et al., MedIA 2006).

Native layout (the public PNG export with the SCR masks beside it)::

    jsrt/images/<name>.png                          posteroanterior radiographs (one per patient)
    jsrt/masks/<structure>/<name>.gif               SCR manual masks, 0 / 255, same grid as the image
        structure in right_lung, left_lung, heart, right_clavicle, left_clavicle

Labels: the file name says whether a lung nodule is present (``JPCLN*`` = nodule, ``JPCNN*`` =
none). That flag is the only finding JSRT annotates, so it is a one-term native table (vocabulary
``chestxray14``, term ``Nodule``): every other label stays unknown (NaN), never 0.

Masks: :func:`read_masks` lists ``image_id, structure, path`` for the ``unet`` stage, the same
table the generic ``data/raw/masks/<image_id>/<structure>.png`` layout yields
(:func:`cxr.sources.masks.find_masks`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from cxr.sources.common import Issue, SourceError, SourceTables, finish_images, image_id_from_name

DATASET = "jsrt"
#: SCR structure folder names (also the ``unet.structures`` names).
STRUCTURES = ("right_lung", "left_lung", "heart", "right_clavicle", "left_clavicle")
MASK_SUFFIXES = (".gif", ".png")
_NAME = re.compile(r"^JPC(LN|NN)\d+$", re.IGNORECASE)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".img")


def nodule_flag(name: str) -> float | None:
    """1.0 for ``JPCLN*`` (nodule), 0.0 for ``JPCNN*`` (none), None for a name of neither form."""
    m = _NAME.match(Path(name).stem)
    if not m:
        return None
    return 1.0 if m.group(1).upper() == "LN" else 0.0


def read_folder(folder: str | Path) -> SourceTables:
    """Read a JSRT folder: images (view PA, one patient per image) and the nodule flag.

    Files under ``images/`` whose names are not ``JPCLN<n>`` / ``JPCNN<n>`` are issues (counted;
    they get no label, but convert still converts them).

    Raises:
        SourceError: no ``images/`` folder or no image in it.
    """
    folder = Path(folder)
    img_dir = folder / "images"
    if not img_dir.is_dir():
        raise SourceError(f"{folder}: JSRT folder without images/ (expected images/<name>.png)")
    files = sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise SourceError(f"{img_dir}: no JSRT images ({'/'.join(IMAGE_SUFFIXES)})")
    rows, labels, issues = [], [], []
    for p in files:
        iid = image_id_from_name(p.name)
        # one image per patient in JSRT: the image id is the patient id
        rows.append({"image_id": iid, "patient_id": iid, "study_id": iid, "view": "PA",
                     "source_path": f"images/{p.name}"})
        flag = nodule_flag(p.name)
        if flag is None:
            issues.append(Issue(f"images/{p.name}", "-", "name is not JPCLN<n> / JPCNN<n>: no nodule label"))
            continue
        labels.append({"image_id": iid, "Nodule": flag})
    lab = pd.DataFrame(labels, columns=["image_id", "Nodule"])
    return SourceTables(DATASET, finish_images(rows, DATASET), labels=lab, label_vocab="chestxray14",
                        label_level="image", issues=issues)


def read_masks(folder: str | Path) -> pd.DataFrame:
    """``image_id, structure, path`` of every SCR mask under ``folder/masks/<structure>/`` (sorted)."""
    folder = Path(folder) / "masks"
    rows = []
    if folder.is_dir():
        for sdir in sorted(d for d in folder.iterdir() if d.is_dir()):
            for p in sorted(sdir.iterdir()):
                if p.is_file() and p.suffix.lower() in MASK_SUFFIXES and not p.name.startswith("."):
                    rows.append({"image_id": image_id_from_name(p.name), "structure": sdir.name, "path": str(p)})
    return pd.DataFrame(rows, columns=["image_id", "structure", "path"])
