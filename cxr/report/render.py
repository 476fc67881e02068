"""Render report sections to one self-contained HTML page and to git-diff-friendly markdown.

Both come from Jinja2 templates (package data: ``cxr/report/templates/report.html.j2`` and
``report.md.j2``). The HTML has no external resource of any kind: styles inline, images as base64
data URIs, charts as inline SVG, no script. The HTML environment autoescapes every value; only the
CSS below and SVG blocks (built by :mod:`cxr.report.charts`, which escapes their text) are marked
safe. Both outputs depend only on the sections (no timestamps), so the same inputs give the same bytes.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from importlib import resources
from typing import Sequence

import jinja2

from cxr.report.blocks import Gallery, Image, Section, Svg, Table, Text

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1b1f24;
background:#fff;line-height:1.4;font-size:14px}
header{background:#1f3a5f;color:#fff;padding:14px 24px}header h1{margin:0;font-size:22px}
nav{padding:8px 24px;background:#eef2f7;border-bottom:1px solid #d0d7de;position:sticky;top:0;z-index:1}
nav a{margin-right:14px;color:#1f3a5f;text-decoration:none;white-space:nowrap}nav a:hover{text-decoration:underline}
main{padding:8px 24px 40px;max-width:1400px;box-sizing:border-box}
section{margin-top:18px;border-top:2px solid #d0d7de;padding-top:4px}
h2{font-size:19px;margin:8px 0}h3{font-size:15px;margin:14px 0 6px}
p.absent{background:#fff8c5;border:1px solid #d4a72c;padding:8px 12px;border-radius:4px}
table{border-collapse:collapse;margin:4px 0 14px;font-size:12.5px;min-width:300px}
caption{text-align:left;font-weight:600;padding:4px 0;font-size:13px}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}tbody tr:nth-child(even){background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:6px 0 16px}figcaption{font-size:12.5px;color:#57606a;margin-top:4px}
figure img.full{max-width:100%;height:auto;border:1px solid #d0d7de}
svg{max-width:100%;height:auto}
.gallery-row{display:flex;gap:6px;align-items:flex-start;margin-bottom:8px;flex-wrap:wrap}
.gallery-row figure{margin:0;width:124px}.gallery-row img{width:96px;height:96px;object-fit:contain;
background:#000;border:1px solid #d0d7de}.gallery-row figcaption{font-size:10.5px;white-space:pre-line;
overflow-wrap:anywhere}
.gallery-row figure:first-child img{border:2px solid #1f3a5f}
.scroll{display:inline-block;vertical-align:top;margin-right:22px;max-width:100%;overflow-x:auto}
.roc-grid{display:flex;flex-wrap:wrap;gap:4px}
"""


_KINDS = {Text: "text", Table: "table", Image: "image", Gallery: "gallery", Svg: "svg"}


def _block_kind(b) -> str:
    try:
        return _KINDS[type(b)]
    except KeyError:
        raise TypeError(f"unknown report block {type(b).__name__}") from None


def _is_num(cell: str) -> bool:
    head = str(cell).split(" ", 1)[0].rstrip("%")
    try:
        float(head)
    except ValueError:
        return False
    return True


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _md(text) -> str:
    # a backslash-escaped "<" is a literal "<" in CommonMark, so no text can become raw HTML
    return str(text).replace("\\", "\\\\").replace("<", "\\<")


def _md_cell(c) -> str:
    return _md(c).replace("|", "\\|").replace("\n", " ")


def _template_source(name: str) -> str | None:
    # importlib.resources: package data of any install (and a dependency of the report stage for cxr.depgraph)
    f = resources.files("cxr.report") / "templates" / name
    return f.read_text(encoding="utf-8") if f.is_file() else None


@lru_cache(maxsize=None)
def _environment(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_template_source),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,  # a misspelt field is an error, not an empty cell
        keep_trailing_newline=True,
    )
    env.filters.update(block_kind=_block_kind, data_uri=_data_uri, md=_md, md_cell=_md_cell)
    env.tests["numeric_cell"] = _is_num
    return env


def to_html(title: str, sections: Sequence[Section]) -> str:
    """The whole page (``templates/report.html.j2``, autoescaped)."""
    page = _environment(True).get_template("report.html.j2")
    return page.render(title=title, sections=sections, css=_CSS)


def to_markdown(title: str, sections: Sequence[Section]) -> str:
    """The same sections as plain markdown tables (``templates/report.md.j2``; figures are named, not drawn)."""
    doc = _environment(False).get_template("report.md.j2")
    return doc.render(title=title, sections=sections).rstrip("\n") + "\n"
