"""Stages that cannot apply to the data at hand say so, instead of failing or inventing numbers.

A DVC stage always runs when it is in ``dvc.yaml``; on data that lacks what it needs (no Chest
ImaGenome scene graphs for ``coco`` / ``detector`` / ``features``, no finding boxes for
``localize``) it raises :class:`NotApplicable` inside, and the stage script writes every declared
output as a small marker (:func:`marker`) and exits 0. Downstream stages and the report read the
marker (:func:`reason_of`) and print "not applicable: <why>".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from cxr.errors import CxrError

KEY = "not_applicable"


class NotApplicable(CxrError):
    """The stage does not apply to this data; the message says why (shown to the user as is)."""


def marker(reason: str, **extra: Any) -> dict[str, Any]:
    """The content of a not-applicable output: ``{"not_applicable": reason, ...}``."""
    return {KEY: str(reason), **extra}


def reason_of(obj: dict | str | Path | None) -> str | None:
    """The reason recorded in a marker (a dict, a JSON file, or a folder holding ``marker.json``),
    or None when the object is a real result (or missing)."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        v = obj.get(KEY)
        return str(v) if v else None
    path = Path(obj)
    if path.is_dir():
        path = path / "marker.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return reason_of(data) if isinstance(data, dict) else None
