"""The classifier zoo: every family registered, built by name, and loaded back from a model dir.

This is the module callers import (``from cxr.models.zoo import create_model``): importing it
imports every family file, whose ``@register_model`` fills the table of :mod:`cxr.models.registry`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

# Importing the family modules runs their @register_model decorators.
from cxr.models import anaxnet, ath, cnn, graph_transformer, mlgcn, segfusion  # noqa: F401
from cxr.modeldir import load_state, read_card
from cxr.models.registry import ModelError, ModelSpec, TrainStats, build_kwargs, registered, spec
from cxr.quiet import quiet

__all__ = ["ModelError", "ModelSpec", "TrainStats", "create_model", "input_kind", "list_models", "load_classifier",
           "model_kwargs", "spec"]


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return registered()


@quiet
def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with ``kwargs`` (e.g. ``num_classes=14``).

    Raises:
        ModelError: ``name`` is not registered (the message lists the valid names).
    """
    model = spec(name).factory(**kwargs)
    model.model_name = name
    return model


def input_kind(name: str) -> str:
    """``"image"`` or ``"region_features"``: what model ``name`` reads."""
    return spec(name).inputs


def model_kwargs(name: str, params: Any, stats: TrainStats) -> dict[str, Any]:
    """Constructor arguments of model ``name`` from the train params and TRAIN-split statistics only."""
    return build_kwargs(name, params, stats)


def load_classifier(model_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a registered classifier from its card and load its weights (eval mode, CPU).

    Raises:
        ModelDirError: ``model_dir`` lacks ``model.pt`` or ``card.json``.
        ModelError: the card names an unregistered architecture.
    """
    d = Path(model_dir)
    card = read_card(d)
    kwargs = dict(card["model_kwargs"])
    for k in ("adjacency", "cooccurrence"):
        if kwargs.get(k) is not None:
            kwargs[k] = np.asarray(kwargs[k], dtype=np.float32)
    if kwargs.get("weights") is not None:  # older cards: model.pt replaces them, and the file need not be here
        kwargs["weights"] = None
    model = create_model(card["architecture"], **kwargs)
    model.load_state_dict(load_state(d))
    return model.eval(), card
