"""AnaXNet (Agu et al. 2021, "AnaXNet: Anatomy Aware Multi-label Finding Classification in Chest
X-ray"), seed 002, on region features from the ``features`` stage.

Inputs: ``features [B, R, D]`` (detector box-head features of R anatomical regions in the fixed
region order), ``presence [B, R]`` (bool: region found), ``boxes [B, R, 4]`` (unused here, part of
the shared region-model interface). A 2-layer GCN over the anatomy graph (R region nodes;
adjacency from region co-occurrence of findings in the TRAIN split only, normalised as ML-GCN:
:func:`~cxr.models.mlgcn.label_adjacency`) refines each region's features; the refined and
original features are summed, classified per region (``node_logits [B, R, F]``) and pooled by
attention over the present regions into image-level logits ``[B, C]``. Absent regions get zero
features and are excluded from the attention.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr.models.mlgcn import GraphConv, label_adjacency
from cxr.models.registry import ModelError, TrainStats, needs_regions, register_model


def region_adjacency(region_labels: np.ndarray, presence: np.ndarray | None = None, t: float = 0.0, p: float = 0.2) -> np.ndarray:
    """Anatomy-graph adjacency from TRAIN region labels ``[N, R, F]`` (1 positive, else not).

    Two regions co-occur in an image when both have at least one positive finding. Returns the
    normalised ``[R, R]`` matrix of :func:`~cxr.models.mlgcn.label_adjacency`.
    """
    y = (np.nan_to_num(np.asarray(region_labels, dtype=np.float64)) == 1).any(-1)
    mask = None if presence is None else np.asarray(presence, dtype=bool)
    return label_adjacency(y.astype(np.float32), mask, t=t, p=p)


class AnaXNet(nn.Module):
    input_keys = ("features", "presence", "boxes")

    def __init__(self, num_classes: int = 9, num_regions: int = 18, feature_dim: int = 1024, num_findings: int | None = None,
                 hidden: int = 256, adjacency: np.ndarray | None = None, dropout: float = 0.1):
        super().__init__()
        self.feature_dim, self.num_regions = feature_dim, num_regions
        num_findings = num_findings or num_classes
        adj = torch.eye(num_regions) if adjacency is None else torch.as_tensor(np.asarray(adjacency), dtype=torch.float32)
        if adj.shape != (num_regions, num_regions):
            raise ModelError(f"anatomy adjacency has shape {tuple(adj.shape)}, expected ({num_regions}, {num_regions})")
        self.register_buffer("adjacency", adj)
        self.proj = nn.Linear(feature_dim, hidden)
        self.gc1 = GraphConv(hidden, hidden)
        self.gc2 = GraphConv(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.node_cls = nn.Linear(hidden, num_findings)
        self.att = nn.Sequential(nn.Linear(hidden, hidden // 2), nn.Tanh(), nn.Linear(hidden // 2, 1))
        self.img_cls = nn.Linear(hidden, num_classes)

    def _check(self, features: torch.Tensor) -> None:
        if features.ndim != 3 or features.shape[1:] != (self.num_regions, self.feature_dim):
            raise ModelError(f"features have shape {tuple(features.shape)}, expected [B, {self.num_regions}, {self.feature_dim}]")

    def nodes(self, features: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        self._check(features)
        pres = presence.to(features.dtype).unsqueeze(-1)
        x = F.relu(self.proj(features.float())) * pres
        h = F.relu(self.gc1(self.drop(x), self.adjacency))
        h = self.gc2(self.drop(h), self.adjacency)
        return (x + h) * pres

    def forward_all(self, features: torch.Tensor, presence: torch.Tensor, boxes: torch.Tensor | None = None):
        z = self.nodes(features, presence)
        score = self.att(z).squeeze(-1).masked_fill(~presence.bool(), float("-inf"))
        w = torch.nan_to_num(torch.softmax(score, dim=1))  # no region present -> zero weights
        pooled = (w.unsqueeze(-1) * z).sum(1)
        return self.img_cls(pooled), self.node_cls(z)

    def forward(self, features: torch.Tensor, presence: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_all(features, presence, boxes)[0]

    def embed(self, features: torch.Tensor, presence: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        z = self.nodes(features, presence)
        return z.sum(1) / presence.float().sum(1, keepdim=True).clamp_min(1)


def region_kwargs(name: str, params, stats: TrainStats) -> dict:
    """The arguments every region-feature model shares, from the features' shapes and ``train.graph``."""
    r = needs_regions(stats, name)
    return {"num_classes": stats.num_classes, "num_regions": r["num_regions"], "feature_dim": r["feature_dim"],
            "num_findings": r["num_findings"], "hidden": params.graph.hidden}


def train_region_adjacency(params, stats: TrainStats) -> np.ndarray:
    """The anatomy graph of the TRAIN region labels with ``train.graph.t`` / ``p``."""
    r = stats.regions
    return region_adjacency(r["train_region_labels"], r["train_presence"], t=params.graph.t, p=params.graph.p)


def _kwargs(params, stats: TrainStats) -> dict:
    return {**region_kwargs("anaxnet", params, stats), "adjacency": train_region_adjacency(params, stats)}


@register_model(inputs="region_features", kwargs=_kwargs)
def anaxnet(num_classes: int = 9, num_regions: int = 18, feature_dim: int = 1024, num_findings: int | None = None,
            hidden: int = 256, adjacency: np.ndarray | None = None, dropout: float = 0.1) -> AnaXNet:
    """AnaXNet: GCN over the anatomy graph + attention on region features."""
    return AnaXNet(num_classes, num_regions, feature_dim, num_findings, hidden, adjacency, dropout)
