"""Heatmap -> boxes, and box coordinates across the three pixel frames of an image.

Frames (all boxes are ``x1, y1, x2, y2`` in continuous pixel-edge coordinates: a box covering
pixel columns ``0..9`` is ``x1 = 0, x2 = 10``):

* **source**: the stored original (DICOM / PNG as ingested; ``rows`` x ``cols`` of
  images.parquet). Ground-truth boxes (NIH ``BBox_List_2017.csv``, scene graphs) live here.
* **png**: the converted PNG (``out_rows`` x ``out_cols``). The convert stage resized and
  padded / cropped the source and recorded ``x_png = x * scale + offset_x`` (same for y;
  :func:`cxr.anatomy.coco.to_png` applies it to scene-graph boxes). No flips happen anywhere.
* **input**: the model input ``S x S``: :func:`cxr.data.load_png_square` pads the PNG centred
  to a square of side ``max(h, w)`` (offsets ``(side - w) // 2``, ``(side - h) // 2``) and
  resizes it to ``S`` (PIL bilinear, which maps pixel edges to pixel edges), so
  ``x_in = (x_png + pad_x) * S / side``.

:class:`Geometry` holds one image's numbers and maps boxes both ways; boxes are never clipped by
the inverse maps (a predicted box inside the input can only fall inside the padded PNG square).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy import ndimage

from cxr.anatomy.coco import to_png
from cxr.errors import CxrError


class BoxError(CxrError, ValueError):
    """Bad heatmap, threshold or geometry (the message names the value)."""


@dataclass(frozen=True)
class Geometry:
    """Pixel geometry of one image: source -> png (convert stage) -> input (model).

    Attributes:
        scale, offset_x, offset_y: the convert stage's ``x_png = x * scale + offset_x``.
        png_width, png_height: size of the converted PNG (``out_cols``, ``out_rows``).
        size: model input side ``S``.
    """

    scale: float
    offset_x: float
    offset_y: float
    png_width: int
    png_height: int
    size: int

    def __post_init__(self):
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise BoxError(f"scale must be a positive number, got {self.scale!r} (images.parquet `scale`)")
        if self.png_width < 1 or self.png_height < 1 or self.size < 1:
            raise BoxError(f"bad sizes: png {self.png_width}x{self.png_height}, input {self.size}")

    @classmethod
    def from_row(cls, row: Mapping, size: int) -> Geometry:
        """From an images.parquet row (``scale``, ``offset_x``, ``offset_y``, ``out_cols``, ``out_rows``)."""
        try:
            return cls(float(row["scale"]), float(row["offset_x"]), float(row["offset_y"]), int(row["out_cols"]),
                       int(row["out_rows"]), int(size))
        except (KeyError, TypeError, ValueError) as exc:
            raise BoxError(f"image {row.get('image_id', '?')}: images.parquet row lacks a usable geometry ({exc}); "
                           "scale / offset_x / offset_y / out_rows / out_cols come from the convert stage") from None

    @property
    def side(self) -> int:
        return max(self.png_width, self.png_height)

    @property
    def pad(self) -> tuple[int, int]:
        """``(pad_x, pad_y)`` of the centred square padding in :func:`cxr.data.load_png_square`."""
        return (self.side - self.png_width) // 2, (self.side - self.png_height) // 2

    def input_to_png(self, boxes: np.ndarray) -> np.ndarray:
        b = _as_boxes(boxes)
        f = self.side / self.size
        px, py = self.pad
        return b * f - np.array([px, py, px, py], dtype=np.float64)

    def png_to_input(self, boxes: np.ndarray) -> np.ndarray:
        b = _as_boxes(boxes)
        px, py = self.pad
        return (b + np.array([px, py, px, py], dtype=np.float64)) * (self.size / self.side)

    def png_to_source(self, boxes: np.ndarray) -> np.ndarray:
        b = _as_boxes(boxes)
        o = np.array([self.offset_x, self.offset_y, self.offset_x, self.offset_y], dtype=np.float64)
        return (b - o) / self.scale

    def source_to_png(self, boxes: np.ndarray) -> np.ndarray:
        """The convert stage's map (:func:`cxr.anatomy.coco.to_png` without its clipping)."""
        b = _as_boxes(boxes)
        o = np.array([self.offset_x, self.offset_y, self.offset_x, self.offset_y], dtype=np.float64)
        return b * self.scale + o

    def source_to_png_clipped(self, box) -> list[float] | None:
        """One source box in PNG pixels, clipped to the PNG; None when a crop removed it (as the coco stage)."""
        return to_png(box, self.scale, self.offset_x, self.offset_y, self.png_width, self.png_height)

    def input_to_source(self, boxes: np.ndarray) -> np.ndarray:
        return self.png_to_source(self.input_to_png(boxes))

    def source_to_input(self, boxes: np.ndarray) -> np.ndarray:
        return self.png_to_input(self.source_to_png(boxes))


def _as_boxes(boxes) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4:
        raise BoxError(f"boxes must be [N, 4] (x1, y1, x2, y2), got shape {b.shape}")
    return b


def xywh_to_xyxy(boxes) -> np.ndarray:
    """NIH ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]``."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def heatmap_boxes(heatmap: np.ndarray, threshold: float, max_boxes: int = 0) -> np.ndarray:
    """Boxes around the connected regions of a heatmap above a threshold.

    The map is min-max normalised to ``[0, 1]`` first, then binarised at ``>= threshold``; the
    8-connected components (:func:`scipy.ndimage.label`) give one bounding box each.

    Args:
        heatmap: ``[H, W]`` float map (any range; constant or non-finite maps give no box).
        threshold: in ``(0, 1]``, on the normalised map.
        max_boxes: keep the ``max_boxes`` boxes with the highest peak (0 = all).

    Returns:
        float64 ``[K, 5]``: ``x1, y1, x2, y2`` (pixel edges of the map's grid) and the component's
        peak value, sorted by peak descending, then by position (deterministic).
    """
    if not 0 < threshold <= 1:
        raise BoxError(f"heatmap threshold must be in (0, 1], got {threshold}")
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2:
        raise BoxError(f"heatmap must be 2-d [H, W], got shape {h.shape}")
    if not np.isfinite(h).all():
        raise BoxError("heatmap has non-finite values")
    lo, hi = float(h.min()), float(h.max())
    if hi <= lo:
        return np.zeros((0, 5))
    h = (h - lo) / (hi - lo)
    lab, n = ndimage.label(h >= threshold, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros((0, 5))
    peaks = ndimage.maximum(h, lab, index=np.arange(1, n + 1))
    out = []
    for sl, peak in zip(ndimage.find_objects(lab), np.atleast_1d(peaks)):
        ys, xs = sl
        out.append((xs.start, ys.start, xs.stop, ys.stop, float(peak)))
    out.sort(key=lambda r: (-r[4], r[1], r[0], r[3], r[2]))
    if max_boxes > 0:
        out = out[:max_boxes]
    return np.asarray(out, dtype=np.float64).reshape(-1, 5)
