"""Weak localisation: class activation heatmaps (``cam``), heatmap -> boxes in source coordinates
(``boxes``), scoring against ground-truth finding boxes (``score``) and the region-level view of
anatomy models (``regions``)."""
