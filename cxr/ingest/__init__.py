"""The ``ingest`` stage: bring a raw dataset into ``data/raw/`` in its native layout.

The source is a URL-like string (``ingest.source`` in params.yaml), dispatched on its scheme:

===========================  ==================================================================
``synthetic://<profile>``    generate the built-in synthetic cohort (:mod:`cxr.synth`)
``gs://<bucket>/<prefix>``   download a GCS prefix (:mod:`cxr.ingest.gcs`)
``file://<dir>`` or a path   use an existing local copy (:mod:`cxr.ingest.local`)
===========================  ==================================================================

Every handler has the signature ``handler(location, out_dir, params) -> dict`` and returns a
summary. The synthetic handler writes it to ``<out_dir>/manifest.json`` (part of the generated
cohort); the gs and local handlers write ``<out_dir>/ingest-manifest.json``, because a copied or
downloaded cohort may already carry a ``manifest.json`` of its own.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable

from cxr.params import IngestParams

log = logging.getLogger(__name__)

Handler = Callable[[str, Path, IngestParams, int], dict]
_HANDLERS: dict[str, Handler] = {}


def register_source(scheme: str) -> Callable[[Handler], Handler]:
    """Register ``fn`` as the handler of ``scheme://`` sources."""

    def deco(fn: Handler) -> Handler:
        _HANDLERS[scheme] = fn
        return fn

    return deco


def split_source(source: str) -> tuple[str, str]:
    """Split ``source`` into (scheme, location); a plain path has scheme ``file``."""
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$", source.strip())
    if m is None:
        return "file", source.strip()
    return m.group(1).lower(), m.group(2)


def _load_handlers() -> None:
    # Imported lazily so that `cxr.ingest` stays cheap to import and optional clients
    # (google-cloud-storage) are only needed for the sources that use them.
    from cxr.ingest import gcs, local, synthetic  # noqa: F401  (lazy: optional clients, and they import this module)


def ingest(source: str, out_dir: str | Path, params: IngestParams, seed: int) -> dict:
    """Run the handler for ``source`` and return its summary.

    Raises:
        ValueError: the scheme has no handler (the message lists the supported ones).
    """
    _load_handlers()
    scheme, location = split_source(source)
    handler = _HANDLERS.get(scheme)
    if handler is None:
        raise ValueError(
            f"ingest.source {source!r}: no handler for scheme {scheme!r}; supported: "
            + ", ".join(f"{s}://" for s in sorted(_HANDLERS))
        )
    log.info("ingest %s -> %s", source, out_dir)
    return handler(location, Path(out_dir), params, seed)
