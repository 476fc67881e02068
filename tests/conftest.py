"""Shared fixtures: the real sample files beside the repository, and tiny synthetic cohorts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
