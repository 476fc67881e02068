"""Reading the report's inputs: every file is a declared output of an earlier stage.

A section whose producing stage is not in ``dvc.yaml`` is reported as absent; a file that a
stage in the DAG declares but that is missing or malformed raises :class:`ReportError` naming
the file, the stage and what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cxr.report.dag import Dag, norm
from cxr.report.errors import ReportError


@dataclass(frozen=True)
class ReportInputs:
    """Paths of everything the report reads (all from the stage's command line).

    Attributes:
        params: params.yaml of the run.
        dvc_yaml: the pipeline definition (drawn as the DAG; decides which sections exist).
        raw: ingest output dir (its ``ingest-manifest.json`` or synthetic ``manifest.json``).
        images: convert's images table (status / error per source file).
        label, split, coco, features: the metric JSONs of those stages.
        detector, unet: ``reports/detector/metrics.json``, ``reports/unet/metrics.json``.
        evaluation: parent dir of the evaluate@M outputs (``<M>/metrics.json``, ``<M>/roc.csv``).
        models: ``reports/models.json`` of models_table.
        localization, retrieval: parent dirs of the localize@M / retrieve@M outputs.
        training: parent dir of the DVCLive logs of train@M / train_hash@M (``<M>/plots/metrics``); None: none.
        detector_live, unet_live: the DVCLive plots dirs of the detector and the UNet; None: none.
    """

    params: Path
    dvc_yaml: Path
    raw: Path
    images: Path
    label: Path
    split: Path
    coco: Path
    features: Path
    detector: Path
    unet: Path
    evaluation: Path
    models: Path
    localization: Path
    retrieval: Path
    training: Path | None = None
    detector_live: Path | None = None
    unet_live: Path | None = None


def _stage_hint(dag: Dag, path: Path) -> str:
    names = sorted({s.name for s, _ in dag.producers(norm(str(path)))})
    if not names:
        return "no stage of dvc.yaml declares it"
    return f"declared by stage {', '.join(names)}; run `dvc repro {names[0]}`"


def read_json(path: Path, dag: Dag) -> dict[str, Any]:
    """A JSON object from a declared output (errors name the file and its stage)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{path}: missing ({_stage_hint(dag, path)})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc}); {_stage_hint(dag, path)}") from None
    if not isinstance(obj, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_csv(path: Path, dag: Dag, columns: tuple[str, ...]) -> pd.DataFrame:
    """A CSV output that must have ``columns``."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: missing ({_stage_hint(dag, path)})")
    try:
        df = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as exc:
        raise ReportError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ReportError(f"{path}: missing column(s) {missing}; has {list(df.columns)}")
    return df


def read_parquet(path: Path, dag: Dag, columns: tuple[str, ...]) -> pd.DataFrame:
    """A parquet output that must have ``columns``."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: missing ({_stage_hint(dag, path)})")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise ReportError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ReportError(f"{path}: missing column(s) {missing}; has {list(df.columns)}")
    return df


_MISSING = object()


def get(obj: Any, key: str, path: Path, kind: type | tuple[type, ...] | None = None, default: Any = _MISSING) -> Any:
    """``obj["a"]["b"]`` for ``key="a.b"``; a missing key (without ``default``) or a wrong type is an error."""
    cur = obj
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            if default is not _MISSING:
                return default
            raise ReportError(f"{path}: missing key {key!r}")
        cur = cur[part]
    if kind is not None and cur is not None and not isinstance(cur, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ReportError(f"{path}: {key!r} should be {names}, got {type(cur).__name__} {cur!r}")
    return cur


def is_timing(key: str) -> bool:
    """Keys holding run times or throughputs: left out so that the report is the same on every run."""
    k = key.lower()
    return k.endswith("seconds") or k.endswith("per_s") or k.endswith("per_second") or k.endswith("_time")
