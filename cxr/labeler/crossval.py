"""K-fold cross-validation of the labeller's phrase lists on expert-labelled reports.

A phrase list written while reading a set of reports fits that set; its score there says little
about reports it never saw. This module measures the one data-driven choice the labeller makes -
which mention phrases to keep - the honest way:

1. Split the labelled reports into ``k`` folds (seeded permutation).
2. On the ``k - 1`` training folds, attribute every asserted mention to the phrase that produced
   it (:func:`phrase_of`) and count, per phrase, the reports where it asserted the observation and
   how many of those the experts agree with (:func:`phrase_precision`). A phrase of a helper
   observation (one that only blocks No Finding) is right when the report is not normal.
3. Drop the phrases that asserted at least ``min_count`` times with precision below
   ``min_precision`` (:func:`prune_spec`), and label the held-out fold with what is left.

The held-out folds are scored with the selected lists, with the unpruned lists and with the
keyword baseline (every mention positive). Negation, uncertainty and sections are never tuned.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cxr.labeler.context import VocabularyError, compile_phrases
from cxr.labeler.labeler import Labeler
from cxr.labeler.vocabulary import PACKAGED, parse_vocabulary


def vocabulary_spec(name_or_path: str | Path) -> tuple[dict[str, Any], str]:
    """The raw (parsed YAML) spec of a packaged vocabulary or a vocabulary file, and its source name."""
    s = str(name_or_path)
    if s in PACKAGED:
        ref = resources.files("cxr.labeler") / "vocab" / f"{s}.yaml"
        return yaml.safe_load(ref.read_text(encoding="utf-8")), f"cxr/labeler/vocab/{s}.yaml"
    path = Path(s)
    if not path.is_file():
        raise VocabularyError(f"unknown vocabulary {s!r}: not a packaged one {list(PACKAGED)} and not a file")
    return yaml.safe_load(path.read_text(encoding="utf-8")), str(path)


@dataclass(frozen=True)
class PhraseIndex:
    """Each observation's mention phrases, compiled one by one (longest first, as the labeller tries them)."""

    phrases: Mapping[str, Sequence[tuple[str, re.Pattern[str]]]]

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> PhraseIndex:
        out = {}
        for o in spec["observations"]:
            ps = sorted(o.get("mentions") or [], key=lambda p: (-len(str(p)), str(p)))
            out[o["name"]] = [(p, compile_phrases([p], f"{o['name']}: {p}")) for p in ps]
        return cls(out)


def phrase_of(index: PhraseIndex, observation: str, text: str) -> str | None:
    """The phrase of ``observation`` that matched the mention ``text`` (None for a normality statement)."""
    low = " ".join(text.lower().split())
    for phrase, pat in index.phrases.get(observation, ()):
        if pat.fullmatch(low):
            return phrase
    return None


def asserted_phrases(labeller: Labeler, index: PhraseIndex, reports: Sequence[str]) -> list[set[tuple[str, str]]]:
    """Per report, the ``(observation, phrase)`` pairs that asserted the observation.

    Asserted: value 1 for an output observation; 1 or -1 for a helper one (either blocks No Finding).
    """
    helpers = {o.name for o in labeller.vocab.observations if not o.output}
    out = []
    for r in reports:
        found = set()
        for m in labeller.mentions(r):
            if m.value == 1 or (m.value == -1 and m.observation in helpers):
                p = phrase_of(index, m.observation, m.text)
                if p is not None:
                    found.add((m.observation, p))
        out.append(found)
    return out


def phrase_precision(asserted: Sequence[set[tuple[str, str]]], gold: Mapping[str, np.ndarray],
                     helpers: Sequence[str], normal: np.ndarray | None) -> dict[tuple[str, str], tuple[int, int]]:
    """``(observation, phrase) -> (reports asserted, reports where the experts agree)``.

    Args:
        asserted: from :func:`asserted_phrases`, one set per report.
        gold: observation name -> bool expert positives, one per report (observations without a
            gold column are not counted).
        helpers: helper observations; they are right where ``normal`` is False.
        normal: bool expert "normal" per report (None: helpers are not counted).
    """
    stats: dict[tuple[str, str], list[int]] = {}
    for i, found in enumerate(asserted):
        for obs, phrase in found:
            if obs in gold:
                right = bool(gold[obs][i])
            elif obs in helpers and normal is not None:
                right = not bool(normal[i])
            else:
                continue
            s = stats.setdefault((obs, phrase), [0, 0])
            s[0] += 1
            s[1] += right
    return {k: (v[0], v[1]) for k, v in stats.items()}


def prune_spec(spec: Mapping[str, Any], drop: set[tuple[str, str]]) -> dict[str, Any]:
    """A copy of a vocabulary spec without the ``(observation, phrase)`` mention phrases in ``drop``.

    An observation keeps at least one phrase (a vocabulary needs one): if every phrase would go,
    its first listed phrase stays.
    """
    out = copy.deepcopy(dict(spec))
    for o in out["observations"]:
        kept = [p for p in o.get("mentions") or [] if (o["name"], p) not in drop]
        o["mentions"] = kept or list(o.get("mentions") or [])[:1]
    return out


def select_phrases(stats: Mapping[tuple[str, str], tuple[int, int]], min_count: int = 3,
                   min_precision: float = 0.5) -> set[tuple[str, str]]:
    """Phrases to drop: asserted at least ``min_count`` times with precision below ``min_precision``."""
    return {k for k, (n, good) in stats.items() if n >= min_count and good / n < min_precision}


def fold_ids(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Fold number (0 .. k-1) of each of ``n`` items: a seeded permutation cut into ``k`` near-equal parts."""
    if k < 2 or k > n:
        raise ValueError(f"k-fold needs 2 <= k <= {n} items, got k={k}")
    order = np.random.default_rng(seed).permutation(n)
    folds = np.empty(n, dtype=int)
    folds[order] = np.arange(n) % k
    return folds


def labeller_from_spec(spec: Mapping[str, Any], source: str, sections: Sequence[str] = ("findings", "impression")) -> Labeler:
    """A :class:`Labeler` over a (pruned) vocabulary spec."""
    return Labeler(parse_vocabulary(dict(spec), source), sections=sections)
