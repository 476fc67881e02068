"""Anatomy: Chest ImaGenome scene graphs -> COCO, Faster R-CNN region detector, region features, organ UNet.

* :mod:`cxr.anatomy.coco` - scene graphs -> one standard COCO json per split (boxes in PNG pixels).
* :mod:`cxr.anatomy.detector` - torchvision Faster R-CNN trained with Lightning, COCOeval metrics.
* :mod:`cxr.anatomy.features` - 1024-d box-head features per region (the AnaXNet / CheXtriev input).
* :mod:`cxr.anatomy.masks` - organ-mask reading, mapping into PNG pixels, Dice / IoU.
* :mod:`cxr.anatomy.unet` - segmentation-models-pytorch UNet on organ masks (SegFusion pretraining).
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_detector", "load_features", "load_unet"]
_LAZY = {"load_detector": "cxr.anatomy.detector", "load_features": "cxr.anatomy.features",
         "load_unet": "cxr.anatomy.unet"}


def __getattr__(name: str) -> Any:
    """Lazy exports: ``from cxr.anatomy import load_unet`` without importing torch for the coco stage."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cxr.anatomy' has no attribute {name!r}")
