"""A small ConText / NegEx implementation (Harkema et al. 2009, J Biomed Inform 42:839).

ConText decides, for each target mention in a sentence, whether it is negated, uncertain or
asserted, from *trigger* phrases that open a scope in one direction (forward, backward or
both) until the end of the sentence or a *terminator* ("but", "however", ...). *Pseudo*
triggers ("no change", "not only") look like triggers but are not, and cancel the triggers
they overlap.

The CheXpert labeller classifies a mention in three passes (Irvin et al. 2019): pre-negation
uncertainty ("cannot be excluded": contains a negation word but means uncertain), then
negation, then post-negation uncertainty ("may represent"). :meth:`ConText.classify` applies
the same order: the first category whose scope covers the mention decides.

The trigger lists are data (``vocab/context.yaml``), not code. We implement the algorithm here
rather than through medspacy because medspacy 1.3.1 pins spaCy < 3.8, which does not import
under numpy 2, and because a regular-expression implementation labels thousands of reports per
second on one core without any model download.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from cxr.errors import CxrError

#: Classification categories, in the order they are tested (the first that applies wins).
#: ``hypothetical`` (ConText's hypothetical/historical: "if", "to exclude", "history of") drops
#: the mention: it says nothing about this radiograph. It comes after pre-negation uncertainty
#: so that "cannot exclude X" stays uncertain.
CATEGORIES = ("pre_negation_uncertainty", "hypothetical", "negation", "post_negation_uncertainty")
#: Value of a mention for each category; an unmodified mention is positive (1), None = dropped.
CATEGORY_VALUE = {"hypothetical": None, "pre_negation_uncertainty": -1, "negation": 0, "post_negation_uncertainty": -1}
DIRECTIONS = ("forward", "backward", "bidirectional")


#: ``{w}`` in a phrase: one word that is not a negation (so "heart is {w}{0,2}enlarged" cannot
#: swallow the "not" of "heart is not enlarged").
_WORD = r"(?:(?!(?:not|no|nor|without|never)\b)[\w-]+\s+)"


class VocabularyError(CxrError, ValueError):
    """A vocabulary or trigger file is malformed (the message names the file, key and value)."""


def compile_phrases(phrases: list[str], where: str) -> re.Pattern[str] | None:
    """Compile phrase patterns into one case-insensitive regex matching whole words.

    Phrases are regular-expression fragments over lower-cased text; a space matches any run of
    whitespace, `` ?`` optional whitespace, ``{w}`` one word that is not a negation. Longer phrases are tried first so that "pleural effusion" wins over "effusion".

    Args:
        phrases: pattern fragments.
        where: description of their origin for error messages (file and key).

    Returns:
        The compiled pattern, or None for an empty list.

    Raises:
        VocabularyError: a phrase is not a string or not a valid regular expression.
    """
    if not phrases:
        return None
    parts = []
    for p in sorted(phrases, key=lambda s: (-len(str(s)), str(s))):
        if not isinstance(p, str) or not p.strip():
            raise VocabularyError(f"{where}: phrase {p!r} must be a non-empty string")
        frag = p.strip().lower().replace(" ?", r"\s*")  # "air ?space": optional space
        frag = re.sub(r" +", r"\\s+", frag).replace("{w}", _WORD)
        try:
            re.compile(frag)
        except re.error as exc:
            raise VocabularyError(f"{where}: phrase {p!r} is not a valid pattern: {exc}") from None
        parts.append(f"(?:{frag})")
    return re.compile(r"(?<![\w-])(?:" + "|".join(parts) + r")(?![\w-])", re.IGNORECASE)


@dataclass(frozen=True)
class Trigger:
    """A matched trigger phrase: category, direction and character span in the sentence."""

    category: str
    direction: str
    start: int
    end: int


class ConText:
    """ConText engine configured from a trigger file.

    Args:
        spec: mapping with keys ``pre_negation_uncertainty``, ``hypothetical``, ``negation``,
            ``post_negation_uncertainty`` (each a mapping ``forward/backward/bidirectional`` ->
            phrase list), ``pseudo`` and ``terminate`` (phrase lists).
        source: name of the file the spec came from, for error messages.
    """

    def __init__(self, spec: dict[str, Any], source: str = "<context>") -> None:
        if not isinstance(spec, dict):
            raise VocabularyError(f"{source}: top level must be a mapping, got {type(spec).__name__}")
        allowed = {*CATEGORIES, "pseudo", "terminate"}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise VocabularyError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        self.triggers: list[tuple[str, str, re.Pattern[str]]] = []
        for cat in CATEGORIES:
            block = spec.get(cat) or {}
            if not isinstance(block, dict):
                raise VocabularyError(f"{source}: {cat} must map directions {DIRECTIONS} to phrase lists")
            for direction, phrases in block.items():
                if direction not in DIRECTIONS:
                    raise VocabularyError(f"{source}: {cat}.{direction}: unknown direction; use one of {DIRECTIONS}")
                if not isinstance(phrases, list):
                    raise VocabularyError(f"{source}: {cat}.{direction} must be a list of phrases")
                pat = compile_phrases(phrases, f"{source}: {cat}.{direction}")
                if pat is not None:
                    self.triggers.append((cat, direction, pat))
        for key in ("pseudo", "terminate"):
            if not isinstance(spec.get(key) or [], list):
                raise VocabularyError(f"{source}: {key} must be a list of phrases")
        self.pseudo = compile_phrases(spec.get("pseudo") or [], f"{source}: pseudo")
        self.terminate = compile_phrases(spec.get("terminate") or [], f"{source}: terminate")

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> ConText:
        """Load a trigger file (default: the packaged ``vocab/context.yaml``)."""
        if path is None:
            ref = resources.files("cxr.labeler") / "vocab" / "context.yaml"
            text, source = ref.read_text(encoding="utf-8"), "cxr/labeler/vocab/context.yaml"
        else:
            text, source = Path(path).read_text(encoding="utf-8"), str(path)
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise VocabularyError(f"{source}: not valid YAML: {exc}") from None
        return cls(spec, source)

    def find_triggers(self, sentence: str) -> tuple[list[Trigger], list[int]]:
        """Triggers (pseudo-triggers removed) and terminator positions in ``sentence``."""
        pseudo = [m.span() for m in self.pseudo.finditer(sentence)] if self.pseudo else []
        found = []
        for cat, direction, pat in self.triggers:
            for m in pat.finditer(sentence):
                s, e = m.span()
                if any(ps < e and s < pe for ps, pe in pseudo):
                    continue
                found.append(Trigger(cat, direction, s, e))
        stops = [m.start() for m in self.terminate.finditer(sentence)] if self.terminate else []
        return found, stops

    @staticmethod
    def _covers(t: Trigger, start: int, end: int, stops: list[int]) -> bool:
        if t.start < end and start < t.end:  # trigger overlaps the mention: "no-effusion" style
            return False
        if t.end <= start and t.direction in ("forward", "bidirectional"):
            return not any(t.end <= p < start for p in stops)
        if end <= t.start and t.direction in ("backward", "bidirectional"):
            return not any(end <= p < t.start for p in stops)
        return False

    def classify(self, start: int, end: int, triggers: list[Trigger], stops: list[int]) -> int | None:
        """Value of the mention at ``[start, end)``: -1 uncertain, 0 negated, 1 positive, None dropped."""
        for cat in CATEGORIES:
            if any(t.category == cat and self._covers(t, start, end, stops) for t in triggers):
                return CATEGORY_VALUE[cat]
        return 1
