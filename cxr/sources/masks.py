"""Organ masks in the raw data, whatever their native layout: one table ``image_id, structure, path``.

Layouts read:

* generic (the synthetic cohort's, and the simplest for your own masks):
  ``<raw>/masks/<image_id>/<structure>.png``;
* SCR / JSRT: ``<raw>/jsrt/masks/<structure>/<name>.gif`` (:mod:`cxr.sources.jsrt`).

Masks are in the pixel grid of the stored source image; ``cxr.anatomy.masks.to_png_grid`` maps
them into the converted PNG.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxr.sources import jsrt
from cxr.sources.common import DATASET_FOLDERS, SourceError, image_id_from_name

COLUMNS = ["image_id", "structure", "path"]


def _generic(folder: Path) -> pd.DataFrame:
    rows = []
    for idir in sorted(d for d in folder.iterdir() if d.is_dir()):
        for p in sorted(idir.iterdir()):
            if p.is_file() and p.suffix.lower() in jsrt.MASK_SUFFIXES and not p.name.startswith("."):
                rows.append({"image_id": idir.name, "structure": image_id_from_name(p.name), "path": str(p)})
    return pd.DataFrame(rows, columns=COLUMNS)


def find_masks(raw_dir: str | Path) -> pd.DataFrame:
    """Every organ mask below ``raw_dir`` (sorted by image_id, structure).

    Raises:
        SourceError: ``raw_dir`` is not a directory, or one image has two files for one structure.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise SourceError(f"raw directory {raw_dir} does not exist; run the ingest stage first")
    parts = []
    for d in sorted(p for p in raw_dir.iterdir() if p.is_dir()):
        if d.name.lower() == "masks":
            parts.append(_generic(d))
        elif DATASET_FOLDERS.get(d.name.lower()) == "jsrt":
            parts.append(jsrt.read_masks(d))
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.concat(parts, ignore_index=True)
    dup = out[out.duplicated(["image_id", "structure"], keep=False)]
    if len(dup):
        r = dup.iloc[0]
        raise SourceError(f"{len(dup)} mask files share an (image, structure), e.g. {r.image_id}/{r.structure}: "
                          f"{sorted(dup.loc[(dup.image_id == r.image_id) & (dup.structure == r.structure), 'path'])}")
    return out.sort_values(["image_id", "structure"], kind="stable").reset_index(drop=True)
