"""Atomic outputs: a failure never leaves a partial file, success gives normal permissions."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from cxr import io as cio


def test_atomic_open_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    cio.write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with cio.atomic_open(target, "w") as fh:
            fh.write("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_outputs_get_umask_permissions(tmp_path):
    target = tmp_path / "a" / "t.parquet"
    cio.write_parquet(target, pd.DataFrame({"x": [1, 2]}))
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == 0o666 & ~umask
    with cio.atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("x")
    assert ((tmp_path / "d").stat().st_mode & 0o777) == 0o777 & ~umask
    assert pd.read_parquet(target)["x"].tolist() == [1, 2]


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "tree"
    with cio.atomic_dir(out) as d:
        (d / "v1").write_text("1")
    with pytest.raises(ValueError):
        with cio.atomic_dir(out) as d:
            (d / "v2").write_text("2")
            raise ValueError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["v1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


def test_atomic_open_rejects_append_mode(tmp_path):
    with pytest.raises(ValueError, match="'wb' or 'w'"):
        with cio.atomic_open(tmp_path / "x", "a"):
            pass
