"""The import graph of the ``cxr`` package, and the DVC code deps that follow from it.

Every stage script ``stages/<name>.py`` runs the ``cxr`` modules it imports, directly or through
other ``cxr`` modules. Those files, and nothing else, are its code, so a stage reruns when, and
only when, code it runs changes. This module reads the imports from the source (``ast``; nothing
is imported or run), and

* ``python -m cxr.depgraph --fingerprints data/code`` (the ``code`` stage, first in the DAG) writes
  ``data/code/<name>.json`` per stage script: the md5 of every file it runs. Each stage depends on
  its fingerprint, not on its files: ``dvc.lock`` holds one code entry per stage instead of about
  40, and DVC rewrites that file after every stage (about 2 s a stage with 1,000 entries). The
  ``code`` stage reruns on any edit under ``cxr/`` or ``stages/`` (a second); a stage reruns only
  when its own fingerprint changed;
* ``python -m cxr.depgraph --check`` fails (exit 1) listing every stage whose code dep is not its
  fingerprint (or that still lists code files);
* ``python -m cxr.depgraph --write`` rewrites only the code entries (``data/code/...``,
  ``stages/...``, ``cxr/...``) of each stage's ``deps:`` list in ``dvc.yaml`` to its fingerprint,
  keeping data deps, comments and everything else;
* :func:`cycles` and :func:`function_imports` back the layering tests (no import cycle inside
  ``cxr``; imports inside functions only for heavy optional libraries).

Importing ``cxr.a.b`` also runs ``cxr/__init__.py`` and ``cxr/a/__init__.py``: package
``__init__`` files are part of the closure. ``importlib.resources.files("cxr.x")`` counts as an
import of ``cxr.x`` (it is one), and the data files under that package (vocabularies, label
maps, the synthetic cohort's pattern table) become deps too: they are code by another name.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path

import yaml

from cxr.io import write_text

REPO = Path(__file__).resolve().parents[1]
FINGERPRINTS = "data/code"  # the code stage's output folder: one <stage script name>.json each
CODE_PREFIXES = ("stages/", "cxr/", FINGERPRINTS + "/")


def module_files(repo: Path = REPO) -> dict[str, Path]:
    """Every module of the ``cxr`` package: dotted name -> file (packages map to their ``__init__.py``)."""
    out: dict[str, Path] = {}
    for path in sorted((repo / "cxr").rglob("*.py")):
        rel = path.relative_to(repo).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


@lru_cache(maxsize=None)
def _tree(path: Path, mtime_ns: int) -> ast.Module:
    """The parsed source of ``path`` (cached per modification time: each file is parsed once)."""
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _resolve(name: str, modules: Mapping[str, Path]) -> str | None:
    """The longest module prefix of dotted ``name`` (``cxr.a.b.func`` -> ``cxr.a.b``)."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in modules:
            return cand
        parts.pop()
    return None


def _with_parents(mod: str, modules: Mapping[str, Path]) -> set[str]:
    parts = mod.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules}


def imports_of(path: Path, modules: Mapping[str, Path], *, module: str | None = None,
               top_level_only: bool = False, resources: bool = True) -> set[str]:
    """The ``cxr`` modules that file ``path`` imports (with their packages' ``__init__``).

    ``from cxr.a import b`` counts ``cxr.a.b`` when ``b`` is a submodule, else ``cxr.a``.
    ``top_level_only``: ignore imports inside functions and classes (used by :func:`function_imports`);
    ``resources``: count ``importlib.resources.files("cxr.x")`` as an import of ``cxr.x``.
    """
    tree = _tree(path, path.stat().st_mtime_ns)
    is_pkg = path.name == "__init__.py"
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        names: list[str] = []
        if resources and (pkg := _resource_package(node)) is not None:
            names = [pkg]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                if module is None:
                    continue
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for n in names:
            if n == "cxr" or n.startswith("cxr."):
                mod = _resolve(n, modules)
                if mod is not None:
                    found |= _with_parents(mod, modules)
    if module is not None:
        found.discard(module)
    return found


def _resource_package(node: ast.AST) -> str | None:
    """``"cxr.x"`` for a call ``resources.files("cxr.x")``, else None."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "files"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            and node.args[0].value.startswith("cxr")):
        return node.args[0].value
    return None


def resource_packages(path: Path) -> set[str]:
    """Packages whose data files ``path`` reads through ``importlib.resources``."""
    return set(_resource_packages(path, path.stat().st_mtime_ns))


@lru_cache(maxsize=None)
def _resource_packages(path: Path, mtime_ns: int) -> frozenset[str]:
    return frozenset(p for node in ast.walk(_tree(path, mtime_ns)) if (p := _resource_package(node)) is not None)


def data_paths(package: str, repo: Path = REPO) -> set[str]:
    """The non-Python files under ``package`` (repo-relative): deps of every module that reads them."""
    root = repo / Path(*package.split("."))
    return {f.relative_to(repo).as_posix() for f in root.rglob("*")
            if f.is_file() and f.suffix not in (".py", ".pyc") and "__pycache__" not in f.parts}


def graph(repo: Path = REPO) -> dict[str, set[str]]:
    """Module -> the ``cxr`` modules it imports (anywhere in the file)."""
    modules = module_files(repo)
    return {m: imports_of(p, modules, module=m) for m, p in modules.items()}


def closure(start: Iterable[str], g: Mapping[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(g.get(m, ()))
    return seen


def stage_code_deps(script: Path, repo: Path = REPO, *, modules: Mapping[str, Path] | None = None,
                    g: Mapping[str, set[str]] | None = None) -> list[str]:
    """Every file one stage script runs: itself, then each ``cxr`` module and data file (repo-relative, sorted).

    ``modules`` / ``g``: :func:`module_files` and :func:`graph` of ``repo`` when the caller has them already.
    """
    modules = module_files(repo) if modules is None else modules
    g = graph(repo) if g is None else g
    mods = closure(imports_of(script, modules), g)
    files = {modules[m].relative_to(repo).as_posix() for m in mods}
    for m in mods:
        for pkg in resource_packages(modules[m]):
            files |= data_paths(pkg, repo)
    return [script.relative_to(repo).as_posix(), *sorted(files)]


def stage_scripts(repo: Path = REPO) -> list[Path]:
    """The stage scripts ``stages/<name>.py`` (not the package's ``__init__``)."""
    return sorted(p for p in (repo / "stages").glob("*.py") if p.name != "__init__.py")


def fingerprint_path(script: str | Path) -> str:
    """The fingerprint a stage running ``script`` depends on: ``data/code/<name>.json``."""
    return f"{FINGERPRINTS}/{Path(script).stem}.json"


def fingerprint(script: Path, repo: Path = REPO, *, modules: Mapping[str, Path] | None = None,
                g: Mapping[str, set[str]] | None = None) -> dict:
    """``{"script": ..., "files": {path: md5}}`` over :func:`stage_code_deps`."""
    files = stage_code_deps(script, repo, modules=modules, g=g)
    return {"script": script.relative_to(repo).as_posix(),
            "files": {f: _md5(repo / f, (repo / f).stat().st_mtime_ns) for f in sorted(files)}}


@lru_cache(maxsize=None)
def _md5(path: Path, mtime_ns: int) -> str:
    """md5 of a file (cached per modification time: a module shared by every stage is read once)."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_fingerprints(out: Path, repo: Path = REPO) -> list[Path]:
    """Write the fingerprint of every stage script into ``out`` (each atomically; stale ones removed)."""
    modules, g = module_files(repo), graph(repo)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for script in stage_scripts(repo):
        path = out / Path(fingerprint_path(script)).name
        text = json.dumps(fingerprint(script, repo, modules=modules, g=g), indent=1, sort_keys=True) + "\n"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            write_text(path, text)
        written.append(path)
    for stale in set(out.glob("*.json")) - set(written):
        stale.unlink()
    return written


def cycles(g: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, sorted (Tarjan).

    An arrow from a module to a package that encloses it is left out (``cxr.a.b`` -> ``cxr.a``):
    Python runs that ``__init__`` first, whatever the module imports.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        # a module's own enclosing packages are not an arrow: Python runs them before the module itself
        for w in sorted(x for x in g.get(v, ()) if not v.startswith(x + ".")):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(out)


def function_imports(repo: Path = REPO) -> dict[str, list[str]]:
    """``cxr`` imports that sit inside a function or class body: module -> the imported modules."""
    modules = module_files(repo)
    out: dict[str, list[str]] = {}
    for m, p in modules.items():
        inner = (imports_of(p, modules, module=m, resources=False)
                 - imports_of(p, modules, module=m, top_level_only=True, resources=False))
        if inner:
            out[m] = sorted(inner)
    return out


# ------------------------------------------------------------------------------ dvc.yaml

_STAGE = re.compile(r"^  ([A-Za-z0-9_-]+):\s*$")
_CMD = re.compile(r"python (stages/[A-Za-z0-9_]+\.py)")


def _stage_blocks(lines: list[str]) -> list[tuple[str, int, int]]:
    """``(name, first line, end line)`` of each stage under ``stages:`` (2-space indented keys)."""
    starts = [(m.group(1), i) for i, line in enumerate(lines) if (m := _STAGE.match(line))]
    return [(n, s, starts[k + 1][1] if k + 1 < len(starts) else len(lines)) for k, (n, s) in enumerate(starts)]


def rewrite(text: str, repo: Path = REPO) -> tuple[str, dict[str, tuple[list[str], list[str]]]]:
    """``dvc.yaml`` text with every stage's code deps replaced by its fingerprint (:func:`fingerprint_path`).

    Returns the new text and ``{stage: (old code deps, new code deps)}`` for the stages that changed.
    """
    lines = text.splitlines(keepends=True)
    changed: dict[str, tuple[list[str], list[str]]] = {}
    out: list[str] = []
    pos = 0
    for name, start, end in _stage_blocks(lines):
        block = lines[start:end]
        cmd = next((m.group(1) for line in block if (m := _CMD.search(line))), None)
        try:
            d = next(i for i, line in enumerate(block) if line.strip() == "deps:")
        except StopIteration:
            continue
        if cmd is None:
            continue
        indent = None
        i = d + 1
        old, first_code = [], None
        keep: list[tuple[int, str]] = []
        while i < len(block) and (block[i].startswith("      ") or not block[i].strip()):
            line = block[i]
            item = line.strip()
            if item.startswith("- "):
                indent = indent or line[: len(line) - len(line.lstrip())]
                value = item[2:].strip()
                if value.startswith(CODE_PREFIXES):
                    old.append(value)
                    first_code = i if first_code is None else first_code
                    i += 1
                    continue
            keep.append((i, line))
            i += 1
        new = [fingerprint_path(cmd)]
        if old != new:
            changed[name] = (old, new)
        at = first_code if first_code is not None else d + 1
        body = [line for j, line in keep if j < at]
        body += [f"{indent or '      '}- {v}\n" for v in new]
        body += [line for j, line in keep if j >= at]
        out.extend(lines[pos:start])
        out.extend(block[: d + 1] + body + block[i:])
        pos = end
    out.extend(lines[pos:])
    return "".join(out), changed


def code_stage_problems(text: str, repo: Path = REPO) -> list[str]:
    """What is wrong with the ``code`` stage of ``dvc.yaml`` text: missing, or its outs are not one
    fingerprint per stage script (uncached), or its deps are not ``cxr`` and ``stages``."""
    stages = (yaml.safe_load(text) or {}).get("stages") or {}
    code = stages.get("code")
    if not isinstance(code, Mapping) or "cxr.depgraph --fingerprints " + FINGERPRINTS not in str(code.get("cmd", "")):
        return [f"no stage 'code' running: python -m cxr.depgraph --fingerprints {FINGERPRINTS}"]
    problems = []
    if sorted(code.get("deps") or []) != ["cxr", "stages"]:
        problems.append(f"code: deps must be [cxr, stages], got {code.get('deps')}")
    outs = {next(iter(o)): o[next(iter(o))] if isinstance(o, Mapping) else {} for o in code.get("outs") or []}
    want = {fingerprint_path(s) for s in stage_scripts(repo)}
    if set(outs) != want:
        problems.append(f"code: outs + {sorted(want - set(outs))} - {sorted(set(outs) - want)}")
    cached = sorted(o for o, spec in outs.items() if (spec or {}).get("cache", True))
    if cached:
        problems.append(f"code: fingerprints must be uncached (cache: false): {cached}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cxr.depgraph", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dvc-yaml", type=Path, default=REPO / "dvc.yaml")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 when a stage's code dep is not its fingerprint")
    mode.add_argument("--write", action="store_true", help="rewrite the code deps of dvc.yaml to the fingerprints")
    mode.add_argument("--fingerprints", type=Path, metavar="DIR",
                      help="write each stage script's fingerprint (md5 of every file it runs) into DIR")
    mode.add_argument("--cycles", action="store_true", help="print import cycles and imports inside functions")
    args = ap.parse_args(argv)
    if args.fingerprints is not None:
        write_fingerprints(args.fingerprints)
        return 0
    if args.cycles:
        for c in cycles(graph()):
            print("cycle:", " ".join(c))
        for m, inner in function_imports().items():
            print(f"inside a function in {m}:", " ".join(inner))
        return 0
    text = args.dvc_yaml.read_text(encoding="utf-8")
    new, changed = rewrite(text)
    for name, (old, want) in changed.items():
        print(f"{name}: + {sorted(set(want) - set(old))}  - {sorted(set(old) - set(want))}")
    problems = code_stage_problems(new)
    for p in problems:
        print(p)
    if args.write:
        if new != text:
            write_text(args.dvc_yaml, new)
        return 1 if problems else 0
    return 1 if changed or problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
