"""A small model registry (after timm's ``_registry.py``).

Every classifier family registers a factory with :func:`register_model`; the training engine,
the evaluation stage and the tests only ever call :func:`create_model`, so adding a model is one
decorated function and nothing else changes.

Every registered model is an ``nn.Module`` with

* ``input_keys``: the batch keys ``forward`` takes as keyword arguments, e.g. ``("image",)``
  for image models or ``("features", "presence", "boxes")`` for models on anatomy region features;
* ``forward(**inputs) -> logits [B, C]`` (image-level logits, one per label, in label order);
* optionally ``forward_all(**inputs) -> (logits [B, C], node_logits [B, R, F])`` for models that
  also predict per-region findings (the engine adds a node loss for them).
* ``embed(**inputs) -> [B, D]``: the pooled features the classifier reads (retrieval, ``cxr.retrieve``);
* optionally ``training_loss(batch, inputs) -> (loss, logits [B, C])`` for models with their own
  objective (ATH's triplet hashing loss); the engine then uses it instead of its BCE, and
  ``hashing = True`` marks models whose ``embed`` codes are searched as binary codes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from cxr.quiet import quiet

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


class ModelError(ValueError):
    """Unknown model name or bad model argument (the message names the valid options)."""


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Register a model factory under ``name`` (default: the function name).

    Usable as ``@register_model`` or ``@register_model(name="...")``.
    """

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _REGISTRY and _REGISTRY[key] is not f:
            raise ModelError(f"model {key!r} is registered twice ({_REGISTRY[key].__module__} and {f.__module__})")
        _REGISTRY[key] = f
        return f

    return wrap(fn) if fn is not None else wrap


def _ensure_loaded() -> None:
    # Importing the family modules runs their @register_model decorators.
    from cxr.models import anaxnet, ath, cnn, graph_transformer, mlgcn, segfusion  # noqa: F401


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY)


@quiet
def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with ``kwargs`` (e.g. ``num_classes=14``).

    Raises:
        ModelError: ``name`` is not registered (the message lists the valid names).
    """
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}")
    model = _REGISTRY[name](**kwargs)
    model.model_name = name
    return model
