"""Helpers shared by the anatomy models: device choice, PNG loading, geometry, model dirs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from cxr import shards
from cxr.modeldir import CARD, WEIGHTS, read_card  # noqa: F401  (re-exported for the anatomy modules)
from cxr.models.weights import gray_first_conv, load_local_weights  # noqa: F401  (re-exported)
from cxr.errors import AnatomyError  # noqa: F401  (re-exported: the anatomy layer's error)
from cxr.anatomy.tables import ok_images  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)



def pick_device(device: str) -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; an explicit choice must be available.

    Raises:
        AnatomyError: ``cuda`` / ``mps`` requested but not available.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise AnatomyError("device = 'cuda' but CUDA is not available; use device: auto or cpu")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise AnatomyError("device = 'mps' but MPS is not available; use device: auto or cpu")
    return torch.device(device)


def lightning_accelerator(device: torch.device) -> str:
    return {"cuda": "gpu", "mps": "mps"}.get(device.type, "cpu")


def read_gray(path: str | Path) -> np.ndarray:
    """A PNG as float32 ``[H, W]`` in ``[0, 1]`` (8- or 16-bit grayscale).

    Raises:
        AnatomyError: file missing or not a single-channel image.
    """
    return gray_float(read_png(path))


def read_png(path: str | Path) -> np.ndarray:
    """A converted PNG (a file, or a member of a shard folder: convert.storage shards) decoded as stored.

    Raises:
        AnatomyError: the image is missing.
    """
    path = Path(path)
    if not shards.exists(path):
        raise AnatomyError(f"{path}: image not found (was the convert stage run on this data?)")
    with shards.open_image(path) as im:
        return np.asarray(im)


def gray_float(arr: np.ndarray) -> np.ndarray:
    """A decoded PNG array (8 / 16 bit, or RGB) -> float32 ``[H, W]`` in ``[0, 1]`` (see :func:`read_gray`)."""
    if arr.ndim == 3:  # an RGB export of a grayscale radiograph: take the luminance
        arr = arr[..., :3].mean(axis=2)
    scale = 65535.0 if arr.dtype == np.uint16 or arr.max() > 255 else 255.0
    return (arr.astype(np.float32) / scale).clip(0, 1)


def resize_float(img: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Box-filter resize of a float image to ``rows x cols`` (exact area averaging when shrinking; writable copy)."""
    if img.shape == (rows, cols):
        return img.astype(np.float32, copy=False)
    return np.array(Image.fromarray(img.astype(np.float32)).resize((cols, rows), Image.Resampling.BOX), np.float32)


def fit_size(rows: int, cols: int, size: int) -> tuple[int, int, float]:
    """Output shape and scale when the long side of ``rows x cols`` becomes ``size``."""
    s = size / max(rows, cols)
    return max(1, round(rows * s)), max(1, round(cols * s)), s


def unet_probabilities(model: torch.nn.Module, size: int, png: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """Per-structure probabilities ``[K, H, W]`` of an organ UNet in the converted image's own grid.

    ``png`` (uint8 / uint16, as the convert stage writes it) is fed as the UNet was trained: long side
    resized to ``size``, uint8 levels, padded bottom / right; the probabilities are cropped back and
    resized to the PNG. Used by ``cxr segment`` and the localisation's whole-lung-box baseline.
    """
    img = gray_float(png)
    h, w, _ = fit_size(*img.shape, size)
    x = np.zeros((1, 1, size, size), np.float32)
    x[0, 0, :h, :w] = np.round(resize_float(img, h, w) * 255) / 255  # as MaskImages: uint8 levels
    with torch.inference_mode():
        p = torch.sigmoid(model(torch.from_numpy(x).to(device))).float().cpu().numpy()[0, :, :h, :w]
    return np.stack([np.asarray(Image.fromarray(c).resize((img.shape[1], img.shape[0]), Image.Resampling.BILINEAR),
                                np.float32) for c in p])
