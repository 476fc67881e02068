"""Chest ImaGenome scene graphs -> one standard COCO json per split.

Each file (``train.json``, ``val.json``, ``test.json``) is plain COCO that
``pycocotools.coco.COCO`` loads:

* ``images``: ``id`` (int, unique across the three files), ``file_name`` = the converted PNG's
  path relative to the images directory, ``width`` / ``height`` of that PNG, plus ``name`` (the
  pipeline's string ``image_id``).
* ``categories``: the configured regions in their fixed order, ``id`` = 1 + position.
* ``annotations``: one per region per image (a region listed in several attribute entries is
  merged, never duplicated), ``bbox`` ``[x, y, w, h]`` in PNG pixels, ``area``, ``iscrowd`` 0, and
  ``attributes``: that region's finding vector in the order of ``info.findings`` (1 = any sentence
  says the finding is present there, else 0).
* ``info``: ``regions``, ``findings``, ``finding_space`` and the counts of images with missing regions.

Box geometry: scene-graph ``original_*`` coordinates are pixels of the stored image; the convert
stage recorded ``scale``, ``offset_x``, ``offset_y`` per image (``x_png = x * scale + offset_x``),
so the same transform maps the boxes. Boxes are clipped to the PNG; a box left empty by a crop
is dropped and counted.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cxr.anatomy.tables import ok_images  # torch-free: this stage starts in a second, not five
from cxr.errors import AnatomyError
from cxr.labels import label_names, load_map
from cxr.progress import tqdm
from cxr.sources.imagenome import REGIONS18, read_scene_graph

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SUFFIX = "_SceneGraph.json"


def finding_map(space: str) -> dict[str, list[str]]:
    """ImaGenome term -> the labels of ``space`` it maps to (from the packaged vocabulary map)."""
    m = load_map("imagenome")
    if space not in m.columns:
        raise AnatomyError(f"no ImaGenome mapping to label space {space!r}; choose one of {list(m.columns[1:])}")
    # "Label?" (implied at most uncertain) is a report-level inference, not a region finding
    return {t: [x for x in cell.split("|") if x and not x.endswith("?")] for t, cell in zip(m["term"], m[space])}


def to_png(box: Sequence[float], scale: float, ox: float, oy: float, width: int, height: int) -> list[float] | None:
    """Map an ``(x1, y1, x2, y2)`` box of the stored image into PNG pixels; clip; None if empty."""
    x1, y1, x2, y2 = (float(v) for v in box)
    # plain floats, not np.clip: this runs once per region per image (18 x 377k at MIMIC size)
    x1, x2 = min(max(x1 * scale + ox, 0.0), width), min(max(x2 * scale + ox, 0.0), width)
    y1, y2 = min(max(y1 * scale + oy, 0.0), height), min(max(y2 * scale + oy, 0.0), height)
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None
    return [float(x1), float(y1), float(x2), float(y2)]


def read_graphs(folder: str | Path, unknown: str = "count", progress: bool = True) -> tuple[list[dict], list[str]]:
    """Parse every ``*_SceneGraph.json`` below ``folder`` with :func:`cxr.sources.imagenome.read_scene_graph`.

    Returns:
        The parsed graphs (sorted by image id) and the messages of malformed ones (skipped, counted).

    Raises:
        AnatomyError: ``folder`` holds no scene graph, or unknown findings with ``unknown="error"``.
    """
    folder = Path(folder)
    files = sorted(folder.rglob("*" + SUFFIX)) if folder.is_dir() else []
    if not files:
        raise AnatomyError(f"{folder}: no *{SUFFIX} files; the coco stage needs Chest ImaGenome scene graphs")
    known = set(load_map("imagenome")["term"])
    graphs, bad = [], []
    for f in tqdm(files, desc="scene graphs", unit="graph", disable=not progress, mininterval=2):
        try:
            graphs.append(read_scene_graph(f.read_bytes(), f.name, known=known, unknown=unknown))
        except ValueError as exc:
            if "unknown ImaGenome finding" in str(exc):  # the reader names the label stage's key
                raise AnatomyError(str(exc).replace("label.unknown_labels", "coco.unknown_findings")) from None
            bad.append(str(exc))
    graphs.sort(key=lambda g: g["image_id"])
    return graphs, bad


def resolve_regions(regions: str | Sequence[str], graphs: list[dict]) -> list[str]:
    """``anaxnet18`` -> the 18 AnaXNet regions; ``all`` -> those 18 (when present) then the others, sorted."""
    if regions == "anaxnet18":
        return list(REGIONS18)
    seen = sorted({bn for g in graphs for bn in g["regions"]})
    if regions == "all":
        return [r for r in REGIONS18 if r in seen] + [r for r in seen if r not in REGIONS18]
    if isinstance(regions, str):
        raise AnatomyError(f"coco.regions = {regions!r}; use anaxnet18, all or a list of region names")
    missing = [r for r in regions if r not in seen]
    if missing and graphs:
        log.warning("configured regions never seen in the scene graphs: %s", missing)
    return list(regions)


def build_coco(
    graphs: list[dict],
    images: pd.DataFrame,
    splits: pd.DataFrame,
    regions: str | Sequence[str] = "anaxnet18",
    findings: str = "anaxnet9",
) -> tuple[dict[str, dict], dict[str, Any]]:
    """Build the per-split COCO dicts.

    Args:
        graphs: parsed scene graphs (:func:`read_graphs`).
        images: images.parquet (needs image_id, png_path, out_rows, out_cols, scale, offset_x, offset_y, status).
        splits: splits.parquet (image_id, split).
        regions: ``anaxnet18``, ``all`` or a list of region names (categories, in order).
        findings: label space of the per-region finding vector.

    Returns:
        ``{split: coco dict}`` and a summary (images, annotations, missing regions, skipped graphs
        and findings; ``unknown_findings`` counts each ImaGenome term outside the vocabulary map).
    """
    need = {"image_id", "png_path", "out_rows", "out_cols", "scale", "offset_x", "offset_y", "status"}
    if need - set(images.columns):
        raise AnatomyError(f"images table lacks columns {sorted(need - set(images.columns))} "
                           "(scale / offset_x / offset_y come from the convert stage)")
    region_list = resolve_regions(regions, graphs)
    cat_id = {r: i + 1 for i, r in enumerate(region_list)}
    fnames = label_names(findings)
    fmap = finding_map(findings)
    fpos = {f: i for i, f in enumerate(fnames)}
    imgs = ok_images(images)
    # one dict lookup per graph instead of a pandas row (.loc + Series access was 2.7 ms per graph)
    geometry = dict(zip(imgs["image_id"], zip(imgs["png_path"].astype(str), imgs["out_cols"].astype(int),
                                              imgs["out_rows"].astype(int), imgs["scale"].astype(float),
                                              imgs["offset_x"].astype(float), imgs["offset_y"].astype(float))))
    split_of = dict(zip(splits["image_id"], splits["split"]))
    info = {"description": "Chest ImaGenome scene graphs -> COCO (cxr.anatomy.coco)", "regions": region_list,
            "findings": fnames, "finding_space": findings}
    out = {s: {"info": dict(info, split=s), "licenses": [], "images": [], "annotations": [],
               "categories": [{"id": cat_id[r], "name": r, "supercategory": "anatomy"} for r in region_list]}
           for s in SPLITS}
    skipped: Counter = Counter()
    # coco.unknown_findings: count -> read_graphs kept the terms outside the vocabulary map per graph
    unknown_terms: Counter = Counter(u for g in graphs for u in g.get("unknown", ()))
    if unknown_terms:
        skipped["unknown_finding"] = sum(unknown_terms.values())
        log.warning("ImaGenome findings not in the vocabulary map (skipped): %s", dict(unknown_terms.most_common(10)))
    missing_per_region: Counter = Counter()
    images_missing = Counter()
    next_img, next_ann = 1, 1
    for g in graphs:
        iid = g["image_id"]
        if iid not in geometry:
            skipped["no_converted_image"] += 1
            continue
        split = split_of.get(iid)
        if split not in out:
            skipped["no_split"] += 1
            continue
        png_path, width, height, scale, ox, oy = geometry[iid]
        coco = out[split]
        coco["images"].append({"id": next_img, "file_name": png_path, "width": width,
                               "height": height, "name": iid})
        boxes = g["regions"]
        n_missing = 0
        for region in region_list:
            box = boxes.get(region)
            png_box = None if box is None else to_png(box, scale, ox, oy, width, height)
            if png_box is None:
                n_missing += 1
                missing_per_region[region] += 1
                if box is not None:
                    skipped["box_outside_png"] += 1
                continue
            vec = [0.0] * len(fnames)
            for term, value in g["findings"].get(region, {}).items():
                if value == 1.0:
                    for target in fmap.get(term, []):
                        vec[fpos[target]] = 1.0
            x1, y1, x2, y2 = png_box
            coco["annotations"].append({
                "id": next_ann, "image_id": next_img, "category_id": cat_id[region],
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": 0, "attributes": vec,
            })
            next_ann += 1
        if n_missing:
            images_missing[split] += 1
        next_img += 1
    summary = {
        "graphs": len(graphs),
        "regions": len(region_list),
        "findings": fnames,
        "images": {s: len(out[s]["images"]) for s in SPLITS},
        "annotations": {s: len(out[s]["annotations"]) for s in SPLITS},
        "images_missing_regions": {s: images_missing[s] for s in SPLITS},
        "missing_per_region": {r: missing_per_region[r] for r in region_list if missing_per_region[r]},
        "skipped": dict(sorted(skipped.items())),
        "unknown_findings": dict(sorted(unknown_terms.items())),
    }
    for s in SPLITS:
        out[s]["info"]["images_missing_regions"] = images_missing[s]
    if sum(summary["images"].values()) == 0:
        raise AnatomyError(f"no scene graph matched a converted image with a split ({dict(skipped)}); "
                           "check that images.parquet and splits.parquet come from the same data/raw")
    return out, summary
