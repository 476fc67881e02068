"""Typed schema of ``params.yaml``.

One frozen pydantic model per section. Unknown keys and ill-typed values fail at load time with
a message naming the dotted key, the offending value and what is allowed, e.g.::

    params.yaml: ingest.synthetic.signal = -1.0: Input should be greater than or equal to 0 (allowed: a number >= 0)

Stages load their own section once (``load_section("ingest")``) and pass plain values on.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from cxr.errors import CxrError
from cxr.labelspace import LabelError, resolve_space

LABEL_SPACES = ("chexpert14", "chestxray14", "anaxnet9", "padchest22", "binary")
SYNTHETIC_PROFILES = ("default", "tiny")
DEVICES = ("auto", "cpu", "cuda", "mps")


def _device_alias(v: Any) -> Any:
    # one vocabulary in every section and verb; "gpu" (Lightning's word) is accepted as an alias of cuda
    return "cuda" if isinstance(v, str) and v.strip().lower() == "gpu" else v


Device = Annotated[Literal["auto", "cpu", "cuda", "mps"], BeforeValidator(_device_alias)]
_DEVICE_DOC = "auto = cuda when available, else mps, else cpu; gpu = cuda"

_SOURCE_SCHEMES = ("synthetic://<profile>", "gs://<bucket>/<prefix>", "file://<dir> or a plain directory path")


class ParamsError(CxrError, ValueError):
    """params.yaml is missing, malformed, or has a key/value the schema does not allow."""


class _Section(BaseModel):
    # strict: YAML already gives typed values, so `epochs: true` or `size: "512"` is a mistake to
    # report, not a value to coerce (lax mode read `true` as 1). Ints are still valid floats.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class BaseParams(_Section):
    """Shared by every stage."""

    seed: int = Field(42, ge=0, le=2**32 - 1, description="master random seed")
    label_space: Literal["chexpert14", "chestxray14", "anaxnet9", "padchest22", "binary"] | list[str] = Field(
        "chexpert14", description="label space the models are trained on: a named space or a list of label names"
    )

    @field_validator("label_space")
    @classmethod
    def _check_label_list(cls, v):
        if isinstance(v, list):
            try:
                resolve_space(v)
            except LabelError as exc:
                raise ValueError(str(exc)) from None
        return v


class SyntheticParams(_Section):
    """Knobs of the built-in synthetic cohort (used when ``ingest.source`` is ``synthetic://...``)."""

    signal: float = Field(1.0, ge=0, le=5, description="visibility of findings (contrast multiplier); 0 = a true null: "
                          "the pixels do not depend on the findings at all")
    view_confound: bool = Field(True, description="draw the view (AP / PA) jointly with the label pattern, as in "
                                "CheXpert (AP films carry more Edema, Support Devices, ...); false = view independent "
                                "of the findings (same AP share)")
    noise: float = Field(1.0, ge=0, le=5, description="quantum/electronic noise multiplier")
    broken_fraction: float = Field(0.02, ge=0, le=0.5, description="fraction of deliberately broken files")
    uncertain_positive_rate: float = Field(
        0.5, ge=0, le=1, description="probability that a CheXpert -1 label is truly present"
    )
    report_disagreement: float = Field(
        0.03, ge=0, le=0.5, description="fraction of studies whose report omits one true finding"
    )
    mask_fraction: float = Field(0.5, ge=0, le=1, description="fraction of frontal MIMIC-style images with organ masks")
    box_fraction: float = Field(0.6, ge=0, le=1, description="fraction of boxable frontal images with NIH-style boxes")
    workers: int = Field(0, ge=0, le=256, description="worker processes; 0 = one per CPU core")


class GcsParams(_Section):
    """Options of ``gs://bucket/prefix`` sources (credentials: application default credentials)."""

    anonymous: bool = Field(False, description="anonymous access (public buckets); otherwise ADC / GOOGLE_APPLICATION_CREDENTIALS")
    project: str | None = Field(None, description="billing project for requester-pays buckets; None = from credentials")
    workers: int = Field(8, ge=1, le=64, description="parallel downloads (threads)")
    retries: int = Field(5, ge=0, le=20, description="retries per file on transient errors")
    backoff: float = Field(0.5, ge=0, le=60, description="first retry delay in seconds (doubles each retry)")
    extract_zips: bool = Field(True, description="extract .zip blobs into a folder of the same name (safe extraction)")


class ArchiveParams(_Section):
    """Budgets of every extracted archive (``.zip`` blobs, see cxr.ingest.safe.extract_zip)."""

    max_bytes: int = Field(64 * 2**30, ge=1, description="refuse an archive whose members total more uncompressed bytes")
    max_ratio: float = Field(
        100.0, gt=1, description="refuse an archive expanding more than this many times its compressed size "
        "(when it totals more than 16 MiB; images compress 1-3x)"
    )
    max_members: int = Field(100_000, ge=1, description="refuse an archive with more files than this")


class LocalParams(_Section):
    """Options of local-directory sources."""

    mode: Literal["auto", "hardlink", "symlink", "copy"] = Field(
        "auto", description="how files enter data/raw: auto = hardlink when possible, else copy"
    )
    folders: dict[str, str] = Field(
        default_factory=dict,
        description="mirror only these subfolders, renamed: data/raw/<key> <- <source>/<value> (empty = the whole source)",
    )

    @field_validator("folders")
    @classmethod
    def _check_folders(cls, v: dict[str, str]) -> dict[str, str]:
        for name, sub in v.items():
            for part, what in ((name, "folder name"), (sub, "source subfolder")):
                p = Path(part)
                if not part.strip() or p.is_absolute() or ".." in p.parts or part.strip() in (".",):
                    raise ValueError(f"{what} {part!r} must be a relative path inside the source, without '..'")
            if len(Path(name).parts) != 1:
                raise ValueError(f"folder name {name!r} must be one path component (e.g. nih)")
        return v


class IngestParams(_Section):
    """Where the raw data come from."""

    source: str = Field("synthetic://default", description="synthetic://<profile> | gs://bucket/prefix | directory")
    synthetic: SyntheticParams = SyntheticParams()
    gcs: GcsParams = GcsParams()
    local: LocalParams = LocalParams()
    archive: ArchiveParams = ArchiveParams()

    @field_validator("source")
    @classmethod
    def _check_source(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError(f"empty source; use one of {', '.join(_SOURCE_SCHEMES)}")
        m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$", v)
        if m is None:  # a plain local path
            return v
        scheme, rest = m.group(1).lower(), m.group(2)
        if scheme == "synthetic":
            if rest not in SYNTHETIC_PROFILES:
                raise ValueError(f"unknown synthetic profile {rest!r}; choose one of {list(SYNTHETIC_PROFILES)}")
        elif scheme == "gs":
            if not re.match(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$", rest):
                raise ValueError(f"malformed GCS URL {v!r}; expected gs://<bucket>/<prefix>")
        elif scheme != "file":
            raise ValueError(f"unsupported source scheme {scheme!r}; use one of {', '.join(_SOURCE_SCHEMES)}")
        return v

    def source_kind(self) -> dict[str, str]:
        """What the model card records of the data source: ``{"kind": "synthetic", "source": "synthetic://<profile>"}``,
        else only ``{"kind": "gcs"}`` or ``{"kind": "local"}`` (no bucket, path or name that could identify a site)."""
        v = self.source.strip()
        scheme = v.split("://", 1)[0].lower() if "://" in v else "file"
        if scheme == "synthetic":
            return {"kind": "synthetic", "source": v.lower()}
        return {"kind": "gcs" if scheme == "gs" else "local"}


class ConvertParams(_Section):
    """Every source image -> a normalised PNG + one row of images.parquet (see cxr.convert)."""

    size: int = Field(512, ge=16, le=8192, description="output size in pixels of the side chosen by `side`")
    side: Literal["long", "short"] = Field("long", description="which side is resized to `size` (aspect kept)")
    square: Literal["none", "pad", "crop"] = Field(
        "pad", description="make the output size x size: pad (black, centred), centre-crop, or none"
    )
    bits: Literal[8, 16] = Field(8, description="PNG bit depth")
    voi: Literal["window", "full"] = Field(
        "window", description="window = DICOM VOI LUT / window centre-width when present; full = min..max"
    )
    max_pixels: int = Field(60_000_000, ge=1, description="refuse larger images (decompression-bomb guard)")
    max_failure_fraction: float = Field(
        0.1, ge=0, le=1, description="fail the stage when more than this fraction of images are errors"
    )
    workers: int = Field(0, ge=0, le=256, description="worker processes; 0 = one per core, 1 = serial")
    scheduler: str | None = Field(None, description="Dask scheduler address (tcp://host:8786); None = local processes")
    chunk_size: int = Field(8, ge=1, le=4096, description="images per task sent to a worker")
    checkpoint_images: int = Field(
        2000, ge=0, description="save progress every this many images, so a killed run resumes (0 = only at the end)"
    )
    png_compress_level: int = Field(
        3, ge=0, le=9, description="zlib level of the PNG writer: 3 is ~2.4x faster than 6 for ~12% larger files"
    )
    draft: bool = Field(
        True, description="decode JPEG 2000 / JPEG at a reduced resolution when the output is smaller (faster)"
    )
    upscale: bool = Field(
        True, description="false: images smaller than `size` keep their own size (thumbnails are not enlarged)"
    )
    storage: Literal["files", "shards"] = Field(
        "files", description="files: one PNG per image; shards: tar shards + an offset index (cxr.shards), "
                             "one remote object per shard for dvc push / pull at MIMIC size"
    )
    shard_size: int = Field(2000, ge=1, le=1_000_000, description="images per tar shard (storage: shards)")

    @field_validator("scheduler")
    @classmethod
    def _check_scheduler(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip()
        if not re.match(r"^(tcp|tls|inproc|ucx|ws|wss)://\S+$", v):
            raise ValueError(f"malformed Dask scheduler address {v!r}; expected tcp://host:port")
        return v


LABEL_SOURCES = ("chexpert", "nih", "padchest", "mimic", "labeller", "imagenome", "jsrt")
_UNCERTAINTY = Literal["ones", "zeros", "ignore"]


class UncertaintyParams(_Section):
    """How stored -1 (uncertain) and blank labels become training targets (applied at training time)."""

    default: _UNCERTAINTY = Field("ignore", description="U-Ones (ones), U-Zeros (zeros) or U-Ignore (ignore)")
    per_class: dict[str, _UNCERTAINTY] = Field(default_factory=dict, description="label name -> policy")
    blank: Literal["zeros", "ignore"] = Field("zeros", description="not mentioned: negative (zeros) or masked (ignore)")


class LabelParams(_Section):
    """Report labeller and label merge (the ``label`` stage); target space is ``base.label_space``."""

    vocabulary: Literal["chexpert14", "chestxray14"] = Field("chexpert14", description="labeller vocabulary")
    sections: list[str] = Field(
        default_factory=lambda: ["findings", "impression"], min_length=1, description="report sections labelled"
    )
    precedence: list[str] = Field(
        default_factory=lambda: list(LABEL_SOURCES), description=f"label sources, strongest first: {LABEL_SOURCES} (unlisted ones follow in this order)"
    )
    unknown_labels: Literal["error", "count"] = Field("error", description="unknown label strings in dataset files")
    uncertainty: UncertaintyParams = UncertaintyParams()
    workers: int = Field(0, ge=0, le=256, description="labeller processes; 0 = one per core, 1 = in this process")
    scheduler: str | None = Field(None, description="Dask scheduler address (tcp://host:8786); None = local processes")
    chunk_size: int = Field(2000, ge=1, le=1_000_000, description="reports per task sent to a worker")

    @field_validator("sections")
    @classmethod
    def _check_sections(cls, v: list[str]) -> list[str]:
        v = [s.strip().lower() for s in v]
        if any(not s for s in v):
            raise ValueError("empty section name")
        return v

    @field_validator("precedence")
    @classmethod
    def _check_precedence(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in LABEL_SOURCES]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"must list sources of {list(LABEL_SOURCES)}, each at most once (got {v})")
        # sources left out follow in the default order (a params file written before a new source existed stays valid)
        return [*v, *(s for s in LABEL_SOURCES if s not in v)]


class SplitParams(_Section):
    """Patient-level iterative stratified split (the ``split`` stage)."""

    train: float = Field(0.7, gt=0, lt=1, description="fraction of patients in train")
    val: float = Field(0.1, ge=0, lt=1, description="fraction of patients in val")
    test: float = Field(0.2, gt=0, lt=1, description="fraction of patients in test")
    official: list[Literal["mimic", "nih"]] = Field(
        default_factory=list, description="honour official splits: mimic (split csv), nih (test_list.txt)"
    )
    order: int = Field(1, ge=1, le=2, description="label-combination order of iterative stratification")

    @model_validator(mode="after")
    def _check_sum(self) -> SplitParams:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split.train + split.val + split.test must be 1, got {total:g}")
        return self


REGION_SETS = ("anaxnet18", "all")
FINDING_SPACES = ("anaxnet9", "chexpert14", "chestxray14", "padchest22")
DETECTOR_BACKBONES = ("tiny_fpn", "mobilenet_v3_large_fpn", "mobilenet_v3_small_fpn", "resnet18_fpn", "resnet50_fpn")


class CocoParams(_Section):
    """Chest ImaGenome scene graphs -> COCO json per split (see cxr.anatomy.coco)."""

    regions: Literal["anaxnet18", "all"] | list[str] = Field(
        "anaxnet18", description="categories: anaxnet18 (the 18 AnaXNet regions), all (every region in the data) or a list"
    )
    findings: Literal["anaxnet9", "chexpert14", "chestxray14", "padchest22"] = Field(
        "anaxnet9", description="label space of the per-region finding vector"
    )
    unknown_findings: Literal["error", "count"] = Field(
        "count", description="ImaGenome finding names missing from the vocabulary map: error | count (skipped)"
    )

    @field_validator("regions")
    @classmethod
    def _check_regions(cls, v: Any) -> Any:
        if isinstance(v, list):
            v = [str(r).strip().lower() for r in v]
            if not v or any(not r for r in v) or len(set(v)) != len(v):
                raise ValueError(f"region list must be non-empty, without blanks or duplicates (got {v})")
        return v


class DetectorParams(_Section):
    """Faster R-CNN anatomical region detector (see cxr.anatomy.detector)."""

    backbone: Literal["tiny_fpn", "mobilenet_v3_large_fpn", "mobilenet_v3_small_fpn", "resnet18_fpn", "resnet50_fpn"] = Field(
        "tiny_fpn", description="FPN backbone: tiny_fpn (CPU default), mobilenet_v3_*_fpn, resnet50_fpn (AnaXNet)"
    )
    pretrained: str | None = Field(None, description="optional local backbone weights file (state_dict); None = from scratch")
    image_size: int = Field(256, ge=64, le=2048, description="detector input side in pixels (long side)")
    epochs: int = Field(16, ge=1, le=1000, description="training epochs")
    max_steps: int = Field(-1, ge=-1, description="stop after this many optimiser steps (-1 = epochs decide)")
    batch_size: int = Field(8, ge=1, le=512, description="images per batch per process (DDP: a step sees "
                            "batch_size x devices x num_nodes images, as train.batch_size)")
    lr: float = Field(0.002, gt=0, le=1, description="AdamW peak learning rate (one-cycle schedule)")
    weight_decay: float = Field(1e-4, ge=0, le=1, description="AdamW weight decay")
    anchor_sizes: list[int] | list[list[int]] = Field(
        default_factory=lambda: [[16, 32], [48, 64], [96, 128], [192, 256]], min_length=1,
        description="anchor sizes in input pixels: a flat list (every FPN level gets all) or one list per FPN "
                    "level, finest first, the same number on each (tiny_fpn has 4 levels, strides 8 / 16 / 32 / 64)")
    roi_sampling_ratio: int = Field(1, ge=1, le=8, description="RoIAlign sampling points per bin side in the box head "
                                    "(torchvision default 2; 1 = a quarter of the RoIAlign work)")
    rpn_pre_nms_top_n_train: int = Field(600, ge=1, description="RPN proposals kept before NMS (training)")
    rpn_post_nms_top_n_train: int = Field(300, ge=1, description="RPN proposals kept after NMS (training)")
    rpn_pre_nms_top_n_test: int = Field(300, ge=1, description="RPN proposals kept before NMS (inference)")
    rpn_post_nms_top_n_test: int = Field(150, ge=1, description="RPN proposals kept after NMS (inference)")
    rpn_batch_size_per_image: int = Field(128, ge=1, description="anchors sampled per image for the RPN loss")
    box_batch_size_per_image: int = Field(64, ge=1, description="proposals sampled per image for the box-head loss")
    box_score_thresh: float = Field(0.01, ge=0, lt=1, description="minimum detection score kept at inference")
    box_detections_per_img: int = Field(100, ge=1, description="detections kept per image")
    precision: Literal["auto", "32", "bf16", "16"] = Field(
        "auto", description="auto: bf16 mixed on a GPU or on a CPU with native bf16, else 32 (cxr.precision)")
    workers: int = Field(0, ge=0, le=64, description="data-loader worker processes (0 = in the main process)")
    device: Device = Field("auto", description=_DEVICE_DOC)
    devices: int | Literal["auto"] = Field(1, description="devices (GPUs) per machine; > 1 with strategy ddp: one process each")
    strategy: str = Field("auto", description="Lightning strategy: auto | ddp | ... (as train.strategy)")
    num_nodes: int = Field(1, ge=1, le=1024, description="machines of a multi-node DDP run (torchrun / SLURM sets the ranks)")

    @field_validator("anchor_sizes")
    @classmethod
    def _check_anchors(cls, v: list[int] | list[list[int]]) -> list[int] | list[list[int]]:
        levels = v if isinstance(v[0], list) else [v]
        for sizes in levels:
            if not sizes or any(a <= 0 for a in sizes) or sorted(sizes) != sizes:
                raise ValueError(f"anchor sizes must be positive and increasing on each level (got {v})")
        if len({len(sizes) for sizes in levels}) > 1:  # the RPN head is one conv shared by every level
            raise ValueError(f"every FPN level needs the same number of anchor sizes (got {v})")
        return v


class FeaturesParams(_Section):
    """Region features of every image in the detector's boxes (see cxr.anatomy.features)."""

    extractor: str = Field("densenet121", min_length=1, description=(
        "what describes each region box: an image classifier of the zoo (the backbone stage trains it with the "
        "train params; its feature map is pooled in the box) | detector (the detector's box head, AnaXNet as "
        "published)"))
    levels: int = Field(2, ge=1, le=4, description=(
        "backbone maps pooled in each box: 1 = the final map the classifier's head pools; 2 = also the next finer "
        "stage (stride 16 for densenet121), concatenated (ignored with extractor: detector)"))
    boxes: Literal["pred", "gt"] = Field("pred", description="regions from the detector (pred) or the scene graph (gt)")
    score_thresh: float = Field(0.05, ge=0, lt=1, description="a region is present when its best box scores above this")
    views: list[str] = Field(default_factory=lambda: ["PA", "AP"], min_length=1, description="views extracted")
    batch_size: int = Field(16, ge=1, le=1024, description="images per forward pass")
    device: Device = Field("auto", description=_DEVICE_DOC)


class UnetParams(_Section):
    """segmentation-models-pytorch UNet on organ masks (see cxr.anatomy.unet)."""

    structures: list[str] = Field(
        default_factory=lambda: ["right_lung", "left_lung", "heart", "right_clavicle", "left_clavicle"],
        min_length=1, description="mask names (files <structure>.png under data/raw/masks/<image_id>/)",
    )
    encoder: str = Field("resnet18", description="segmentation-models-pytorch encoder name")
    encoder_depth: int = Field(4, ge=3, le=5, description="encoder stages used")
    decoder_channels: list[int] = Field(default_factory=lambda: [96, 48, 24, 12], min_length=3, max_length=5,
                                        description="decoder channels per stage (one per encoder stage)")
    pretrained: str | None = Field(None, description="optional local encoder weights file (state_dict); None = from scratch")
    image_size: int = Field(192, ge=32, le=2048, description="network input side in pixels")
    epochs: int = Field(16, ge=1, le=1000, description="training epochs")
    max_steps: int = Field(-1, ge=-1, description="stop after this many optimiser steps (-1 = epochs decide)")
    batch_size: int = Field(8, ge=1, le=512, description="images per batch per process (DDP: a step sees "
                            "batch_size x devices x num_nodes images, as train.batch_size)")
    lr: float = Field(0.003, gt=0, le=1, description="AdamW peak learning rate (one-cycle schedule)")
    weight_decay: float = Field(1e-4, ge=0, le=1, description="AdamW weight decay")
    threshold: float = Field(0.5, gt=0, lt=1, description="probability above which a pixel belongs to a structure")
    augment: bool = Field(True, description="seeded small affine (image + masks) and intensity jitter (image)")
    prior_bias: bool = Field(True, description="start each output channel's bias at the logit of its TRAIN foreground "
                             "fraction (small structures such as clavicles then learn in fewer epochs)")
    precision: Literal["auto", "32", "bf16", "16"] = Field(
        "auto", description="auto: bf16 mixed on a GPU or on a CPU with native bf16, else 32 (cxr.precision)"
    )
    workers: int = Field(0, ge=0, le=64, description="data-loader worker processes (0 = in the main process)")
    device: Device = Field("auto", description=_DEVICE_DOC)
    devices: int | Literal["auto"] = Field(1, description="devices (GPUs) per machine; > 1 with strategy ddp: one process each")
    strategy: str = Field("auto", description="Lightning strategy: auto | ddp | ... (as train.strategy)")
    num_nodes: int = Field(1, ge=1, le=1024, description="machines of a multi-node DDP run (torchrun / SLURM sets the ranks)")

    @model_validator(mode="after")
    def _check_decoder(self) -> UnetParams:
        if len(self.decoder_channels) != self.encoder_depth:
            raise ValueError(
                f"unet.decoder_channels has {len(self.decoder_channels)} entries but unet.encoder_depth is "
                f"{self.encoder_depth}; give one channel count per encoder stage"
            )
        return self


class MLGCNParams(_Section):
    """ML-GCN label graph (also the label head of SegFusion-VAN-GCN)."""

    t: float = Field(0.4, ge=0, le=1, description="binarise P(j|i) of TRAIN co-occurrence at t")
    p: float = Field(0.2, ge=0, le=1, description="share of a label node's message from its neighbours")
    backbone: str = Field("densenet121", description="timm backbone of the mlgcn model (cxr.models.cnn.BACKBONES)")


class SegFusionParams(_Section):
    """SegFusion-VAN-GCN: VAN sizes (VAN-B0: dims 32,64,160,256, depths 3,3,5,2)."""

    dims: list[int] = Field(default_factory=lambda: [32, 64, 160, 256], min_length=4, max_length=4,
                            description="channels of the four VAN stages")
    depths: list[int] = Field(default_factory=lambda: [2, 2, 2, 2], min_length=4, max_length=4,
                              description="blocks per VAN stage")


class GraphParams(_Section):
    """Anatomy models on region features (AnaXNet, CheXtriev-style graph transformer)."""

    graph_importance: float = Field(0.7, ge=0, le=1, description="loss = g * image loss + (1 - g) * region loss")
    hidden: int = Field(256, ge=8, le=4096, description="node embedding size")
    layers: int = Field(2, ge=0, le=12, description="graph transformer layers (0 = CheXtriev V0: mean of region features)")
    edges: Literal["full", "cooccurrence"] = Field("full", description="graph transformer edges (TRAIN co-occurrence or all pairs)")
    positional: bool = Field(True, description="learned positional embedding per region slot")
    learnable_edges: bool = Field(True, description="continuous edge features as nn.Parameters (CheXtriev V6)")
    residual: Literal["none", "add", "gated"] = Field("add", description="residual around each graph transformer layer")
    t: float = Field(0.0, ge=0, le=1, description="AnaXNet: binarise region co-occurrence P(j|i) at t")
    p: float = Field(0.2, ge=0, le=1, description="AnaXNet: neighbour share of the normalised adjacency")


class ATHParams(_Section):
    """ATH, the attention-based triplet hashing baseline (cxr/models/ath.py), trained by `train_hash@ath`."""

    bits: int = Field(32, ge=8, le=1024, description="code length in bits (a multiple of 8)")
    backbone: str = Field("small", description="'small' (4-stage conv net, CPU default) or a cxr.models.cnn.BACKBONES name")
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128, 256], min_length=1, max_length=6,
                              description="stage widths of the 'small' backbone")
    margin: float = Field(0.25, gt=0, le=2, description="triplet margin on the normalised code distance (fraction of bits)")
    quantization: float = Field(0.1, ge=0, le=10, description="weight of the (|u| - 1)^2 quantisation loss")
    classification: float = Field(1.0, ge=0, le=10, description="weight of the auxiliary BCE head (its val AUROC drives early stopping)")

    @field_validator("bits")
    @classmethod
    def _check_bits(cls, v: int) -> int:
        if v % 8:
            raise ValueError(f"bits must be a multiple of 8 (faiss binary codes are whole bytes), got {v}")
        return v


class TrainParams(_Section):
    """The classifier zoo: one engine (cxr.train), DVC matrix `train@M` over `models`."""

    models: list[str] = Field(default_factory=lambda: ["densenet121", "segfusion_van_gcn", "anaxnet", "graph_transformer"],
                              min_length=1,
                              description="registered models trained by the train@M matrix (cxr.models.zoo.list_models)")
    image_size: int = Field(128, ge=32, le=2048, description="classifier input side in pixels (CPU default 128)")
    epochs: int = Field(3, ge=1, le=1000, description="maximum training epochs")
    batch_size: int = Field(16, ge=1, le=1024, description="samples per batch per process (DDP: a step sees "
                            "batch_size x devices x num_nodes samples)")
    lr: float = Field(1e-3, gt=0, le=1, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0, le=1, description="AdamW weight decay")
    schedule: Literal["cosine", "plateau"] = Field("cosine", description="learning-rate schedule")
    loss: Literal["bce", "focal"] = Field("bce", description="masked BCE or focal loss (per element)")
    focal_gamma: float = Field(2.0, ge=0, le=10, description="focusing parameter of the focal loss")
    pos_weight: bool = Field(False, description="weight positives by negatives/positives of each class on TRAIN")
    patience: int = Field(3, ge=1, le=1000, description="early stopping patience (epochs without better val macro AUROC)")
    augment: bool = Field(True, description="seeded small affine + contrast augmentation of training images")
    pool: Literal["avg", "max", "lse", "pcam"] = Field("avg", description="pooling head of the global CNN / ViT models")
    frontal_only: bool = Field(True, description="train and evaluate on frontal views only")
    datasets: list[str] | None = Field(
        None, description="train and evaluate on images of these datasets only (e.g. [nih]); None = every dataset"
    )
    pretrained: dict[str, str] = Field(default_factory=dict, description="model name -> local backbone weights file "
                                       "(densenet121 also takes a torchxrayvision DenseNet checkpoint)")
    device: Device = Field("auto", description=_DEVICE_DOC)
    precision: Literal["auto", "32", "bf16", "16"] = Field("auto", description="auto = bf16/fp16 mixed on GPU; bf16 mixed for image models on a CPU with native bf16, else 32")
    devices: int | Literal["auto"] = Field("auto", description="number of devices (GPUs) or auto")
    strategy: str = Field("auto", description="Lightning strategy: auto | ddp | ...")
    num_nodes: int = Field(1, ge=1, le=1024, description="machines of a multi-node DDP run (torchrun / SLURM sets the ranks)")
    num_workers: int = Field(0, ge=0, le=64, description="data-loader worker processes")
    mlgcn: MLGCNParams = MLGCNParams()
    segfusion: SegFusionParams = SegFusionParams()
    graph: GraphParams = GraphParams()
    ath: ATHParams = ATHParams()

    @field_validator("models")
    @classmethod
    def _check_models(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"model names must be unique (got {v})")
        return v


class TruthParams(_Section):
    """The one test truth every model and experiment is scored against (independent of ``label.uncertainty``)."""

    uncertain: _UNCERTAINTY = Field("ignore", description="stored -1 test labels: masked (ignore), ones or zeros")
    blank: Literal["zeros", "ignore"] = Field("zeros", description="not mentioned test labels: negative (zeros) or masked")


class EvaluateParams(_Section):
    """Test-set evaluation of each trained model (cxr.evaluate)."""

    bootstrap: int = Field(1000, ge=10, le=100000, description="patient-bootstrap resamples for the 95% CIs and p-values")
    ci: float = Field(0.95, gt=0.5, lt=1, description="confidence level of the intervals")
    ece_bins: int = Field(10, ge=2, le=100, description="bins of the expected calibration error")
    reference: str = Field("densenet121", description="model the comparison table tests every other model against")
    min_positives: int = Field(10, ge=1, le=100000, description="classes with fewer TEST positives are flagged and left "
                               "out of the headline macro AUROC (macro_auroc_common); the all-class macro stays beside it")
    truth: TruthParams = TruthParams()


class LocalizeParams(_Section):
    """Weak localisation per model (`localize@M`, cxr.localize): heatmaps -> boxes -> IoU / IoBB accuracy."""

    method: Literal["cam", "gradcam", "gradcam++"] = Field("gradcam", description="heatmap method of the image models")
    cam_min_grid: int = Field(16, ge=0, le=512, description="Grad-CAM reads the deepest backbone stage with at least "
                              "this many cells per side (0 = the pooled map the head reads)")
    thresholds: list[float] = Field(default_factory=lambda: [0.1, 0.25, 0.5, 0.75], min_length=1,
                                    description="T(IoU) and T(IoBB) thresholds of the accuracies")
    heatmap_thresholds: list[float] = Field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], min_length=1,
                                            description="candidate heatmap binarisation thresholds (chosen on VAL)")
    select_iou: float = Field(0.25, gt=0, le=1, description="the VAL choice maximises accuracy at T(IoU) = select_iou")
    default_threshold: float = Field(0.5, gt=0, le=1, description="heatmap threshold when VAL has no GT boxes")
    max_boxes: int = Field(3, ge=0, le=100, description="boxes kept per heatmap, highest peak first (0 = all)")
    gallery_size: int = Field(8, ge=0, le=64, description="TEST images in the gallery (fixed sample from base.seed)")
    batch_size: int = Field(16, ge=1, le=1024, description="images per heatmap batch")
    device: Device = Field("auto", description=_DEVICE_DOC)

    @field_validator("thresholds", "heatmap_thresholds")
    @classmethod
    def _check_unit(cls, v: list[float]) -> list[float]:
        if any(not 0 < x <= 1 for x in v) or len(set(v)) != len(v):
            raise ValueError(f"thresholds must be distinct values in (0, 1] (got {v})")
        return sorted(v)


class RetrieveIndexParams(_Section):
    """faiss index choice (cxr.retrieve.IndexConfig)."""

    kind: Literal["auto", "flat", "ivf", "hnsw"] = Field("auto", description="auto = exact up to exact_max items, else `approximate`")
    exact_max: int = Field(10_000, ge=1, description="largest database searched exactly (kind auto); above, a query costs O(N) exact but O(log N) in HNSW")
    approximate: Literal["ivf", "hnsw"] = Field("hnsw", description="approximate index above exact_max")
    ivf_lists: int = Field(0, ge=0, description="IVF k-means cells; 0 = 4 * sqrt(N)")
    ivf_codec: Literal["flat", "sq8", "pq"] = Field(
        "flat", description="IVF vector storage: flat float32 (4 D bytes), sq8 (D bytes) or pq (pq_m bytes)")
    pq_m: int = Field(64, ge=1, le=1024, description="product-quantiser sub-vectors of ivf_codec pq (must divide D)")
    nprobe: int = Field(8, ge=1, description="IVF cells visited per query (first effort of the recall check)")
    hnsw_m: int = Field(32, ge=4, le=256, description="HNSW links per node")
    ef_construction: int = Field(80, ge=8, le=4096, description="HNSW beam width while building")
    ef_search: int = Field(16, ge=1, le=4096, description="HNSW beam width while searching (first effort of the recall check)")
    min_recall: float = Field(0.95, ge=0, le=1, description="recall@recall_k an approximate index must reach against exact "
                                                             "search (effort raised, else exact search); 0 = only measure")
    recall_k: int = Field(10, ge=1, le=1000, description="k of the recall check")
    recall_queries: int = Field(1000, ge=1, le=100_000, description="seeded sample of test queries for the recall check")
    max_nprobe: int = Field(256, ge=0, description="largest nprobe the recall check tries (0 = every cell)")
    max_ef_search: int = Field(1024, ge=1, le=4096, description="largest efSearch the recall check tries")


class RetrieveParams(_Section):
    """Image search per model (`retrieve@M`, cxr.retrieve) and the hashing models trained for it (`train_hash@M`)."""

    hashing: list[str] = Field(default_factory=lambda: ["ath"], min_length=0,
                               description="hashing models trained by train_hash@M (retrieval only, never evaluate@M)")
    database: list[Literal["train", "val", "test"]] = Field(
        default_factory=lambda: ["train", "val"], min_length=1,
        description="splits forming the searched database; the queries are the test images")
    k: list[int] = Field(default_factory=lambda: [3, 5, 10], min_length=1, description="metric cut-offs")
    examples: int = Field(4, ge=0, le=100, description="example queries (with their top 5) kept for the report")
    batch_size: int = Field(32, ge=1, le=4096, description="images per embedding forward pass")
    index: RetrieveIndexParams = RetrieveIndexParams()

    @model_validator(mode="before")
    @classmethod
    def _removed_models(cls, data: Any) -> Any:
        if isinstance(data, dict) and "models" in data:
            raise ValueError("retrieve.models was removed: retrieve@M searches every model of train.models and "
                             "retrieve_hash@M every model of retrieve.hashing; delete the key (restrict train.models instead)")
        return data

    @field_validator("hashing", "database")
    @classmethod
    def _unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError(f"entries must be unique (got {v})")
        return v

    @field_validator("k")
    @classmethod
    def _check_k(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v) or len(set(v)) != len(v):
            raise ValueError(f"k must be distinct positive integers (got {v})")
        return sorted(v)


SECTIONS: dict[str, type[_Section]] = {
    "base": BaseParams,
    "ingest": IngestParams,
    "convert": ConvertParams,
    "label": LabelParams,
    "split": SplitParams,
    "coco": CocoParams,
    "detector": DetectorParams,
    "features": FeaturesParams,
    "unet": UnetParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "localize": LocalizeParams,
    "retrieve": RetrieveParams,
}


def _allowed(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """Describe the keys allowed at ``loc`` (the parent of an unknown key)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            break
        model = field.annotation
    return "known keys: " + ", ".join(model.model_fields)


def _describe(model: type[BaseModel], section: str, err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        # drop pydantic's union-member tags (e.g. "list[str]") so the key reads as in params.yaml
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and "[" in p))
        key = ".".join([section, *map(str, loc)])
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key {key} (value {e['input']!r}); {_allowed(model, loc[:-1])}")
            continue
        field_doc = ""
        parent: type[BaseModel] | None = model
        limits: dict[str, Any] = {}
        for part in loc:
            f = parent.model_fields.get(str(part)) if parent else None
            if f is None:
                limits = {}
                break
            field_doc = f.description or ""
            limits = {k: getattr(m, k) for m in f.metadata for k in ("gt", "ge", "lt", "le") if hasattr(m, k)}
            parent = f.annotation if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel) else None
        # a type error (strict: `true` for an int) has no bounds in its context: take the field's own
        ctx = e.get("ctx") or limits
        ops = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
        bounds = " and ".join(f"{ops[k]} {v}" for k, v in ctx.items() if k in ops)
        hint = "; ".join(x for x in (f"a value {bounds}" if bounds else "", field_doc) if x)
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {key} = {e['input']!r}: {msg}" + (f" (allowed: {hint})" if hint else ""))
    return "\n".join(lines)


def parse_section(name: str, raw: Any, source: str = "params.yaml") -> _Section:
    """Validate one section's raw mapping.

    Raises:
        ParamsError: unknown section, unknown key or ill-typed value (message names all of them).
    """
    if name not in SECTIONS:
        raise ParamsError(f"{source}: unknown section {name!r}; known sections: {', '.join(SECTIONS)}")
    model = SECTIONS[name]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: section {name!r} must be a mapping, got {type(raw).__name__} {raw!r}")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_describe(model, name, err, source)) from None


class _ParamsLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and reads YAML 1.2 floats.

    PyYAML keeps the last of two equal keys (a second ``base:`` section silently replaces the
    first), and reads ``1e-3`` as a string (YAML 1.1 wants ``1.0e-3``); DVC's own YAML 1.2 parser
    reads it as a number, so the schema should too.
    """


def _construct_mapping(loader: _ParamsLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            first = seen[key]
            raise yaml.constructor.ConstructorError(
                None, None,
                f"duplicate key {key!r} (first at line {first.line + 1}, again at line {key_node.start_mark.line + 1}); "
                "YAML would silently keep only the last one: merge them into one",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_ParamsLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_params_file(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read params.yaml as a mapping; unknown top-level sections and duplicate keys are rejected."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_ParamsLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the repository root or pass --params)") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ParamsError(f"{path}: unknown section(s) {unknown}; known sections: {', '.join(SECTIONS)}")
    return raw


def check_consistency(raw: dict[str, Any], source: str = "params.yaml") -> None:
    """Cross-section rules, checked by every stage before it does any work (dvc.yaml derives the
    localize@M, retrieve@M and evaluate@M lists from ``train.models``; these keys must agree with it).

    Raises:
        ParamsError: naming each pair of keys that disagree, their values and the fix.
    """
    sec = {name: parse_section(name, raw.get(name), source=source) for name in ("train", "evaluate", "localize", "retrieve")}
    models = list(sec["train"].models)
    problems = []
    if sec["evaluate"].reference not in models:
        problems.append(f"evaluate.reference = {sec['evaluate'].reference!r} is not in train.models = {models}: "
                        "set evaluate.reference to one of them")
    both = sorted(set(models) & set(sec["retrieve"].hashing))
    if both:
        problems.append(f"retrieve.hashing = {list(sec['retrieve'].hashing)} and train.models = {models} share {both}: "
                        "a hashing model is trained by train_hash@M only; list it in one of the two")
    loc = sec["localize"]
    if not any(abs(t - loc.select_iou) < 1e-9 for t in loc.thresholds):
        problems.append(f"localize.select_iou = {loc.select_iou} is not in localize.thresholds = {list(loc.thresholds)}: "
                        "add it there (the headline metrics report the accuracy at select_iou)")
    if problems:
        raise ParamsError("\n".join(f"{source}: {p}" for p in problems))


def load_section(name: str, path: str | Path = "params.yaml") -> _Section:
    """Load and validate one section of ``path`` (missing keys take their defaults)."""
    raw = read_params_file(path)
    return parse_section(name, raw.get(name), source=str(path))


def load_sections(path: str | Path, *names: str, log: logging.Logger | None = None) -> tuple[_Section, ...] | None:
    """The validated sections ``names`` of ``path`` (the file is read once).

    Raises:
        ParamsError: unreadable file, unknown key or invalid value. With ``log`` given instead, the
            error is logged there and None is returned (the caller then exits with status 2).
    """
    try:
        raw = read_params_file(path)
        check_consistency(raw, source=str(path))
        return tuple(parse_section(name, raw.get(name), source=str(path)) for name in names)
    except ParamsError as exc:
        if log is None:
            raise
        log.error("%s", exc)
        return None


def load_all(path: str | Path = "params.yaml") -> dict[str, _Section]:
    """Load and validate every section of ``path``."""
    raw = read_params_file(path)
    check_consistency(raw, source=str(path))
    return {name: parse_section(name, raw.get(name), source=str(path)) for name in SECTIONS}


def override_args(path: str | Path) -> list[str]:
    """A partial params file as ``dvc exp run`` arguments: ``["-S", "++section.key=value", ...]``.

    Nested sections are walked down to their leaves (a leaf that is itself a mapping, such as
    ``ingest.local.folders``, is passed whole, in YAML flow style). Every section is first checked
    against the schema, so a typo fails here, naming the key, before any stage runs.

    Raises:
        ParamsError: unreadable file, unknown section or key, or an invalid value.
    """
    raw = read_params_file(path)
    out: list[str] = []

    def walk(model: type[BaseModel], data: dict[str, Any], prefix: str) -> None:
        for key, value in data.items():
            field = model.model_fields.get(key)
            sub = field.annotation if field is not None else None
            if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
                walk(sub, value, f"{prefix}{key}.")
            else:
                text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
                text = text[:-4].strip() if text.endswith("\n...") or text.endswith(" ...") else text
                # ++ = set or add (DVC's Hydra override grammar): a plain key=value cannot put a mapping
                # into an empty mapping such as ingest.local.folders: {}
                out.extend(["-S", f"++{prefix}{key}={text}"])

    for name, section in raw.items():
        if name not in SECTIONS:
            raise ParamsError(f"{path}: unknown section {name!r}; sections: {sorted(SECTIONS)}")
        parse_section(name, section, source=str(path))
        walk(SECTIONS[name], section or {}, f"{name}.")
    return out
