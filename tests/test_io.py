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


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_scratch_dir_is_removed_on_exit_and_stale_ones_on_the_next_start(tmp_path):
    """Before: a killed train left /tmp/cxr-cache-* behind for good."""
    stale = tmp_path / f"cxr-cache-{_dead_pid()}-abcd1234"  # a run killed with SIGKILL
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "x.npy").write_bytes(b"x" * 100)
    live = tmp_path / f"cxr-cache-{os.getppid()}-efgh5678"  # a running process's folder stays
    live.mkdir()
    other = tmp_path / "cxr-cache-notapid"  # not ours to judge
    other.mkdir()
    with cio.scratch_dir("cxr-cache", root=tmp_path) as d:
        assert os.path.isdir(d) and os.path.basename(d).startswith(f"cxr-cache-{os.getpid()}-")
        assert not stale.exists() and live.exists() and other.exists()
    assert not os.path.exists(d)
    with pytest.raises(RuntimeError), cio.scratch_dir("cxr-cache", root=tmp_path) as d2:
        raise RuntimeError("a failing stage")
    assert not os.path.exists(d2)


def test_scratch_dir_is_removed_when_the_process_is_terminated(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import sys, time\n"
        "from cxr.io import scratch_dir\n"
        f"with scratch_dir('cxr-cache', root={str(tmp_path)!r}) as d:\n"
        "    print(d, flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    d = proc.stdout.readline().strip()
    assert os.path.isdir(d)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 5
    while os.path.exists(d) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(d)
