"""Plan of a synthetic cohort: patients, studies, images, true findings and acquisition settings.

Planning is cheap and fully determined by (profile, seed, params); rendering and file writing
(:mod:`cxr.synth.generate`) only execute the plan. Tests that need label statistics of the
default cohort therefore plan it without drawing a single pixel.

Findings are per study (every image of a study shows the same disease), sampled as whole
CheXpert label rows (:mod:`cxr.synth.labels`). A CheXpert ``-1`` becomes a true finding with
probability ``uncertain_positive_rate`` and is written with hedged phrasing in the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from cxr.params import SyntheticParams
from cxr.synth.labels import CHEXPERT14, load_pattern_table

# Observations with a drawing in the renderer (everything but the derived "No Finding").
FINDINGS = CHEXPERT14[1:]
DEVICES = ("ett", "ngt", "central_line", "pacemaker")
Side = Literal["right", "left", "bilateral"]


@dataclass(frozen=True)
class Profile:
    """Size of a cohort. Image sides are drawn uniformly from ``side_range`` (long side)."""

    mimic_patients: int
    padchest_patients: int
    side_range: tuple[int, int]
    lateral_rate: float = 0.3


PROFILES: dict[str, Profile] = {
    "default": Profile(mimic_patients=185, padchest_patients=215, side_range=(448, 640), lateral_rate=0.15),
    "tiny": Profile(mimic_patients=12, padchest_patients=10, side_range=(192, 256), lateral_rate=0.2),
}


@dataclass
class Finding:
    """One true finding of a study, with the details the renderer and report writer need."""

    name: str  # a CheXpert observation (FINDINGS), plus sub-type in `kind`
    certainty: Literal["positive", "uncertain"] = "positive"
    side: Side | None = None
    zone: Literal["upper", "mid", "lower"] | None = None
    severity: Literal["mild", "moderate", "severe"] | None = None
    kind: str | None = None  # nodule/mass for Lung Lesion; device names for Support Devices; ...
    size: float = 0.0  # nodule/mass radius in thorax units; effusion depth; ...
    seed: int = 0  # per-finding drawing seed

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Study:
    dataset: Literal["mimic", "padchest"]
    patient_id: str
    study_id: str
    study_index: int  # 0 for the first study of the patient
    view: Literal["PA", "AP"]
    findings: list[Finding]
    negated: list[str]  # observations explicitly negated in the report (CheXpert 0)
    raw_labels: dict[str, float]  # the sampled CheXpert row
    comparison: str | None  # "unchanged" when the findings are copied from the previous study
    report_omits: str | None = None
    images: list["ImagePlan"] = field(default_factory=list)

    @property
    def truth(self) -> dict[str, int]:
        present = {f.name for f in self.findings}
        out = {name: int(name in present) for name in FINDINGS}
        out["No Finding"] = int(not (present - {"Support Devices"}))
        return out


@dataclass
class ImagePlan:
    image_id: str
    index: int  # global image index (seeds the renderer)
    view: Literal["PA", "AP", "LATERAL"]
    rows: int
    cols: int
    acquisition: dict  # photometric, bits, rescale, window, transfer syntax, spacing
    broken: str = ""  # "" | "truncated" | "no_pixel_data"
    with_masks: bool = False
    with_boxes: bool = False


@dataclass
class Patient:
    dataset: Literal["mimic", "padchest"]
    patient_id: str
    sex: Literal["M", "F"]
    age: int
    anatomy_seed: int
    studies: list[Study] = field(default_factory=list)


def _hex(rng: np.random.Generator, n: int) -> str:
    return "".join(f"{b:02x}" for b in rng.integers(0, 256, size=n, dtype=np.uint8))[: 2 * n]


def _digits(rng: np.random.Generator, n: int) -> str:
    return str(int(rng.integers(1, 10))) + "".join(str(d) for d in rng.integers(0, 10, size=n - 1))


def _findings_from_row(row: dict[str, float], rng: np.random.Generator, p_unc: float) -> tuple[list[Finding], list[str]]:
    findings: list[Finding] = []
    negated = [n for n in FINDINGS if row[n] == 0.0]
    for name in FINDINGS:
        v = row[name]
        if v == 1.0:
            certainty = "positive"
        elif v == -1.0 and rng.random() < p_unc:
            certainty = "uncertain"
        else:
            continue
        f = Finding(name=name, certainty=certainty, seed=int(rng.integers(2**31)))
        sev = rng.choice(["mild", "moderate", "severe"], p=[0.5, 0.35, 0.15])
        if name == "Pleural Effusion":
            f.side = rng.choice(["right", "left", "bilateral"], p=[0.35, 0.3, 0.35])
            f.severity = sev
        elif name == "Pneumothorax":
            f.side = rng.choice(["right", "left"])
            f.severity = rng.choice(["mild", "moderate", "severe"], p=[0.6, 0.3, 0.1])
        elif name in ("Consolidation", "Pneumonia", "Atelectasis"):
            f.side = rng.choice(["right", "left", "bilateral"], p=[0.45, 0.4, 0.15])
            f.zone = "lower" if name == "Atelectasis" else rng.choice(["upper", "mid", "lower"], p=[0.2, 0.3, 0.5])
            f.severity = sev
        elif name == "Lung Opacity":
            f.side = rng.choice(["right", "left", "bilateral"], p=[0.35, 0.35, 0.3])
            f.zone = rng.choice(["upper", "mid", "lower"], p=[0.2, 0.35, 0.45])
            f.severity = sev
        elif name == "Edema":
            f.side = "bilateral"
            f.severity = sev
        elif name in ("Cardiomegaly", "Enlarged Cardiomediastinum"):
            f.severity = sev
        elif name == "Lung Lesion":
            f.kind = "mass" if rng.random() < 0.35 else "nodule"
            f.side = rng.choice(["right", "left"])
            f.zone = rng.choice(["upper", "mid", "lower"], p=[0.45, 0.35, 0.2])
            f.size = float(rng.uniform(0.055, 0.09) if f.kind == "mass" else rng.uniform(0.018, 0.034))
        elif name == "Fracture":
            f.side = rng.choice(["right", "left"])
            f.kind = f"rib{int(rng.integers(3, 9))}"
        elif name == "Pleural Other":
            f.side = rng.choice(["right", "left"])
        elif name == "Support Devices":
            devs = [d for d, p in zip(DEVICES, (0.35, 0.35, 0.6, 0.2)) if rng.random() < p]
            f.kind = ",".join(devs or [str(rng.choice(["central_line", "ett"]))])
        findings.append(f)
    return findings, negated


def plan_cohort(profile: str | Profile, seed: int, params: SyntheticParams) -> list[Patient]:
    """Plan every patient, study and image of a cohort (no pixels).

    Args:
        profile: a name in :data:`PROFILES` or a :class:`Profile`.
        seed: master seed; the same seed always gives the same plan.
        params: the ``ingest.synthetic`` params.

    Returns:
        Patients in a fixed order, MIMIC-style first, then PadChest-style.
    """
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise ValueError(f"unknown synthetic profile {profile!r}; choose one of {sorted(PROFILES)}")
        profile = PROFILES[profile]
    rng = np.random.default_rng([seed, 0x5EED])
    table = load_pattern_table()
    probs = table["count"].to_numpy(dtype=float)
    probs /= probs.sum()
    # the AP share of the table: with view_confound off, every study's view is drawn from it alone
    ap_share = float(probs[(table["view"] == "AP").to_numpy()].sum())

    patients: list[Patient] = []
    used_subjects: set[int] = set()
    image_index = 0
    for dataset, n in (("mimic", profile.mimic_patients), ("padchest", profile.padchest_patients)):
        for _ in range(n):
            sex = "F" if rng.random() < 0.45 else "M"
            age = int(np.clip(rng.normal(62, 17), 18, 95))
            if dataset == "mimic":
                subject = int(rng.integers(10_000_000, 19_999_999))
                while subject in used_subjects:
                    subject = int(rng.integers(10_000_000, 19_999_999))
                used_subjects.add(subject)
                pid = str(subject)
            else:
                pid = _digits(rng, 39)  # PadChest ids are 38-39 digit decimal strings
            patient = Patient(dataset, pid, sex, age, anatomy_seed=int(rng.integers(2**31)))
            n_studies = int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15])) if dataset == "mimic" else 1
            prev: Study | None = None
            for s in range(n_studies):
                if prev is not None and rng.random() < 0.5:
                    row, view, comparison = prev.raw_labels, prev.view, "unchanged"
                else:
                    k = int(rng.choice(len(table), p=probs))
                    row = dict(zip(CHEXPERT14, _decode(table["pattern"].iat[k])))
                    view, comparison = table["view"].iat[k], None
                    if not params.view_confound:  # an extra draw only in this mode: the default plan is unchanged
                        view = "AP" if rng.random() < ap_share else "PA"
                findings, negated = _findings_from_row(row, rng, params.uncertain_positive_rate)
                if comparison == "unchanged":  # same disease, same drawing details
                    findings = [Finding(**f.__dict__) for f in prev.findings]
                    negated = list(prev.negated)
                if dataset == "mimic":
                    study_id = str(int(rng.integers(50_000_000, 59_999_999)))
                else:
                    study_id = _digits(rng, 39)
                study = Study(dataset, pid, study_id, s, view, findings, negated, row, comparison if s else None)
                positives = [f.name for f in findings if f.certainty == "positive"]
                if positives and rng.random() < params.report_disagreement:
                    study.report_omits = str(rng.choice(positives))
                views = [view] + (["LATERAL"] if rng.random() < profile.lateral_rate else [])
                for v in views:
                    study.images.append(_plan_image(dataset, v, image_index, profile, rng, params))
                    image_index += 1
                patient.studies.append(study)
                prev = study
            patients.append(patient)
    _assign_broken(patients, rng, params.broken_fraction)
    return patients


def _decode(pattern: str) -> list[float]:
    return [{"1": 1.0, "0": 0.0, "u": -1.0, ".": np.nan}[c] for c in pattern]


def _plan_image(dataset: str, view: str, index: int, profile: Profile, rng: np.random.Generator, params: SyntheticParams) -> ImagePlan:
    lo, hi = profile.side_range
    long_side = int(rng.integers(lo, hi + 1)) // 8 * 8
    aspect = float(rng.uniform(0.8, 1.0))  # short/long
    short_side = int(round(long_side * aspect)) // 8 * 8
    if view == "LATERAL" or rng.random() < 0.5:
        rows, cols = long_side, short_side  # portrait
    else:
        rows, cols = short_side, long_side
    if dataset == "mimic":
        # Acquisition settings cycle with the image index (at different periods), so even a
        # tiny cohort covers every transfer syntax, photometric, bit depth and rescale case.
        image_id = "-".join(_hex(rng, 4) for _ in range(5))
        acq = {
            "photometric": "MONOCHROME1" if index % 4 == 1 else "MONOCHROME2",
            "bits_stored": (12, 14, 16)[(index // 3) % 3],
            "rescale": ((1.0, 0.0), (1.0, -1024.0), (1.0, 0.0), (2.0, 0.0), (0.5, 100.0))[index % 5],
            "window": index % 2 == 0,
            "transfer_syntax": ("explicit_le", "rle", "j2k")[index % 3],
            "spacing": round(float(rng.uniform(0.14, 0.2)) * 2500 / long_side, 4),
            "modality": str(rng.choice(["CR", "DX"])),
        }
    else:
        image_id = f"{_digits(rng, 39)}_{_hex(rng, 3)[:6]}.png"
        acq = {
            "photometric": "MONOCHROME2",
            "bits_stored": 12,
            "rescale": (1.0, 0.0),
            "window": True,
            "transfer_syntax": "png16",
            "spacing": round(float(rng.uniform(0.14, 0.2)) * 2500 / long_side, 4),
            "modality": str(rng.choice(["CR", "DX"])),
        }
    frontal = view != "LATERAL"
    return ImagePlan(
        image_id=image_id,
        index=index,
        view=view,
        rows=rows,
        cols=cols,
        acquisition=acq,
        with_masks=dataset == "mimic" and frontal and rng.random() < params.mask_fraction,
        with_boxes=frontal and rng.random() < params.box_fraction,
    )


def _assign_broken(patients: list[Patient], rng: np.random.Generator, fraction: float) -> None:
    images = [im for p in patients for s in p.studies for im in s.images]
    n = int(round(fraction * len(images)))
    if fraction > 0 and n == 0:
        n = 1  # a nonzero fraction always exercises the failure path
    for k in sorted(rng.choice(len(images), size=min(n, len(images)), replace=False).tolist()):
        im = images[k]
        if im.acquisition["transfer_syntax"] == "png16":
            im.broken = "truncated"
        else:
            im.broken = str(rng.choice(["truncated", "no_pixel_data"]))
        im.with_masks = im.with_boxes = False


def iter_images(patients: list[Patient]):
    """Yield (patient, study, image) in plan order."""
    for p in patients:
        for s in p.studies:
            for im in s.images:
                yield p, s, im


def truth_frame(patients: list[Patient]) -> pd.DataFrame:
    """One row per image: ids, view, demographics, acquisition and the true findings."""
    rows = []
    for p, s, im in iter_images(patients):
        row = {
            # the pipeline's image id is the file stem (PadChest's ImageID keeps ".png")
            "image_id": im.image_id.removesuffix(".png"),
            "dataset": p.dataset,
            "patient_id": p.patient_id,
            "study_id": s.study_id,
            "view": im.view,
            "sex": p.sex,
            "age": p.age,
            "rows": im.rows,
            "cols": im.cols,
            "photometric": im.acquisition["photometric"],
            "bits_stored": im.acquisition["bits_stored"],
            "transfer_syntax": im.acquisition["transfer_syntax"],
            "broken": im.broken,
            "with_masks": im.with_masks,
            "with_boxes": im.with_boxes,
            "report_omits": s.report_omits or "",
            "comparison": s.comparison or "",
        }
        truth = s.truth
        row.update({name: truth[name] for name in CHEXPERT14})
        row["Nodule"] = int(any(f.kind == "nodule" for f in s.findings))
        row["Mass"] = int(any(f.kind == "mass" for f in s.findings))
        row["uncertain"] = ",".join(f.name for f in s.findings if f.certainty == "uncertain")
        row["devices"] = next((f.kind for f in s.findings if f.name == "Support Devices"), "") or ""
        rows.append(row)
    return pd.DataFrame(rows)
