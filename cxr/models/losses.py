"""Losses shared by the training engine and models with their own objective (ATH)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, pos_weight: torch.Tensor | None = None,
               focal_gamma: float = 0.0) -> torch.Tensor:
    """Mean binary cross-entropy over the entries where ``mask`` is True.

    Args:
        logits, targets: ``[..., C]``.
        mask: bool ``[..., C]``; False entries contribute neither to the sum nor to the count.
        pos_weight: ``[C]`` weight of positive terms (``BCEWithLogits`` semantics).
        focal_gamma: > 0 multiplies each element by ``(1 - p_t) ** gamma`` (Lin et al. 2017).
    """
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=pos_weight, reduction="none")
    if focal_gamma > 0:
        p = torch.sigmoid(logits.float())
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = loss * (1 - p_t).pow(focal_gamma)
    m = mask.to(loss.dtype)
    return (loss * m).sum() / m.sum().clamp_min(1.0)


def train_pos_weight(targets: np.ndarray, mask: np.ndarray, cap: float = 50.0) -> torch.Tensor:
    """Per-class negatives / positives over unmasked TRAIN entries (capped; 1 when undefined)."""
    pos = ((targets == 1) & mask).sum(0)
    neg = ((targets == 0) & mask).sum(0)
    w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return torch.as_tensor(np.clip(w, 1.0 / cap, cap), dtype=torch.float32)
