"""Retrieval embeddings of any registered model.

Every model of :mod:`cxr.models` has ``embed(**inputs) -> [B, D]``: the pooled features the
classifier reads (CNNs: globally pooled feature map; anatomy models: pooled region-node
embeddings; hashing models: the continuous codes before binarisation). :func:`embed` feeds it
the RAW batch (uint8 images are normalised here exactly as the training engine does, with the
normalisation of the model card) and L2-normalises the result, so inner product = cosine.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxr.inference import model_inputs
from cxr.retrieve.index import RetrievalError
from cxr.progress import tqdm


def _check_model(model: nn.Module) -> None:
    if not callable(getattr(model, "embed", None)):
        raise RetrievalError(f"model {getattr(model, 'model_name', type(model).__name__)!r} has no embed() method; "
                             "every registered model must define embed(**inputs) -> [B, D]")


@torch.inference_mode()
def embed(model: nn.Module, inputs: Mapping[str, torch.Tensor], norm: Mapping | None = None,
          device: str | torch.device = "cpu") -> torch.Tensor:
    """L2-normalised embeddings ``[B, D]`` (float32, on the CPU) of one raw batch.

    Args:
        model: a registered model (``input_keys`` + ``embed``); put in eval mode.
        inputs: at least the keys of ``model.input_keys``; ``image`` holds raw pixel values
            (uint8, or float in ``[0, scale]``) as the datasets return them.
        norm: intensity normalisation of the model card (``card["input"]["normalisation"]``);
            None = :data:`cxr.intensity.NORMALISATION`.
        device: where the forward pass runs.

    Raises:
        RetrievalError: the model has no ``embed`` or an input key is missing.
        cxr.data.DataError: images outside the raw pixel range (already normalised).
    """
    _check_model(model)
    missing = [k for k in model.input_keys if k not in inputs]
    if missing:
        raise RetrievalError(f"embed: inputs lack key(s) {missing}; model expects {list(model.input_keys)}")
    model.eval().to(device)
    x = model_inputs(model, inputs, norm, device)
    v = model.embed(**x).float()
    if v.ndim != 2 or v.shape[0] != next(iter(x.values())).shape[0]:
        raise RetrievalError(f"{type(model).__name__}.embed returned shape {tuple(v.shape)}, expected [B, D]")
    return F.normalize(v, dim=1).cpu()


def embed_dataset(model: nn.Module, ds: Dataset, batch_size: int = 32, norm: Mapping | None = None,
                  device: str | torch.device = "cpu", progress: bool = False) -> np.ndarray:
    """Embeddings ``[N, D]`` float32 of every sample of ``ds`` (a dataset of ``cxr.inference.build_datasets``), in order."""
    _check_model(model)
    out = [embed(model, batch, norm=norm, device=device).numpy()
           for batch in tqdm(DataLoader(ds, batch_size=batch_size, shuffle=False), desc="embed", unit="batch",
                             disable=not progress)]
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)
