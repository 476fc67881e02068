"""Atomic file output: every file is written to a temporary sibling, then renamed into place.

A crash or a full disk therefore never leaves a half-written output where a stage, DVC or a
person would take it for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import pandas as pd


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; finished outputs get the usual permissions (0666 & ~umask).
_FILE_MODE = 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", fsync: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; rename it onto ``path`` only if the block succeeds.

    Args:
        path: Final destination. Its parent directory is created if missing.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8, ``\\n`` line endings).
        fsync: flush the data to disk before the rename. Writers of many small files (the
            converter) pass False and call :func:`os.sync` once before recording completion.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        kwargs = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (``fsync``: see :func:`atomic_open`)."""
    with atomic_open(path, "wb", fsync=fsync) as fh:
        fh.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as stable, human-readable JSON (sorted keys, trailing newline)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_csv(path: str | os.PathLike, df: pd.DataFrame, **kwargs: Any) -> None:
    """Write a DataFrame as CSV atomically (no index unless asked)."""
    kwargs.setdefault("index", False)
    with atomic_open(path, "w") as fh:
        df.to_csv(fh, lineterminator="\n", **kwargs)


def write_parquet(path: str | os.PathLike, df: pd.DataFrame) -> None:
    """Write a DataFrame as Parquet atomically, without the pandas index."""
    with atomic_open(path, "wb") as fh:
        df.to_parquet(fh, index=False, engine="pyarrow")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name and swap it onto ``path`` when the block succeeds.

    The previous content of ``path`` (if any) is removed only after the new tree is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_current_umask())  # mkdtemp makes 0700
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_scratch(prefix: str = "cxr-cache", root: str | os.PathLike | None = None) -> int:
    """Delete ``<root>/<prefix>-<pid>-*`` folders whose process is gone (killed runs); return how many."""
    root = Path(root or tempfile.gettempdir())
    n = 0
    for d in root.glob(f"{prefix}-*-*"):
        pid = d.name[len(prefix) + 1 :].split("-", 1)[0]
        if d.is_dir() and not d.is_symlink() and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            n += 1
    return n


@contextlib.contextmanager
def scratch_dir(prefix: str = "cxr-cache", root: str | os.PathLike | None = None) -> Iterator[str]:
    """A temporary folder removed on exit, on SIGTERM, and (if the process was killed) by the next run.

    The name carries the owner's pid (``cxr-cache-<pid>-<random>``): on entry, folders of processes
    that no longer exist are deleted, so a ``kill -9`` leaves its cache behind only until the next
    start. SIGTERM (what ``kill`` and job schedulers send) is turned into ``SystemExit`` while the
    folder is in use, so the normal clean-up runs.
    """
    import signal
    import threading

    removed = remove_stale_scratch(prefix, root)
    if removed:
        import logging

        logging.getLogger(__name__).info("removed %d cache folder(s) left by killed runs", removed)
    path = tempfile.mkdtemp(prefix=f"{prefix}-{os.getpid()}-", dir=root)
    previous = None
    if threading.current_thread() is threading.main_thread():

        def _terminate(signum, frame):  # noqa: ARG001
            raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield path
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(path, ignore_errors=True)
