"""Figures of the report: the DAG and ROC curves as inline SVG, image thumbnails as PNG bytes.

SVG keeps the page self-contained and the bytes deterministic (coordinates are rounded, no
ids from counters or clocks). All text placed in SVG is escaped here.
"""

from __future__ import annotations

import html
import io
from typing import Mapping, Sequence

import numpy as np
from PIL import Image as PILImage

from cxr import shards
from cxr.report.dag import Dag

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
_CHAR_W = 6.6  # px per character at font-size 11 (DejaVu Sans / system-ui average)


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _stage_color(name: str) -> str:
    kind = name.split("@", 1)[0].removesuffix("_hash")  # train_hash@M, retrieve_hash@M: as train, retrieve
    return {"train": "#dbeafe", "evaluate": "#dcfce7", "localize": "#fef3c7", "retrieve": "#fce7f3",
            "report": "#e9d5ff"}.get(kind, "#f1f5f9")


def dag_svg(dag: Dag) -> str:
    """Stages left to right by longest-path layer; edges of the transitive reduction as curves."""
    layer = dag.layers()
    order = dag.names()
    cols: dict[int, list[str]] = {}
    for n in order:
        cols.setdefault(layer[n], []).append(n)
    edges = dag.reduced_edges()
    preds: dict[str, list[str]] = {n: [] for n in order}
    for a, b in edges:
        preds[b].append(a)
    row: dict[str, float] = {}
    for c in sorted(cols):
        # order each column by the mean row of its predecessors (fewer crossings), then dvc.yaml order
        cols[c].sort(key=lambda n: (np.mean([row[p] for p in preds[n]]) if preds[n] else 0.0, order.index(n)))
        for i, n in enumerate(cols[c]):
            row[n] = i
    box_h, gap_y, gap_x, pad = 22, 10, 46, 10
    widths = {c: max(len(n) for n in names) * _CHAR_W + 16 for c, names in cols.items()}
    x0: dict[int, float] = {}
    x = pad
    for c in sorted(cols):
        x0[c] = x
        x += widths[c] + gap_x
    tallest = max(len(v) for v in cols.values())
    height = pad * 2 + tallest * (box_h + gap_y) - gap_y
    width = x - gap_x + pad
    pos = {}
    for c, names in cols.items():
        off = (tallest - len(names)) * (box_h + gap_y) / 2  # centre short columns
        for i, n in enumerate(names):
            pos[n] = (x0[c], pad + off + i * (box_h + gap_y), widths[c])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" '
             f'height="{height:.0f}" role="img" aria-label="pipeline DAG" font-family="sans-serif" font-size="11">',
             '<defs><marker id="dag-arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" '
             'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#6e7781"/></marker></defs>']
    for a, b in edges:
        ax, ay, aw = pos[a]
        bx, by, _ = pos[b]
        x1, y1, x2, y2 = ax + aw, ay + box_h / 2, bx, by + box_h / 2
        mid = (x1 + x2) / 2
        parts.append(f'<path d="M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2:.1f} {x2:.1f},{y2:.1f}" '
                     f'fill="none" stroke="#8c959f" stroke-width="1" marker-end="url(#dag-arrow)"/>')
    for n in order:
        x, y, w = pos[n]
        parts.append(f'<g data-stage="{_e(n)}"><rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{box_h}" rx="4" '
                     f'fill="{_stage_color(n)}" stroke="#57606a"/><text x="{x + 8:.1f}" y="{y + 15:.1f}">{_e(n)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def dag_mermaid(dag: Dag) -> str:
    """The reduced DAG as a mermaid flowchart (rendered by GitHub in summary.md)."""
    ids = {n: f"s{i}" for i, n in enumerate(dag.names())}
    lines = ["```mermaid", "flowchart LR"]
    lines += [f'  {ids[n]}["{n}"]' for n in dag.names()]
    lines += [f"  {ids[a]} --> {ids[b]}" for a, b in dag.reduced_edges()]
    lines.append("```")
    return "\n".join(lines)


def _polyline(fpr: np.ndarray, tpr: np.ndarray, x0: float, y0: float, size: float) -> str:
    pts, last = [], None
    for f, t in zip(fpr, tpr):
        p = (round(x0 + float(f) * size, 1), round(y0 + (1.0 - float(t)) * size, 1))
        if p != last:  # curves of large test sets collapse to at most a few points per pixel
            pts.append(p)
            last = p
    return " ".join(f"{x},{y}" for x, y in pts)


def curve_svg(title: str, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], colors: Mapping[str, str],
              labels: Mapping[str, str], xlabel: str, ylabel: str, *, diagonal: bool = False,
              level: float | None = None, attr: str = "data-curve") -> str:
    """One unit-square panel: a polyline per model, the diagonal (chance ROC, perfect calibration) or a
    horizontal ``level`` (PR chance: the prevalence) dashed, and each model's label in the corner."""
    size, left, top, right, bottom = 170.0, 34.0, 22.0, 8.0, 28.0
    w, h = left + size + right, top + size + bottom
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w:.0f} {h:.0f}" width="{w:.0f}" height="{h:.0f}" '
             f'role="img" aria-label="{_e(ylabel)} vs {_e(xlabel)}: {_e(title)}" font-family="sans-serif" font-size="9" '
             f'{attr}="{_e(title)}">',
             f'<text x="{left + size / 2:.1f}" y="14" text-anchor="middle" font-size="11" font-weight="600">{_e(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{size}" height="{size}" fill="#fff" stroke="#8c959f"/>']
    for v in (0.25, 0.5, 0.75):
        gx, gy = left + v * size, top + (1 - v) * size
        parts.append(f'<path d="M{gx:.1f},{top} V{top + size}" stroke="#eaeef2"/>'
                     f'<path d="M{left},{gy:.1f} H{left + size}" stroke="#eaeef2"/>')
    for v in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{left + v * size:.1f}" y="{top + size + 11:.1f}" text-anchor="middle">{v:g}</text>'
                     f'<text x="{left - 4:.1f}" y="{top + (1 - v) * size + 3:.1f}" text-anchor="end">{v:g}</text>')
    parts.append(f'<text x="{left + size / 2:.1f}" y="{h - 4:.1f}" text-anchor="middle">{_e(xlabel)}</text>'
                 f'<text transform="translate(9,{top + size / 2:.1f}) rotate(-90)" text-anchor="middle">{_e(ylabel)}</text>')
    if diagonal:
        parts.append(f'<path d="M{left},{top + size} L{left + size},{top}" stroke="#afb8c1" stroke-dasharray="3,3"/>')
    if level is not None and np.isfinite(level):
        y = top + (1 - float(np.clip(level, 0, 1))) * size
        parts.append(f'<path d="M{left},{y:.1f} H{left + size}" stroke="#afb8c1" stroke-dasharray="3,3"/>')
    for i, (model, (x, y)) in enumerate(curves.items()):
        parts.append(f'<polyline fill="none" stroke="{colors[model]}" stroke-width="1.4" data-model="{_e(model)}" '
                     f'points="{_polyline(x, y, left, top, size)}"/>')
        parts.append(f'<text x="{left + size - 4:.1f}" y="{top + size - 6 - 11 * (len(curves) - 1 - i):.1f}" '
                     f'text-anchor="end" fill="{colors[model]}">{_e(labels.get(model, ""))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _ticks(lo: float, hi: float) -> tuple[float, float]:
    """A padded [lo, hi] axis range (a flat series gets a visible band around its value)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return 0.0, 1.0
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.05 or 0.5
        return lo - pad, hi + pad
    return lo, hi


def line_svg(title: str, series: Mapping[str, tuple[np.ndarray, np.ndarray]], colors: Mapping[str, str], xlabel: str,
             ylabel: str, *, mark: float | None = None, mark_label: str = "", attr: str = "data-training") -> str:
    """One panel of lines on the data's own ranges (training curves): a polyline (and dots, for short series)
    per named series, the axis ends labelled, and an optional dashed vertical ``mark`` at x = ``mark``."""
    width, height, left, top, right, bottom = 260.0, 170.0, 44.0, 22.0, 10.0, 40.0
    pw, ph = width - left - right, height - top - bottom
    xs = np.concatenate([np.asarray(x, np.float64) for x, _ in series.values()]) if series else np.zeros(0)
    ys = np.concatenate([np.asarray(y, np.float64) for _, y in series.values()]) if series else np.zeros(0)
    ok = np.isfinite(ys)
    x0, x1 = _ticks(float(xs.min()) if len(xs) else 0.0, float(xs.max()) if len(xs) else 1.0)
    y0, y1 = _ticks(float(ys[ok].min()) if ok.any() else 0.0, float(ys[ok].max()) if ok.any() else 1.0)

    def px(x: float) -> float:
        return round(left + (x - x0) / (x1 - x0) * pw, 1)

    def py(y: float) -> float:
        return round(top + (1.0 - (y - y0) / (y1 - y0)) * ph, 1)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" '
             f'height="{height:.0f}" role="img" aria-label="{_e(ylabel)} vs {_e(xlabel)}: {_e(title)}" '
             f'font-family="sans-serif" font-size="9" {attr}="{_e(title)}">',
             f'<text x="{left + pw / 2:.1f}" y="14" text-anchor="middle" font-size="11" font-weight="600">{_e(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#8c959f"/>',
             f'<text x="{left:.1f}" y="{top + ph + 11:.1f}" text-anchor="start">{x0:g}</text>'
             f'<text x="{left + pw:.1f}" y="{top + ph + 11:.1f}" text-anchor="end">{x1:g}</text>'
             f'<text x="{left - 3:.1f}" y="{top + ph:.1f}" text-anchor="end">{y0:.3g}</text>'
             f'<text x="{left - 3:.1f}" y="{top + 7:.1f}" text-anchor="end">{y1:.3g}</text>'
             f'<text x="{left + pw / 2:.1f}" y="{top + ph + 22:.1f}" text-anchor="middle">{_e(xlabel)}</text>'
             f'<text transform="translate(9,{top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">{_e(ylabel)}</text>']
    if mark is not None and np.isfinite(mark):
        mx = px(float(mark))
        parts.append(f'<path d="M{mx},{top} V{top + ph}" stroke="#57606a" stroke-dasharray="3,3" data-mark="{mark:g}"/>'
                     f'<text x="{mx + 3:.1f}" y="{top + ph - 4:.1f}" fill="#57606a">{_e(mark_label)}</text>')  # legends: top right
    for i, (name, (x, y)) in enumerate(series.items()):
        pts = [(px(float(a)), py(float(b))) for a, b in zip(x, y) if np.isfinite(b)]
        color = colors[name]
        if len(pts) > 1:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.4" data-series="{_e(name)}" '
                         f'points="{" ".join(f"{a},{b}" for a, b in pts)}"/>')
        if len(pts) <= 30:  # dots show single epochs (a one-epoch run is one point, not an empty panel)
            parts += [f'<circle cx="{a}" cy="{b}" r="2.2" fill="{color}" data-series="{_e(name)}"/>' for a, b in pts]
        parts.append(f'<text x="{left + pw - 4:.1f}" y="{top + 10 + 11 * i:.1f}" text-anchor="end" fill="{color}">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def roc_svg(title: str, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], colors: Mapping[str, str],
            aurocs: Mapping[str, float | None]) -> str:
    """One ROC panel: a curve per model, the chance diagonal, AUROC per model in the corner."""
    labels = {m: "n/a" if aurocs.get(m) is None else f"{aurocs[m]:.2f}" for m in curves}
    return curve_svg(title, curves, colors, labels, "false positive rate", "true positive rate", diagonal=True,
                     attr="data-roc")


def roc_legend(models: Sequence[str], colors: Mapping[str, str]) -> str:
    """A one-line colour key for the ROC panels."""
    x, parts = 4.0, []
    for m in models:
        parts.append(f'<rect x="{x:.1f}" y="5" width="14" height="4" fill="{colors[m]}"/>'
                     f'<text x="{x + 18:.1f}" y="11">{_e(m)}</text>')
        x += 18 + len(m) * _CHAR_W + 18
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {x:.0f} 16" width="{x:.0f}" height="16" '
            f'font-family="sans-serif" font-size="11" role="img" aria-label="legend">{"".join(parts)}</svg>')


def thumbnail(path, size: int = 96) -> bytes:
    """A PNG of the image at ``path`` scaled to fit ``size`` x ``size`` (deterministic bytes)."""
    with shards.open_image(path) as im:  # a file or a shard member (convert.storage: shards)
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            arr = np.asarray(im, dtype=np.float64)  # 16-bit PNG: stretch to 8 bits for display
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
            im = PILImage.fromarray(arr.astype(np.uint8))
        elif im.mode not in ("L", "RGB", "RGBA"):
            im = im.convert("RGB")
        im = im.copy()
        im.thumbnail((size, size), PILImage.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return buf.getvalue()
