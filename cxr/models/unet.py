"""The organ UNet network (segmentation-models-pytorch UNet, Ronneberger et al., MICCAI 2015) and
its model-dir loader. Trained by :mod:`cxr.anatomy.unet`; read by SegFusion-VAN-GCN
(:mod:`cxr.models.segfusion`) and ``cxr segment``.

Load with :func:`load_unet`::

    model, classes = load_unet("models/unet")          # eval mode, CPU
    probs = torch.sigmoid(model(x))                    # x: [B, 1, S, S] float in [0, 1], S = card input size
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from cxr.errors import AnatomyError
from cxr.modeldir import load_state, read_card

ARCHITECTURE = "segmentation_models_pytorch.Unet"
MEAN, STD = 0.5, 0.25


class OrganUNet(nn.Module):
    """UNet on grayscale radiographs.

    Input ``[B, 1, H, W]`` float in ``[0, 1]`` (H, W divisible by ``2 ** encoder_depth``); output
    logits ``[B, C, H, W]``, one channel per structure in ``classes`` order.
    """

    def __init__(self, classes: Sequence[str], encoder: str = "resnet18", encoder_depth: int = 4,
                 decoder_channels: Sequence[int] = (96, 48, 24, 12)):
        super().__init__()
        self.classes = list(classes)
        import segmentation_models_pytorch as smp  # here: it imports timm (seconds); only building a UNet needs it

        self.net = smp.Unet(encoder_name=encoder, encoder_depth=encoder_depth, encoder_weights=None,
                            decoder_channels=list(decoder_channels), in_channels=1, classes=len(self.classes))
        # smp keeps the ResNet stages beyond encoder_depth: dead weights that would never train
        for k in range(max(encoder_depth, 1), 5):
            if isinstance(getattr(self.net.encoder, f"layer{k}", None), nn.Module):
                delattr(self.net.encoder, f"layer{k}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise AnatomyError(f"OrganUNet expects [B, 1, H, W], got {tuple(x.shape)}")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise AnatomyError(f"OrganUNet expects intensities in [0, 1], got [{lo:.3g}, {hi:.3g}]")
        return self.net((x - MEAN) / STD)


def load_unet(model_dir: str | Path) -> tuple[OrganUNet, list[str]]:
    """The trained UNet of a model dir (eval mode, CPU) and its class names in channel order."""
    card = read_card(model_dir)
    if card.get("architecture") != ARCHITECTURE:
        raise AnatomyError(f"{model_dir}: architecture {card.get('architecture')!r} is not {ARCHITECTURE}")
    model = OrganUNet(card["classes"], card["encoder"], card["encoder_depth"], card["decoder_channels"])
    model.load_state_dict(load_state(model_dir))
    return model.eval(), list(card["classes"])
