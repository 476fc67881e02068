"""The inference layer: a model from its card, the datasets of a card and a split, the model's input
preparation, batched prediction. ``evaluate``, ``localize``, ``retrieve``, ``predict`` and the
training engine's validation stand on it; it imports no training code (no Lightning), so
``cxr predict`` stays light.

* :func:`load_model_dir` - rebuild a registered classifier from ``card.json`` + ``model.pt``.
* :func:`build_datasets` / :func:`card_datasets` - image-cache or region-feature datasets of some splits.
* :func:`model_inputs` - the keyword inputs of a model from a batch: its ``input_keys``, images
  normalised as the card says (:data:`cxr.intensity.NORMALISATION`), on the device.
* :func:`predict` - sigmoid probabilities ``[N, C]`` under ``torch.inference_mode()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxr.data import ImageCache, ImageDataset, RegionDataset, RegionFeatures, join_split
from cxr.errors import TrainError
from cxr.intensity import NORMALISATION, normalise
from cxr.models.zoo import input_kind, load_classifier


def load_model_dir(model_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from its card and load its weights (``weights_only=True``; eval mode, CPU).

    Raises:
        ModelDirError: the dir lacks ``model.pt`` or ``card.json``.
    """
    return load_classifier(model_dir)


def model_inputs(model: nn.Module, batch: Mapping[str, torch.Tensor], norm: Mapping | None = None,
                 device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """The keyword inputs of ``model`` from ``batch``: its ``input_keys``, on ``device`` (None = where they
    are), with ``image`` normalised by ``norm`` (default :data:`~cxr.intensity.NORMALISATION`)."""
    x = {k: batch[k] if device is None else batch[k].to(device) for k in model.input_keys}
    if "image" in x:
        x["image"] = normalise(x["image"], dict(norm or NORMALISATION))
    return x


def build_datasets(name: str, *, images: pd.DataFrame, labels: pd.DataFrame, splits: pd.DataFrame, images_dir: str | Path,
                   names: Sequence[str], uncertainty: Mapping[str, Any], which: Sequence[str], image_size: int,
                   frontal_only: bool, cache_dir: str | Path, features_dir: str | Path | None = None,
                   progress: bool = True, datasets: Sequence[str] | None = None,
                   inputs: str | None = None) -> dict[str, Dataset]:
    """The datasets of ``which`` splits for model ``name`` (image cache or region features);
    ``datasets`` keeps only images of those datasets (``train.datasets``); ``inputs`` overrides the
    registered input kind (``"image"`` for the baselines, which are no registered model)."""
    kind = inputs or input_kind(name)
    metas = {s: join_split(images, labels, splits, names, s, frontal_only=frontal_only, datasets=datasets)
             for s in which}
    if kind == "region_features":
        if features_dir is None:
            raise TrainError(f"model {name!r} needs region features (--features, from the features stage)")
        feats = RegionFeatures(features_dir)
        return {s: RegionDataset(m, names, feats, dict(uncertainty)) for s, m in metas.items()}
    allm = pd.concat(metas.values()).drop_duplicates("image_id").sort_values("image_id")
    cache = ImageCache.build(list(allm["image_id"]), [Path(images_dir) / p for p in allm["png_path"]], image_size,
                             cache_dir, progress=progress)
    return {s: ImageDataset(m, names, cache, dict(uncertainty)) for s, m in metas.items()}


def card_datasets(card: Mapping[str, Any], *, images: pd.DataFrame, labels: pd.DataFrame, splits: pd.DataFrame,
                  images_dir: str | Path, which: Sequence[str], uncertainty: Mapping[str, Any], cache_dir: str | Path,
                  features_dir: str | Path | None = None, progress: bool = True) -> dict[str, Dataset]:
    """:func:`build_datasets` with what the card fixes: architecture, label names, input size, frontal-only
    and the dataset filter of training. ``uncertainty``: the truth policy of the caller (evaluation) or the
    card's own (retrieval)."""
    params = card.get("params", {})
    return build_datasets(card["architecture"], images=images, labels=labels, splits=splits, images_dir=images_dir,
                          names=list(card["label_names"]), uncertainty=uncertainty, which=which,
                          image_size=card["input"].get("size", 0), frontal_only=params.get("frontal_only", True),
                          cache_dir=cache_dir, features_dir=features_dir, progress=progress,
                          datasets=params.get("datasets"))


@torch.inference_mode()
def predict(model: nn.Module, ds: Dataset, batch_size: int = 32, norm: Mapping | None = None,
            device: str | torch.device = "cpu") -> np.ndarray:
    """Sigmoid probabilities ``[N, C]`` of ``model`` on ``ds`` (eval mode, inference mode)."""
    model.eval().to(device)
    out = []
    for batch in DataLoader(ds, batch_size=batch_size, shuffle=False):
        out.append(torch.sigmoid(model(**model_inputs(model, batch, norm, device)).float()).cpu())
    return torch.cat(out).numpy()
