"""Localisation baselines that use no finding model, scored by the same code as the models.

* **prior box**: per class, the mean of the TRAIN split's ground-truth boxes, in coordinates
  relative to the converted image (0..1 of its width and height), placed on every test image of
  that class. A class without train boxes uses the mean of all train boxes (said in ``rule``).
* **lung box**: the bounding box of both lungs that the trained organ UNet (``models/unet``)
  segments on each test image, for every class: what "the finding is somewhere in the chest"
  scores.

A heatmap that does not beat these has learnt no more about *where* a finding is than its
average position. Both return predictions in the source frame, keyed like the models' ones
(``(image_id, label) -> [P, 4]``), so :func:`cxr.localize.score.score_boxes` scores them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxr import shards
from cxr.anatomy.common import pick_device, unet_probabilities
from cxr.errors import AnatomyError
from cxr.localize.boxes import Geometry
from cxr.modeldir import read_card
from cxr.models.unet import load_unet

log = logging.getLogger(__name__)

Pair = tuple[str, str, np.ndarray]


def _relative(box_src: np.ndarray, geo: Geometry) -> np.ndarray:
    wh = np.array([geo.png_width, geo.png_height] * 2, dtype=np.float64)
    return np.clip(geo.source_to_png(box_src) / wh, 0.0, 1.0)


def _absolute(rel: np.ndarray, geo: Geometry) -> np.ndarray:
    wh = np.array([geo.png_width, geo.png_height] * 2, dtype=np.float64)
    return geo.png_to_source(np.asarray(rel, dtype=np.float64).reshape(-1, 4) * wh)


def prior_boxes(train: pd.DataFrame, geos: Mapping[str, Geometry], classes: Sequence[str]
                ) -> tuple[dict[str, np.ndarray], dict[str, int], list[str]]:
    """Mean relative train box per class (``[4]`` in 0..1), the number of train boxes behind each, and
    the classes that fell back to the mean of all train boxes."""
    rel = {c: [] for c in classes}
    allb = []
    for r in train.itertuples(index=False):
        b = _relative(np.array([[r.x1, r.y1, r.x2, r.y2]], dtype=np.float64), geos[r.image_id])[0]
        allb.append(b)
        if r.label in rel:
            rel[r.label].append(b)
    pooled = np.mean(allb, axis=0) if allb else np.array([0.25, 0.25, 0.75, 0.75])
    out, n, fallback = {}, {}, []
    for c in classes:
        n[c] = len(rel[c])
        if rel[c]:
            out[c] = np.mean(rel[c], axis=0)
        else:
            out[c] = pooled
            fallback.append(c)
    return out, n, fallback


def prior_box_predictions(gt: pd.DataFrame, test: Sequence[Pair], classes: Sequence[str],
                          geometries_of) -> tuple[dict[tuple[str, str], np.ndarray], str]:
    """Prior-box predictions for the ``test`` pairs and the rule that made them.

    ``geometries_of(ids)`` returns the :class:`Geometry` of image ids (the caller's frame).
    """
    train = gt[gt["split"] == "train"]
    ids = sorted(set(train["image_id"]) | {p[0] for p in test})
    geos = geometries_of(ids)
    prior, n, fallback = prior_boxes(train, geos, classes)
    preds = {(i, lab): _absolute(prior[lab], geos[i]) for i, lab, _ in test}
    rule = (f"per class, the mean of the {len(train)} train-split GT boxes (relative to the image), "
            f"placed on every test image ({', '.join(f'{c}: {n[c]}' for c in classes)} train boxes)")
    if fallback:
        rule += f"; no train box for {', '.join(fallback)}: the mean of all train boxes"
    return preds, rule


def lung_boxes(unet_dir: str | Path, ids: Sequence[str], images: pd.DataFrame, images_dir: str | Path,
               device: str = "auto") -> dict[str, np.ndarray]:
    """Bounding box (converted-PNG pixels, ``[1, 4]``, or ``[0, 4]`` when nothing is segmented) of both
    lungs per image, from the organ UNet in ``unet_dir``."""
    try:
        model, classes = load_unet(unet_dir)
        card = read_card(unet_dir)
        dev = pick_device(device)
    except (AnatomyError, KeyError, RuntimeError) as exc:
        raise ValueError(f"{unet_dir}: not a usable organ UNet model dir ({exc})") from None
    model.to(dev).eval()
    size, threshold = int(card["input"]["size"]), float(card.get("threshold", 0.5))
    lungs = [k for k, c in enumerate(classes) if c.endswith("lung")]
    if not lungs:
        raise ValueError(f"{unet_dir}: the UNet segments no lung (classes {classes})")
    paths = images.set_index("image_id")["png_path"]
    out = {}
    for i in ids:
        with shards.open_image(Path(images_dir) / paths[i]) as im:  # a file or a shard member
            png = np.asarray(im)
        prob = unet_probabilities(model, size, png, dev)
        m = (prob[lungs] > threshold).any(axis=0)
        if not m.any():
            out[i] = np.zeros((0, 4))
            continue
        ys, xs = np.nonzero(m)
        out[i] = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=np.float64)
    return out


def lung_box_predictions(unet_dir: str | Path, test: Sequence[Pair], images: pd.DataFrame, images_dir: str | Path,
                         geos: Mapping[str, Geometry], device: str = "auto"
                         ) -> tuple[dict[tuple[str, str], np.ndarray], str]:
    """Whole-lung-box predictions (source frame) for the ``test`` pairs and their rule."""
    ids = sorted({p[0] for p in test})
    boxes = lung_boxes(unet_dir, ids, images, images_dir, device)
    empty = sum(1 for i in ids if not len(boxes[i]))
    preds = {(i, lab): (geos[i].png_to_source(boxes[i]) if len(boxes[i]) else np.zeros((0, 4))) for i, lab, _ in test}
    rule = (f"the bounding box of both lungs segmented by the organ UNet ({Path(unet_dir).name}) on each of the "
            f"{len(ids)} test images, for every class")
    if empty:
        rule += f"; {empty} image(s) with no lung segmented score 0"
    return preds, rule
