"""Anatomy graph transformer in the style of CheXtriev (seed 004, variant V6).

Inputs as AnaXNet: ``features [B, R, D]``, ``presence [B, R]``, ``boxes [B, R, 4]``. Region
features (+ learned positional embeddings of the R region slots) pass two
``torch_geometric.nn.TransformerConv`` layers over a graph of the present regions; edges are
fully connected (``edges="full"``) or the binary region co-occurrence of the TRAIN split
(``edges="cooccurrence"``). With ``learnable_edges`` each directed edge (i, j) of the R x R
template owns an ``edge_dim`` vector, an ``nn.Parameter`` initialised from the co-occurrence
strength, used as TransformerConv edge features: the edges are trained and saved (the reference
registered them as buffers). Node embeddings are mean-pooled over present regions into the
image embedding (retrieval) and classified (``[B, C]``); nodes are classified too
(``[B, R, F]``); the engine mixes the two losses with ``graph_importance``.

CheXtriev's V0-V6 are parameter combinations of this one model (see README).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr.models.anaxnet import region_kwargs, train_region_adjacency
from cxr.models.registry import ModelError, TrainStats, register_model

EDGES = ("full", "cooccurrence")
RESIDUALS = ("none", "add", "gated")


class AnatomyGraphTransformer(nn.Module):
    input_keys = ("features", "presence", "boxes")

    def __init__(self, num_classes: int = 9, num_regions: int = 18, feature_dim: int = 1024, num_findings: int | None = None,
                 hidden: int = 256, heads: int = 4, layers: int = 2, edges: str = "full", cooccurrence: np.ndarray | None = None,
                 positional: bool = True, learnable_edges: bool = True, edge_dim: int = 16, residual: str = "add",
                 dropout: float = 0.1):
        super().__init__()
        if edges not in EDGES:
            raise ModelError(f"unknown edges {edges!r}; choose one of {list(EDGES)}")
        if residual not in RESIDUALS:
            raise ModelError(f"unknown residual {residual!r}; choose one of {list(RESIDUALS)}")
        if hidden % heads:
            raise ModelError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.num_regions, self.feature_dim, self.residual = num_regions, feature_dim, residual
        co = np.ones((num_regions, num_regions), np.float32) if cooccurrence is None else np.asarray(cooccurrence, np.float32)
        if co.shape != (num_regions, num_regions):
            raise ModelError(f"co-occurrence has shape {co.shape}, expected ({num_regions}, {num_regions})")
        template = np.ones_like(co, dtype=bool) if edges == "full" else co > 0
        np.fill_diagonal(template, False)
        src, dst = np.nonzero(template)
        self.register_buffer("edge_template", torch.as_tensor(np.stack([src, dst]), dtype=torch.long))
        self.register_buffer("edge_strength", torch.as_tensor(co[src, dst], dtype=torch.float32))
        self.proj = nn.Linear(feature_dim, hidden)
        self.pos = nn.Parameter(torch.randn(num_regions, hidden) * 0.02) if positional else None
        if learnable_edges and layers > 0:  # with no layer (V0) there is no edge to learn
            init = self.edge_strength[:, None].repeat(1, edge_dim) + 0.02 * torch.randn(len(src), edge_dim)
            self.edge_attr = nn.Parameter(init)  # learnable continuous edges (V6)
            conv_edge_dim = edge_dim
        else:
            self.edge_attr = None
            conv_edge_dim = None
        from torch_geometric.nn import TransformerConv  # here: torch_geometric imports torch._dynamo (seconds)

        self.convs = nn.ModuleList(
            TransformerConv(hidden, hidden // heads, heads=heads, edge_dim=conv_edge_dim, dropout=dropout,
                            beta=residual == "gated", root_weight=True)
            for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.graph_cls = nn.Linear(hidden, num_classes)
        self.node_cls = nn.Linear(hidden, num_findings or num_classes)

    def _graph(self, presence: torch.Tensor):
        """Batched edge_index (+ edge ids into the template) over present regions only."""
        b, r = presence.shape
        src, dst = self.edge_template
        keep = presence[:, src] & presence[:, dst]  # [B, E]
        bi, ei = keep.nonzero(as_tuple=True)
        edge_index = torch.stack([src[ei] + bi * r, dst[ei] + bi * r])
        return edge_index, ei

    def nodes(self, features: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        if features.ndim != 3 or features.shape[1:] != (self.num_regions, self.feature_dim):
            raise ModelError(f"features have shape {tuple(features.shape)}, expected [B, {self.num_regions}, {self.feature_dim}]")
        presence = presence.bool()
        b, r, _ = features.shape
        x = self.proj(features.float())
        if self.pos is not None:
            x = x + self.pos
        x = x * presence.unsqueeze(-1)
        edge_index, ei = self._graph(presence)
        attr = self.edge_attr[ei] if self.edge_attr is not None else None
        h = x.reshape(b * r, -1)
        for conv, norm in zip(self.convs, self.norms):
            y = conv(h, edge_index, attr) if attr is not None else conv(h, edge_index)
            h = norm(h + y if self.residual == "add" else y)
            h = F.gelu(h)
        return h.reshape(b, r, -1) * presence.unsqueeze(-1)

    def embed(self, features: torch.Tensor, presence: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Mean-pooled node embedding over present regions ``[B, hidden]`` (retrieval)."""
        z = self.nodes(features, presence)
        return z.sum(1) / presence.float().sum(1, keepdim=True).clamp_min(1)

    def forward_all(self, features: torch.Tensor, presence: torch.Tensor, boxes: torch.Tensor | None = None):
        z = self.nodes(features, presence)
        g = z.sum(1) / presence.float().sum(1, keepdim=True).clamp_min(1)
        return self.graph_cls(g), self.node_cls(z)

    def forward(self, features: torch.Tensor, presence: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_all(features, presence, boxes)[0]


def _kwargs(params, stats: TrainStats) -> dict:
    g = params.graph
    return {**region_kwargs("graph_transformer", params, stats), "layers": g.layers, "edges": g.edges,
            "cooccurrence": train_region_adjacency(params, stats), "positional": g.positional,
            "learnable_edges": g.learnable_edges, "residual": g.residual}


@register_model(inputs="region_features", kwargs=_kwargs)
def graph_transformer(num_classes: int = 9, num_regions: int = 18, feature_dim: int = 1024, num_findings: int | None = None,
                      hidden: int = 256, heads: int = 4, layers: int = 2, edges: str = "full",
                      cooccurrence: np.ndarray | None = None, positional: bool = True, learnable_edges: bool = True,
                      edge_dim: int = 16, residual: str = "add", dropout: float = 0.1) -> AnatomyGraphTransformer:
    """CheXtriev-style anatomy graph transformer (defaults = V6)."""
    return AnatomyGraphTransformer(num_classes, num_regions, feature_dim, num_findings, hidden, heads, layers, edges,
                                   cooccurrence, positional, learnable_edges, edge_dim, residual, dropout)
