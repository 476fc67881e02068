"""The pipeline graph, read from ``dvc.yaml`` itself (no ``dvc`` call: the report stage runs inside DVC).

``matrix`` and ``foreach`` stages are expanded the way DVC names them (``train@densenet121``),
``${item.x}`` and ``${params.key}`` are substituted from the validated params, and an edge
A -> B is drawn when a dependency of B is an output of A, lies inside one, or contains one.
"""

from __future__ import annotations

import itertools
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from cxr.report.errors import ReportError

_VAR = re.compile(r"\$\{\s*([A-Za-z0-9_.\-]+)\s*\}")


@dataclass(frozen=True)
class Stage:
    """One expanded stage: its DVC name, dependencies and declared outputs (outs, metrics, plots)."""

    name: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    params: tuple[str, ...] = ()


@dataclass(frozen=True)
class Dag:
    """Expanded stages in ``dvc.yaml`` order and the edges between them (producer, consumer)."""

    stages: tuple[Stage, ...]
    edges: tuple[tuple[str, str], ...] = field(default=())

    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def producers(self, path: str | Path) -> list[tuple[Stage, str]]:
        """Stages declaring an output at, inside or above ``path``, with that output path."""
        p = norm(str(path))
        return [(s, o) for s in self.stages for o in s.outs if overlaps(o, p)]

    def outputs_under(self, folder: str | Path) -> list[tuple[Stage, str]]:
        """Declared outputs strictly inside ``folder`` (e.g. the per-model dirs of a matrix stage)."""
        f = norm(str(folder))
        return [(s, o) for s in self.stages for o in s.outs if o.startswith(f + "/")]

    def reduced_edges(self) -> list[tuple[str, str]]:
        """The edges minus those implied by a longer path (the transitive reduction)."""
        succ: dict[str, set[str]] = {s.name: set() for s in self.stages}
        for a, b in self.edges:
            succ[a].add(b)

        def reachable(a: str, skip: tuple[str, str]) -> set[str]:
            seen, todo = set(), [n for n in succ[a] if (a, n) != skip]
            while todo:
                n = todo.pop()
                if n not in seen:
                    seen.add(n)
                    todo.extend(succ[n])
            return seen

        return [(a, b) for a, b in self.edges if b not in reachable(a, (a, b))]

    def layers(self) -> dict[str, int]:
        """Longest-path layer of each stage (sources are layer 0)."""
        preds: dict[str, list[str]] = {s.name: [] for s in self.stages}
        for a, b in self.edges:
            preds[b].append(a)
        layer: dict[str, int] = {}

        def visit(n: str, stack: tuple[str, ...]) -> int:
            if n in stack:
                raise ReportError(f"dvc.yaml: the stages form a cycle through {' -> '.join((*stack, n))}")
            if n not in layer:
                layer[n] = 1 + max((visit(p, (*stack, n)) for p in preds[n]), default=-1)
            return layer[n]

        for s in self.stages:
            visit(s.name, ())
        return layer


def norm(path: str) -> str:
    """A repository-relative path in one spelling (``./a//b/`` -> ``a/b``)."""
    return posixpath.normpath(path.replace("\\", "/")).removeprefix("./")


def overlaps(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` are the same path or one contains the other."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``{"a.b.c": leaf}`` in insertion order (lists are leaves)."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _lookup(name: str, scope: Mapping[str, Any], where: str) -> Any:
    if name in scope:
        return scope[name]
    # ${train.graph} names a whole sub-mapping: rebuild it from the flat keys.
    sub = {k[len(name) + 1:]: v for k, v in scope.items() if k.startswith(name + ".")}
    if sub:
        return sub
    raise ReportError(f"dvc.yaml: {where}: ${{{name}}} is not a params key or matrix item")


def _subst(value: Any, scope: Mapping[str, Any], where: str) -> Any:
    if not isinstance(value, str):
        return value
    whole = _VAR.fullmatch(value.strip())
    if whole:  # "${train.models}" keeps its type (a list)
        return _lookup(whole.group(1), scope, where)
    return _VAR.sub(lambda m: str(_lookup(m.group(1), scope, where)), value)


def _paths(entries: Any, stage: str, key: str, scope: Mapping[str, Any]) -> list[str]:
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ReportError(f"dvc.yaml: stage {stage!r}: {key} must be a list, got {type(entries).__name__}")
    out = []
    for e in entries:
        if isinstance(e, Mapping):
            if len(e) != 1:
                raise ReportError(f"dvc.yaml: stage {stage!r}: {key} entry {e!r} must name one path")
            e = next(iter(e))
        if not isinstance(e, str):
            raise ReportError(f"dvc.yaml: stage {stage!r}: {key} entry {e!r} is not a path")
        out.append(norm(str(_subst(e, scope, f"stage {stage!r} {key}"))))
    return out


def _params(entries: Any, stage: str) -> list[str]:
    out = []
    for e in entries or []:
        if isinstance(e, Mapping):  # {params.yaml: [keys]} or {file.yaml: null} (whole file)
            for f, keys in e.items():
                out.extend(f"{f}:{k}" for k in (keys or ["*"]))
        else:
            out.append(str(e))
    return out


def _instances(name: str, spec: Mapping[str, Any], scope: Mapping[str, Any]) -> list[tuple[str, dict]]:
    if "matrix" in spec:
        matrix = spec["matrix"]
        if not isinstance(matrix, Mapping) or not matrix:
            raise ReportError(f"dvc.yaml: stage {name!r}: matrix must be a non-empty mapping")
        keys, values = list(matrix), []
        for k in keys:
            v = _subst(matrix[k], scope, f"stage {name!r} matrix.{k}")
            if not isinstance(v, list):
                raise ReportError(f"dvc.yaml: stage {name!r}: matrix.{k} must resolve to a list, got {v!r}")
            # an empty list (e.g. retrieve.hashing: []) is zero stages, as in DVC
            values.append(v)
        out = []
        for combo in itertools.product(*values):
            suffix = "-".join(str(c) for c in combo)
            out.append((f"{name}@{suffix}", {f"item.{k}": c for k, c in zip(keys, combo)}))
        return out
    if "foreach" in spec:
        items = _subst(spec["foreach"], scope, f"stage {name!r} foreach")
        if isinstance(items, Mapping):
            return [(f"{name}@{k}", {"key": k, "item": v, **{f"item.{a}": b for a, b in flatten(v).items()}}
                     if isinstance(v, Mapping) else {"key": k, "item": v}) for k, v in items.items()]
        if isinstance(items, list):
            return [(f"{name}@{v}", {"item": v}) for v in items]
        raise ReportError(f"dvc.yaml: stage {name!r}: foreach must be a list or mapping, got {items!r}")
    return [(name, {})]


def load_dag(dvc_yaml: str | Path, params: Mapping[str, Any]) -> Dag:
    """Read ``dvc_yaml`` and expand it with ``params`` (the nested params of the run).

    Raises:
        ReportError: the file is missing, not YAML, has no ``stages`` mapping, or a stage refers
            to an unknown variable or forms a cycle.
    """
    path = Path(dvc_yaml)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path}: not found (pass the pipeline's dvc.yaml with --dvc-yaml)") from None
    except yaml.YAMLError as exc:
        raise ReportError(f"{path}: not valid YAML: {exc}") from None
    stages_raw = raw.get("stages") if isinstance(raw, Mapping) else None
    if not isinstance(stages_raw, Mapping) or not stages_raw:
        raise ReportError(f"{path}: no 'stages' mapping")
    flat = flatten(params)
    stages = []
    for name, spec in stages_raw.items():
        if not isinstance(spec, Mapping):
            raise ReportError(f"{path}: stage {name!r} must be a mapping, got {type(spec).__name__}")
        for full, item in _instances(str(name), spec, flat):
            scope = {**flat, **item}
            outs = [p for k in ("outs", "metrics", "plots") for p in _paths(spec.get(k), full, k, scope)]
            stages.append(Stage(full, tuple(_paths(spec.get("deps"), full, "deps", scope)), tuple(outs),
                                tuple(_params(spec.get("params"), full))))
    edges = []
    for b in stages:
        for a in stages:
            if a.name != b.name and any(overlaps(o, d) for o in a.outs for d in b.deps):
                edges.append((a.name, b.name))
    dag = Dag(tuple(stages), tuple(edges))
    dag.layers()  # fail early on a cycle
    return dag
