"""OpenI / Indiana University chest X-ray collection (Demner-Fushman et al., JAMIA 2016).

Each report is an XML file (``ecgen-radiology/<n>.xml``, shipped as ``NLMCXR_reports.tgz``):
``uId`` (``CXR<n>``), ``AbstractText`` elements labelled COMPARISON / INDICATION / FINDINGS /
IMPRESSION, MeSH terms, and one ``parentImage id="CXR<n>_IM-...">`` per image. There is one
report per patient, so patient, study and report share the ``CXR<n>`` id.

Reports are returned as ``FINDINGS: ...`` / ``IMPRESSION: ...`` text so the labeller labels the
report text only (never the MeSH terms, a separate and weaker reference labelling).
"""

from __future__ import annotations

import logging
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from cxr.sources.common import REPORT_COLUMNS, Issue, SourceError, SourceTables, finish_images, safe_id

log = logging.getLogger(__name__)

DATASET = "openi"


def parse_report_xml(data: bytes, name: str) -> dict:
    """Parse one report XML.

    Returns:
        ``{"uid", "sections": {LABEL: text}, "images": [ids], "mesh": [terms]}``.

    Raises:
        ValueError: not well-formed XML or no ``uId``.
    """
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ValueError(f"{name}: malformed XML ({exc})") from None
    uid_el = root.find("uId")
    uid = uid_el.get("id") if uid_el is not None else None
    if not uid:
        raise ValueError(f"{name}: no <uId id=...> element")
    sections = {}
    for el in root.iter("AbstractText"):
        label = (el.get("Label") or "").strip().upper()
        if label:
            sections[label] = " ".join((el.text or "").split())
    images = [el.get("id") for el in root.iter("parentImage") if el.get("id")]
    mesh = [(el.text or "").strip() for el in root.iter("major")] if root.find("MeSH") is not None else []
    return {"uid": uid, "sections": sections, "images": images, "mesh": mesh}


def report_text(sections: dict[str, str], labels: tuple[str, ...] = ("FINDINGS", "IMPRESSION")) -> str:
    """Report text with ``NAME:`` headers from the chosen sections (empty ones skipped)."""
    return "\n\n".join(f"{k}: {sections[k]}" for k in labels if sections.get(k))


def _iter_xml(source: Path) -> Iterator[tuple[str, bytes]]:
    if source.is_dir():
        for p in sorted(source.rglob("*.xml")):
            yield p.name, p.read_bytes()
        return
    if not source.is_file():
        raise SourceError(f"{source}: neither a directory of report XMLs nor a .tgz archive")
    try:
        with tarfile.open(source, "r:*") as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xml")), key=lambda m: m.name)
            for m in members:
                fh = tar.extractfile(m)
                if fh is not None:
                    yield Path(m.name).name, fh.read()
    except tarfile.TarError as exc:
        raise SourceError(f"{source}: not a readable tar archive ({exc})") from None


def read_reports(source: str | Path) -> SourceTables:
    """Read OpenI report XMLs from a directory or ``NLMCXR_reports.tgz``.

    Returns:
        SourceTables with images (one per parentImage), reports (FINDINGS + IMPRESSION text,
        plus ``mesh`` and ``uid`` columns); malformed XMLs are counted issues.

    Raises:
        SourceError: the source is missing or not an archive / directory.
    """
    source = Path(source)
    issues: list[Issue] = []
    reports, images = [], []
    for name, data in _iter_xml(source):
        try:
            rec = parse_report_xml(data, name)
        except ValueError as exc:
            issues.append(Issue(source.name, name, str(exc)))
            continue
        uid = rec["uid"]
        reports.append({
            "dataset": DATASET,
            "patient_id": uid,
            "study_id": uid,
            "report": report_text(rec["sections"]),
            "mesh": "|".join(rec["mesh"]),
        })
        for im in rec["images"]:
            images.append({"image_id": safe_id(im), "patient_id": uid, "study_id": uid, "source_path": f"{im}.dcm"})
    rep = pd.DataFrame(reports, columns=[*REPORT_COLUMNS, "mesh"]).sort_values("study_id", kind="stable")
    if issues:
        log.warning("%s: %d malformed report XMLs skipped", source.name, len(issues))
    return SourceTables(DATASET, finish_images(images, DATASET), reports=rep.reset_index(drop=True), issues=issues)


def read_folder(folder: str | Path) -> SourceTables:
    """Read an OpenI folder: ``NLMCXR_reports.tgz`` or an ``ecgen-radiology/`` directory."""
    folder = Path(folder)
    for cand in (folder / "NLMCXR_reports.tgz", folder / "ecgen-radiology"):
        if cand.exists():
            return read_reports(cand)
    raise SourceError(f"{folder}: no NLMCXR_reports.tgz or ecgen-radiology/ report folder")
