"""ML-GCN label-graph head (Chen et al. 2019, "Multi-Label Image Recognition with Graph
Convolutional Networks"), as in the 000 seed but with learned label-node inputs (no word vectors
are downloadable offline) and the adjacency computed from the TRAIN split only.

Adjacency (:func:`label_adjacency`): conditional probabilities ``P(j | i) = M_ij / N_i`` from
co-occurrence counts of the training targets, binarised at ``t``, re-weighted so that a node keeps
``1 - p`` of its own signal and spreads ``p`` over its neighbours, then symmetrically normalised
``D^-1/2 A D^-1/2``. A GCN over the C label nodes turns node inputs ``[C, E]`` into per-class
classifiers ``[C, D]`` applied to the pooled image features ``[B, D]`` -> logits ``[B, C]``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr.models.cnn import FeatureMap
from cxr.models.registry import ModelError, TrainStats, register_model


def label_adjacency(targets: np.ndarray, mask: np.ndarray | None = None, t: float = 0.4, p: float = 0.2) -> np.ndarray:
    """ML-GCN's re-weighted, normalised label correlation matrix from TRAIN targets.

    Args:
        targets: ``[N, C]`` 0/1 training targets (train split only: never val/test).
        mask: ``[N, C]`` bool; entries False (ignored labels) count neither as co-occurrence nor as N_i.
        t: binarisation threshold on ``P(j | i)``.
        p: share of a node's message that comes from its neighbours (ML-GCN's re-weighting).

    Returns:
        float32 ``[C, C]`` normalised adjacency.
    """
    if not 0 <= t <= 1 or not 0 <= p <= 1:
        raise ModelError(f"ML-GCN needs 0 <= t <= 1 and 0 <= p <= 1, got t={t}, p={p}")
    y = np.asarray(targets, dtype=np.float64)
    m = np.ones_like(y, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    y = np.where(m, y, 0.0)
    counts = (y[:, :, None] * y[:, None, :]).sum(0)  # M_ij
    n_i = np.diag(counts).copy()
    cond = np.divide(counts, n_i[:, None], out=np.zeros_like(counts), where=n_i[:, None] > 0)
    np.fill_diagonal(cond, 0.0)
    a = (cond >= t).astype(np.float64) if t > 0 else (cond > 0).astype(np.float64)
    row = a.sum(1, keepdims=True)
    a = np.divide(a * p, row, out=np.zeros_like(a), where=row > 0)
    a += np.diag(np.where(row[:, 0] > 0, 1.0 - p, 1.0))
    d = a.sum(1) ** -0.5
    return (d[:, None] * a.T * d[None, :]).astype(np.float32)  # ML-GCN's gen_adj: D^-1/2 A^T D^-1/2


class GraphConv(nn.Module):
    """Dense graph convolution ``A X W`` (Kipf & Welling) over a fixed node graph."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.lin = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        return adj @ self.lin(x)


class LabelGCNHead(nn.Module):
    """Per-class classifiers from a 2-layer GCN over label nodes.

    Args:
        in_features: D, size of the pooled image features.
        num_classes: C label nodes.
        adjacency: ``[C, C]`` from :func:`label_adjacency` (a buffer: derived from data, saved
            with the weights, not learned). Identity when None (filled in on load).
        node_dim: E, size of the learned node inputs.
    """

    def __init__(self, in_features: int, num_classes: int, adjacency: np.ndarray | None = None, node_dim: int = 64, hidden: int = 256):
        super().__init__()
        adj = torch.eye(num_classes) if adjacency is None else torch.as_tensor(np.asarray(adjacency), dtype=torch.float32)
        if adj.shape != (num_classes, num_classes):
            raise ModelError(f"adjacency has shape {tuple(adj.shape)}, expected ({num_classes}, {num_classes})")
        self.register_buffer("adjacency", adj)
        self.nodes = nn.Parameter(torch.randn(num_classes, node_dim) * 0.1)  # learned label embeddings
        self.gc1 = GraphConv(node_dim, hidden)
        self.gc2 = GraphConv(hidden, in_features)
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def classifiers(self) -> torch.Tensor:
        h = F.leaky_relu(self.gc1(self.nodes, self.adjacency), 0.2)
        return self.gc2(h, self.adjacency)  # [C, D]

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return v @ self.classifiers().t() + self.bias


class MLGCN(nn.Module):
    """CNN backbone, global max pooling (as ML-GCN) and a :class:`LabelGCNHead`.

    Input ``image [B, 1, H, W]``; output logits ``[B, C]``.
    """

    input_keys = ("image",)

    def __init__(self, num_classes: int = 14, backbone: str = "densenet121", in_chans: int = 1, image_size: int = 224,
                 adjacency: np.ndarray | None = None, node_dim: int = 64, hidden: int = 256, weights: str | None = None):
        super().__init__()
        self.features = FeatureMap(backbone, in_chans=in_chans, image_size=image_size, weights=weights)
        self.head = LabelGCNHead(self.features.num_features, num_classes, adjacency, node_dim, hidden)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image).amax(dim=(2, 3)))

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """Globally max-pooled features ``[B, D]``, the vector the label-GCN classifiers read (retrieval)."""
        return self.features(image).amax(dim=(2, 3))

    def cam_target_layers(self) -> list[nn.Module]:
        """The backbone feature map (input of the global max pooling) for Grad-CAM; plain CAM is
        undefined here (max pooling), so there is no ``cam_classifier``."""
        return [self.features]


def train_label_adjacency(params, stats: TrainStats) -> np.ndarray:
    """The ML-GCN label graph of the TRAIN labels with ``train.mlgcn.t`` / ``p`` (also SegFusion's)."""
    return label_adjacency(stats.targets, stats.mask, params.mlgcn.t, params.mlgcn.p)


def _mlgcn_kwargs(params, stats: TrainStats) -> dict:
    return {"num_classes": stats.num_classes, "image_size": params.image_size, "backbone": params.mlgcn.backbone,
            "weights": params.pretrained.get("mlgcn"), "adjacency": train_label_adjacency(params, stats)}


@register_model(kwargs=_mlgcn_kwargs)
def mlgcn(num_classes: int = 14, backbone: str = "densenet121", in_chans: int = 1, image_size: int = 224,
          adjacency: np.ndarray | None = None, node_dim: int = 64, hidden: int = 256, weights: str | None = None) -> MLGCN:
    """ML-GCN: backbone + GCN label head (adjacency from TRAIN label co-occurrence)."""
    return MLGCN(num_classes, backbone, in_chans, image_size, adjacency, node_dim, hidden, weights)
