"""Vocabularies of the report labeller: observation names, phrase lists and rules, as data files.

A vocabulary is a YAML file (packaged ones live in ``cxr/labeler/vocab/``; see
``chexpert14.yaml`` for the annotated format). :func:`load_vocabulary` accepts a packaged name
(``chexpert14``, ``chestxray14``) or a path, validates it completely and compiles the phrases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cxr.labeler.context import VocabularyError, compile_phrases

PACKAGED = ("chexpert14", "chestxray14")
_OBS_KEYS = {"name", "mentions", "unmentions", "negative", "uncertain", "output"}
_RULE_KEYS = {"when", "values", "set", "to", "only_if_blank", "as_mention"}
_VALUES = (1, 0, -1)


@dataclass(frozen=True)
class Observation:
    """One observation: compiled mention / unmention / normal-statement / uncertain-mention patterns.

    ``uncertain``: phrases whose mentions are uncertain by themselves ("vascular congestion" is at
    most a possible edema, as in the CheXpert labeller): an asserted one counts -1, a negated one 0.
    """

    name: str
    mentions: re.Pattern[str] | None
    unmentions: re.Pattern[str] | None
    negative: re.Pattern[str] | None
    output: bool = True
    uncertain: re.Pattern[str] | None = None


@dataclass(frozen=True)
class Rule:
    """If observation ``when`` took one of ``values``, set ``target`` to ``to``.

    ``as_mention``: ``to`` joins the target's mention values and the target is aggregated again
    (the CheXpert labeller appends -1 to Cardiomegaly for a positive or uncertain CHF, so "CHF,
    normal heart size" gives -1 and "CHF with cardiomegaly" 1); else ``to`` is set, only where the
    target is blank when ``only_if_blank``.
    """

    when: str
    values: tuple[int, ...]
    target: str
    to: int
    only_if_blank: bool = True
    as_mention: bool = False


@dataclass(frozen=True)
class Vocabulary:
    """A complete labelling vocabulary.

    Attributes:
        name: vocabulary name.
        observations: all observations (output and helper) in file order.
        no_finding: name of the "No Finding" observation (or None if the vocabulary has none).
        no_finding_ignore: observations that do not block No Finding (CheXpert: Support Devices).
        rules: cross-observation rules applied after aggregation.
        alternatives_uncertain: mentions joined by "or" are uncertain (the CheXpert labeller's
            rule; the ChestX-ray14 / OpenI annotation convention counts listed alternatives as
            findings, so that vocabulary turns it off).
    """

    name: str
    observations: tuple[Observation, ...]
    no_finding: str | None
    no_finding_ignore: tuple[str, ...]
    rules: tuple[Rule, ...]
    alternatives_uncertain: bool = True

    @property
    def labels(self) -> list[str]:
        """Output columns in order: No Finding first (if any), then the output observations."""
        out = [self.no_finding] if self.no_finding else []
        return out + [o.name for o in self.observations if o.output]


def _phrases(obs: dict[str, Any], key: str, where: str) -> list[str]:
    value = obs.get(key) or []
    if not isinstance(value, list):
        raise VocabularyError(f"{where}.{key} must be a list of phrases, got {type(value).__name__}")
    return value


def parse_vocabulary(spec: Any, source: str) -> Vocabulary:
    """Validate and compile a vocabulary mapping (the parsed YAML).

    Raises:
        VocabularyError: naming the file, the key and the bad value.
    """
    if not isinstance(spec, dict):
        raise VocabularyError(f"{source}: top level must be a mapping")
    unknown = sorted(set(spec) - {"name", "observations", "no_finding", "rules", "alternatives_uncertain"})
    if unknown:
        raise VocabularyError(f"{source}: unknown key(s) {unknown}; allowed: name, observations, no_finding, rules, "
                              "alternatives_uncertain")
    alt = spec.get("alternatives_uncertain", True)
    if not isinstance(alt, bool):
        raise VocabularyError(f"{source}: alternatives_uncertain must be true or false, got {alt!r}")
    raw_obs = spec.get("observations")
    if not isinstance(raw_obs, list) or not raw_obs:
        raise VocabularyError(f"{source}: observations must be a non-empty list")
    observations = []
    names: set[str] = set()
    for i, o in enumerate(raw_obs):
        where = f"{source}: observations[{i}]"
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise VocabularyError(f"{where} must be a mapping with a string 'name'")
        where = f"{source}: observation {o['name']!r}"
        bad = sorted(set(o) - _OBS_KEYS)
        if bad:
            raise VocabularyError(f"{where}: unknown key(s) {bad}; allowed: {sorted(_OBS_KEYS)}")
        if o["name"] in names:
            raise VocabularyError(f"{where}: duplicate observation name")
        names.add(o["name"])
        mentions = _phrases(o, "mentions", where)
        if not mentions:
            raise VocabularyError(f"{where}: needs at least one mention phrase")
        output = o.get("output", True)
        if not isinstance(output, bool):
            raise VocabularyError(f"{where}.output must be true or false, got {output!r}")
        observations.append(
            Observation(
                name=o["name"],
                mentions=compile_phrases(mentions, f"{where}.mentions"),
                unmentions=compile_phrases(_phrases(o, "unmentions", where), f"{where}.unmentions"),
                negative=compile_phrases(_phrases(o, "negative", where), f"{where}.negative"),
                output=output,
                uncertain=compile_phrases(_phrases(o, "uncertain", where), f"{where}.uncertain"),
            )
        )
    nf = spec.get("no_finding")
    nf_name, nf_ignore = None, ()
    if nf is not None:
        if not isinstance(nf, dict) or not isinstance(nf.get("name"), str):
            raise VocabularyError(f"{source}: no_finding must be a mapping with 'name' (and optional 'ignore')")
        nf_name = nf["name"]
        if nf_name in names:
            raise VocabularyError(f"{source}: no_finding name {nf_name!r} clashes with an observation")
        nf_ignore = tuple(nf.get("ignore") or ())
        for n in nf_ignore:
            if n not in names:
                raise VocabularyError(f"{source}: no_finding.ignore names unknown observation {n!r}; known: {sorted(names)}")
    rules = []
    for i, r in enumerate(spec.get("rules") or []):
        where = f"{source}: rules[{i}]"
        if not isinstance(r, dict) or sorted(set(r) - _RULE_KEYS):
            raise VocabularyError(f"{where} must be a mapping with keys {sorted(_RULE_KEYS)}")
        for key in ("when", "set"):
            if r.get(key) not in names:
                raise VocabularyError(f"{where}.{key} = {r.get(key)!r} is not an observation; known: {sorted(names)}")
        values = tuple(r.get("values") or ())
        if not values or any(v not in _VALUES for v in values) or r.get("to") not in _VALUES:
            raise VocabularyError(f"{where}: values and to must be among {_VALUES}, got {values!r} -> {r.get('to')!r}")
        rules.append(Rule(r["when"], values, r["set"], int(r["to"]), bool(r.get("only_if_blank", True)),
                          bool(r.get("as_mention", False))))
    return Vocabulary(
        name=str(spec.get("name") or source),
        observations=tuple(observations),
        no_finding=nf_name,
        no_finding_ignore=nf_ignore,
        rules=tuple(rules),
        alternatives_uncertain=alt,
    )


def load_vocabulary(name_or_path: str | Path = "chexpert14") -> Vocabulary:
    """Load a packaged vocabulary by name, or a vocabulary YAML file by path.

    Raises:
        VocabularyError: unknown name, unreadable file or invalid content.
    """
    s = str(name_or_path)
    if s in PACKAGED:
        ref = resources.files("cxr.labeler") / "vocab" / f"{s}.yaml"
        text, source = ref.read_text(encoding="utf-8"), f"cxr/labeler/vocab/{s}.yaml"
    else:
        path = Path(s)
        if not path.is_file():
            raise VocabularyError(f"unknown vocabulary {s!r}: not a packaged one {list(PACKAGED)} and not a file")
        text, source = path.read_text(encoding="utf-8"), str(path)
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise VocabularyError(f"{source}: not valid YAML: {exc}") from None
    return parse_vocabulary(spec, source)
