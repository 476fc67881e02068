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
from cxr.errors import CxrError

log = logging.getLogger(__name__)

#: A member whose uncompressed size exceeds this many times its compressed size is refused.
MAX_ZIP_RATIO = 200
#: ... unless it is small: tiny members of zeros compress very well and are harmless.
ZIP_RATIO_MIN_BYTES = 16 * 2**20


#: Archive-wide defaults (``ingest.archive`` in params.yaml overrides them).
MAX_ARCHIVE_BYTES = 64 * 2**30
MAX_ARCHIVE_RATIO = 100.0
MAX_ARCHIVE_MEMBERS = 100_000


class UnsafePath(CxrError, ValueError):
    """A name that would escape the output folder (or is otherwise unusable as a file name)."""


class ArchiveRefused(UnsafePath):
    """A whole archive over its budget (total size, expansion ratio or member count): nothing extracted."""


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


def check_archive_budget(
    zip_path: Path,
    infos: list[zipfile.ZipInfo],
    *,
    max_bytes: int = MAX_ARCHIVE_BYTES,
    max_ratio: float = MAX_ARCHIVE_RATIO,
    max_members: int = MAX_ARCHIVE_MEMBERS,
) -> None:
    """Refuse an archive whose directory declares too many members, bytes or too much expansion.

    The per-member ratio check alone exempts members <= 16 MiB, so 24 members of 16 MiB zeros
    (394 KB compressed) would extract to 385 MiB; the totals catch that.

    Raises:
        ArchiveRefused: a budget is exceeded (the message names the ``ingest.archive`` key).
    """
    files = [i for i in infos if not i.is_dir()]
    total = sum(i.file_size for i in files)
    packed = max(1, sum(i.compress_size for i in files))
    if len(files) > max_members:
        raise ArchiveRefused(
            f"archive {zip_path.name} has {len(files)} members > ingest.archive.max_members={max_members}"
        )
    if total > max_bytes:
        raise ArchiveRefused(
            f"archive {zip_path.name} expands to {total} bytes > ingest.archive.max_bytes={max_bytes}"
        )
    if total > ZIP_RATIO_MIN_BYTES and total > max_ratio * packed:
        raise ArchiveRefused(
            f"archive {zip_path.name} expands {packed} -> {total} bytes (ratio {total / packed:.0f} > "
            f"ingest.archive.max_ratio={max_ratio:g}; refused as a decompression bomb)"
        )


def extract_zip(
    zip_path: Path,
    dest: Path,
    *,
    max_bytes: int = MAX_ARCHIVE_BYTES,
    max_ratio: float = MAX_ARCHIVE_RATIO,
    max_members: int = MAX_ARCHIVE_MEMBERS,
) -> dict:
    """Extract ``zip_path`` into ``dest`` safely and resumably.

    Members already present with the same size and CRC-32 are skipped, so an interrupted
    extraction picks up where it stopped. CRC-32 of each written member is checked by
    :mod:`zipfile` while reading; a member that fails it (or does not inflate) is refused and
    listed, and the other members are still extracted. The archive as a whole must fit the
    budgets of :func:`check_archive_budget` (from ``ingest.archive``), and no more than
    ``max_bytes`` are written whatever the directory declares.

    Returns:
        ``{"members": n_written_or_present, "skipped": n_already_present, "refused": [{name, reason}]}``.

    Raises:
        zipfile.BadZipFile: the archive itself is corrupt (the caller records it).
        ArchiveRefused: the archive exceeds a budget (nothing is extracted).
    """
    refused: list[dict] = []
    written = present = 0
    budget = max_bytes
    with zipfile.ZipFile(zip_path) as zf:
        todo = []
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
            todo.append((info, target))
        # the budgets apply to what would be written (members refused one by one above are not)
        check_archive_budget(
            zip_path, [i for i, _ in todo], max_bytes=max_bytes, max_ratio=max_ratio, max_members=max_members
        )
        for info, target in todo:
            if target.is_file() and target.stat().st_size == info.file_size and _crc32(target) == info.CRC:
                present += 1
                continue
            try:
                with zf.open(info) as src, atomic_open(target, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        budget -= len(chunk)
                        if budget < 0:  # a directory that under-declares sizes still stops here
                            raise ArchiveRefused(
                                f"archive {zip_path.name} wrote more than ingest.archive.max_bytes={max_bytes} bytes"
                            )
                        dst.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # bad CRC-32, corrupt deflate stream
                log.warning("%s: corrupt member %s (%s); the others are extracted", zip_path.name, info.filename, exc)
                refused.append({"name": info.filename, "reason": f"corrupt member ({type(exc).__name__}: {exc})"})
                continue
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
