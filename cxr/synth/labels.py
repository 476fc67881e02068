"""Joint label statistics for the synthetic cohort, taken from the real CheXpert label table.

The generator does not invent prevalences: it samples whole label rows (one per study) from the
frontal-image label patterns of the real CheXpert-v1.0 train table, so prevalence *and*
co-occurrence (effusion with edema, devices with ICU findings, ...) follow real data. The
package ships only the aggregated pattern counts (``data/chexpert_frontal_patterns.csv.gz``,
columns ``view, pattern, count``); :func:`build_pattern_table` rebuilds it from the original
table, and a test checks that the shipped file equals the rebuild.

A pattern is one character per observation of :data:`CHEXPERT14`, in that order:
``1`` positive, ``0`` negative, ``u`` uncertain (-1), ``.`` not mentioned (blank).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

CHEXPERT14 = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
_CODE = {1.0: "1", 0.0: "0", -1.0: "u"}
_VALUE = {"1": 1.0, "0": 0.0, "u": -1.0, ".": np.nan}
PATTERN_FILE = "chexpert_frontal_patterns.csv.gz"


def build_pattern_table(chexpert_csv: str | Path) -> pd.DataFrame:
    """Aggregate a CheXpert ``train.csv`` into counts of (view, label pattern) over frontal images.

    Args:
        chexpert_csv: path to CheXpert's train.csv (plain or gzipped).

    Returns:
        DataFrame with columns ``view`` (AP/PA), ``pattern`` (14 chars), ``count``, sorted by
        descending count then pattern, so the output is deterministic.
    """
    df = pd.read_csv(chexpert_csv)
    missing = [c for c in ("Frontal/Lateral", "AP/PA", *CHEXPERT14) if c not in df.columns]
    if missing:
        raise ValueError(f"{chexpert_csv}: not a CheXpert label table, missing columns {missing}")
    fr = df[(df["Frontal/Lateral"] == "Frontal") & df["AP/PA"].isin(["AP", "PA"])]
    codes = [fr[c].map(_CODE).fillna(".") for c in CHEXPERT14]
    pattern = codes[0].str.cat(codes[1:])
    table = (
        pd.DataFrame({"view": fr["AP/PA"].to_numpy(), "pattern": pattern.to_numpy()})
        .value_counts()
        .rename("count")
        .reset_index()
        .sort_values(["count", "view", "pattern"], ascending=[False, True, True], kind="stable")
        .reset_index(drop=True)
    )
    return table


def load_pattern_table() -> pd.DataFrame:
    """The shipped pattern counts (see module docstring)."""
    ref = resources.files("cxr.synth") / "data" / PATTERN_FILE
    with ref.open("rb") as fh:
        return pd.read_csv(fh, compression="gzip", dtype={"view": str, "pattern": str, "count": np.int64})


def pattern_values(pattern: str) -> dict[str, float]:
    """Decode a pattern string into {observation: 1 / 0 / -1 / NaN}."""
    if len(pattern) != len(CHEXPERT14) or set(pattern) - set(_VALUE):
        raise ValueError(f"bad label pattern {pattern!r}: expected {len(CHEXPERT14)} chars of 1/0/u/.")
    return {name: _VALUE[ch] for name, ch in zip(CHEXPERT14, pattern)}


def reference_prevalence(table: pd.DataFrame, uncertain_positive_rate: float) -> pd.Series:
    """Expected truth prevalence per observation implied by ``table`` (count-weighted).

    A ``-1`` counts as present with probability ``uncertain_positive_rate``. "No Finding" is
    derived as the generator derives it: no observation other than Support Devices present.
    """
    w = table["count"].to_numpy(dtype=float)
    out = {}
    p_clear = np.ones(len(table))
    for i, name in enumerate(CHEXPERT14):
        ch = table["pattern"].str[i].to_numpy()
        p = (ch == "1") + uncertain_positive_rate * (ch == "u")
        out[name] = float((w * p).sum() / w.sum())
        if name not in ("No Finding", "Support Devices"):
            p_clear = p_clear * (1.0 - p)
    out["No Finding"] = float((w * p_clear).sum() / w.sum())
    return pd.Series(out)
