"""The package's layers: no import cycle, imports inside functions only with a reason, the models
a leaf, inference free of Lightning, and dvc.yaml code deps equal to the import graph."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxr import depgraph

REPO = Path(__file__).resolve().parents[1]


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


# ---------------------------------------------------------------- the analysis itself, on a made-up package


def test_cycles_and_closure_on_a_small_package(tmp_path):
    repo = _write(tmp_path, {
        "cxr/__init__.py": "",
        "cxr/a.py": "from cxr.b import f\n",
        "cxr/b.py": "def f():\n    from cxr import a  # lazy: test\n",
        "cxr/c.py": "import numpy\n",
        "cxr/pkg/__init__.py": "from cxr.pkg import inner\n",
        "cxr/pkg/inner.py": "from cxr.pkg.other import x\nfrom importlib import resources\nr = resources.files('cxr.pkg')\n",
        "cxr/pkg/other.py": "x = 1\n",
        "cxr/pkg/data/table.csv": "a\n",
        "stages/s.py": "from cxr.pkg.inner import r\n",
    })
    g = depgraph.graph(repo)
    assert g["cxr.a"] == {"cxr", "cxr.b"}
    assert depgraph.cycles(g) == [["cxr.a", "cxr.b"]]  # the import inside b's function still ties them
    # a package importing its own submodules, which import each other, is no cycle
    assert all("cxr.pkg" not in c for c in depgraph.cycles(g))
    assert depgraph.function_imports(repo) == {"cxr.b": ["cxr", "cxr.a"]}
    deps = depgraph.stage_code_deps(repo / "stages/s.py", repo)
    # the whole of cxr/pkg is read (its three modules and its data); cxr/c.py is not
    assert deps == ["stages/s.py", "cxr/__init__.py", "cxr/pkg/__init__.py", "cxr/pkg/data/table.csv",
                    "cxr/pkg/inner.py", "cxr/pkg/other.py"]


def test_rewrite_touches_only_code_deps(tmp_path):
    repo = _write(tmp_path, {"cxr/__init__.py": "", "cxr/x.py": "", "cxr/y.py": "",
                             "stages/one.py": "import cxr.x\n"})
    text = ("stages:\n  one:\n    cmd: python stages/one.py --out o\n    deps:\n      - stages/one.py\n"
            "      - cxr/y.py\n      # a comment kept\n      - data/in\n    outs:\n      - o\n")
    new, changed = depgraph.rewrite(text, repo)
    assert changed == {"one": (["stages/one.py", "cxr/y.py"], ["data/code/one.json"])}
    assert new == text.replace("      - stages/one.py\n      - cxr/y.py\n", "      - data/code/one.json\n")
    assert depgraph.rewrite(new, repo) == (new, {})
    # the fingerprint holds the md5 of every file the script runs, and follows an edit of one of them
    fp = depgraph.fingerprint(repo / "stages/one.py", repo)
    assert sorted(fp["files"]) == ["cxr/__init__.py", "cxr/x.py", "stages/one.py"]
    written = depgraph.write_fingerprints(tmp_path / "data/code", repo)
    assert [p.name for p in written] == ["one.json"]
    before = written[0].read_text()
    (repo / "cxr/y.py").write_text("# not run by stages/one.py\n")
    depgraph.write_fingerprints(tmp_path / "data/code", repo)
    assert written[0].read_text() == before
    (repo / "cxr/x.py").write_text("X = 1\n")
    depgraph.write_fingerprints(tmp_path / "data/code", repo)
    assert written[0].read_text() != before
    # the check: a code stage is required, with one uncached fingerprint per stage script
    assert depgraph.code_stage_problems(new, repo)[0].startswith("no stage 'code'")
    code = ("stages:\n  code:\n    cmd: python -m cxr.depgraph --fingerprints data/code\n    deps: [cxr, stages]\n"
            "    outs:\n      - data/code/one.json:\n          cache: false\n")
    assert depgraph.code_stage_problems(code, repo) == []
    assert "uncached" in depgraph.code_stage_problems(code.replace("cache: false", "cache: true"), repo)[0]


# ---------------------------------------------------------------- this repository


def test_no_import_cycle_inside_cxr():
    assert depgraph.cycles(depgraph.graph()) == []


def test_imports_inside_functions_say_why():
    """A cxr import inside a function is kept only with a ``lazy:`` reason on its line."""
    bad = []
    for mod, path in depgraph.module_files().items():
        src = path.read_text(encoding="utf-8")
        lines = src.splitlines()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    names = ([inner.module or ""] if isinstance(inner, ast.ImportFrom) else
                             [a.name for a in inner.names] if isinstance(inner, ast.Import) else [])
                    if any(n == "cxr" or n.startswith("cxr.") for n in names):
                        if "lazy:" not in lines[inner.lineno - 1]:
                            bad.append(f"{path.relative_to(REPO)}:{inner.lineno}: {lines[inner.lineno - 1].strip()}")
    assert not bad, "\n".join(bad)


def test_models_are_a_leaf():
    g = depgraph.graph()
    models = [m for m in g if m.startswith("cxr.models")]
    allowed = {"cxr", "cxr.errors", "cxr.intensity", "cxr.modeldir", "cxr.precision", "cxr.io", "cxr.params",
               "cxr.labelspace", "cxr.quiet"}
    reach = depgraph.closure(models, g)
    assert {m for m in reach if not m.startswith("cxr.models")} <= allowed


def test_inference_and_predict_do_not_load_lightning():
    code = ("import sys, cxr.inference, cxr.models.zoo, cxr.models.detector, cxr.predict, cxr.cli\n"
            "print(sorted(m for m in ('lightning', 'dvclive') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_dvc_yaml_code_deps_are_the_fingerprints():
    text = (REPO / "dvc.yaml").read_text(encoding="utf-8")
    _, changed = depgraph.rewrite(text)
    assert changed == {}, "dvc.yaml code deps are not the fingerprints; run: python -m cxr.depgraph --write\n" + "\n".join(
        f"{k}: + {sorted(set(new) - set(old))} - {sorted(set(old) - set(new))}" for k, (old, new) in changed.items())
    assert depgraph.code_stage_problems(text) == []
    stages = yaml.safe_load(text)["stages"]
    assert set(stages) >= {"train", "detector", "unet"}


def test_a_densenet_does_not_depend_on_the_detector_or_the_unet_training():
    deps = set(depgraph.stage_code_deps(REPO / "stages" / "train.py"))
    assert "cxr/models/cnn.py" in deps and "cxr/train.py" in deps
    assert not deps & {"cxr/anatomy/detector.py", "cxr/models/detector.py", "cxr/anatomy/unet.py",
                       "cxr/anatomy/features.py"}
    assert "cxr/models/detector.py" in set(depgraph.stage_code_deps(REPO / "stages" / "features.py"))


# ---------------------------------------------------------------- dvc status in a temporary repository


def _dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    dvc = Path(sys.executable).with_name("dvc")
    # stage commands run ``python``: this interpreter, with the copy's cxr (the code stage fingerprints the copy)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(cwd),
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run([str(dvc) if dvc.is_file() else "dvc", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture(scope="module")
def committed_dag(tmp_path_factory) -> Path:
    """This repo's dvc.yaml, params.yaml, cxr/ and stages/ in a DVC repo whose every stage is recorded as run
    (placeholder outputs, ``dvc commit``): nothing is trained, only the lock file is written."""
    root = tmp_path_factory.mktemp("dag") / "repo"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / name, root / name)
    for d in ("cxr", "stages"):
        shutil.copytree(REPO / d, root / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    assert _dvc(["init", "--no-scm", "-q"], root).returncode == 0
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((root / "params.yaml").read_text())
    outs: set[str] = set()
    data_deps: set[str] = set()
    for name, st in stages.items():
        items = [None]
        if "matrix" in st:  # e.g. model: ${train.models} -> one stage per listed model
            section, key = st["matrix"]["model"].strip("${}").split(".")
            items = [{"model": m} for m in params[section][key]]
        for item in items:
            def sub(s: str) -> str:
                return s.replace("${item.model}", item["model"]) if item else s

            for key in ("outs", "metrics", "plots"):
                for o in st.get(key, []):
                    outs.add(sub(next(iter(o)) if isinstance(o, dict) else o))
            data_deps |= {sub(d) for d in st.get("deps", []) if not d.startswith(("cxr", "stages", "data/code/"))}
    outs = {o for o in outs if not o.startswith("data/code/")}  # the code stage writes the real fingerprints
    assert subprocess.run([sys.executable, "-m", "cxr.depgraph", "--fingerprints", "data/code"], cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)}).returncode == 0
    for o in sorted(outs):
        (root / o).parent.mkdir(parents=True, exist_ok=True)
        (root / o).write_text(f"placeholder {o}\n")
    for d in data_deps - outs:
        if not (root / d).exists() and not any(d.startswith(o + "/") for o in outs):
            (root / d).parent.mkdir(parents=True, exist_ok=True)
            (root / d).write_text("placeholder\n")
    done = _dvc(["commit", "-f", "-q"], root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _dvc(["status", "--json"], root).stdout.strip() in ("{}", "")
    return root


def _changed_after_edit(root: Path, *rels: str) -> set[str]:
    """The stages ``dvc status`` reports after appending a comment to each file of ``rels`` and rerunning
    the ``code`` stage (then undone: files, fingerprints and its lock entry)."""
    before = {rel: (root / rel).read_text() for rel in rels}
    lock = (root / "dvc.lock").read_text()
    prints = {p: p.read_text() for p in (root / "data/code").glob("*.json")}
    for rel, text in before.items():
        (root / rel).write_text(text + "\n# an edit\n")
    try:
        assert "code" in set(json.loads(_dvc(["status", "--json"], root).stdout or "{}"))
        ran = _dvc(["repro", "-s", "code"], root)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        out = _dvc(["status", "--json"], root)
        assert out.returncode == 0, out.stderr
        return set(json.loads(out.stdout or "{}"))
    finally:
        for rel, text in before.items():
            (root / rel).write_text(text)
        for p, text in prints.items():
            p.write_text(text)
        (root / "dvc.lock").write_text(lock)


def test_changing_the_detector_does_not_retrain_densenet(committed_dag):
    changed = _changed_after_edit(committed_dag, "cxr/models/detector.py", "cxr/anatomy/unet.py")
    assert {"detector", "features", "unet"} <= changed
    assert not {s for s in changed if s.startswith(("train@", "evaluate@", "train_hash@"))}, changed
    # and the check can fail: the classifier code does retrain it
    assert "train@densenet121" in _changed_after_edit(committed_dag, "cxr/models/cnn.py")


def test_table_stages_start_without_torch():
    """Stages that only read and write tables do not import torch (about 3 s of every start, 5 with torchvision)."""
    code = ("import runpy, sys\nstages, sys.argv = sys.argv[1:], ['stage', '--help']\n"
            "for s in stages:\n"
            "    try:\n        runpy.run_path(f'stages/{s}.py', run_name='__main__')\n"
            "    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))")
    stages = ["ingest", "convert", "label", "split", "coco", "models_table", "headline", "report"]
    out = subprocess.run([sys.executable, "-c", code, *stages], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-500:]
