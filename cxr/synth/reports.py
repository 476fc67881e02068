"""Free-text reports and PadChest-style labels generated from a study's true findings.

MIMIC-CXR-style reports have EXAMINATION / INDICATION / COMPARISON / FINDINGS / IMPRESSION
sections and use the phrasing a labeller must cope with: positive statements with laterality
and severity, negations ("No pleural effusion."), hedges ("cannot exclude pneumonia", "may
represent atelectasis"), comparisons ("unchanged from prior") and normal templates.
"""

from __future__ import annotations

import numpy as np

from cxr.synth.cohort import Finding, Study

_SIDE = {"right": "right", "left": "left", "bilateral": "bilateral"}
_LOBE = {
    ("right", "upper"): "right upper lobe",
    ("right", "mid"): "right middle lobe",
    ("right", "lower"): "right lower lobe",
    ("left", "upper"): "left upper lobe",
    ("left", "mid"): "lingula",
    ("left", "lower"): "left lower lobe",
}


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _where(f: Finding) -> str:
    if f.side == "bilateral":
        return f"bilateral {f.zone or 'lower'} lung" if f.zone else "both lungs"
    if f.side and f.zone:
        return _LOBE[(f.side, f.zone)]
    return f"{f.side} lung" if f.side else "lungs"


def _phrase(f: Finding, rng: np.random.Generator) -> str:
    """A noun phrase naming the finding, e.g. 'small right pleural effusion'."""
    size = {"mild": "small", "moderate": "moderate", "severe": "large"}.get(f.severity or "", "")
    if f.name == "Pleural Effusion":
        noun = "pleural effusions" if f.side == "bilateral" else "pleural effusion"
        return f"{size} {_SIDE[f.side]} {noun}".strip()
    if f.name == "Pneumothorax":
        return f"{size} {f.side} {_pick(rng, ['apical ', ''])}pneumothorax"
    if f.name == "Consolidation":
        return f"consolidation in the {_where(f)}"
    if f.name == "Pneumonia":
        return f"pneumonia in the {_where(f)}"
    if f.name == "Lung Opacity":
        return f"{_pick(rng, ['patchy', 'hazy', 'ill-defined'])} opacity in the {_where(f)}"
    if f.name == "Atelectasis":
        base = "bibasilar" if f.side == "bilateral" else f"{f.side} basilar"
        return f"{base} atelectasis"
    if f.name == "Edema":
        return f"{f.severity or 'mild'} pulmonary edema"
    if f.name == "Cardiomegaly":
        return f"{f.severity or 'mild'} cardiomegaly"
    if f.name == "Enlarged Cardiomediastinum":
        return "widening of the mediastinum"
    if f.name == "Lung Lesion":
        if f.kind == "mass":
            return f"{f.size * 60:.1f} cm mass in the {_where(f)}"
        return f"{int(round(f.size * 600))} mm nodule in the {_where(f)}"
    if f.name == "Fracture":
        n = int((f.kind or "rib5")[3:])
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(n, "th")
        return f"fracture of the {f.side} posterior {n}{suffix} rib"
    if f.name == "Pleural Other":
        return f"{f.side} pleural thickening"
    raise ValueError(f"no phrase for finding {f.name!r}")


def _positive(f: Finding, rng: np.random.Generator) -> str:
    if f.name == "Support Devices":
        return " ".join(_device_sentence(k, rng) for k in (f.kind or "").split(",") if k)
    if f.name == "Cardiomegaly":
        adverb = {"mild": "mildly", "moderate": "moderately", "severe": "severely"}[f.severity or "mild"]
        return _pick(rng, [f"The heart is {adverb} enlarged.", f"There is {_phrase(f, rng)}."])
    p = _phrase(f, rng)
    verb = "are" if p.endswith("effusions") else "is"
    return _pick(rng, [f"There {verb} {p}.", f"{p[0].upper()}{p[1:]}.", f"{p[0].upper()}{p[1:]} {verb} present."])


def _uncertain(f: Finding, rng: np.random.Generator) -> str:
    p = _phrase(f, rng)
    return _pick(rng, [
        f"{p[0].upper()}{p[1:]} cannot be excluded.",
        f"Possible {p}.",
        f"Findings may represent {p}.",
        f"Questionable {p}.",
    ])


def _device_sentence(kind: str, rng: np.random.Generator) -> str:
    return {
        "ett": f"Endotracheal tube terminates {rng.uniform(2.5, 6):.1f} cm above the carina.",
        "ngt": "Nasogastric tube courses below the diaphragm with the tip in the stomach.",
        "central_line": "Central venous catheter terminates in the mid SVC.",
        "pacemaker": "Left chest wall pacemaker with leads in the right atrium and right ventricle.",
    }[kind]


_NEGATIONS = {
    "Pleural Effusion": ["No pleural effusion.", "There is no pleural effusion."],
    "Pneumothorax": ["No pneumothorax.", "There is no pneumothorax."],
    "Consolidation": ["No focal consolidation.", "There is no focal consolidation."],
    "Pneumonia": ["No evidence of pneumonia."],
    "Edema": ["No pulmonary edema.", "There is no pulmonary vascular congestion or edema."],
    "Cardiomegaly": ["Heart size is normal.", "The heart is not enlarged."],
    "Enlarged Cardiomediastinum": ["The mediastinum is not widened."],
    "Atelectasis": ["No atelectasis."],
    "Lung Opacity": ["No focal opacity."],
    "Lung Lesion": ["No pulmonary nodules or masses."],
    "Fracture": ["No acute rib fracture."],
    "Pleural Other": ["No pleural thickening."],
    "Support Devices": [],
}


def mimic_report(study: Study, rng: np.random.Generator) -> str:
    """A MIMIC-CXR-style free-text report for ``study``."""
    findings = [f for f in study.findings if f.name != study.report_omits]
    views = {im.view for im in study.images}
    exam = "CHEST (PA AND LAT)" if "LATERAL" in views else ("CHEST (PORTABLE AP)" if study.view == "AP" else "CHEST (PA)")
    indication = _pick(rng, ["___F with cough", "___M with shortness of breath", "Evaluate for pneumonia.",
                             "___ year old with fever", "Line placement.", "History: ___ with chest pain"])
    comparison = "___" if study.study_index else "None."

    body, impression = [], []
    order = sorted(findings, key=lambda f: (f.name == "Support Devices", f.name))
    for f in order:
        if f.name == "Support Devices":
            body.append(_positive(f, rng))
            continue
        sentence = _positive(f, rng) if f.certainty == "positive" else _uncertain(f, rng)
        if study.comparison == "unchanged" and rng.random() < 0.5:
            sentence = f"Unchanged {_phrase(f, rng)} compared to the prior study." if f.certainty == "positive" else sentence
        body.append(sentence)
        impression.append(sentence)
    for name in study.negated:
        options = _NEGATIONS.get(name) or []
        if options and not any(f.name == name for f in findings):
            body.append(_pick(rng, options))
    if not [f for f in findings if f.name != "Support Devices"]:
        body.insert(0, _pick(rng, ["The lungs are clear.", "Lungs are well expanded and clear."]))
        if "Cardiomegaly" not in study.negated:
            body.append(_pick(rng, ["The cardiomediastinal silhouette is within normal limits.",
                                    "Cardiac and mediastinal contours are normal."]))
        impression = [_pick(rng, ["No acute cardiopulmonary process.", "No acute intrathoracic abnormality."])]
    elif study.comparison == "unchanged" and rng.random() < 0.5:
        impression = ["No significant interval change from the prior study."]
    lines = [
        "                                 FINAL REPORT",
        f" EXAMINATION:  {exam}",
        "",
        f" INDICATION:  {indication}",
        "",
        f" COMPARISON:  {comparison}",
        "",
        " FINDINGS: ",
        " ",
        " " + " ".join(body),
        " ",
        " IMPRESSION: ",
        " ",
        " " + " ".join(f"{i + 1}. {s}" if len(impression) > 1 else s for i, s in enumerate(impression)),
        "",
    ]
    return "\n".join(lines)


# PadChest: labels in its own vocabulary, report as stemmed Spanish tokens (as PadChest ships it)
_PADCHEST = {
    "Cardiomegaly": ("cardiomegaly", "cardiomegali"),
    "Enlarged Cardiomediastinum": ("mediastinal enlargement", "ensanch mediastin"),
    "Pleural Effusion": ("pleural effusion", "derram pleural"),
    "Pneumothorax": ("pneumothorax", "neumotorax"),
    "Consolidation": ("consolidation", "consolid"),
    "Pneumonia": ("pneumonia", "neumoni"),
    "Lung Opacity": ("infiltrates", "infiltr"),
    "Atelectasis": ("atelectasis", "atelectasi"),
    "Edema": ("pulmonary edema", "edem pulmonar"),
    "Fracture": ("rib fracture", "fractur costal"),
    "Pleural Other": ("pleural thickening", "engros pleural"),
}
_PADCHEST_DEVICES = {
    "ett": ("endotracheal tube", "tub endotraqueal"),
    "ngt": ("NSG tube", "sond nasogastr"),
    "central_line": ("central venous catheter", "cateter venos central"),
    "pacemaker": ("pacemaker", "marcapas"),
}


def padchest_labels(study: Study) -> tuple[list[str], list[str], str]:
    """(Labels, Localizations, stemmed Spanish report) for a PadChest-style row."""
    labels, locs, words = [], [], []
    for f in study.findings:
        if f.name == "Support Devices":
            for k in filter(None, (f.kind or "").split(",")):
                labels.append(_PADCHEST_DEVICES[k][0])
                words.append(_PADCHEST_DEVICES[k][1])
            continue
        if f.name == "Lung Lesion":
            lab, word = ("mass", "mas") if f.kind == "mass" else ("nodule", "nodul")
        else:
            lab, word = _PADCHEST[f.name]
        labels.append(lab)
        words.append(word if f.certainty == "positive" else f"posibl {word}")
        if f.side in ("right", "left"):
            locs.append(f"loc {f.side}")
        if f.zone:
            locs.append({"upper": "loc upper lobe", "mid": "loc middle lobe", "lower": "loc basal"}[f.zone])
    if not labels:
        labels, words = ["normal"], ["sin hallazg radiolog signific"]
    return sorted(dict.fromkeys(labels)), sorted(dict.fromkeys(locs)), " " + " . ".join(words) + " ."
