"""ATH, attention-based triplet hashing: the CheXtriev (seed 004) hashing baseline for
chest radiograph retrieval, own implementation.

A CNN feature map ``[B, D, h, w]`` is re-weighted per channel (squeeze-and-excitation gate) and
pooled by a learned spatial attention (softmax over the h*w positions), then a linear layer, a
batch normalisation of each bit (balanced bits: without it the codes collapse to a few constant
patterns) and ``tanh`` give continuous codes ``u [B, bits]`` in (-1, 1); the retrieval code is ``sign(u)``, searched
by Hamming distance (:class:`cxr.retrieve.SearchIndex` with ``binary=True``). ``bits`` must be a
multiple of 8 (faiss binary indexes store whole bytes); 32 by default, as in CheXtriev.

Objective (:meth:`ATH.training_loss`, used by the shared engine ``cxr.train`` instead of its BCE):

* triplet loss over every valid (anchor, positive, negative) triplet of the batch, on the
  normalised squared distance ``||u_a - u_b||^2 / (4 bits)`` (for +-1 codes this is the fraction of
  differing bits), with ``margin``; two images are similar when they share a positive label
  (targets 1 where the loss mask is set) or when neither has any positive label;
* ``quantization * mean((|u| - 1)^2)`` pulls codes towards +-1 so that ``sign`` loses little;
* ``classification *`` masked BCE of a linear head on ``u``: it gives the validation macro
  AUROC that the engine's early stopping and best-epoch selection follow (a proxy for code
  quality; the retrieval metrics themselves are computed by the ``retrieve`` stage).

Backbones: ``small`` (a 4-stage conv net, the CPU default: widths 32-64-128-256, every stage
halves the resolution) or any global CNN of :data:`cxr.models.cnn.BACKBONES`.
Input ``image [B, 1, H, W]`` normalised as in the model card; ``forward`` returns the
auxiliary head's logits ``[B, C]``; :meth:`ATH.embed` the continuous codes ``[B, bits]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cxr.models.cnn import BACKBONES, FeatureMap
from cxr.models.losses import masked_bce
from cxr.models.registry import ModelError, TrainStats, register_model


class SmallConvNet(nn.Module):
    """Four stages of (3x3 conv stride 2, BN, ReLU, 3x3 conv, BN, ReLU): ``[B, C, H, W] -> [B, widths[-1], H/16, W/16]``."""

    def __init__(self, in_chans: int = 1, widths: Sequence[int] = (32, 64, 128, 256)):
        super().__init__()
        layers, c = [], in_chans
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.net = nn.Sequential(*layers)
        self.num_features = int(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CodeNorm(nn.BatchNorm1d):
    """Batch normalisation of the code pre-activations: each bit is centred on the batch, so its sign
    splits the images instead of being fixed by a bias (without it the codes collapse to a few
    constant patterns). A training batch of one image uses the running statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def similar_pairs(targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, B]`` bool: the images share a positive label, or neither has a positive label."""
    pos = ((targets > 0.5) & mask.bool()).float()
    shared = (pos @ pos.t()) > 0
    empty = pos.sum(1) == 0
    return shared | (empty[:, None] & empty[None, :])


def triplet_loss(codes: torch.Tensor, similar: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean hinge ``max(0, d(a, p) - d(a, n) + margin)`` over all valid triplets of the batch (0 when none)."""
    b, bits = codes.shape
    d = torch.cdist(codes.float(), codes.float()).pow(2) / (4 * bits)
    eye = torch.eye(b, dtype=torch.bool, device=codes.device)
    pos = similar & ~eye
    neg = ~similar
    valid = pos[:, :, None] & neg[:, None, :]  # [a, p, n]
    if not valid.any():
        return codes.sum() * 0.0  # keeps the graph: every parameter still gets a (zero) gradient
    hinge = F.relu(d[:, :, None] - d[:, None, :] + margin)
    return hinge[valid].mean()


class ATH(nn.Module):
    """Attention-based triplet hashing network (see the module docstring).

    Args:
        num_classes: C outputs of the auxiliary classification head.
        bits: code length (multiple of 8).
        backbone: ``small`` or a key of :data:`cxr.models.cnn.BACKBONES`.
        widths: stage widths of the ``small`` backbone.
        image_size, in_chans, weights: as the global CNN models (``weights``: local backbone file).
        margin: triplet margin on the normalised distance (0.25 = a quarter of the bits).
        quantization, classification: weights of the quantisation and auxiliary BCE terms.
    """

    input_keys = ("image",)
    hashing = True  # retrieval uses binary codes (sign of embed) and Hamming distance

    def __init__(self, num_classes: int = 14, in_chans: int = 1, image_size: int = 224, bits: int = 32,
                 backbone: str = "small", widths: Sequence[int] = (32, 64, 128, 256), weights: str | None = None,
                 margin: float = 0.25, quantization: float = 0.1, classification: float = 1.0):
        super().__init__()
        if bits < 8 or bits % 8:
            raise ModelError(f"ATH bits must be a positive multiple of 8 (faiss binary codes are bytes), got {bits}")
        if backbone == "small":
            self.features = SmallConvNet(in_chans, widths)
        elif backbone in BACKBONES:
            self.features = FeatureMap(backbone, in_chans=in_chans, image_size=image_size, weights=weights)
        else:
            raise ModelError(f"unknown ATH backbone {backbone!r}; choose 'small' or one of {sorted(BACKBONES)}")
        d = self.features.num_features
        self.bits, self.margin, self.quantization, self.classification = bits, float(margin), float(quantization), float(classification)
        self.channel_gate = nn.Sequential(nn.Linear(d, max(d // 8, 4)), nn.ReLU(inplace=True), nn.Linear(max(d // 8, 4), d))
        self.spatial = nn.Conv2d(d, 1, 1)
        self.hash = nn.Linear(d, bits)
        self.code_norm = CodeNorm(bits)
        self.cls = nn.Linear(bits, num_classes)

    def attention_pool(self, image: torch.Tensor) -> torch.Tensor:
        """Channel-gated, spatial-attention-pooled features ``[B, D]``."""
        f = self.features(image)
        f = f * torch.sigmoid(self.channel_gate(f.mean(dim=(2, 3))))[:, :, None, None]
        a = torch.softmax(self.spatial(f).flatten(2), dim=-1)  # [B, 1, h*w]
        return (f.flatten(2) * a).sum(-1)

    def codes(self, image: torch.Tensor) -> torch.Tensor:
        """Continuous codes ``u = tanh(BN(W v + b))`` ``[B, bits]``; the binary code is ``u > 0``."""
        return torch.tanh(self.code_norm(self.hash(self.attention_pool(image))))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.cls(self.codes(image))

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """The continuous codes ``[B, bits]`` (retrieval binarises them)."""
        return self.codes(image)

    def training_loss(self, batch: Mapping[str, torch.Tensor], inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Engine hook: ``(triplet + quantization + classification loss, auxiliary logits [B, C])``."""
        u = self.codes(**inputs)
        logits = self.cls(u)
        trip = triplet_loss(u, similar_pairs(batch["targets"], batch["mask"]), self.margin)
        quant = (u.abs() - 1).pow(2).mean()
        bce = masked_bce(logits, batch["targets"], batch["mask"])
        return trip + self.quantization * quant + self.classification * bce, logits


def _kwargs(params, stats: TrainStats) -> dict:
    a = params.ath
    return {"num_classes": stats.num_classes, "image_size": params.image_size, "weights": params.pretrained.get("ath"),
            "bits": a.bits, "backbone": a.backbone, "widths": list(a.widths), "margin": a.margin,
            "quantization": a.quantization, "classification": a.classification}


@register_model(kwargs=_kwargs)
def ath(num_classes: int = 14, in_chans: int = 1, image_size: int = 224, bits: int = 32, backbone: str = "small",
        widths: Sequence[int] = (32, 64, 128, 256), weights: str | None = None, margin: float = 0.25,
        quantization: float = 0.1, classification: float = 1.0) -> ATH:
    """ATH: attention-pooled CNN features -> ``bits``-bit codes, triplet loss (CheXtriev hashing baseline)."""
    return ATH(num_classes, in_chans, image_size, bits, backbone, tuple(widths), weights, margin, quantization, classification)
