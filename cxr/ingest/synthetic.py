"""``synthetic://<profile>`` source: generate the built-in cohort (see :mod:`cxr.synth`)."""

from __future__ import annotations

from pathlib import Path

from cxr.ingest import register_source
from cxr.params import IngestParams
from cxr.synth.generate import generate


@register_source("synthetic")
def ingest_synthetic(location: str, out_dir: Path, params: IngestParams, seed: int) -> dict:
    return generate(out_dir, profile=location, seed=seed, params=params.synthetic, source=f"synthetic://{location}")
