"""Organ masks: read, map into the converted PNG's pixels, score (Dice, IoU).

Masks are binary images (8-bit 0 / 255, or 0 / 1) in the pixel grid of the stored source image
(``data/raw/masks/<image_id>/<structure>.png``). The convert stage recorded how it resized and
padded / cropped each image (``scale``, ``offset_x``, ``offset_y``, ``out_rows``, ``out_cols`` in
images.parquet); :func:`to_png_grid` applies the same geometry to a mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cxr.anatomy.common import AnatomyError


def read_mask(path: str | Path) -> np.ndarray:
    """A binary mask PNG as bool ``[H, W]`` (foreground = above half the file's maximum value).

    Raises:
        AnatomyError: missing file or a multi-channel image.
    """
    path = Path(path)
    if not path.is_file():
        raise AnatomyError(f"{path}: mask not found")
    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise AnatomyError(f"{path}: mask must be single-channel, got shape {arr.shape}")
    top = 1 if arr.max() <= 1 else (65535 if arr.dtype == np.uint16 else 255)
    return arr > top / 2


def resize_mask(mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Area-resample a bool mask to ``rows x cols`` and threshold at one half."""
    if mask.shape == (rows, cols):
        return mask.astype(bool, copy=False)
    f = Image.fromarray(mask.astype(np.float32)).resize((cols, rows), Image.Resampling.BOX)
    return np.asarray(f) >= 0.5


def to_png_grid(mask: np.ndarray, scale: float, offset_x: int, offset_y: int, out_rows: int, out_cols: int) -> np.ndarray:
    """Map a mask of the stored image into the converted PNG (``x_png = x * scale + offset_x``)."""
    h, w = mask.shape
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = resize_mask(mask, nh, nw)
    out = np.zeros((out_rows, out_cols), bool)
    # source / destination windows (a negative offset is a crop)
    ys, xs = max(0, -offset_y), max(0, -offset_x)
    yd, xd = max(0, offset_y), max(0, offset_x)
    hh, ww = min(nh - ys, out_rows - yd), min(nw - xs, out_cols - xd)
    if hh > 0 and ww > 0:
        out[yd:yd + hh, xd:xd + ww] = small[ys:ys + hh, xs:xs + ww]
    return out


def dice_iou(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """Dice and IoU of two binary masks; both empty -> (1.0, 1.0) (nothing to find, nothing found).

    Raises:
        AnatomyError: shapes differ.
    """
    p = torch.as_tensor(np.asarray(pred) if not isinstance(pred, torch.Tensor) else pred).bool()
    t = torch.as_tensor(np.asarray(target) if not isinstance(target, torch.Tensor) else target).bool()
    if p.shape != t.shape:
        raise AnatomyError(f"mask shapes differ: prediction {tuple(p.shape)} vs target {tuple(t.shape)}")
    inter = (p & t).sum().item()
    ps, ts = p.sum().item(), t.sum().item()
    union = ps + ts - inter
    if ps + ts == 0:
        return 1.0, 1.0
    return 2.0 * inter / (ps + ts), inter / union
