"""``cxr predict``: a trained model on new DICOM / PNG / JPEG files, outside the pipeline.

Every input goes through the pipeline's own code, so a file gives the model exactly what the
same file would have given it inside ``dvc repro``:

1. decode + fit: :func:`cxr.convert.convert_file` (the ``convert`` stage's DICOM / raster decoder
   with modality rescale, VOI LUT / window, MONOCHROME1 inversion, draft decoding, area resize,
   pad or crop, 8 / 16-bit quantisation) with the convert settings the model card records
   (``card["convert"]``, written by the train stage), so a model dir works on a machine without
   its training ``params.yaml``; ``--params`` overrides them, with a warning naming each setting
   that differs from the card's (:func:`cxr.convert.options_for_model`).
2. model input: the PNG bytes the stage would have written (kept in memory) are read by the
   training cache's loader :func:`cxr.data.load_png_square` (centred square pad, bilinear resize
   to the card's input size) and normalised with the card's constants (:func:`cxr.data.normalise`).
   Anatomy models (input kind ``region_features``) instead run the region detector
   (``--detector``, default ``models/detector`` beside the model dir) and, when their card says the
   features were a classifier's map pooled in the boxes, that classifier (``--backbone``, default
   ``models/backbone``) through :func:`cxr.anatomy.features.image_region_features` with
   ``features.score_thresh``.
3. outputs per image ``<out>/<stem>.json``: per-class probabilities, the card's validation
   thresholds (``thresholds``, Youden's J on the validation split), the positive classes
   (probability >= threshold), for CNN models a heatmap figure per positive class
   (:func:`cxr.localize.cam.heatmaps`, ``--method``; the overlay captioned with class, probability,
   threshold and a colour bar); a map that shows nothing (all zero, constant, non-finite) is not
   drawn but listed in ``skipped_heatmaps`` with its reason and counted in ``summary.json``. For
   anatomy models per-region finding probabilities and a region overlay PNG; with ``--similar K``
   the K nearest cases of the retrieval index (``--index``, default
   ``data/processed/retrieval/<model name>``) and a contact sheet of their thumbnails (``--images``).
4. the card's ``data_source`` (written by the train stage) is repeated in the outputs; a model
   trained on synthetic data is said so on the console and in every figure.

Errors: a bad model dir, params file or index stops everything (:class:`PredictError`, exit 2);
a bad input file (:class:`InputError`: unreadable, corrupt, not an image, not a chest
radiograph) is reported with its path, the other files are still processed, and the exit code
is 1. ``<out>/summary.json`` lists what succeeded and what failed.

The outputs hold no timestamps or timings: the same files, model and params give the same JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Literal, Sequence, get_args

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cxr import shards
from cxr.io import sha256_file, write_bytes, write_json
from cxr.params import ConvertParams, FeaturesParams, LocalizeParams, ParamsError, load_section
from cxr.errors import CxrError

# "lazy: torch stack" below: torch and the cxr modules built on it are imported where they are used, so that
# `cxr --help`, `cxr synth` and `cxr label` (which import this module for its parser) do not load them.
if TYPE_CHECKING:
    import torch

log = logging.getLogger("cxr.predict")

#: heatmap blending weight over the radiograph
ALPHA = 0.45
DEFAULT_INDEX_ROOT = Path("data/processed/retrieval")
#: where the index's ``png_path`` values live (the convert stage's output), for the neighbours' thumbnails
DEFAULT_IMAGES = Path("data/interim/images")
#: the heatmap methods of :mod:`cxr.localize.cam`, from the localize params' vocabulary (no torch import for the parser)
HEATMAP_METHODS: tuple[str, ...] = get_args(LocalizeParams.model_fields["method"].annotation)
#: why a heatmap is not written: code -> explanation (a map that shows nothing is no result)
HEATMAP_PROBLEMS = {
    "non_finite": "non-finite values (NaN / inf) in the map",
    "all_zero": "all zero: the method found no positive evidence for this class",
    "constant": "constant: the map localises nothing",
}
#: side of one tile of the --similar contact sheet (px)
TILE = 160


class PredictError(CxrError, RuntimeError):
    """Nothing can be predicted: bad model dir, params, detector or retrieval index (message names it)."""


class InputError(CxrError, RuntimeError):
    """One input file cannot be used (unreadable, corrupt, not an image, not a chest radiograph)."""


@dataclass
class Prepared:
    """One input after the convert stage's decoding, ready for the model.

    Attributes:
        png: the converted image as the stage's PNG decodes (``[H, W]``, uint8 or 16-bit ints).
        geo: ``scale``, ``offset_x``, ``offset_y``: original pixels -> ``png`` pixels.
        meta: decoder header facts (rows, cols, bits, photometric, ...; nothing identifying is used).
        model_input: uint8 ``[S, S]`` for image models, else None.
        regions: region features of :func:`cxr.anatomy.features.image_region_features` (anatomy models).
    """

    source: Path
    png: np.ndarray
    geo: dict[str, Any]
    meta: dict[str, Any]
    model_input: np.ndarray | None = None
    regions: dict[str, np.ndarray] | None = None


@dataclass
class Prediction:
    """The model's answer for one input (JSON-ready record + the arrays behind the figures)."""

    record: dict[str, Any]
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)  # class -> [S, S] in [0, 1]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "class"


def _num(v: Any, nd: int = 6) -> float | None:
    """A finite float rounded for the JSON, else None."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return round(f, nd) if math.isfinite(f) else None


class _CardPart(BaseModel):
    # Unknown fields are kept: newer cards may carry more (e.g. the convert settings), and an older
    # reader must still load them. Strict: a JSON `true` is not a size, a string is not a mapping.
    model_config = ConfigDict(extra="allow", strict=True)


class CardNormalisation(_CardPart):
    """``(x / scale - mean) / std`` of :func:`cxr.data.normalise`."""

    scale: float = Field(gt=0)
    mean: float
    std: float = Field(gt=0)


class CardImageInput(_CardPart):
    """Image models: a square uint8 image of ``size`` px."""

    kind: Literal["image"]
    size: int = Field(ge=8, le=8192)
    channels: int = Field(1, ge=1, le=4)
    dtype: str = "uint8"
    normalisation: CardNormalisation | None = None


class CardRegionInput(_CardPart):
    """Anatomy models: ``num_regions`` x ``feature_dim`` region features from the region detector."""

    kind: Literal["region_features"]
    num_regions: int = Field(ge=1)
    feature_dim: int = Field(ge=1)


class ModelCardSchema(_CardPart):
    """What ``cxr predict`` needs from a classifier's ``card.json`` (written by :func:`cxr.train.train_model`)."""

    architecture: str = Field(min_length=1)
    model_kwargs: dict[str, Any]
    label_names: list[str] = Field(min_length=1)
    input: Annotated[CardImageInput | CardRegionInput, Field(discriminator="kind")]
    thresholds: dict[str, float | None]
    threshold_rule: str | None = None


def _card_errors(err: ValidationError) -> str:
    """One line per bad field: dotted name, the value found, what is expected."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if not (isinstance(p, str) and p in ("image", "region_features"))]
        key = ".".join(loc) or "(card)"
        value = repr(e.get("input"))
        value = value if len(value) <= 60 else value[:57] + "..."
        lines.append(f"field {key} = {value}: {e['msg']}")
    return "; ".join(lines)


def read_model_card(model_dir: str | Path) -> dict[str, Any]:
    """The card of a classifier model dir, checked for what prediction needs.

    Raises:
        PredictError: missing dir / card / weights, unreadable card, or a card without
            ``architecture``, ``label_names``, ``input`` or ``thresholds``.
    """
    from cxr.modeldir import CARD, WEIGHTS  # lazy: torch stack

    d = Path(model_dir)
    if not d.is_dir():
        raise PredictError(f"model dir {d} does not exist (expected a train@M output such as models/densenet121)")
    if not (d / CARD).is_file():
        raise PredictError(f"{d}: no model card {CARD}; a model dir needs {WEIGHTS} + {CARD} (run the train stage)")
    if not (d / WEIGHTS).is_file():
        raise PredictError(f"{d}: no weights {WEIGHTS} beside {CARD} (run the train stage)")
    try:
        card = json.loads((d / CARD).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PredictError(f"{d / CARD}: unreadable model card ({type(exc).__name__}: {exc})") from None
    if not isinstance(card, dict):
        raise PredictError(f"{d / CARD}: a model card is a JSON object, got {type(card).__name__}")
    missing = [k for k in ("architecture", "label_names", "input", "thresholds", "model_kwargs") if k not in card]
    if missing:
        raise PredictError(f"{d / CARD}: model card lacks {missing}; is this a classifier trained by the train stage?")
    kind = card["input"].get("kind") if isinstance(card["input"], dict) else None
    if isinstance(card["input"], dict) and kind not in ("image", "region_features"):
        raise PredictError(f"{d / CARD}: input kind {kind!r} is not supported (image | region_features)")
    try:
        ModelCardSchema.model_validate(card)
    except ValidationError as err:
        raise PredictError(f"{d / CARD}: invalid model card: {_card_errors(err)}") from None
    return card


class Predictor:
    """A loaded model (and, for anatomy models, the region detector) ready to predict files.

    Args:
        model_dir: a train@M output (``model.pt`` + ``card.json``).
        convert: the ``convert`` params used to decode inputs (as the pipeline did).
        features: the ``features`` params (``score_thresh``) for anatomy models.
        detector_dir: region detector for anatomy models; default ``<model_dir>/../detector``.
        backbone_dir: for anatomy models whose features were a classifier's map pooled in the boxes (card
            ``input.extractor.kind == "backbone"``): that classifier; default ``<model_dir>/../backbone``.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``mps``.
        method: CAM method passed to :func:`cxr.localize.cam.heatmaps` (CNN models).

    Raises:
        PredictError: see :func:`read_model_card`; weights that do not fit the card; an anatomy
            model without a usable detector.
    """

    def __init__(self, model_dir: str | Path, *, convert: ConvertParams | None = None,
                 features: FeaturesParams | None = None, detector_dir: str | Path | None = None,
                 device: str = "auto", method: str = "gradcam", params: str | Path | None = None,
                 backbone_dir: str | Path | None = None):
        from cxr.anatomy.common import AnatomyError, pick_device  # lazy: torch stack
        from cxr.convert import Options, options_for_model  # lazy: torch stack
        from cxr.models.zoo import load_classifier  # lazy: torch stack

        self.model_dir = Path(model_dir)
        self.card = read_model_card(self.model_dir)
        try:
            self.device = pick_device(device)
        except AnatomyError as exc:
            raise PredictError(str(exc)) from None
        try:
            self.model, _ = load_classifier(self.model_dir)
        except Exception as exc:  # unknown architecture, state_dict that does not fit the card
            raise PredictError(f"{self.model_dir}: cannot rebuild the model from its card and weights "
                               f"({type(exc).__name__}: {exc})") from None
        self.model.to(self.device).eval()
        self.names = list(self.card["label_names"])
        self.kind = self.card["input"]["kind"]
        src = self.card.get("data_source")
        self.data_source: dict[str, Any] | None = src if isinstance(src, dict) else None
        if convert is not None:
            self.options = Options.from_params(convert)
        else:
            try:
                self.options = options_for_model(self.card, params, where=str(self.model_dir))
            except ValueError as exc:
                raise PredictError(str(exc)) from None
        self.features = features or FeaturesParams()
        self.method = method
        self.detector = self.detector_card = None
        self.detector_dir: Path | None = None
        self.backbone: tuple[Any, dict[str, Any]] | None = None
        if self.kind == "region_features":
            if self.features.boxes == "gt":
                log.warning("features.boxes is 'gt' (scene-graph boxes) in the params, but a new image has no scene "
                            "graph: its regions come from the detector, unlike the features the model was trained on")
            self._load_detector(detector_dir)
            if (self.card["input"].get("extractor") or {}).get("kind") == "backbone":
                self._load_backbone(backbone_dir)

    @property
    def synthetic(self) -> bool:
        """The card says the model was trained on a synthetic cohort (``data_source.kind``)."""
        return (self.data_source or {}).get("kind") == "synthetic"

    def data_note(self) -> str | None:
        """The console / caption note on the training data: synthetic, or not recorded (older cards)."""
        if self.synthetic:
            return (f"model trained on synthetic data ({self.data_source.get('source', 'synthetic')}): "
                    "its outputs mean nothing clinically")
        if self.data_source is None:
            return "the model card does not record its training data (trained before cards did): check its origin"
        return None

    # ------------------------------------------------------------------ loading

    def _load_detector(self, detector_dir: str | Path | None) -> None:
        from cxr.anatomy.common import AnatomyError  # lazy: torch stack
        from cxr.models.detector import load_detector  # lazy: torch stack
        from cxr.modeldir import CARD, WEIGHTS, is_model_dir  # lazy: torch stack

        d = Path(detector_dir) if detector_dir is not None else self.model_dir.parent / "detector"
        arch = self.card["architecture"]
        if not is_model_dir(d):
            raise PredictError(
                f"{self.model_dir}: {arch} is an anatomy model and needs region features from the region detector, "
                f"but {d} is not a detector model dir ({WEIGHTS} + {CARD}); pass --detector DIR (the detector stage's "
                f"models/detector)")
        try:
            self.detector, self.detector_card = load_detector(d)
        except (AnatomyError, RuntimeError, KeyError) as exc:
            raise PredictError(f"{d}: cannot load the region detector ({type(exc).__name__}: {exc})") from None
        regions = len(self.detector_card["regions"])
        dim = self.detector.roi_heads.box_head.fc7.out_features
        want = (int(self.card["input"]["num_regions"]), int(self.card["input"]["feature_dim"]))
        # box-head features: the detector gives the feature dim too; a backbone's is checked by its digest
        head = (self.card["input"].get("extractor") or {}).get("kind", "detector") == "detector"
        got = (regions, dim if head else want[1])
        if got != want:
            raise PredictError(f"{d}: detector gives {regions} regions{f' x {dim}-d features' if head else ''}, but "
                               f"{self.model_dir} was trained on {want[0]} x {want[1]}; use the detector its features "
                               "came from")
        self.detector.to(self.device)
        self.detector_dir = d

    def _load_backbone(self, backbone_dir: str | Path | None) -> None:
        from cxr.anatomy.common import AnatomyError  # lazy: torch stack
        from cxr.anatomy.features import load_backbone  # lazy: torch stack

        want = self.card["input"]["extractor"]
        d = Path(backbone_dir) if backbone_dir is not None else self.model_dir.parent / "backbone"
        arch = self.card["architecture"]
        if not (d / "model.pt").is_file():
            raise PredictError(f"{self.model_dir}: {arch} was trained on {want.get('architecture')} features pooled "
                               f"in the region boxes, but {d} holds no model; pass --backbone DIR (the backbone "
                               "stage's models/backbone)")
        if sha256_file(d / "model.pt") != want.get("weights_sha256"):
            raise PredictError(f"{d}: not the backbone {self.model_dir} was trained with (weights digest differs "
                               f"from its card's {str(want.get('weights_sha256'))[:12]}...); pass the backbone stage's "
                               "model dir of the same run")
        try:
            model, card = load_backbone(d)
        except AnatomyError as exc:
            raise PredictError(str(exc)) from None
        self.backbone = (model.to(self.device), card)

    # ------------------------------------------------------------------ one file

    def prepare(self, path: str | Path) -> Prepared:
        """Decode ``path`` like the convert stage and build the model input.

        Raises:
            InputError: the file is missing, unreadable, corrupt, not an image or not a chest radiograph.
        """
        from cxr.data import load_png_square, png_square  # lazy: torch stack

        path = Path(path)
        arr, geo, meta = decode_input(path, self.options)
        # The stage's PNG, in memory: the loaders below then see exactly what they see in the pipeline
        # (the compression level does not change pixels; 0 is the fastest).
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG", compress_level=0)
        with Image.open(io.BytesIO(buf.getvalue())) as im:
            png = np.asarray(im)
        prep = Prepared(source=path, png=png, geo=geo, meta=meta)
        if self.kind == "image":
            prep.model_input = load_png_square(io.BytesIO(buf.getvalue()), int(self.card["input"]["size"]))
        else:
            from cxr.anatomy.common import gray_float  # lazy: torch stack
            from cxr.anatomy.features import image_region_features  # lazy: torch stack

            square = png_square(png, int(self.backbone[1]["input"]["size"])) if self.backbone is not None else None
            prep.regions = image_region_features(self.detector, self.detector_card, gray_float(png),
                                                 self.features.score_thresh, self.device, backbone=self.backbone,
                                                 square=square,
                                                 levels=int(self.card["input"]["extractor"].get("levels", 1))
                                                 if self.backbone is not None else 1)
        return prep

    def raw_inputs(self, prep: Prepared) -> dict[str, torch.Tensor]:
        """One prepared file as a batch of one, as the datasets give it (uint8 image or region features; CPU)."""
        import torch  # lazy: torch stack

        if self.kind == "image":
            return {"image": torch.from_numpy(np.array(prep.model_input, dtype=np.uint8)).unsqueeze(0).unsqueeze(0)}
        from cxr.data import region_inputs  # lazy: torch stack

        r = prep.regions
        return {k: v.unsqueeze(0) for k, v in region_inputs(r["features"], r["mask"], r["boxes"]).items()}

    def inputs(self, prep: Prepared) -> dict[str, torch.Tensor]:
        """The model's keyword inputs for one prepared file: :meth:`raw_inputs` normalised as the engine does, on the device."""
        from cxr.inference import model_inputs  # lazy: torch stack

        return model_inputs(self.model, self.raw_inputs(prep), self.card["input"].get("normalisation"), self.device)

    def predict(self, prep: Prepared, heatmaps: bool = True) -> Prediction:
        """Probabilities, thresholds, positives (+ heatmaps or region scores) for one prepared file."""
        import torch  # lazy: torch stack

        x = self.inputs(prep)
        node = None
        with torch.inference_mode():
            if self.kind == "region_features" and hasattr(self.model, "forward_all"):
                logits, node_logits = self.model.forward_all(**x)
                node = torch.sigmoid(node_logits.float())[0].cpu().numpy()
            else:
                logits = self.model(**x)
            probs = torch.sigmoid(logits.float())[0].cpu().numpy()
        raw = {n: _num(self.card["thresholds"].get(n), 17) for n in self.names}  # compare unrounded, report rounded
        positive = [n for n, p in zip(self.names, probs) if raw[n] is not None and p >= raw[n]]
        thresholds = {n: None if t is None else round(t, 6) for n, t in raw.items()}
        rec: dict[str, Any] = {
            "input": str(prep.source),
            "model": {"dir": str(self.model_dir), "architecture": self.card["architecture"],
                      "data_source": self.data_source},
            "label_names": self.names,
            "probabilities": {n: _num(p) for n, p in zip(self.names, probs)},
            "thresholds": thresholds,
            "threshold_rule": self.card.get("threshold_rule", "from the model card"),
            "positive": positive,
            "image": self._image_facts(prep),
        }
        out = Prediction(record=rec)
        if self.kind == "image" and heatmaps and positive:
            out.heatmaps = self._heatmaps(x["image"], positive)
            rec["heatmap_method"] = self.method
        if self.kind == "region_features":
            rec["regions"] = self._regions(prep, node)
        return out

    def _heatmaps(self, image: torch.Tensor, classes: Sequence[str]) -> dict[str, np.ndarray]:
        from cxr.localize.cam import CamError, heatmaps  # lazy: torch stack

        idx = [self.names.index(c) for c in classes]
        try:
            maps = np.asarray(heatmaps(self.model, image, idx, method=self.method))
        except CamError as exc:  # a property of the model, not of this file
            raise PredictError(f"{self.model_dir}: no {self.method} heatmaps ({exc}); pass --no-heatmaps or "
                               "another --method") from None
        return {c: np.asarray(maps[0, k], dtype=np.float32) for k, c in enumerate(classes)}

    def _image_facts(self, prep: Prepared) -> dict[str, Any]:
        m = prep.meta
        return {
            "rows": int(m["rows"]), "cols": int(m["cols"]), "bits": m.get("bits"), "photometric": m.get("photometric"),
            "transfer_syntax": m.get("transfer_syntax"), "view": m.get("view"),
            "pixel_spacing": _num(m.get("pixel_spacing")),
            "converted": {"rows": int(prep.png.shape[0]), "cols": int(prep.png.shape[1]),
                          "scale": _num(prep.geo["scale"], 9), "offset_x": int(prep.geo["offset_x"]),
                          "offset_y": int(prep.geo["offset_y"])},
            "model_input_size": int(self.card["input"]["size"]) if self.kind == "image" else None,
        }

    def _regions(self, prep: Prepared, node: np.ndarray | None) -> dict[str, Any]:
        r = prep.regions
        names = list(self.detector_card["regions"])
        findings = list(self.detector_card["findings"])
        s, ox, oy = prep.geo["scale"], prep.geo["offset_x"], prep.geo["offset_y"]
        out: dict[str, Any] = {}
        for k, name in enumerate(names):
            present = bool(r["mask"][k])
            entry: dict[str, Any] = {"present": present, "detector_score": _num(r["scores"][k]) if present else None}
            if present:
                b = r["boxes"][k]
                entry["box_png"] = [_num(v, 2) for v in b]
                # converted-PNG pixels back to the original file's pixels
                entry["box_original"] = [_num((b[0] - ox) / s, 2), _num((b[1] - oy) / s, 2),
                                         _num((b[2] - ox) / s, 2), _num((b[3] - oy) / s, 2)]
                if node is not None and node.shape[-1] == len(findings):
                    entry["findings"] = {f: _num(p) for f, p in zip(findings, node[k])}
            out[name] = entry
        return out


# ---------------------------------------------------------------------------- figures


def _colormap(x: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8, a jet-like map (blue -> cyan -> yellow -> red)."""
    x = np.clip(x, 0, 1)
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def _base_rgb(png: np.ndarray) -> np.ndarray:
    g = png.astype(np.float32) / (65535.0 if png.dtype != np.uint8 and png.max() > 255 else 255.0)
    return np.repeat((np.clip(g, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)


def overlay_heatmap(png: np.ndarray, heat: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Blend a model-input heatmap ``[S, S]`` over the converted image ``[H, W]`` (RGB uint8 out).

    The model input is the converted image padded (centred) to a square and resized
    (:func:`cxr.data.load_png_square`); the heatmap is mapped back through the same geometry.
    """
    h, w = png.shape[:2]
    side = max(h, w)
    big = np.asarray(Image.fromarray(np.asarray(heat, np.float32)).resize((side, side), Image.Resampling.BILINEAR))
    top, left = (side - h) // 2, (side - w) // 2
    big = big[top:top + h, left:left + w]
    base = _base_rgb(png).astype(np.float32)
    out = (1 - alpha * big[..., None]) * base + alpha * big[..., None] * _colormap(big).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def overlay_regions(png: np.ndarray, regions: dict[str, Any]) -> np.ndarray:
    """Draw the detected regions on the converted image, coloured by their highest finding probability."""
    im = Image.fromarray(_base_rgb(png))
    draw = ImageDraw.Draw(im)
    for name, r in regions.items():
        if not r["present"]:
            continue
        top = max((v for v in r.get("findings", {}).values() if v is not None), default=0.0)
        colour = tuple(int(c) for c in _colormap(np.array([top]))[0])
        draw.rectangle([float(v) for v in r["box_png"]], outline=colour, width=max(1, png.shape[0] // 256))
    return np.asarray(im)


def heatmap_problem(heat: np.ndarray) -> str | None:
    """Why ``heat`` is no result (a key of :data:`HEATMAP_PROBLEMS`), or None for a map worth showing.

    The CAM family min-max normalises each map and keeps positive evidence only, so a class the
    method cannot localise comes back all zero (or constant); a numerical failure gives NaN.
    """
    h = np.asarray(heat, dtype=np.float64)
    if h.size == 0 or not np.isfinite(h).all():
        return "non_finite"
    if not np.any(h > 0):
        return "all_zero"
    if float(h.max() - h.min()) <= 1e-6 * float(np.abs(h).max()):
        return "constant"
    return None


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: the same pixels on every machine


def _wrap(text: str, font: Any, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` px (at spaces; a longer token is cut between characters)."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    fits = lambda t: measure.textlength(t, font=font) <= width  # noqa: E731
    lines: list[str] = []
    cur = ""
    for word in text.split():
        while len(word) > 1 and not fits(word):  # e.g. a 44-character DICOM UID
            cut = 1
            while cut < len(word) and fits(word[:cut + 1]):
                cut += 1
            if cur:
                lines.append(cur)
                cur = ""
            lines.append(word[:cut])
            word = word[cut:]
        trial = f"{cur} {word}".strip()
        if cur and not fits(trial):
            lines.append(cur)
            cur = word
        else:
            cur = trial
    return lines + ([cur] if cur else [])


def _text_block(width: int, lines: Sequence[str], size: int) -> Image.Image:
    """White text on black, ``width`` px wide, the lines wrapped to fit."""
    font, pad = _font(size), max(2, size // 3)
    wrapped = [w for line in lines for w in _wrap(line, font, width - 2 * pad)]
    step = size + max(2, size // 4)
    im = Image.new("RGB", (width, 2 * pad + step * len(wrapped)), (0, 0, 0))
    draw = ImageDraw.Draw(im)
    for i, line in enumerate(wrapped):
        draw.text((pad, pad + i * step), line, font=font, fill=(255, 255, 255))
    return im


def _colour_bar(width: int, size: int) -> Image.Image:
    """The overlay's colour map from 0 (no evidence) to 1 (this map's maximum), with ticks."""
    pad, bar_h = max(4, size // 2), max(6, size)
    inner = max(2, width - 2 * pad)
    im = Image.new("RGB", (width, pad + bar_h + size + pad), (0, 0, 0))
    ramp = np.repeat(_colormap(np.linspace(0.0, 1.0, inner))[None], bar_h, axis=0)
    im.paste(Image.fromarray(ramp), (pad, pad))
    draw, font = ImageDraw.Draw(im), _font(size)
    for v in (0.0, 0.5, 1.0):
        text = f"{v:g}"
        x = pad + v * (inner - 1) - draw.textlength(text, font=font) * v
        draw.text((x, pad + bar_h + 1), text, font=font, fill=(255, 255, 255))
    return im


def _stack(parts: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
    ims = [p if isinstance(p, Image.Image) else Image.fromarray(p) for p in parts]
    out = Image.new("RGB", (max(i.width for i in ims), sum(i.height for i in ims)), (0, 0, 0))
    y = 0
    for i in ims:
        out.paste(i, (0, y))
        y += i.height
    return np.asarray(out)


def _fmt(v: float | None) -> str:
    return "none" if v is None else f"{v:.3f}"


def heatmap_caption(label: str, probability: float | None, threshold: float | None, rule: str, method: str,
                    note: str | None = None) -> list[str]:
    """The caption lines of a heatmap figure: class, probability beside the validation threshold and the
    rule that chose it, the method and what the colours mean; ``note`` adds a line (synthetic data)."""
    if threshold is None or probability is None:
        verdict = f"p = {_fmt(probability)}, no validation threshold"
    else:
        verdict = f"p = {probability:.3f} {'>=' if probability >= threshold else '<'} threshold {threshold:.3f} ({rule})"
    lines = [f"{label}: {verdict}", f"{method} heatmap: colour = evidence relative to this map's maximum"]
    return lines + ([note] if note else [])


def heatmap_figure(png: np.ndarray, heat: np.ndarray, *, label: str, probability: float | None,
                   threshold: float | None, rule: str, method: str, note: str | None = None) -> np.ndarray:
    """The overlay of :func:`overlay_heatmap` (top, pixel for pixel) above the :func:`heatmap_caption`
    and a colour bar of the overlay's colour map (0 .. 1)."""
    top = overlay_heatmap(png, heat)
    width = top.shape[1]
    size = max(10, min(24, width // 32))
    lines = heatmap_caption(label, probability, threshold, rule, method, note)
    return _stack([top, _text_block(width, lines, size), _colour_bar(width, size)])


def _tile(png: np.ndarray | None) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE), (40, 40, 40))
    if png is None:
        ImageDraw.Draw(tile).text((8, TILE // 2 - 6), "image not found", font=_font(12), fill=(255, 255, 255))
        return tile
    im = Image.fromarray(_base_rgb(png))
    scale = TILE / max(im.width, im.height)  # fit the tile, up or down
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    tile.paste(im, ((TILE - im.width) // 2, (TILE - im.height) // 2))
    return tile


def similar_sheet(query_png: np.ndarray, query_name: str, hits: Sequence[dict[str, Any]], images_dir: Path,
                  metric: str, note: str | None = None) -> tuple[np.ndarray, int]:
    """A contact sheet: the query, then each neighbour's thumbnail with its rank, score, image and patient id.

    Args:
        hits: :meth:`Similar.query` records (``png_path`` relative to ``images_dir``).
        metric: what ``score`` is, e.g. ``cosine similarity`` or ``hamming distance``.

    Returns:
        the sheet (RGB uint8) and the number of neighbours whose image was not found.
    """
    cells = [(_tile(query_png), ["query", query_name])]
    missing = 0
    for h in hits:
        img = None
        if h.get("png_path"):
            try:
                with Image.open(images_dir / h["png_path"]) as im:
                    img = np.asarray(im if im.mode in ("L", "I;16") else im.convert("L"))
            except (OSError, ValueError):
                img = None
        missing += img is None
        where = f"patient {h['patient_id']}" + (f", {h['split']}" if h.get("split") else "")
        cells.append((_tile(img), [f"#{h['rank']} {metric} {_fmt(h.get('score'))}", f"image {h['image_id']}", where]))
    blocks = [_text_block(TILE, lines, 11) for _, lines in cells]
    cap_h = max(b.height for b in blocks)
    cols = min(len(cells), 4)
    rows = -(-len(cells) // cols)
    gap = 4
    sheet = Image.new("RGB", (cols * (TILE + gap) - gap, rows * (TILE + cap_h + gap) - gap), (0, 0, 0))
    for i, ((tile, _), block) in enumerate(zip(cells, blocks)):
        x, y = (i % cols) * (TILE + gap), (i // cols) * (TILE + cap_h + gap)
        sheet.paste(tile, (x, y))
        sheet.paste(block, (x, y + TILE))
    parts: list[Image.Image | np.ndarray] = [sheet]
    if note:
        parts.append(_text_block(sheet.width, [note], 11))
    return _stack(parts), missing


def png_bytes(rgb: np.ndarray) -> bytes:
    """An image array (grey or RGB, uint8) as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


# ---------------------------------------------------------------------------- retrieval


class Similar:
    """The retrieval index of a model and the query side (embedding of a prepared input)."""

    def __init__(self, predictor: Predictor, index_dir: str | Path, images_dir: str | Path | None = DEFAULT_IMAGES):
        try:
            from cxr.retrieve import SearchIndex  # lazy: torch stack
        except ImportError as exc:
            raise PredictError(f"--similar needs cxr.retrieve ({exc})") from None
        self.dir = Path(index_dir)
        if not self.dir.is_dir():
            raise PredictError(f"retrieval index {self.dir} not found (run the retrieve stage for this model, "
                               "or pass --index DIR)")
        try:
            self.index = SearchIndex.load(self.dir)
        except Exception as exc:
            raise PredictError(f"{self.dir}: cannot load the retrieval index ({type(exc).__name__}: {exc})") from None
        self.predictor = predictor
        self.metric = {"inner_product": "cosine similarity", "hamming": "hamming distance"}.get(
            str(self.index.meta.get("metric")), "score")
        self.images_dir = None if images_dir is None else Path(images_dir)
        if self.images_dir is not None and not self.images_dir.is_dir():
            log.warning("--images %s is not a folder: the neighbours are listed without thumbnails (pass --images, "
                        "the convert stage's data/interim/images the index was built from)", self.images_dir)
            self.images_dir = None

    def query(self, prep: Prepared, k: int) -> list[dict[str, Any]]:
        """The ``k`` nearest indexed cases of one prepared file: rank, image_id, patient_id, split, score, labels.

        Labels are the index's stored values (1 / 0 / -1 uncertain / None not mentioned).
        """
        from cxr.retrieve import RetrievalError, embed  # lazy: torch stack

        p = self.predictor
        try:
            q = embed(p.model, p.raw_inputs(prep), norm=p.card["input"].get("normalisation"), device=p.device)
            table = self.index.results(q.numpy(), k)
        except RetrievalError as exc:  # wrong index for this model (dimension), model without embed()
            raise PredictError(f"{self.dir}: {exc}") from None
        out = []
        for h in table.to_dict("records"):
            out.append({
                "rank": int(h["rank"]), "image_id": str(h["image_id"]), "patient_id": str(h["patient_id"]),
                "split": None if h.get("split") is None else str(h["split"]), "score": _num(h["score"]),
                "png_path": None if h.get("png_path") is None else str(h["png_path"]),
                "labels": {n: _num(h[n]) for n in self.index.label_names if n in h},
            })
        return out


# ---------------------------------------------------------------------------- driver


def stems(paths: Sequence[Path]) -> list[str]:
    """Output name per input: its stem, made unique within one call (``a``, ``a-2``, ...)."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", p.stem) or "image"
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return out


def expand_shards(paths: Sequence[str | Path]) -> list[Path]:
    """Inputs with every shard folder (``convert.storage: shards``) replaced by the paths of its members,
    in the folder's order; a member is then read by its index (:func:`cxr.shards.read_bytes`)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and shards.is_shard_folder(p):
            out += [p / name for name in shards.ShardReader(p).names()]
        else:
            out.append(p)
    return out


def decode_input(path: Path, options: Any) -> tuple[np.ndarray, dict, dict]:
    """One input file through the convert stage's decoder (:func:`cxr.convert.convert_file`).

    Raises:
        InputError: a directory, or a file that is unreadable, corrupt, not an image or not a chest radiograph.
    """
    from cxr.convert import convert_file  # lazy: torch stack
    from cxr.dicom import DecodeError, NotRadiograph  # lazy: torch stack

    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image file")
    if not path.is_file() and shards.locate(path) is not None:  # a member of a shard folder (convert.storage: shards)
        try:
            data = shards.read_bytes(path)
        except (FileNotFoundError, shards.ShardError) as exc:
            raise InputError(str(exc)) from None
        with tempfile.TemporaryDirectory(prefix="cxr-predict-") as tmp:  # the decoder dispatches on a file's suffix
            member = Path(tmp) / f"member{path.suffix}"
            member.write_bytes(data)
            return decode_input(member, options)
    try:
        return convert_file(path, options)
    except NotRadiograph as exc:
        raise InputError(f"{path}: not a chest radiograph ({exc})") from None
    except DecodeError as exc:
        raise InputError(f"{path}: {exc}") from None
    except Exception as exc:  # a decoder bug on one file must not stop the others (as in the stage)
        raise InputError(f"{path}: internal decoding error ({type(exc).__name__}: {exc})") from None


def run_each(paths: Sequence[str | Path], out_dir: str | Path, model_dir: str | Path,
             one: Callable[[Path, str], str], notes: dict[str, Any] | None = None) -> int:
    """Run ``one(path, stem)`` on every input (it writes ``<out>/<stem>...`` and returns a log line);
    an :class:`InputError` is logged and listed, the others go on. Writes ``<out>/summary.json``
    (with ``notes``, which ``one`` may fill while it runs).

    Returns:
        0 when every file succeeded, 1 when some failed.
    """
    out_dir = Path(out_dir)
    paths = [Path(p) for p in paths]
    ok: dict[str, str] = {}
    failed: dict[str, str] = {}
    for path, stem in zip(paths, stems(paths)):
        try:
            msg = one(path, stem)
        except InputError as exc:
            log.error("%s", exc)
            failed[str(path)] = str(exc)
            continue
        ok[str(path)] = f"{stem}.json"
        log.info("%s: %s", path, msg)
    write_json(out_dir / "summary.json", {"model": str(model_dir), "ok": ok, "failed": failed, **(notes or {})})
    if failed:
        log.error("%d of %d file(s) failed: %s", len(failed), len(paths), ", ".join(failed))
    return 1 if failed else 0


def predict_file(predictor: Predictor, path: str | Path, out_dir: str | Path, stem: str | None = None,
                 heatmaps: bool = True, similar: Similar | None = None, k: int = 0) -> dict[str, Any]:
    """Predict one file and write ``<out_dir>/<stem>.json`` (+ figures). Returns the record.

    Figures: ``<stem>.heatmap.<class>.png`` per positive class whose heatmap shows something (a map that
    is all zero, constant or non-finite is listed in ``skipped_heatmaps`` with its reason instead),
    ``<stem>.regions.png`` for anatomy models, ``<stem>.similar.png`` (the neighbours' thumbnails).

    Raises:
        InputError: the file cannot be used (nothing is written for it).
    """
    path, out_dir = Path(path), Path(out_dir)
    stem = stem or path.stem
    prep = predictor.prepare(path)
    pred = predictor.predict(prep, heatmaps=heatmaps)
    rec = pred.record
    note = predictor.data_note() if predictor.synthetic else None
    files: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for cls, heat in pred.heatmaps.items():
        problem = heatmap_problem(heat)
        if problem is not None:
            skipped[cls] = problem
            log.warning("%s: no heatmap written for %s (%s)", path, cls, HEATMAP_PROBLEMS[problem])
            continue
        name = f"{stem}.heatmap.{_slug(cls)}.png"
        fig = heatmap_figure(prep.png, heat, label=cls, probability=rec["probabilities"][cls],
                             threshold=rec["thresholds"][cls], rule=rec["threshold_rule"], method=predictor.method,
                             note=note)
        write_bytes(out_dir / name, png_bytes(fig))
        files[cls] = name
    if pred.heatmaps:
        rec["heatmaps"] = files
        rec["skipped_heatmaps"] = skipped
    if "regions" in rec:
        name = f"{stem}.regions.png"
        write_bytes(out_dir / name, png_bytes(overlay_regions(prep.png, rec["regions"])))
        rec["region_overlay"] = name
    if similar is not None and k > 0:
        rec["similar"] = similar.query(prep, k)
        rec["similar_metric"] = similar.metric
        rec["similar_sheet"] = None
        if similar.images_dir is not None:
            sheet, missing = similar_sheet(prep.png, path.name, rec["similar"], similar.images_dir, similar.metric,
                                           note=note)
            name = f"{stem}.similar.png"
            write_bytes(out_dir / name, png_bytes(sheet))
            rec["similar_sheet"] = name
            if missing:
                log.warning("%s: %d of %d neighbour image(s) not found under %s", path, missing, len(rec["similar"]),
                            similar.images_dir)
                rec["similar_missing_thumbnails"] = int(missing)
    write_json(out_dir / f"{stem}.json", rec)
    return rec


def run(paths: Sequence[str | Path], model_dir: str | Path, out_dir: str | Path, *, params: str | Path | None = None,
        similar: int = 0, index_dir: str | Path | None = None, method: str = "gradcam", device: str = "auto",
        detector_dir: str | Path | None = None, heatmaps: bool = True,
        images_dir: str | Path | None = DEFAULT_IMAGES, backbone_dir: str | Path | None = None) -> int:
    """Predict every file; return 0 when all succeeded, 1 when some failed (each one logged with its path).

    ``summary.json`` also counts the heatmaps written and those skipped per reason, and repeats the
    card's training data source (a model trained on synthetic data is said so on the console too).

    Raises:
        PredictError, ParamsError: nothing can be predicted (bad model dir, params, detector, index).
    """
    if similar < 0:
        raise PredictError(f"--similar must be >= 0, got {similar}")
    if heatmaps and method not in HEATMAP_METHODS:
        raise PredictError(f"--method {method!r} is not a heatmap method; choose one of {list(HEATMAP_METHODS)}")
    features = load_section("features", params) if params is not None else FeaturesParams()
    predictor = Predictor(model_dir, features=features, detector_dir=detector_dir, device=device,
                          method=method, params=params, backbone_dir=backbone_dir)
    note = predictor.data_note()
    if note is not None:
        log.warning("%s: %s", model_dir, note)
    search = None
    if similar:
        search = Similar(predictor, index_dir or DEFAULT_INDEX_ROOT / Path(model_dir).name, images_dir)
    out_dir = Path(out_dir)
    counts: dict[str, Any] = {"written": 0, "skipped": {}}
    notes: dict[str, Any] = {"data_source": predictor.data_source, "data_note": note}
    if heatmaps and predictor.kind == "image":
        notes["heatmaps"] = counts
    paths = expand_shards(paths)

    def one(path: Path, stem: str) -> str:
        rec = predict_file(predictor, path, out_dir, stem, heatmaps=heatmaps, similar=search, k=similar)
        counts["written"] += len(rec.get("heatmaps", {}))
        for problem in rec.get("skipped_heatmaps", {}).values():
            counts["skipped"][problem] = counts["skipped"].get(problem, 0) + 1
        return f"positive {rec['positive'] or 'none'} -> {out_dir / (stem + '.json')}"

    rc = run_each(paths, out_dir, model_dir, one, notes)
    if counts["skipped"]:
        log.warning("heatmaps: %d written, %d skipped (%s)", counts["written"], sum(counts["skipped"].values()),
                    ", ".join(f"{n} {HEATMAP_PROBLEMS[p].split(':')[0]}" for p, n in sorted(counts["skipped"].items())))
    return rc


def add_predict_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``cxr predict`` on the ``cxr`` command's subparsers."""
    p = sub.add_parser("predict", help="predict findings on DICOM / PNG / JPEG files with a trained model",
                       description="Per-class probabilities beside the model's validation thresholds, the positive "
                                   "classes, captioned heatmaps and similar cases for new images; <out>/summary.json "
                                   "lists what succeeded, what failed and why a heatmap was not written. Outputs of "
                                   "models trained on synthetic data mean nothing clinically (said on the console).")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="DICOM (.dcm), PNG or JPEG files; a converted-images shard folder "
                        "(convert.storage: shards) or a path inside it (<folder>/<png_path>) reads its members")
    p.add_argument("--model", required=True, type=Path, help="model dir (model.pt + card.json), e.g. models/densenet121")
    p.add_argument("-o", "--out", type=Path, default=Path("predictions"), help="output folder (default: ./predictions)")
    p.add_argument("--params", type=Path, default=None,
                   help="params.yaml whose convert section overrides the decoding settings the model card records "
                        "(and whose features section is used for anatomy models)")
    p.add_argument("--similar", type=int, default=0, metavar="K",
                   help="also list the K most similar indexed cases, with a contact sheet of their thumbnails")
    p.add_argument("--index", type=Path, default=None,
                   help="retrieval index dir (default: data/processed/retrieval/<model dir name>)")
    p.add_argument("--images", dest="images_dir", type=Path, default=DEFAULT_IMAGES, metavar="DIR",
                   help=f"folder of the indexed PNGs, for the --similar thumbnails (default: {DEFAULT_IMAGES})")
    p.add_argument("--method", default="gradcam", choices=HEATMAP_METHODS,
                   help="heatmap method of cxr.localize.cam (default: gradcam)")
    p.add_argument("--heatmaps", action=argparse.BooleanOptionalAction, default=True,
                   help="write a captioned heatmap overlay per positive class (CNN models)")
    p.add_argument("--detector", type=Path, default=None,
                   help="region detector for anatomy models (default: models/detector beside --model)")
    p.add_argument("--backbone", type=Path, default=None,
                   help="classifier whose map gave an anatomy model's region features (default: models/backbone "
                        "beside --model; checked against the digest its card records)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where the model runs (default: auto = a GPU when there is one)")
    p.set_defaults(func=_cmd_predict)
    return p


def _cmd_predict(args: argparse.Namespace) -> int:
    try:
        return run(args.images, args.model, args.out, params=args.params, similar=args.similar, index_dir=args.index,
                   method=args.method, device=args.device, detector_dir=args.detector, heatmaps=args.heatmaps,
                   images_dir=args.images_dir, backbone_dir=args.backbone)
    except (PredictError, ParamsError) as exc:
        log.error("%s", exc)
        return 2
