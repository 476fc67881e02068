"""The intensity normalisation every image model of the zoo expects, and the function applying it.

Images travel as uint8 ``[B, 1, S, S]``; a model sees ``(pixel / scale - mean) / std``. The model
card records the constants it was trained with (:data:`NORMALISATION`, or :data:`XRV_NORMALISATION`
for a model started from torchxrayvision weights) so inference applies exactly what training did.
"""

from __future__ import annotations

import torch

from cxr.errors import DataError

#: intensity normalisation: x = (pixel / scale - mean) / std
NORMALISATION = {"scale": 255.0, "mean": 0.5, "std": 0.25}

#: torchxrayvision's convention (``xrv.datasets.normalize(img, 255)``): pixels linearly onto [-1024, 1024],
#: i.e. ``(2 * pixel / 255 - 1) * 1024`` = ``(pixel / 255 - 0.5) / (1 / 2048)``; its weights expect it
XRV_NORMALISATION = {"scale": 255.0, "mean": 0.5, "std": 1.0 / 2048}


def normalise(x: torch.Tensor, norm: dict | None = None) -> torch.Tensor:
    """uint8 (or float in [0, 255]) images -> model input ``(x / scale - mean) / std`` as float32.

    Raises:
        DataError: values outside ``[0, scale]`` (e.g. an already-normalised tensor).
    """
    norm = norm or NORMALISATION
    xf = x.float()
    if x.dtype != torch.uint8 and (xf.min() < 0 or xf.max() > norm["scale"]):
        raise DataError(
            f"expected raw pixel values in [0, {norm['scale']:g}] (uint8 images), got range "
            f"[{xf.min().item():.3g}, {xf.max().item():.3g}]; pass images before normalisation"
        )
    return (xf / norm["scale"] - norm["mean"]) / norm["std"]
