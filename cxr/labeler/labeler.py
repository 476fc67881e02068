"""CheXpert-style rule-based report labeller (Irvin et al., AAAI 2019), in-process.

Pipeline per report: section extraction -> sentence split -> mention extraction from the
vocabulary's phrase lists (minus "unmentions") -> ConText classification of each mention
(pre-negation uncertainty, negation, post-negation uncertainty) -> two post-negation
uncertainty rules of the CheXpert labeller that a trigger list cannot say: mentions that are
uncertain by themselves (an observation's ``uncertain`` phrases: "vascular congestion") and
mentions joined by "or" ("atelectasis or pneumonia": both uncertain) -> aggregation per
observation -> vocabulary rules (heart failure adds -1 to Cardiomegaly) -> the No Finding rule.

Values: 1 positive, 0 negative, -1 uncertain, NaN not mentioned.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.labeler.context import ConText
from cxr.labeler.vocabulary import Vocabulary, load_vocabulary
from cxr.progress import tqdm

log = logging.getLogger(__name__)

#: Sections never labelled when a report has headers but none of the requested sections.
NON_CLINICAL_SECTIONS = frozenset(
    {
        "indication", "history", "clinical history", "clinical information", "reason for exam",
        "reason for examination", "comparison", "comparisons", "technique", "examination", "exam",
        "procedure", "notification", "recommendation", "recommendations", "final report", "wet read",
        "addendum", "type of examination", "clinical indication",
    }
)
KNOWN_SECTIONS = NON_CLINICAL_SECTIONS | {"findings", "impression", "conclusion", "conclusions", "summary", "opinion"}
SECTION_ALIASES = {"conclusion": "impression", "conclusions": "impression", "summary": "impression", "opinion": "impression"}
_HEADER = re.compile(r"^[ \t]*([A-Za-z][A-Za-z /&()-]{1,40}?)[ \t]*:", re.MULTILINE)
_FINAL_REPORT = re.compile(r"^[ \t]*FINAL REPORT[ \t]*$", re.MULTILINE)
_SENT_END = re.compile(r"(?<=[.!?;])\s+|\n\s*\n")
#: The text between two mentions that makes them alternatives ("A or B", "A, B or C", "A and/or
#: B", a few words of description allowed on either side: "atelectasis at the base or pneumonia").
_OR_GAP = re.compile(r"\s*(?:[\w-]+\s+){0,4},?\s*(?:or|and/or)\s+(?:[\w-]+\s+){0,3}")
_LIST_GAP = re.compile(r"\s*,\s*")


def split_sections(text: str) -> list[tuple[str, str]]:
    """Split a report into ``(section name, body)`` pairs in order of appearance.

    Headers are ``NAME:`` at the start of a line where NAME is all capitals or a known section
    name (findings, impression, indication, ...). Text before the first header is returned under
    the name ``""``. Aliases (conclusion, summary) map to ``impression``.
    """
    text = _FINAL_REPORT.sub("", text)
    heads = []
    for m in _HEADER.finditer(text):
        name = m.group(1).strip()
        if name.isupper() or name.lower() in KNOWN_SECTIONS:
            heads.append((m.start(), m.end(), SECTION_ALIASES.get(name.lower(), name.lower())))
    out = []
    pos, current = 0, ""
    for start, end, name in heads:
        body = text[pos:start].strip()
        if body or current:
            out.append((current, body))
        pos, current = end, name
    body = text[pos:].strip()
    if body or current:
        out.append((current, body))
    return out


def extract_sections(text: str, sections: Sequence[str] = ("findings", "impression")) -> str:
    """The text to label: the requested sections of ``text`` joined in report order.

    When none of the requested sections exists, everything except non-clinical sections
    (indication, history, comparison, technique, ...) is returned; a report without headers is
    returned whole (the CheXpert labeller's sample reports are plain impressions).
    """
    parts = split_sections(text)
    wanted = {s.lower() for s in sections}
    chosen = [body for name, body in parts if name in wanted]
    if not chosen:
        chosen = [body for name, body in parts if name not in NON_CLINICAL_SECTIONS]
    return "\n\n".join(b for b in chosen if b)


def split_sentences(text: str) -> list[str]:
    """Sentences of a section: split at . ! ? ; followed by space, and at blank lines."""
    out = []
    for s in _SENT_END.split(text):
        s = " ".join(s.split())
        if s:
            out.append(s)
    return out


@dataclass(frozen=True)
class Mention:
    """One mention found in a report (for explanations and tests)."""

    observation: str
    text: str
    sentence: str
    value: int
    start: int = -1  # character span in the (whitespace-normalised) sentence
    end: int = -1


def alternatives(spans: Sequence[tuple[int, int]], sentence: str) -> set[int]:
    """Indices of ``spans`` (mentions in ``sentence``) that are alternatives joined by "or".

    Consecutive mentions are linked when the text between them is a comma or an "or" phrase
    (:data:`_OR_GAP`); every member of a linked chain that holds an "or" is an alternative
    (the CheXpert labeller's ``conj:or`` uncertainty).
    """
    order = sorted(range(len(spans)), key=lambda i: spans[i])
    out: set[int] = set()
    chain, has_or = [order[0]] if order else [], False
    for a, b in zip(order, order[1:]):
        gap = sentence[spans[a][1]:spans[b][0]] if spans[b][0] >= spans[a][1] else None
        if gap is not None and len(gap) <= 80 and "or" in gap and _OR_GAP.fullmatch(gap):
            chain.append(b)
            has_or = True
        elif gap is not None and _LIST_GAP.fullmatch(gap):
            chain.append(b)
        elif gap is None:  # overlapping mentions (two observations on one phrase) stay in the chain
            chain.append(b)
        else:
            if has_or:
                out.update(chain)
            chain, has_or = [b], False
    if has_or:
        out.update(chain)
    return out


def aggregate(values: Iterable[int]) -> float:
    """Combine the values of one observation's mentions (CheXpert labeller rules).

    Any positive -> 1; else any uncertain -> -1 (including negative + uncertain); else all
    negative -> 0; no mention -> NaN.
    """
    vals = set(values)
    if not vals:
        return math.nan
    if 1 in vals:
        return 1.0
    if -1 in vals:
        return -1.0
    return 0.0


class Labeler:
    """Label free-text chest radiograph reports with a vocabulary's observations.

    Args:
        vocabulary: packaged name (``chexpert14``, ``chestxray14``), path or a loaded
            :class:`Vocabulary`.
        sections: report sections to label (case-insensitive); see :func:`extract_sections`.
        context: ConText trigger set (default: the packaged ``vocab/context.yaml``).
        use_context: if False, every mention counts as positive and normality statements are
            ignored - the keyword-only baseline the benchmark compares against.
    """

    def __init__(
        self,
        vocabulary: str | Path | Vocabulary = "chexpert14",
        sections: Sequence[str] = ("findings", "impression"),
        context: ConText | None = None,
        use_context: bool = True,
    ) -> None:
        self.vocab = vocabulary if isinstance(vocabulary, Vocabulary) else load_vocabulary(vocabulary)
        self.sections = tuple(sections)
        self.context = context or ConText.from_file()
        self.use_context = use_context
        self.labels = self.vocab.labels

    def mentions(self, report: str) -> list[Mention]:
        """All mentions in ``report`` with their ConText value."""
        found: list[Mention] = []
        text = extract_sections(report, self.sections) if self.sections else report
        for sentence in split_sentences(text):
            low = sentence.lower()
            triggers = None
            here: list[Mention] = []
            for obs in self.vocab.observations:
                spans = [m.span() for m in obs.mentions.finditer(low)]
                negs = [m.span() for m in obs.negative.finditer(low)] if obs.negative and self.use_context else []
                if not spans and not negs:
                    continue
                blocked = [m.span() for m in obs.unmentions.finditer(low)] if obs.unmentions else []
                blocked += negs
                for s, e in spans:
                    if any(bs < e and s < be for bs, be in blocked):
                        continue
                    if self.use_context:
                        if triggers is None:
                            triggers = self.context.find_triggers(low)
                        value = self.context.classify(s, e, *triggers)
                        if value is None:  # hypothetical / historical
                            continue
                        if value == 1 and obs.uncertain is not None and any(
                                us < e and s < ue for us, ue in (m.span() for m in obs.uncertain.finditer(low))):
                            value = -1
                    else:
                        value = 1
                    here.append(Mention(obs.name, sentence[s:e], sentence, value, s, e))
                for s, e in negs:
                    here.append(Mention(obs.name, sentence[s:e], sentence, 0, s, e))
            if self.use_context and self.vocab.alternatives_uncertain and len(here) > 1 and "or " in low:
                alt = alternatives([(m.start, m.end) for m in here], low)
                here = [Mention(m.observation, m.text, m.sentence, -1, m.start, m.end) if i in alt and m.value == 1 else m
                        for i, m in enumerate(here)]
            found.extend(here)
        return found

    def label(self, report: str) -> dict[str, float]:
        """Label one report: ``{label: 1.0 / 0.0 / -1.0 / NaN}`` for :attr:`labels`."""
        if not isinstance(report, str):
            raise TypeError(f"report must be a string, got {type(report).__name__}: {report!r}")
        by_obs: dict[str, list[int]] = {}
        for m in self.mentions(report):
            by_obs.setdefault(m.observation, []).append(m.value)
        values = {o.name: aggregate(by_obs.get(o.name, ())) for o in self.vocab.observations}
        for rule in self.vocab.rules:
            if values[rule.when] not in rule.values:
                continue
            if rule.as_mention:
                values[rule.target] = aggregate([*by_obs.get(rule.target, ()), rule.to])
            elif not rule.only_if_blank or math.isnan(values[rule.target]):
                values[rule.target] = float(rule.to)
        out = {}
        if self.vocab.no_finding:
            blocking = (v for k, v in values.items() if k not in self.vocab.no_finding_ignore)
            out[self.vocab.no_finding] = math.nan if any(v in (1.0, -1.0) for v in blocking) else 1.0
        for o in self.vocab.observations:
            if o.output:
                out[o.name] = values[o.name]
        return out

    def label_many(self, reports: Sequence[str], progress: bool = True) -> pd.DataFrame:
        """Label many reports; one row per report, columns :attr:`labels` (float, NaN = blank)."""
        rows = np.full((len(reports), len(self.labels)), np.nan)
        it = tqdm(reports, desc=f"label ({self.vocab.name})", unit="report", disable=not progress, mininterval=2)
        for i, r in enumerate(it):
            res = self.label(r)
            rows[i] = [res[k] for k in self.labels]
        return pd.DataFrame(rows, columns=self.labels)


@functools.lru_cache(maxsize=4)
def _worker_labeler(vocabulary: str, sections: tuple[str, ...]) -> Labeler:
    """One labeller per worker process and setting (vocabularies are parsed once, not per task)."""
    return Labeler(vocabulary, sections=sections)


def _label_chunk(task: tuple[str, tuple[str, ...], list[str]]) -> np.ndarray:
    vocabulary, sections, reports = task
    lab = _worker_labeler(vocabulary, sections)
    out = np.full((len(reports), len(lab.labels)), np.nan)
    for i, r in enumerate(reports):
        res = lab.label(r)
        out[i] = [res[k] for k in lab.labels]
    return out


def label_parallel(reports: Sequence[str], vocabulary: str, sections: Sequence[str], executor,
                   chunk_size: int = 2000) -> pd.DataFrame:
    """:meth:`Labeler.label_many` through a :class:`cxr.executor.Executor` (process pool or Dask).

    Reports go out in chunks of ``chunk_size`` and come back in input order, so the table is the
    same as the serial one whatever the executor. ``vocabulary`` must be a packaged name or a path
    the workers can read.
    """
    sections = tuple(sections)
    tasks = [(str(vocabulary), sections, list(reports[i:i + chunk_size])) for i in range(0, len(reports), chunk_size)]
    labels = _worker_labeler(str(vocabulary), sections).labels
    parts = executor.map(_label_chunk, tasks, desc=f"label ({vocabulary})") if tasks else []
    rows = np.concatenate(parts) if parts else np.zeros((0, len(labels)))
    return pd.DataFrame(rows, columns=labels)
