"""Local pretrained weights: reading a state_dict file, adapting RGB first convolutions to grayscale.

Weights are never downloaded: a params key names a local file or nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cxr.errors import AnatomyError


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
