"""A gallery PNG of localisation examples (PIL only): the converted PNG, an optional heatmap
overlay, predicted boxes (red) and ground-truth boxes (green), one tile per example.

Deterministic: same inputs -> same bytes (no timestamps, PIL's built-in bitmap font).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cxr import shards
from cxr.localize.boxes import Geometry

GT_COLOUR = (40, 220, 60)
PRED_COLOUR = (235, 40, 40)


@dataclass
class Tile:
    """One gallery example.

    Attributes:
        png: path of the converted PNG.
        geometry: the image's :class:`~cxr.localize.boxes.Geometry`.
        title: caption (kept short: about 40 characters fit a 256-px tile).
        gt_png: GT boxes ``[G, 4]`` in PNG pixels.
        pred_png: predicted boxes ``[P, 4]`` in PNG pixels.
        heatmap: optional ``[S, S]`` map in the model-input frame, values in ``[0, 1]``.
    """

    png: Path
    geometry: Geometry
    title: str
    gt_png: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    pred_png: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    heatmap: np.ndarray | None = None


def colormap(v: np.ndarray) -> np.ndarray:
    """A blue-cyan-yellow-red ramp (jet-like) for values in ``[0, 1]`` -> uint8 ``[..., 3]``."""
    v = np.clip(np.asarray(v, dtype=np.float32), 0, 1)
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).round().astype(np.uint8)


def heatmap_on_png(heatmap: np.ndarray, geo: Geometry) -> np.ndarray:
    """Map an input-frame heatmap ``[S, S]`` onto the PNG grid ``[png_height, png_width]`` (undo pad + resize)."""
    side = geo.side
    big = np.asarray(Image.fromarray(np.asarray(heatmap, dtype=np.float32)).resize(
        (side, side), Image.Resampling.BILINEAR))
    px, py = geo.pad
    return big[py:py + geo.png_height, px:px + geo.png_width]


def render_tile(tile: Tile, size: int = 256, alpha: float = 0.45) -> Image.Image:
    """One RGB tile ``size x (size + 14)``: caption strip on top, image below."""
    with shards.open_image(tile.png) as im:  # a file or a shard member
        grey = np.asarray(im.convert("L"), dtype=np.float32)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if tile.heatmap is not None:
        h = heatmap_on_png(tile.heatmap, tile.geometry)
        a = (alpha * h)[..., None]
        rgb = rgb * (1 - a) + colormap(h).astype(np.float32) * a
    img = Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8))
    f = size / max(img.size)
    img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (size, size + 14), (0, 0, 0))
    ox, oy = (size - img.width) // 2, 14 + (size - img.height) // 2
    canvas.paste(img, (ox, oy))
    draw = ImageDraw.Draw(canvas)
    for boxes, colour in ((tile.gt_png, GT_COLOUR), (tile.pred_png, PRED_COLOUR)):
        for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
            draw.rectangle([ox + x1 * f, oy + y1 * f, ox + max(x1, x2 - 1) * f, oy + max(y1, y2 - 1) * f],
                           outline=colour, width=2)
    draw.text((2, 1), tile.title, fill=(255, 255, 255), font=ImageFont.load_default())
    return canvas


def render_gallery(tiles: Sequence[Tile], size: int = 256, columns: int = 4) -> bytes:
    """PNG bytes of a grid of :func:`render_tile` tiles (an explanatory blank image when empty)."""
    font = ImageFont.load_default()
    if not tiles:
        canvas = Image.new("RGB", (size * 2, 40), (0, 0, 0))
        ImageDraw.Draw(canvas).text((4, 12), "no test image with ground-truth boxes", fill=(255, 255, 255), font=font)
    else:
        cols = min(columns, len(tiles))
        rows = -(-len(tiles) // cols)
        canvas = Image.new("RGB", (cols * size, rows * (size + 14) + 14), (0, 0, 0))
        draw = ImageDraw.Draw(canvas)
        draw.text((2, 1), "green: ground truth   red: predicted", fill=(255, 255, 255), font=font)
        for i, t in enumerate(tiles):
            canvas.paste(render_tile(t, size), ((i % cols) * size, 14 + (i // cols) * (size + 14)))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
