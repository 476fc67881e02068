"""Image search: embeddings of the trained models, faiss indexes and the CheXtriev retrieval metrics.

Public API (stable; ``cxr predict --similar`` uses it): :func:`embed`, :func:`embed_dataset`,
:class:`SearchIndex` (``build`` / ``save`` / ``load`` / ``search`` / ``results``) and
:class:`RetrievalError`. The metrics live in :mod:`cxr.retrieve.metrics`, the ``retrieve@M`` stage
logic in :mod:`cxr.retrieve.run`.
"""

from cxr.retrieve.embed import embed, embed_dataset
from cxr.retrieve.index import IndexConfig, RetrievalError, SearchIndex

__all__ = ["IndexConfig", "RetrievalError", "SearchIndex", "embed", "embed_dataset"]
