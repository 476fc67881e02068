"""End to end: the real `dvc repro` on the tiny synthetic cohort in a temporary git repository, then the
README's "Your first experiment" walkthrough on that same run (baseline commit, dvc exp run -S, metrics diff,
a queued pair that reuses the conversion, offline plots with one curve per class)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    # generous: on a loaded 2-core machine the tiny DAG alone has taken over 15 minutes
    t0 = time.monotonic()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=2400)
    # where the time goes, step by step: shown with `pytest -rP` (or on a failure)
    print(f"{time.monotonic() - t0:7.1f} s  rc {out.returncode}  {' '.join(cmd)[:140]}")
    return out


def _ok(cmd: list[str], cwd: Path, env: dict) -> str:
    out = _run(cmd, cwd, env)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


VEGA_HINT = ("the offline plots page needs vega.min.js, vega-lite.min.js and vega-embed.min.js: `make vega` "
             "(part of `make test`'s setup) installs them into the venv; or set CXR_VEGA_DIR")


# params of the copy (besides epochs = 1): the tiny cohort, two classifiers, small inputs, few resamples
TINY = {
    "ingest.source": "synthetic://tiny",
    "train.models": ["densenet121", "anaxnet"],
    "convert.size": 128,
    "train.image_size": 64,
    "detector.image_size": 128,
    "detector.rpn_pre_nms_top_n_train": 100,
    "detector.rpn_post_nms_top_n_train": 50,
    "detector.rpn_pre_nms_top_n_test": 50,
    "detector.rpn_post_nms_top_n_test": 30,
    "detector.box_detections_per_img": 20,
    "unet.image_size": 64,
    "evaluate.bootstrap": 200,  # enough that the 90 % and 95 % CI ends differ (walkthrough step 3)
    "localize.heatmap_thresholds": [0.5],
    "localize.gallery_size": 2,
}


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
        # the repository ships the default run's lock and headline (the baseline of a fresh clone); this copy
        # runs another (tiny) pipeline, so it starts without them, as a project before its first `make repro`
        if src.is_file() and not rel.startswith(("data/", "models/", "reports/")) and rel != "dvc.lock":
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    # This test is about the DAG and the DVC workflow, not model quality: every training stage runs one epoch
    # on small inputs, and the DAG keeps one model of each kind (an image CNN, a region-feature anatomy model,
    # the hashing model); every model is trained and scored by the unit tests.
    for section in params.values():
        if isinstance(section, dict) and "epochs" in section:
            section["epochs"] = 1
    for key, value in TINY.items():
        section, _, name = key.rpartition(".")
        node = params
        for part in section.split("."):
            node = node[part]
        assert name in node, key  # a renamed param must not silently leave the copy at full size
        node[name] = value
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
    _first_experiment_walkthrough(repo, env)


def _first_experiment_walkthrough(repo: Path, env: dict) -> None:
    """README "Your first experiment", step by step, on the run above (same repo, nothing rebuilt)."""
    # 1. the baseline: git gets the lock and the few small report files; the rest are DVC outputs
    untracked = _ok(["git", "status", "--porcelain", "--untracked-files=all"], repo, env).split("\n")
    reports = sorted(line[3:] for line in untracked if line[3:].startswith("reports/"))
    assert reports == ["reports/metrics.json", "reports/models.md", "reports/summary.md"], reports
    assert any(line[3:] == "dvc.lock" for line in untracked)
    _ok(["git", "add", "-A"], repo, env)
    _ok(["git", "commit", "-qm", "baseline"], repo, env)

    # 2. the headline only: dvc metrics show reads one small file
    shown = json.loads(_ok(["dvc", "metrics", "show", "--json"], repo, env))
    files = shown[""]["data"]  # "" = the workspace
    assert list(files) == ["reports/metrics.json"], list(files)
    head = files["reports/metrics.json"]["data"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert set(head["models"]) == {*params["train"]["models"], *params["retrieve"]["hashing"]}
    assert {"detector", "labeller"} <= set(head)  # (the tiny split leaves no TEST image with organ masks: no UNet Dice)
    n_values = sum(len(v) for v in head["models"].values()) + sum(len(v) for k, v in head.items() if k != "models")
    assert n_values < 60, n_values

    # 3. one experiment: only the stages below evaluate.ci rerun; metrics diff against the committed baseline
    run = _ok(["dvc", "exp", "run", "-n", "ci90", "-S", "evaluate.ci=0.9"], repo, env)
    assert "Running stage 'evaluate@densenet121'" in run and "Running stage 'train@" not in run, run
    assert "Running stage 'convert'" not in run, run
    diff = json.loads(_ok(["dvc", "metrics", "diff", "--json"], repo, env))["reports/metrics.json"]
    low = diff["models.densenet121.macro_auroc_ci_low"]
    assert isinstance(low["old"], float) and isinstance(low["new"], float) and low["old"] != low["new"], diff
    table = _ok(["dvc", "metrics", "diff", "--md"], repo, env)
    assert "| HEAD" in table and "workspace" in table, table

    # 4. back to the baseline, then a queued pair that only changes train.models: run-cache and DVC cache
    # restore every stage of the baseline, convert included (persist outputs are checked out, not re-run)
    _ok(["git", "checkout", "--", "."], repo, env)
    _ok(["dvc", "checkout", "--force"], repo, env)
    # (each keeps one of the baseline's two classifiers: only models_table, headline and report rerun)
    for name, sets in (("dn", ["train.models=[densenet121]"]), ("ax", ["train.models=[anaxnet]", "evaluate.reference=anaxnet"])):
        _ok(["dvc", "exp", "run", "--queue", "-n", name, *[a for kv in sets for a in ("-S", kv)]], repo, env)
    _ok(["dvc", "queue", "start"], repo, env)
    deadline = time.monotonic() + 900
    while True:
        status = _ok(["dvc", "queue", "status"], repo, env)
        if "Queued" not in status and "Running" not in status:
            break
        assert time.monotonic() < deadline, status
        time.sleep(5)
    assert status.count("Success") == 2, status
    for name in ("dn", "ax"):
        log = _ok(["dvc", "queue", "logs", name], repo, env)
        assert "Running stage 'convert'" not in log and "to convert" not in log, log
        assert "Running stage 'train@" not in log, log  # restored from the run-cache
        ran = set(re.findall(r"Running stage '([^']+)'", log))
        assert ran <= {"models_table", "headline", "report"}, (ran, log)  # only what reads train.models
    shown = _ok(["dvc", "exp", "show", "--csv", "--only-changed", "--drop", ".*",
                 "--keep", r"Experiment|train\.models|.*densenet121\.macro_auroc$"], repo, env)
    rows = list(csv.reader(io.StringIO(shown)))
    assert len(rows[0]) <= 12, rows[0]
    # 5. the experiment's readable diff, after dvc exp apply
    _ok(["dvc", "exp", "apply", "dn"], repo, env)
    assert _ok(["git", "diff", "--stat", "reports/summary.md", "reports/metrics.json"], repo, env).strip()

    # 6. offline plots: the page carries the Vega libraries; ROC/PR have one curve per class
    vega = os.environ.get("CXR_VEGA_DIR") or str(Path(sys.prefix) / "share" / "vega")
    if not (Path(vega) / "vega.min.js").is_file():
        pytest.fail(f"{vega}: {VEGA_HINT}")
    _ok(["cxr", "plots", "--vega-dir", vega, "show", "-o", "dvc_plots"], repo, env)
    page = (repo / "dvc_plots/index.html").read_text(encoding="utf-8")
    assert "cdn.jsdelivr" not in page and "<script src=" not in page
    assert "reports/densenet121/roc.csv" in page and '"field": "class"' in page.replace('"field":"class"', '"field": "class"')
    spec_json = json.loads(_ok(["dvc", "plots", "show", "--json", "reports/densenet121/roc.csv"], repo, env))
    spec = spec_json["data"]["reports/densenet121/roc.csv"][0]
    classes = {row["class"] for row in spec["content"]["data"]["values"]}
    with open(repo / "reports/densenet121/roc.csv", newline="") as fh:
        in_file = {row["class"] for row in csv.DictReader(fh)}  # classes with both outcomes on TEST
    assert classes == in_file and len(classes) >= 2, (classes, in_file)
    assert spec["content"]["encoding"]["color"]["field"] == "class"  # one curve per class, not one per revision
    drawn, errors, remote = _render_offline(repo / "dvc_plots/index.html")
    assert not errors and not remote, (errors, remote)
    assert len(drawn) >= 8 and all(colours > 10 for colours in drawn), drawn  # every plot drawn, none blank


def _render_offline(page: Path) -> tuple[list[int], list[str], list[str]]:
    """Open ``page`` in headless Chromium with the network off: colours drawn on each canvas, page errors,
    requests that left the file system."""
    if not Path("/usr/bin/chromium").is_file():
        pytest.fail("/usr/bin/chromium not found: `make test` installs it (apt-get install -y chromium)")
    import tempfile

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path="/usr/bin/chromium", headless=True,
                                                    args=["--no-sandbox", "--disable-gpu"], offline=True)
        try:
            tab = ctx.new_page()
            errors, requests = [], []
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.on("request", lambda r: requests.append(r.url))
            tab.goto(page.resolve().as_uri())
            tab.wait_for_selector("canvas", timeout=30_000)
            tab.wait_for_timeout(500)
            drawn = tab.evaluate("""() => Array.from(document.querySelectorAll('canvas')).map(c => {
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, seen = new Set();
                for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
                return seen.size; })""")
        finally:
            ctx.close()
    return drawn, errors, [u for u in requests if not u.startswith("file:")]


def test_param_change_reruns_ingest_only_when_it_reads_it(pipeline_repo):
    repo, env = pipeline_repo
    if not (repo / "dvc.lock").is_file():
        assert _run(["dvc", "repro"], repo, env).returncode == 0
    before = (repo / "data/raw/manifest.json").read_bytes()
    params_before, lock_before = (repo / "params.yaml").read_bytes(), (repo / "dvc.lock").read_bytes()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ingest"]["synthetic"]["signal"] = 0.8
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro", "ingest"], repo, env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Running stage 'ingest'" in out.stdout
    assert (repo / "data/raw/manifest.json").read_bytes() != before
    assert '"signal": 0.8' in (repo / "data/raw/manifest.json").read_text()
    # leave the shared repo as it was (its other test may run after this one)
    (repo / "params.yaml").write_bytes(params_before)
    (repo / "dvc.lock").write_bytes(lock_before)
    assert _run(["dvc", "checkout", "--force", "data/raw"], repo, env).returncode == 0
    assert (repo / "data/raw/manifest.json").read_bytes() == before
