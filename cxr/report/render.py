"""Render report sections to one self-contained HTML page and to git-diff-friendly markdown.

The HTML has no external resource of any kind: styles inline, images as base64 data URIs,
charts as inline SVG, no script. Every piece of text goes through :func:`html.escape`. Both
outputs depend only on the sections (no timestamps), so the same inputs give the same bytes.
"""

from __future__ import annotations

import base64
import html
from typing import Sequence

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


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _is_num(cell: str) -> bool:
    head = cell.split(" ", 1)[0].rstrip("%")
    try:
        float(head)
    except ValueError:
        return False
    return True


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in t.columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_e(c)}</td>' if _is_num(c) else f"<td>{_e(c)}</td>" for c in row) + "</tr>"
        for row in t.rows
    )
    return (f'<div class="scroll"><table data-table="{_e(t.key)}"><caption>{_e(t.caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def _html_block(b) -> str:
    if isinstance(b, Text):
        return f"<p>{_e(b.text)}</p>"
    if isinstance(b, Table):
        return _html_table(b)
    if isinstance(b, Image):
        return (f'<figure data-figure="{_e(b.key)}"><img class="full" src="{_data_uri(b.png)}" alt="{_e(b.alt)}">'
                f"<figcaption>{_e(b.caption)}</figcaption></figure>")
    if isinstance(b, Gallery):
        rows = []
        for row in b.rows:
            cells = "".join(f'<figure title="{_e(name)}">'
                            + (f'<img src="{_data_uri(png)}" alt="{_e(name)}">' if png is not None else "")
                            + f"<figcaption>{_e(cap)}</figcaption></figure>" for cap, png, name in row)
            rows.append(f'<div class="gallery-row">{cells}</div>')
        return (f'<div data-gallery="{_e(b.key)}"><h3>{_e(b.caption)}</h3>{"".join(rows)}</div>')
    if isinstance(b, Svg):
        return f'<figure data-figure="{_e(b.key)}">{b.svg}<figcaption>{_e(b.caption)}</figcaption></figure>'
    raise TypeError(f"unknown report block {type(b).__name__}")


def to_html(title: str, sections: Sequence[Section]) -> str:
    """The whole page. SVG blocks are trusted markup (built by :mod:`cxr.report.charts`, text escaped there)."""
    nav = " ".join(f'<a href="#{_e(s.key)}">{_e(s.title)}</a>' for s in sections)
    parts = []
    for s in sections:
        inner = f'<p class="absent">{_e(s.absent)}</p>' if s.absent else "".join(_html_block(b) for b in s.blocks)
        parts.append(f'<section id="{_e(s.key)}" data-absent="{"yes" if s.absent else "no"}">'
                     f"<h2>{_e(s.title)}</h2>{inner}</section>")
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n"
        f"<body><header><h1>{_e(title)}</h1></header><nav>{nav}</nav><main>\n"
        + "\n".join(parts)
        + "\n</main></body></html>\n"
    )


def _md(text: str) -> str:
    # a backslash-escaped "<" is a literal "<" in CommonMark, so no text can become raw HTML
    return str(text).replace("\\", "\\\\").replace("<", "\\<")


def _md_cell(c: str) -> str:
    return _md(c).replace("|", "\\|").replace("\n", " ")


def _md_block(b) -> str:
    if isinstance(b, Text):
        return _md(b.text)
    if isinstance(b, Table):
        lines = [f"**{_md_cell(b.caption)}**", "", "| " + " | ".join(_md_cell(c) for c in b.columns) + " |",
                 "|" + "---|" * len(b.columns)]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
        return "\n".join(lines)
    if isinstance(b, Image):
        return f"_Figure (in index.html): {_md(b.caption)}_"
    if isinstance(b, Gallery):
        lines = [f"**{_md(b.caption)}**", ""]
        lines += ["- " + " -> ".join(_md(f"{name} ({cap})".replace("\n", ": ")) for cap, _, name in row) for row in b.rows]
        return "\n".join(lines)
    if isinstance(b, Svg):
        return b.fallback or f"_Figure (in index.html): {_md(b.caption)}_"
    raise TypeError(f"unknown report block {type(b).__name__}")


def to_markdown(title: str, sections: Sequence[Section]) -> str:
    """The same sections as plain markdown tables (figures are named, not drawn)."""
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {_md(s.title)}", ""]
        if s.absent:
            out += [f"> {_md(s.absent)}", ""]
            continue
        for b in s.blocks:
            out += [_md_block(b), ""]
    return "\n".join(out).rstrip("\n") + "\n"
