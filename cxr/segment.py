"""``cxr segment``: the organ UNet (the ``unet`` stage's model dir) on new DICOM / PNG / JPEG files.

For each input file:

1. decode + fit exactly as the ``convert`` stage does (:func:`cxr.convert.convert_file`), with the
   convert settings the UNet's card records (``--params`` overrides them, with a warning naming the
   settings that differ);
2. the converted image goes to the UNet as in training (long side to the card's input size, padded
   bottom / right, intensities in [0, 1]); per-structure probabilities are cropped to the image,
   mapped back through the convert geometry (``x_png = x * scale + offset``) to the INPUT file's own
   pixel grid, resampled bilinearly there and thresholded at the card's threshold;
3. writes ``<out>/<stem>/<structure>.png`` (0 / 255, the input's rows x cols, so it overlays the
   original), ``<out>/<stem>.json`` (per-structure area in pixels and, where the pixel spacing is
   known, in mm^2; the cardiothoracic ratio) and ``<out>/<stem>_overlay.png`` (the converted image
   with the structures drawn in colour).

Cardiothoracic ratio: the maximal horizontal width of the heart mask (its column span) over the
maximal horizontal width of the thorax, the column span of the union of both lung masks (the
lungs' outer borders stand in for the inner rib margins). Null, with the reason, when a mask is
empty or the model has no heart / lung structures.

Errors: a model dir that is not a UNet, or bad ``--params``, stops everything (exit 2); an
unreadable or non-radiograph input is reported with its path, the other files still run (exit 1).
``<out>/summary.json`` lists what succeeded and what failed. Decoding errors, output stems and the
per-file loop are ``cxr predict``'s (:func:`cxr.predict.decode_input`, :func:`cxr.predict.run_each`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from cxr.io import write_bytes, write_json
from cxr.predict import InputError, decode_input, png_bytes, run_each  # noqa: F401  (InputError: per-file errors)
from cxr.errors import CxrError

# "lazy: torch stack" below: as in cxr.predict, `cxr --help` must not load torch through this module's parser.

log = logging.getLogger(__name__)

#: Overlay colours (RGB) per structure; other structures cycle through the rest.
COLOURS = {"right_lung": (0, 170, 255), "left_lung": (0, 220, 120), "heart": (255, 60, 60),
           "right_clavicle": (255, 200, 0), "left_clavicle": (220, 0, 255)}
_SPARE = [(255, 128, 0), (0, 255, 255), (128, 128, 255), (255, 0, 128)]
ALPHA = 0.35


class SegmentError(CxrError, RuntimeError):
    """Nothing can be segmented: the model dir is not a UNet, or the params are bad (message names it)."""


def _span(mask: np.ndarray) -> int:
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[-1] - cols[0] + 1) if len(cols) else 0


def cardiothoracic_ratio(masks: dict[str, np.ndarray]) -> tuple[float | None, dict[str, Any]]:
    """CTR from bool masks in one grid: heart column span / column span of right + left lung.

    Returns:
        ``(ratio or None, details)``; details hold both widths in pixels and, when None, the reason.
    """
    need = ("heart", "right_lung", "left_lung")
    absent = [s for s in need if s not in masks]
    if absent:
        return None, {"reason": f"the model segments no {absent}"}
    heart = _span(masks["heart"])
    thorax = _span(masks["right_lung"] | masks["left_lung"])
    details: dict[str, Any] = {"heart_width_px": heart, "thorax_width_px": thorax}
    if heart == 0 or thorax == 0:
        details["reason"] = "empty heart or lung mask"
        return None, details
    return round(heart / thorax, 4), details


def to_source_grid(prob_png: np.ndarray, geo: dict[str, Any], rows: int, cols: int) -> np.ndarray:
    """Map a probability map in the converted PNG's grid back to the source image's ``rows x cols``.

    The convert geometry is ``x_png = x * scale + offset_x`` (negative offsets: a centre crop); the
    part of the source that the crop removed gets probability 0.
    """
    scale, ox, oy = float(geo["scale"]), int(geo["offset_x"]), int(geo["offset_y"])
    nh, nw = max(1, round(rows * scale)), max(1, round(cols * scale))  # the resized source inside the PNG
    full = np.zeros((nh, nw), np.float32)
    ys, xs = max(0, oy), max(0, ox)                     # window in the PNG
    yd, xd = max(0, -oy), max(0, -ox)                   # window in the resized source
    hh, ww = min(prob_png.shape[0] - ys, nh - yd), min(prob_png.shape[1] - xs, nw - xd)
    if hh > 0 and ww > 0:
        full[yd:yd + hh, xd:xd + ww] = prob_png[ys:ys + hh, xs:xs + ww]
    if (nh, nw) == (rows, cols):
        return full
    return np.asarray(Image.fromarray(full).resize((cols, rows), Image.Resampling.BILINEAR), np.float32)


def overlay(png: np.ndarray, masks: dict[str, np.ndarray], alpha: float = ALPHA) -> np.ndarray:
    """RGB uint8: the grey image with each structure filled in its colour (``masks`` in the image's grid)."""
    g = png.astype(np.float32)
    g = g / (65535.0 if png.dtype == np.uint16 else 255.0)
    rgb = np.repeat(g[..., None], 3, axis=2)
    spare = iter(_SPARE * 4)
    for name, m in masks.items():
        c = np.array(COLOURS.get(name) or next(spare), np.float32) / 255.0
        rgb[m] = (1 - alpha) * rgb[m] + alpha * c
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


class Segmenter:
    """A loaded organ UNet with the decoding settings of its training images.

    Args:
        model_dir: the ``unet`` stage's output (``model.pt`` + ``card.json``).
        params: optional params.yaml whose ``convert`` section overrides the card's settings.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``mps``.

    Raises:
        SegmentError: not a UNet model dir, or weights that do not fit the card.
    """

    def __init__(self, model_dir: str | Path, params: str | Path | None = None, device: str = "auto"):
        from cxr.anatomy.common import AnatomyError, pick_device, read_card  # lazy: torch stack
        from cxr.models.unet import ARCHITECTURE, load_unet  # lazy: torch stack
        from cxr.convert import options_for_model  # lazy: torch stack

        self.model_dir = Path(model_dir)
        try:
            card = read_card(self.model_dir)
        except AnatomyError as exc:
            raise SegmentError(f"{exc}; --model must be the unet stage's model dir (models/unet)") from None
        except ValueError as exc:
            raise SegmentError(f"{self.model_dir}: unreadable model card ({exc})") from None
        if card.get("architecture") != ARCHITECTURE:
            raise SegmentError(f"{self.model_dir}: not an organ UNet (architecture {card.get('architecture')!r}, "
                               f"expected {ARCHITECTURE!r}); --model must be the unet stage's model dir (models/unet)")
        try:
            self.model, self.classes = load_unet(self.model_dir)
            self.device = pick_device(device)
        except (AnatomyError, KeyError, RuntimeError) as exc:
            raise SegmentError(f"{self.model_dir}: cannot rebuild the UNet from its card and weights "
                               f"({type(exc).__name__}: {exc})") from None
        try:
            self.options = options_for_model(card, params, where=str(self.model_dir))
        except ValueError as exc:
            raise SegmentError(str(exc)) from None
        self.model.to(self.device).eval()
        self.size = int(card["input"]["size"])
        self.threshold = float(card.get("threshold", 0.5))
        self.card = card

    def probabilities(self, png: np.ndarray) -> np.ndarray:
        """Per-structure probabilities ``[K, H, W]`` in the converted image's grid (``png``: uint8 / uint16)."""
        from cxr.anatomy.common import unet_probabilities  # lazy: torch stack

        return unet_probabilities(self.model, self.size, png, self.device)

    def segment(self, path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any], np.ndarray, dict[str, np.ndarray]]:
        """Masks of one file in its own pixel grid, the JSON record, the converted image and its masks.

        Raises:
            InputError: missing, unreadable, corrupt or non-radiograph file.
        """
        from cxr.convert import card_settings  # lazy: torch stack

        path = Path(path)
        png, geo, meta = decode_input(path, self.options)
        rows, cols = int(meta["rows"]), int(meta["cols"])
        prob = self.probabilities(png)
        masks = {c: to_source_grid(prob[k], geo, rows, cols) > self.threshold for k, c in enumerate(self.classes)}
        png_masks = {c: prob[k] > self.threshold for k, c in enumerate(self.classes)}
        spacing = meta.get("pixel_spacing")
        spacing = float(spacing) if spacing and float(spacing) > 0 else None
        ratio, ctr = cardiothoracic_ratio(masks)
        rec: dict[str, Any] = {
            "source": path.name, "model": self.model_dir.name, "rows": rows, "cols": cols,
            "pixel_spacing_mm": spacing, "threshold": self.threshold,
            "convert": card_settings(self.options),
            "structures": {c: {"area_px": int(m.sum()),
                               "area_mm2": round(float(m.sum()) * spacing ** 2, 1) if spacing else None}
                           for c, m in masks.items()},
            "cardiothoracic_ratio": ratio, "cardiothoracic": ctr,
        }
        return masks, rec, png, png_masks


def run(paths: Sequence[str | Path], model_dir: str | Path, out_dir: str | Path, *,
        params: str | Path | None = None, device: str = "auto") -> int:
    """Segment every file; 0 when all succeeded, 1 when some failed (each one logged with its path).

    Raises:
        SegmentError, ParamsError: nothing can be segmented.
    """
    seg = Segmenter(model_dir, params=params, device=device)
    out_dir = Path(out_dir)

    def one(path: Path, stem: str) -> str:
        masks, rec, png, png_masks = seg.segment(path)
        for c, m in masks.items():
            write_bytes(out_dir / stem / f"{c}.png", png_bytes(np.where(m, 255, 0).astype(np.uint8)))
        write_bytes(out_dir / f"{stem}_overlay.png", png_bytes(overlay(png, png_masks)))
        write_json(out_dir / f"{stem}.json", rec)
        return f"CTR {rec['cardiothoracic_ratio']} -> {out_dir / (stem + '.json')}"

    return run_each(paths, out_dir, model_dir, one)


def add_segment_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``cxr segment`` on the ``cxr`` command's subparsers."""
    p = sub.add_parser("segment", help="segment lungs, heart and clavicles on DICOM / PNG / JPEG files",
                       description="Organ masks in each input's own pixel grid, areas, the cardiothoracic ratio and "
                                   "an overlay, with the UNet of the unet stage (models/unet).")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="DICOM (.dcm), PNG or JPEG files")
    p.add_argument("--model", default=Path("models/unet"), type=Path, help="UNet model dir (default: models/unet)")
    p.add_argument("-o", "--out", type=Path, default=Path("segmentations"), help="output folder (default: ./segmentations)")
    p.add_argument("--params", type=Path, default=None,
                   help="params.yaml whose convert section overrides the decoding settings the model card records")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where the model runs (default: auto = a GPU when there is one)")
    p.set_defaults(func=_cmd_segment)
    return p


def _cmd_segment(args: argparse.Namespace) -> int:
    try:
        return run(args.images, args.model, args.out, params=args.params, device=args.device)
    except SegmentError as exc:
        log.error("%s", exc)
        return 2
