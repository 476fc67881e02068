"""Chest ImaGenome (Wu et al., NeurIPS Datasets 2021) scene graphs:
``silver_dataset/scene_graph/<dicom_id>_SceneGraph.json``.

A scene graph has ``objects[]`` (one per anatomical region: ``object_id`` =
``<dicom_id>_<bbox_name>``, ``bbox_name``, ``original_x1/y1/x2/y2`` in full-resolution pixels,
``original_width/height`` the box size there, ``x1..y2`` on a 224 grid) and ``attributes[]``
(``bbox_name`` + ``attributes``: a list of lists of ``"category|yes/no|name"`` strings, one inner
list per report sentence). A region may appear in several attribute entries; they are merged,
never duplicated (a defect of the reference ImaGenome->COCO converter).

Finding values per region and per image: 1 if any ``yes``, else 0 if any ``no``, else absent.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.labels import load_map
from cxr.progress import tqdm
from cxr.sources.common import Issue, SourceError, SourceTables, finish_images, safe_id

log = logging.getLogger(__name__)

DATASET = "mimic"
#: The 18 regions AnaXNet / CheXtriev use, in their fixed order.
REGIONS18 = (
    "right lung", "right apical zone", "right upper lung zone", "right mid lung zone", "right lower lung zone",
    "right hilar structures", "right costophrenic angle",
    "left lung", "left apical zone", "left upper lung zone", "left mid lung zone", "left lower lung zone",
    "left hilar structures", "left costophrenic angle",
    "mediastinum", "upper mediastinum", "cardiac silhouette", "trachea",
)
#: Attribute categories that carry findings (others: nlp normal/abnormal, technical assessment).
FINDING_CATEGORIES = frozenset({"anatomicalfinding", "disease", "tubesandlines", "device"})
_SUFFIX = "_SceneGraph.json"


def parse_attribute(s: str) -> tuple[str, bool, str]:
    """Split ``"category|yes|name"`` into ``(category, present, name)``.

    Raises:
        ValueError: not three ``|``-separated fields or the middle one is not yes/no.
    """
    parts = [p.strip() for p in str(s).split("|")]
    if len(parts) != 3 or parts[1].lower() not in ("yes", "no") or not parts[0] or not parts[2]:
        raise ValueError(f"attribute {s!r} is not 'category|yes/no|name'")
    return parts[0].lower(), parts[1].lower() == "yes", parts[2].lower()


def read_scene_graph(data: bytes | str, name: str, known: set[str] | None = None, unknown: str = "error") -> dict:
    """Parse one scene graph.

    Args:
        data: the JSON text.
        name: file name (for messages; the image id is taken from it).
        known: finding names allowed (lower case); None accepts all.
        unknown: ``"error"`` raises on a finding not in ``known``; ``"count"`` skips it and
            lists it under ``"unknown"``.

    Returns:
        ``{"image_id", "regions": {bbox_name: [x1, y1, x2, y2]} (sorted by name), "findings":
        {bbox_name: {finding: 1.0 / 0.0}}, "unknown": [names]}``.

    Raises:
        ValueError: malformed JSON, missing keys, bad boxes or attribute strings, unknown
            findings with ``unknown="error"``.
    """
    try:
        g = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name}: malformed JSON ({exc})") from None
    if not isinstance(g, dict) or not isinstance(g.get("objects"), list):
        raise ValueError(f"{name}: no 'objects' list")
    image_id = safe_id(name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else Path(name).stem)
    regions = {}
    for o in g["objects"]:
        try:
            bn = str(o["bbox_name"]).strip().lower()
            box = [float(o[k]) for k in ("original_x1", "original_y1", "original_x2", "original_y2")]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{name}: object {o.get('object_id') if isinstance(o, dict) else o!r} lacks a valid box ({exc})") from None
        if not (all(math.isfinite(v) for v in box) and box[2] > box[0] and box[3] > box[1]):
            raise ValueError(f"{name}: region {bn!r} has an empty or inverted box {box}")
        regions[bn] = box  # a region listed twice keeps one box
    findings: dict[str, dict[str, float]] = {}
    unknown_names: list[str] = []
    for a in g.get("attributes") or []:
        if not isinstance(a, dict) or "bbox_name" not in a:
            raise ValueError(f"{name}: attribute entry without bbox_name: {a!r}")
        bn = str(a["bbox_name"]).strip().lower()
        groups = a.get("attributes") or []
        if not isinstance(groups, list) or not all(isinstance(x, list) for x in groups):
            raise ValueError(f"{name}: attributes of {bn!r} must be a list of lists of strings")
        slot = findings.setdefault(bn, {})
        for s in (s for grp in groups for s in grp):
            cat, present, fname = parse_attribute(s)
            if cat not in FINDING_CATEGORIES:
                continue
            if known is not None and fname not in known:
                if unknown == "error":
                    raise ValueError(f"{name}: unknown ImaGenome finding {fname!r} (in {s!r}); add it to "
                                     "cxr/labelmaps/imagenome.csv or set label.unknown_labels: count")
                unknown_names.append(fname)
                continue
            slot[fname] = max(slot.get(fname, 0.0), 1.0 if present else 0.0)
    # A plain dict, not a DataFrame: building one small DataFrame per graph cost more than parsing
    # the JSON (MIMIC-CXR has 240k scene graphs).
    reg = {bn: regions[bn] for bn in sorted(regions)}
    return {"image_id": image_id, "regions": reg, "findings": findings, "unknown": unknown_names}


def image_findings(findings: dict[str, dict[str, float]]) -> dict[str, float]:
    """Image-level values: 1 if any region has the finding, else 0 if any region negates it."""
    out: dict[str, float] = {}
    for per_region in findings.values():
        for k, v in per_region.items():
            out[k] = max(out.get(k, 0.0), v)
    return out


def read_scene_graphs(folder: str | Path, unknown: str = "error", progress: bool = True) -> SourceTables:
    """Read every ``*_SceneGraph.json`` below ``folder``.

    Returns:
        SourceTables with ``labels`` (image-level findings, vocabulary ``imagenome``) and
        ``boxes``: one row per region (``image_id, label=<region name>, x, y, w, h`` in original
        pixels, plus ``findings``: that region's findings as ``;``-joined ``name=1/0``).
        Malformed graphs are counted issues.

    Raises:
        SourceError: ``folder`` missing, or unknown findings with ``unknown="error"``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"{folder}: scene-graph folder not found")
    known = set(load_map("imagenome")["term"])
    files = sorted(folder.rglob("*" + _SUFFIX))
    issues: list[Issue] = []
    label_rows, box_rows = [], []
    for f in tqdm(files, desc="scene graphs", unit="graph", disable=not progress or len(files) < 1000, mininterval=2):
        try:
            g = read_scene_graph(f.read_bytes(), f.name, known=known, unknown=unknown)
        except ValueError as exc:
            if "unknown ImaGenome finding" in str(exc):
                raise SourceError(str(exc)) from None
            issues.append(Issue(f.name, "-", str(exc)))
            continue
        for u in sorted(set(g["unknown"])):
            issues.append(Issue(f.name, "-", f"unknown ImaGenome finding {u!r} (ignored)"))
        label_rows.append({"image_id": g["image_id"], **image_findings(g["findings"])})
        for bbox_name, (x1, y1, x2, y2) in g["regions"].items():
            fnd = g["findings"].get(bbox_name, {})
            box_rows.append({
                "image_id": g["image_id"], "label": bbox_name, "x": x1, "y": y1,
                "w": x2 - x1, "h": y2 - y1,
                "findings": ";".join(f"{k}={int(v)}" for k, v in sorted(fnd.items())),
            })
    labels = pd.DataFrame(label_rows)
    if labels.empty:
        labels = pd.DataFrame(columns=["image_id"])
    cols = ["image_id", *sorted(c for c in labels.columns if c != "image_id")]
    labels = labels[cols].sort_values("image_id", kind="stable").reset_index(drop=True)
    boxes = pd.DataFrame(box_rows, columns=["image_id", "label", "x", "y", "w", "h", "findings"])
    return SourceTables(DATASET, finish_images([], DATASET), labels=labels, label_vocab="imagenome",
                        label_level="image", boxes=boxes, issues=issues)
