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


#: the params every tiny end-to-end fixture starts from: 128-px PNGs, a 64-px classifier trained one epoch
TINY_PARAMS = {"convert": {"size": 128, "workers": 1}, "train": {"image_size": 64, "epochs": 1, "batch_size": 8}}
TINY_TABLES = ("images", "images.parquet", "labels.parquet", "splits.parquet")


def tiny_params(path: Path, **sections: dict) -> Path:
    """Write the repository's params.yaml with :data:`TINY_PARAMS` and ``sections`` merged in (one level deep)."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, values in (*TINY_PARAMS.items(), *sections.items()):
        for k, v in values.items():
            if isinstance(v, dict) and isinstance(params[name].get(k), dict):
                params[name][k].update(v)
            else:
                params[name][k] = v
    path.write_text(yaml.safe_dump(params))
    return path


def tiny_workdir(processed: dict, root: Path) -> Path:
    """A fresh folder that sees the shared processed cohort's images and tables (symlinks), for one test module."""
    root.mkdir(parents=True, exist_ok=True)
    for name in TINY_TABLES:
        (root / name).symlink_to(processed["root"] / name)
    return root


@pytest.fixture(scope="session")
def tiny_processed(tiny_cohort, tmp_path_factory) -> dict:
    """The tiny cohort through the real convert (128 px) -> label -> split stages, once per session.

    Returns ``root`` (images/, images.parquet, labels.parquet, splits.parquet), ``params`` (its params file),
    ``common`` (the table arguments every later stage takes) and ``raw``. Read-only: use :func:`tiny_workdir`.
    """
    import sys

    sys.path.insert(0, str(REPO))
    from stages import convert, label, split

    root = tmp_path_factory.mktemp("processed")
    p = ["--params", str(tiny_params(root / "params.yaml"))]
    assert convert.main([*p, "--raw", str(tiny_cohort), "--images", str(root / "images"),
                         "--table", str(root / "images.parquet")]) == 0
    assert label.main([*p, "--raw", str(tiny_cohort), "--out", str(root / "labels.parquet"),
                       "--metrics", str(root / "label.json")]) == 0
    assert split.main([*p, "--images", str(root / "images.parquet"), "--labels", str(root / "labels.parquet"),
                       "--raw", str(tiny_cohort), "--out", str(root / "splits.parquet"),
                       "--metrics", str(root / "split.json")]) == 0
    common = ["--images", str(root / "images"), "--table", str(root / "images.parquet"),
              "--labels", str(root / "labels.parquet"), "--splits", str(root / "splits.parquet")]
    return {"root": root, "params": root / "params.yaml", "common": common, "raw": tiny_cohort}


@pytest.fixture(scope="session")
def tiny_model(tiny_processed) -> Path:
    """An efficientnet_b0 (64 px, one epoch) trained by the real train stage on :func:`tiny_processed`. Read-only."""
    from stages import train

    out = tiny_processed["root"] / "efficientnet_b0"
    assert train.main(["--params", str(tiny_processed["params"]), "--model", "efficientnet_b0", "--out", str(out),
                       *tiny_processed["common"]]) == 0
    return out
