"""Path safety for everything written into ``data/raw``: blob names, zip members, local copies.

A remote name is attacker-controlled text. :func:`safe_target` turns it into a path strictly inside
the output folder or refuses it (``..``, absolute paths, drive letters, backslashes, NUL bytes,
or a parent that is a symlink leading elsewhere). :func:`extract_zip` extracts an archive with the
same rules, refuses symlink members and decompression bombs, and writes every member atomically.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from cxr.io import atomic_open

log = logging.getLogger(__name__)

#: A member whose uncompressed size exceeds this many times its compressed size is refused.
MAX_ZIP_RATIO = 200
#: ... unless it is small: tiny members of zeros compress very well and are harmless.
ZIP_RATIO_MIN_BYTES = 16 * 2**20


class UnsafePath(ValueError):
    """A name that would escape the output folder (or is otherwise unusable as a file name)."""


def safe_target(out_dir: Path, name: str) -> Path:
    """Map a remote/archive name to a path strictly inside ``out_dir``.

    Args:
        out_dir: the folder everything must stay in.
        name: a POSIX-style relative name, as found in a bucket listing or a zip directory.

    Returns:
        ``out_dir / name``, normalised.

    Raises:
        UnsafePath: the name is empty, absolute, contains ``..``, a backslash, a drive letter or
            a NUL byte, or resolves (through an existing symlink) outside ``out_dir``.
    """
    if not name or "\x00" in name:
        raise UnsafePath(f"unusable name {name!r}")
    if "\\" in name:
        raise UnsafePath(f"backslash in name {name!r} (refused: could be a Windows path escape)")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise UnsafePath(f"absolute name {name!r} refused")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafePath(f"name {name!r} escapes the target folder ('..')")
    if not parts:
        raise UnsafePath(f"unusable name {name!r}")
    target = out_dir.joinpath(*parts)
    root = out_dir.resolve()
    if not target.resolve().is_relative_to(root):  # an existing symlinked parent pointing elsewhere
        raise UnsafePath(f"name {name!r} resolves outside {out_dir} (through a symlink)")
    return target


def _is_symlink_member(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def extract_zip(zip_path: Path, dest: Path) -> dict:
    """Extract ``zip_path`` into ``dest`` safely and resumably.

    Members already present with the same size and CRC-32 are skipped, so an interrupted
    extraction picks up where it stopped. CRC-32 of each written member is checked by
    :mod:`zipfile` while reading.

    Returns:
        ``{"members": n_written_or_present, "skipped": n_already_present, "refused": [{name, reason}]}``.

    Raises:
        zipfile.BadZipFile: the archive itself is corrupt (the caller records it).
    """
    refused: list[dict] = []
    written = present = 0
    with zipfile.ZipFile(zip_path) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            try:
                if _is_symlink_member(info):
                    raise UnsafePath(f"symlink member {info.filename!r} refused")
                if (
                    info.file_size > ZIP_RATIO_MIN_BYTES
                    and info.file_size > MAX_ZIP_RATIO * max(1, info.compress_size)
                ):
                    raise UnsafePath(
                        f"member {info.filename!r} expands {info.compress_size} -> {info.file_size} bytes "
                        f"(ratio > {MAX_ZIP_RATIO}; refused as a decompression bomb)"
                    )
                target = safe_target(dest, info.filename)
            except UnsafePath as exc:
                log.warning("%s: %s", zip_path.name, exc)
                refused.append({"name": info.filename, "reason": str(exc)})
                continue
            if target.is_file() and target.stat().st_size == info.file_size and _crc32(target) == info.CRC:
                present += 1
                continue
            with zf.open(info) as src, atomic_open(target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            written += 1
    return {"members": written + present, "skipped": present, "refused": refused}


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def remove_partial_files(out_dir: Path) -> int:
    """Delete the temporary files (``.<name>.<8 random chars>.tmp``) an interrupted run left behind."""
    n = 0
    for p in out_dir.rglob(".*.tmp"):
        if p.is_file() and re.fullmatch(r"\..+\.[a-z0-9_]{8}\.tmp", p.name):
            p.unlink()
            n += 1
    return n


def is_inside(path: Path, root: Path) -> bool:
    """True if ``path`` (resolved) lies inside ``root`` (resolved)."""
    return Path(os.path.realpath(path)).is_relative_to(Path(os.path.realpath(root)))
