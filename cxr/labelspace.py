"""The named label spaces and how a label-space spec resolves to label names (a leaf: no cxr imports
but the error base), so that :mod:`cxr.params` can check ``base.label_space`` without the label maps.
"""

from __future__ import annotations

from collections.abc import Sequence

from cxr.errors import CxrError

CHEXPERT14 = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
CHESTXRAY14 = (
    "No Finding", "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
ANAXNET9 = (
    "lung opacity", "pleural effusion", "atelectasis", "enlarged cardiac silhouette", "pulmonary edema/hazy opacity",
    "pneumothorax", "consolidation", "fluid overload/heart failure", "pneumonia",
)
PADCHEST22 = (
    "aortic elongation", "atelectasis", "cardiomegaly", "catheter", "copd signs", "pleural effusion",
    "electrical device", "emphysema", "heart insufficiency", "infiltrates", "mass", "nodule", "normal",
    "nsg tube", "other findings", "pneumonia", "pneumothorax", "pulmonary edema", "pulmonary fibrosis",
    "surgery", "thoracic cage deformation", "tuberculosis",
)
LABEL_SPACES: dict[str, tuple[str, ...]] = {
    "chexpert14": CHEXPERT14,
    "chestxray14": CHESTXRAY14,
    "anaxnet9": ANAXNET9,
    "padchest22": PADCHEST22,
    "binary": ("Abnormal",),
}
_MAPPED_SPACES = ("chexpert14", "chestxray14", "anaxnet9", "padchest22")


class LabelError(CxrError, ValueError):
    """Bad label input: unknown space, vocabulary, term, value or policy (the message names it)."""


def resolve_space(space: str | Sequence[str]) -> tuple[str, list[str]]:
    """Resolve a label-space spec into (named space to map into, label names in order).

    ``space`` is the name of a space in :data:`LABEL_SPACES`, or an explicit list of label names
    that all belong to one mapped space (chexpert14, chestxray14, anaxnet9 or padchest22, tried
    in that order), e.g. ``["Cardiomegaly", "Edema", "Pleural Effusion"]``: labels are mapped into
    that space and the listed columns kept, in the listed order.

    Raises:
        LabelError: unknown space, empty or duplicated list, or names that no single space has.
    """
    if isinstance(space, str):
        if space not in LABEL_SPACES:
            raise LabelError(f"unknown label space {space!r}; choose one of {sorted(LABEL_SPACES)} or list label names")
        return space, list(LABEL_SPACES[space])
    names = [str(n) for n in space]
    if not names:
        raise LabelError("empty label list; name at least one label or a label space")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LabelError(f"label list names {dup} more than once")
    for base in _MAPPED_SPACES:
        if set(names) <= set(LABEL_SPACES[base]):
            return base, names
    known = set().union(*(LABEL_SPACES[b] for b in _MAPPED_SPACES))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise LabelError(f"unknown label(s) {unknown} in the label list; labels of {list(_MAPPED_SPACES)} are allowed")
    raise LabelError(f"labels {names} do not all belong to one of {list(_MAPPED_SPACES)}; pick them from one space")


def label_names(space: str | Sequence[str]) -> list[str]:
    """Label names of ``space`` (a space name or an explicit list, see :func:`resolve_space`) in order.

    Raises:
        LabelError: unknown space or bad list (the message lists the valid choices).
    """
    return resolve_space(space)[1]
