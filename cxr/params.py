"""Typed schema of ``params.yaml``.

One frozen pydantic model per section. Unknown keys and ill-typed values fail at load time with
a message naming the dotted key, the offending value and what is allowed, e.g.::

    params.yaml: ingest.synthetic.signal = -1.0: Input should be greater than 0 (allowed: a number > 0)

Stages load their own section once (``load_section("ingest")``) and pass plain values on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

LABEL_SPACES = ("chexpert14", "chestxray14", "anaxnet9", "padchest22", "binary")
SYNTHETIC_PROFILES = ("default", "tiny")
_SOURCE_SCHEMES = ("synthetic://<profile>", "gs://<bucket>/<prefix>", "file://<dir> or a plain directory path")


class ParamsError(ValueError):
    """params.yaml is missing, malformed, or has a key/value the schema does not allow."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class BaseParams(_Section):
    """Shared by every stage."""

    seed: int = Field(42, ge=0, le=2**32 - 1, description="master random seed")
    label_space: Literal["chexpert14", "chestxray14", "anaxnet9", "padchest22", "binary"] | list[str] = Field(
        "chexpert14", description="label space the models are trained on: a named space or a list of label names"
    )
    image_size: int = Field(256, ge=32, le=4096, description="model input side in pixels")

    @field_validator("label_space")
    @classmethod
    def _check_label_list(cls, v):
        if isinstance(v, list):
            from cxr.labels import LabelError, resolve_space  # lazy: keeps params import light

            try:
                resolve_space(v)
            except LabelError as exc:
                raise ValueError(str(exc)) from None
        return v


class SyntheticParams(_Section):
    """Knobs of the built-in synthetic cohort (used when ``ingest.source`` is ``synthetic://...``)."""

    signal: float = Field(1.0, gt=0, le=5, description="visibility of findings (contrast multiplier)")
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


class LocalParams(_Section):
    """Options of local-directory sources."""

    mode: Literal["auto", "hardlink", "symlink", "copy"] = Field(
        "auto", description="how files enter data/raw: auto = hardlink when possible, else copy"
    )


class IngestParams(_Section):
    """Where the raw data come from."""

    source: str = Field("synthetic://default", description="synthetic://<profile> | gs://bucket/prefix | directory")
    synthetic: SyntheticParams = SyntheticParams()
    gcs: GcsParams = GcsParams()
    local: LocalParams = LocalParams()

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
    png_compress_level: int = Field(
        3, ge=0, le=9, description="zlib level of the PNG writer: 3 is ~2.4x faster than 6 for ~12% larger files"
    )
    draft: bool = Field(
        True, description="decode JPEG 2000 / JPEG at a reduced resolution when the output is smaller (faster)"
    )

    @field_validator("scheduler")
    @classmethod
    def _check_scheduler(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip()
        if not re.match(r"^(tcp|tls|inproc|ucx|ws|wss)://\S+$", v):
            raise ValueError(f"malformed Dask scheduler address {v!r}; expected tcp://host:port")
        return v


LABEL_SOURCES = ("chexpert", "nih", "padchest", "mimic", "labeller", "imagenome")
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
        default_factory=lambda: list(LABEL_SOURCES), description=f"label sources, strongest first: {LABEL_SOURCES}"
    )
    unknown_labels: Literal["error", "count"] = Field("error", description="unknown label strings in dataset files")
    uncertainty: UncertaintyParams = UncertaintyParams()

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
        if bad or len(set(v)) != len(v) or set(v) != set(LABEL_SOURCES):
            raise ValueError(f"must list each of {list(LABEL_SOURCES)} exactly once (got {v})")
        return v


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




SECTIONS: dict[str, type[_Section]] = {
    "base": BaseParams,
    "ingest": IngestParams,
    "convert": ConvertParams,
    "label": LabelParams,
    "split": SplitParams,
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
        for part in loc:
            f = parent.model_fields.get(str(part)) if parent else None
            if f is None:
                break
            field_doc = f.description or ""
            parent = f.annotation if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel) else None
        ctx = e.get("ctx") or {}
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


def read_params_file(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read params.yaml as a mapping; unknown top-level sections are rejected."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
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


def load_section(name: str, path: str | Path = "params.yaml") -> _Section:
    """Load and validate one section of ``path`` (missing keys take their defaults)."""
    raw = read_params_file(path)
    return parse_section(name, raw.get(name), source=str(path))


def load_all(path: str | Path = "params.yaml") -> dict[str, _Section]:
    """Load and validate every section of ``path``."""
    raw = read_params_file(path)
    return {name: parse_section(name, raw.get(name), source=str(path)) for name in SECTIONS}
