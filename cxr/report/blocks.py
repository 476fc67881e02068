"""What a report section holds, independent of the output format (HTML page or markdown).

Sections are built once from the stage outputs and rendered twice, so ``reports/index.html``
and ``reports/summary.md`` state the same facts. Cells are already formatted strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence, Union


@dataclass(frozen=True)
class Text:
    """A paragraph of plain text."""

    text: str


@dataclass(frozen=True)
class Table:
    """A table with a caption; ``key`` names it for tests and anchors (``data-table`` attribute)."""

    key: str
    caption: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Image:
    """A PNG embedded as a data URI (HTML only; markdown names it)."""

    key: str
    caption: str
    png: bytes
    alt: str


@dataclass(frozen=True)
class Gallery:
    """Rows of small images with captions: e.g. a retrieval query followed by its top results."""

    key: str
    caption: str
    rows: tuple[tuple[tuple[str, bytes | None, str], ...], ...]  # each row: (caption, png, image name) triples


@dataclass(frozen=True)
class Svg:
    """An inline SVG drawing (HTML only; markdown gets ``fallback`` if any)."""

    key: str
    caption: str
    svg: str
    fallback: str = ""


Block = Union[Text, Table, Image, Gallery, Svg]


@dataclass(frozen=True)
class Section:
    """One titled part of the report. ``absent`` says why it has no content (stage not in the DAG)."""

    key: str
    title: str
    blocks: tuple[Block, ...] = field(default=())
    absent: str = ""


def fmt(v: Any, digits: int = 3) -> str:
    """A cell value: floats to ``digits`` decimals, None as ``n/a``, lists joined, the rest as str."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:  # NaN
            return "n/a"
        return f"{v:.{digits}f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x, digits) for x in v) if v else "[]"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {fmt(x, digits)}" for k, x in v.items()) if v else "{}"
    return str(v)


def table(key: str, caption: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> Table:
    """Build a :class:`Table`, formatting every cell with :func:`fmt`."""
    cols = tuple(columns)
    out = []
    for r in rows:
        if len(r) != len(cols):
            raise ValueError(f"table {key}: row {list(r)!r} has {len(r)} cells for {len(cols)} columns")
        out.append(tuple(c if isinstance(c, str) else fmt(c, digits) for c in r))
    return Table(key, caption, cols, tuple(out))
