"""The model directory contract shared by every trained model (detector, UNet, classifiers).

A model dir holds ``model.pt`` (a plain state_dict on CPU, loadable with
``torch.load(..., weights_only=True)``) and ``card.json`` (architecture, label or class names in
order, input size, normalisation, thresholds, params, data hashes). Both are written atomically.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Mapping

import torch

from cxr.errors import ModelDirError
from cxr.io import write_bytes, write_json

WEIGHTS = "model.pt"
CARD = "card.json"


def save_model_dir(out_dir: str | Path, model: torch.nn.Module, card: Mapping[str, Any]) -> None:
    """Write ``model.pt`` (detached CPU state_dict) and ``card.json`` atomically into ``out_dir``."""
    out_dir = Path(out_dir)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    write_bytes(out_dir / WEIGHTS, buf.getvalue())
    write_json(out_dir / CARD, dict(card))


def is_model_dir(model_dir: str | Path) -> bool:
    """True when ``model_dir`` has both the weights and the card."""
    d = Path(model_dir)
    return (d / WEIGHTS).is_file() and (d / CARD).is_file()


def read_card(model_dir: str | Path) -> dict[str, Any]:
    """The card of a model dir.

    Raises:
        ModelDirError: ``model_dir`` lacks the weights or the card.
    """
    model_dir = Path(model_dir)
    if not is_model_dir(model_dir):
        raise ModelDirError(f"{model_dir}: not a model dir (expected {WEIGHTS} and {CARD}; run the stage that trains it)")
    return json.loads((model_dir / CARD).read_text(encoding="utf-8"))


def load_state(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict of a model dir, loaded safely (``weights_only=True``) onto the CPU."""
    return torch.load(Path(model_dir) / WEIGHTS, map_location="cpu", weights_only=True)
