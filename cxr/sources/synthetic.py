"""The built-in synthetic cohort (``cxr.synth``, written by the ingest stage into ``data/raw``).

It imitates real layouts exactly, so it is read by the real adapters: MIMIC-CXR metadata,
DICOMs and reports + Chest ImaGenome scene graphs (:mod:`cxr.sources.mimic`,
:mod:`cxr.sources.imagenome`), a PadChest CSV (:mod:`cxr.sources.padchest`) and NIH-style
boxes (:mod:`cxr.sources.nih`). ``truth/truth.parquet`` holds the true findings; pipeline
stages never read it - only tests and benchmarks use :func:`read_truth` to score.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxr.sources import read_raw
from cxr.sources.common import SourceError, SourceTables


def read_synthetic(raw_dir: str | Path, progress: bool = False) -> dict[str, SourceTables]:
    """Read a synthetic cohort's raw directory with the real adapters.

    Raises:
        SourceError: the directory lacks the MIMIC-style part.
    """
    tables = read_raw(raw_dir, progress=progress)
    if "mimic" not in tables:
        raise SourceError(f"{raw_dir}: not a synthetic cohort (no mimic-cxr folder)")
    return tables


def read_truth(raw_dir: str | Path) -> pd.DataFrame:
    """The cohort's true findings (one row per image). For scoring only - never in a stage.

    Raises:
        SourceError: no ``truth/truth.parquet``.
    """
    path = Path(raw_dir) / "truth" / "truth.parquet"
    if not path.is_file():
        raise SourceError(f"{path}: not found (only synthetic cohorts have a truth table)")
    return pd.read_parquet(path)
