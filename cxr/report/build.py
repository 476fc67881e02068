"""Assemble the report sections and render them (see :mod:`cxr.report`)."""

from __future__ import annotations

from pathlib import Path

from cxr.io import write_text
from cxr.params import ParamsError, load_all
from cxr.report.blocks import Section
from cxr.report.dag import load_dag
from cxr.report.diagnostics import diagnostics_section
from cxr.report.errors import ReportError
from cxr.report.inputs import ReportInputs
from cxr.report.render import to_html, to_markdown
from cxr.report.results import localization_section, retrieval_section
from cxr.report.summary import summary_section
from cxr.report.training import training_section
from cxr.report.sections import (
    anatomy_section,
    classifiers_section,
    data_section,
    failures_section,
    labeller_section,
    load_evaluations,
    pipeline_section,
    roc_section,
)

TITLE = "cxr-pipeline report"


def build_sections(inputs: ReportInputs, image_dir: Path | None = None, thumb_size: int = 96) -> list[Section]:
    """Every section of the report, in page order: the summary first (best model per task beside its
    baseline, changed params, what is not applicable), the results, then the DAG and params at the end.

    Args:
        inputs: the declared input paths.
        image_dir: converted PNG dir, for the retrieval thumbnails (None: captions only).
        thumb_size: thumbnail side in pixels.

    Raises:
        ReportError: a declared input is missing or malformed, or params.yaml / dvc.yaml is invalid.
    """
    try:
        params = {k: v.model_dump(mode="json") for k, v in load_all(inputs.params).items()}
    except ParamsError as exc:
        raise ReportError(str(exc)) from None
    dag = load_dag(inputs.dvc_yaml, params)
    evals = load_evaluations(dag, inputs)
    loc, loc_failures = localization_section(dag, inputs)
    ret, ret_failures = retrieval_section(dag, inputs, image_dir=image_dir, thumb_size=thumb_size)
    return [
        summary_section(dag, params, inputs, evals),
        classifiers_section(dag, inputs, evals),
        roc_section(dag, inputs, evals),
        diagnostics_section(dag, inputs, evals, image_dir=image_dir, thumb_size=thumb_size),
        training_section(dag, inputs),
        anatomy_section(dag, inputs),
        loc,
        ret,
        labeller_section(dag, inputs),
        data_section(dag, inputs),
        failures_section(dag, inputs, extra=[*loc_failures, *ret_failures]),
        pipeline_section(dag, params, inputs),
    ]


def build_report(inputs: ReportInputs, image_dir: Path | None = None, thumb_size: int = 96) -> tuple[str, str]:
    """``(html, markdown)`` of the report for ``inputs`` (see :func:`build_sections`)."""
    sections = build_sections(inputs, image_dir=image_dir, thumb_size=thumb_size)
    return to_html(TITLE, sections), to_markdown(TITLE, sections)


def write_report(inputs: ReportInputs, html_path: Path, summary_path: Path, image_dir: Path | None = None,
                 thumb_size: int = 96) -> list[Section]:
    """Build the report and write both files atomically; returns the sections (for logging)."""
    sections = build_sections(inputs, image_dir=image_dir, thumb_size=thumb_size)
    write_text(html_path, to_html(TITLE, sections))
    write_text(summary_path, to_markdown(TITLE, sections))
    return sections
