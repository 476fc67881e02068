"""Shared fixtures: the real sample files beside the repository, and tiny synthetic cohorts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests expect the unsalted default pseudonyms: a developer's own salt must not change them.
for _var in ("CXR_PSEUDONYM_SALT", "CXR_PSEUDONYM_SALT_FILE"):
    os.environ.pop(_var, None)


def _realdata_dir() -> Path:
    env = os.environ.get("CXR_REALDATA")
    return Path(env) if env else REPO.parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def realdata() -> Path:
    """Read-only real CXR samples (../shared/realdata). Never write below this path."""
    path = _realdata_dir()
    if not path.is_dir():
        raise RuntimeError(f"real sample data not found at {path}; set CXR_REALDATA to its location")
    return path


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """A tiny synthetic cohort (about 35 images, every native layout), generated once per session.

    Read-only for tests: copy it before modifying anything.
    """
    from cxr.params import SyntheticParams
    from cxr.synth import generate

    root = tmp_path_factory.mktemp("tiny") / "raw"
    generate(root, profile="tiny", seed=7, params=SyntheticParams(workers=1), progress=False)
    return root


@pytest.fixture(scope="session")
def anatomy_data(tiny_cohort, tmp_path_factory) -> dict:
    """The tiny cohort run through convert (256 px), label, split and coco, in process (anatomy tests).

    Returns paths: raw, images (table), image_dir, splits, coco (folder), coco_metrics, params.
    Read-only for tests.
    """
    from stages import coco, convert, label, split

    root = tmp_path_factory.mktemp("anatomy")
    params = root / "params.yaml"
    params.write_text("convert: {size: 256, workers: 1}\n", encoding="utf-8")
    d = {"raw": tiny_cohort, "images": root / "images.parquet", "image_dir": root / "images",
         "splits": root / "splits.parquet", "coco": root / "coco", "coco_metrics": root / "coco.json",
         "params": params}
    p = ["--params", str(params)]
    assert convert.main([*p, "--raw", str(tiny_cohort), "--images", str(d["image_dir"]), "--table", str(d["images"])]) == 0
    assert label.main([*p, "--raw", str(tiny_cohort), "--out", str(root / "labels.parquet"),
                       "--metrics", str(root / "label.json")]) == 0
    assert split.main([*p, "--images", str(d["images"]), "--labels", str(root / "labels.parquet"),
                       "--raw", str(tiny_cohort), "--out", str(d["splits"]), "--metrics", str(root / "split.json")]) == 0
    assert coco.main([*p, "--scene-graphs", str(tiny_cohort / "chest-imagenome"), "--images", str(d["images"]),
                      "--splits", str(d["splits"]), "--out", str(d["coco"]), "--metrics", str(d["coco_metrics"])]) == 0
    return d
