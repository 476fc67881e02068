"""Helpers shared by the anatomy models: device choice, PNG loading, geometry, model dirs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from cxr.modeldir import CARD, WEIGHTS, is_model_dir
from cxr.errors import CxrError

log = logging.getLogger(__name__)



class AnatomyError(CxrError, ValueError):
    """Bad anatomy input: missing files, empty splits, unknown names (the message names the value)."""


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
    path = Path(path)
    if not path.is_file():
        raise AnatomyError(f"{path}: image not found (was the convert stage run on this data?)")
    with Image.open(path) as im:
        arr = np.asarray(im)
    return gray_float(arr)


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


def read_card(model_dir: str | Path) -> dict[str, Any]:
    model_dir = Path(model_dir)
    if not is_model_dir(model_dir):
        raise AnatomyError(f"{model_dir}: not a model dir (expected {CARD} and {WEIGHTS})")
    return json.loads((model_dir / CARD).read_text(encoding="utf-8"))


def load_local_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A local pretrained weights file (state_dict, or a checkpoint with a ``state_dict`` / ``model`` key).

    Raises:
        AnatomyError: the file is missing or holds no state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise AnatomyError(f"pretrained weights file {path} not found (weights are never downloaded; "
                           "put a local file there or set pretrained: null)")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AnatomyError(f"{path}: not a state_dict of tensors")
    return obj


def gray_first_conv(state: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Adapt RGB pretrained weights to 1-channel input: sum the first conv's input channels."""
    out = {}
    for k, v in state.items():
        target = model_state.get(k)
        if target is not None and v.ndim == 4 and target.ndim == 4 and v.shape[1] == 3 and target.shape[1] == 1:
            v = v.sum(dim=1, keepdim=True)
        out[k] = v
    return out


def ok_images(images: pd.DataFrame) -> pd.DataFrame:
    """Rows of images.parquet that converted, indexed by image_id."""
    df = images[images["status"] == "ok"]
    if df["image_id"].duplicated().any():
        dup = df.loc[df["image_id"].duplicated(), "image_id"].iloc[0]
        raise AnatomyError(f"images table: image_id {dup!r} appears twice")
    return df.set_index("image_id", drop=False)
