"""The ``report`` stage: every stage's declared outputs -> ``reports/index.html`` + ``reports/summary.md``.

The HTML page is self-contained (inline CSS and SVG, images as base64 data URIs, no script, no
external resource) and opens from disk. ``summary.md`` holds the same tables as markdown for
``git diff``. Both are deterministic: no timestamps, no timings, stable ordering.

Sections: pipeline (DAG drawn from dvc.yaml, every parameter), data counts, failures and
exclusions, classifier comparison with CIs, ROC curves, DVCLive training curves, detector and UNet metrics, weak
localisation, retrieval, labeller F1. A section whose stage is not in dvc.yaml says so; a
declared input that is missing or malformed raises :class:`ReportError`.
"""

from __future__ import annotations

from cxr.report.build import build_report, write_report
from cxr.report.errors import ReportError
from cxr.report.inputs import ReportInputs

__all__ = ["ReportError", "ReportInputs", "build_report", "write_report"]
