"""A small model registry (after timm's ``_registry.py``).

Every classifier family registers a factory with :func:`register_model`, together with what the
rest of the package needs to know about it, so nothing outside ``cxr.models`` keeps a list of
model names:

* ``inputs``: ``"image"`` (uint8 images ``[B, 1, S, S]``, normalised by the engine) or
  ``"region_features"`` (the ``features`` stage's ``features [B, R, D]``, ``presence``, ``boxes``);
* ``kwargs``: ``kwargs(params, stats) -> dict``, the factory's arguments from the train params
  (:class:`cxr.params.TrainParams`) and the TRAIN-split statistics it needs (:class:`TrainStats`:
  label adjacency, region co-occurrence, the UNet dir). A model registered without one gets
  ``num_classes`` (and ``image_size`` for image models).

Every registered model is an ``nn.Module`` with

* ``input_keys``: the batch keys ``forward`` takes as keyword arguments;
* ``forward(**inputs) -> logits [B, C]`` (image-level logits, one per label, in label order);
* optionally ``forward_all(**inputs) -> (logits [B, C], node_logits [B, R, F])`` for models that
  also predict per-region findings (the engine adds a node loss for them);
* ``embed(**inputs) -> [B, D]``: the pooled features the classifier reads (retrieval, ``cxr.retrieve``);
* optionally ``cam_target_layers()`` / ``cam_classifier()`` (the CAM family, ``cxr.localize``);
* optionally ``training_loss(batch, inputs) -> (loss, logits [B, C])`` for models with their own
  objective (ATH's triplet hashing loss); the engine then uses it instead of its BCE, and
  ``hashing = True`` marks models whose ``embed`` codes are searched as binary codes.

This module only holds the table; :mod:`cxr.models.zoo` imports every family and is what callers use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from cxr.errors import CxrError

INPUT_KINDS = ("image", "region_features")


class ModelError(CxrError, ValueError):
    """Unknown model name or bad model argument (the message names the valid options)."""


@dataclass(frozen=True)
class TrainStats:
    """What a factory may learn from the TRAIN split (never val / test).

    Attributes:
        num_classes: number of labels.
        targets, mask: TRAIN label matrix ``[N, C]`` (after the uncertainty policy) and its mask.
        regions: for region-feature models: ``num_regions``, ``feature_dim``, ``num_findings``,
            ``train_region_labels [N, R, F]``, ``train_presence [N, R]``.
        unet_dir: the UNet model dir (SegFusion).
    """

    num_classes: int
    targets: np.ndarray | None = None
    mask: np.ndarray | None = None
    regions: Mapping[str, Any] | None = None
    unet_dir: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Callable[..., nn.Module]
    inputs: str
    kwargs: Callable[[Any, TrainStats], dict[str, Any]] | None


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None, inputs: str = "image",
                   kwargs: Callable[[Any, TrainStats], dict[str, Any]] | None = None):
    """Register a model factory under ``name`` (default: the function name).

    Usable as ``@register_model`` or ``@register_model(name="...", inputs=..., kwargs=...)``.
    """
    if inputs not in INPUT_KINDS:
        raise ModelError(f"inputs = {inputs!r}; use one of {list(INPUT_KINDS)}")

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _REGISTRY and _REGISTRY[key].factory is not f:
            raise ModelError(f"model {key!r} is registered twice ({_REGISTRY[key].factory.__module__} and {f.__module__})")
        _REGISTRY[key] = ModelSpec(key, f, inputs, kwargs)
        return f

    return wrap(fn) if fn is not None else wrap


def spec(name: str) -> ModelSpec:
    """The registration of ``name``.

    Raises:
        ModelError: ``name`` is not registered (the message lists the valid names).
    """
    if name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def registered() -> list[str]:
    return sorted(_REGISTRY)


def build_kwargs(name: str, params: Any, stats: TrainStats) -> dict[str, Any]:
    """Constructor arguments of model ``name`` from the train params and TRAIN statistics only."""
    s = spec(name)
    if s.kwargs is not None:
        return s.kwargs(params, stats)
    kw: dict[str, Any] = {"num_classes": stats.num_classes}
    if s.inputs == "image":
        kw["image_size"] = params.image_size
    return kw


def needs_regions(stats: TrainStats, name: str) -> Mapping[str, Any]:
    """``stats.regions`` for a region-feature model, or a clear error when the features are missing."""
    if stats.regions is None:
        raise ModelError(f"model {name!r} needs region features (--features, from the features stage)")
    return stats.regions
