"""Dataset adapters: one module per dataset, each producing the common tables of
:mod:`cxr.sources.common` (images, reports, native labels, boxes, counted issues).

:func:`read_raw` finds the datasets present in a raw directory by their top-level folder names
(the same spellings the convert stage uses) and runs their adapters.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cxr.sources import chexpert, imagenome, jsrt, mimic, nih, openi, padchest
from cxr.sources.common import DATASET_FOLDERS, Issue, SourceError, SourceTables, safe_id

log = logging.getLogger(__name__)

FOLDERS = DATASET_FOLDERS  # top-level folder spellings -> adapter name (cxr.sources.common)

__all__ = ["FOLDERS", "Issue", "SourceError", "SourceTables", "read_raw", "safe_id"]


def _read_chexpert(folder: Path) -> SourceTables:
    tables = sorted(folder.rglob("train.csv*")) + sorted(folder.rglob("valid.csv*"))
    if not tables:
        raise SourceError(f"{folder}: no CheXpert train.csv / valid.csv")
    parts = [chexpert.read_table(t) for t in tables]
    first = parts[0]
    import pandas as pd

    first.images = pd.concat([p.images for p in parts], ignore_index=True).drop_duplicates("image_id")
    first.labels = pd.concat([p.labels for p in parts], ignore_index=True).drop_duplicates("image_id")
    first.issues = [i for p in parts for i in p.issues]
    return first


def _imagenome_folder(folder: Path) -> Path:
    sg = folder / "silver_dataset" / "scene_graph"
    return sg if sg.is_dir() else folder


def read_raw(raw_dir: str | Path, unknown: str = "error", progress: bool = True) -> dict[str, SourceTables]:
    """Run the adapter of every dataset folder found in ``raw_dir``.

    Args:
        raw_dir: e.g. ``data/raw`` (the ingest stage's output).
        unknown: unknown label strings: ``"error"`` or ``"count"`` (see the adapters).
        progress: show progress bars on long loops.

    Returns:
        Adapter name -> tables, in a fixed order (mimic, imagenome, padchest, nih, chexpert, openi, jsrt).

    Raises:
        SourceError: ``raw_dir`` is missing, holds no known dataset, or an adapter fails.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise SourceError(f"raw directory {raw_dir} does not exist; run the ingest stage first")
    found: dict[str, Path] = {}
    for d in sorted(p for p in raw_dir.iterdir() if p.is_dir()):
        name = FOLDERS.get(d.name.lower())
        if name and name not in found:
            found[name] = d
    if not found:
        raise SourceError(f"{raw_dir}: no known dataset folder; expected one of {sorted(FOLDERS)}")
    readers = {
        "mimic": lambda f: mimic.read_folder(f, progress=progress),
        "imagenome": lambda f: imagenome.read_scene_graphs(_imagenome_folder(f), unknown=unknown, progress=progress),
        "padchest": lambda f: padchest.read_folder(f, unknown=unknown),
        "nih": lambda f: nih.read_folder(f, unknown=unknown),
        "chexpert": _read_chexpert,
        "openi": openi.read_folder,
        "jsrt": jsrt.read_folder,
    }
    out = {}
    for name in readers:
        if name in found:
            log.info("reading %s from %s", name, found[name])
            out[name] = readers[name](found[name])
    return out
