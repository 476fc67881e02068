"""End to end: the real `dvc repro` on the tiny synthetic cohort in a temporary git repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory, repo_root) -> tuple[Path, dict]:
    """A copy of this repository's tracked and new (non-ignored) files, as a fresh git repo,
    with the synthetic source switched to the tiny profile."""
    dst = tmp_path_factory.mktemp("e2e") / "repo"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=repo_root, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    for rel in filter(None, listed):
        src = repo_root / rel
        if src.is_file() and not rel.startswith(("data/", "models/", "reports/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["ingest"]["source"] = "synthetic://tiny"
    # Training stages run for one epoch here: this test is about the DAG, not model quality.
    for section in params.values():
        if isinstance(section, dict) and "epochs" in section:
            section["epochs"] = 1
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(dst),  # stages import the copy's cxr, not the installed checkout
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dst, env=env, check=True)
    return dst, env


def test_dvc_repro_runs_then_is_a_noop(pipeline_repo):
    repo, env = pipeline_repo
    first = _run(["dvc", "repro"], repo, env)
    assert first.returncode == 0, first.stdout + first.stderr
    manifest = repo / "data/raw/manifest.json"
    assert manifest.is_file()
    assert (repo / "data/raw/truth/truth.parquet").is_file()
    assert (repo / "dvc.lock").is_file()
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    locked = set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"])
    expected = set()
    for name, st in stages.items():
        if "matrix" in st:  # model: ${section.key} -> name@<model> for every listed model
            section, key = st["matrix"]["model"].strip("${}").split(".")
            expected |= {f"{name}@{m}" for m in params[section][key]}
        else:
            expected.add(name)
    assert locked == expected, f"ran but not declared: {sorted(locked - expected)}; did not run: {sorted(expected - locked)}"

    second = _run(["dvc", "repro"], repo, env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Running stage" not in second.stdout, second.stdout
    status = _run(["dvc", "status"], repo, env)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout


def test_param_change_reruns_ingest_only_when_it_reads_it(pipeline_repo):
    repo, env = pipeline_repo
    if not (repo / "dvc.lock").is_file():
        assert _run(["dvc", "repro"], repo, env).returncode == 0
    before = (repo / "data/raw/manifest.json").read_bytes()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ingest"]["synthetic"]["signal"] = 0.8
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro", "ingest"], repo, env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Running stage 'ingest'" in out.stdout
    assert (repo / "data/raw/manifest.json").read_bytes() != before
    assert '"signal": 0.8' in (repo / "data/raw/manifest.json").read_text()
