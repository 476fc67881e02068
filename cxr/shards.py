"""Many small files as a few tar shards with an index: one remote object per shard, reads by offset.

``dvc push`` / ``dvc pull`` move one object per file; at MIMIC-CXR size (377k converted PNGs) the
per-object cost dominates (``bench/remote.py``). A shard folder holds ``shard-00000.tar``, ... of
``per_shard`` members each (plain, uncompressed POSIX tar: PNG is compressed already, and any tar
tool lists or extracts them) and ``shards.parquet`` (``name``, ``shard``, ``offset``, ``size``,
``crc32``): a member is read with one positioned read (``os.pread``: safe in forked loader workers),
never by scanning the archive; its tar header and CRC-32 are checked on every read, so a corrupt or
truncated shard is an error that names the shard and the member, not a garbled image. Deterministic:
same inputs, same bytes (zero mtimes and owners).

Transparent reads by path: the ``convert`` stage with ``convert.storage: shards`` stores
``data/interim/images`` as such a folder, and ``images.parquet`` keeps its ``png_path`` values
(``mimic/<id>.png``). :func:`read_bytes`, :func:`open_image`, :func:`exists` and :func:`fingerprint`
take the path a reader would open in a folder of files (``data/interim/images/mimic/<id>.png``):
a file is read as a file; otherwise the nearest parent folder that holds ``shards.parquet`` serves
the rest of the path as a member name. So every image reader (training cache, detector, UNet,
features, localisation, report, ``cxr predict``) works on either layout unchanged.
"""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pandas as pd

from cxr.errors import DataError
from cxr.io import atomic_dir

INDEX = "shards.parquet"
_BLOCK = tarfile.BLOCKSIZE


class ShardError(DataError):
    """A missing shard folder, shard or member, or a corrupt / truncated shard (the message names it)."""


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.tar"


def write_members(members: Iterable[tuple[str, bytes | Callable[[], bytes]]], out_dir: str | Path,
                  per_shard: int = 2000) -> list[Path]:
    """Pack ``(name, bytes or a function returning them)`` pairs, in that order, into tar shards of
    ``per_shard`` members under ``out_dir`` (built aside and swapped in: ``out_dir`` may be the
    folder the members are being read from).

    Returns:
        The shard paths.

    Raises:
        ShardError: ``per_shard`` < 1 or a member name twice.
    """
    if per_shard < 1:
        raise ShardError(f"per_shard must be >= 1, got {per_shard}")
    rows: list[tuple[str, int, int, int, int]] = []
    seen: set[str] = set()
    n_shards = 0
    with atomic_dir(out_dir) as tmp:
        tar = None
        try:
            for i, (name, data) in enumerate(members):
                if name in seen:
                    raise ShardError(f"member {name!r} given twice")
                seen.add(name)
                if i % per_shard == 0:
                    if tar is not None:
                        tar.close()
                    tar = tarfile.open(tmp / shard_name(n_shards), "w", format=tarfile.USTAR_FORMAT)
                    n_shards += 1
                blob = data() if callable(data) else data
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(blob), 0, 0o644
                start = tar.offset
                tar.addfile(info, io.BytesIO(blob))
                rows.append((name, n_shards - 1, start + _BLOCK, len(blob), zlib.crc32(blob)))
        finally:
            if tar is not None:
                tar.close()
        index = pd.DataFrame(rows, columns=["name", "shard", "offset", "size", "crc32"])
        index = index.astype({"shard": "int64", "offset": "int64", "size": "int64", "crc32": "int64"})
        index.to_parquet(tmp / INDEX, index=False)
    return [Path(out_dir) / shard_name(k) for k in range(n_shards)]


def write_shards(paths: Sequence[str | Path], out_dir: str | Path, per_shard: int = 2000,
                 root: str | Path | None = None) -> list[Path]:
    """Pack the files ``paths`` (in that order) into tar shards of ``per_shard`` files under ``out_dir``.

    Args:
        paths: files to pack.
        out_dir: the shard folder (replaced).
        per_shard: members per shard.
        root: member names are the paths relative to it (default: the file names).

    Returns:
        The shard paths.
    """
    def member(p: Path) -> str:
        return p.relative_to(root).as_posix() if root is not None else p.name

    return write_members(((member(Path(p)), Path(p).read_bytes) for p in paths), out_dir, per_shard)


class ShardReader:
    """Read members of a shard folder by name (one open descriptor per shard, kept; positioned reads)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not (self.folder / INDEX).is_file():
            raise ShardError(f"{self.folder}: not a shard folder ({INDEX} missing); write it with cxr.shards.write_shards")
        try:
            index = pd.read_parquet(self.folder / INDEX)
            self._at = dict(zip(index["name"], zip(index["shard"].tolist(), index["offset"].tolist(),
                                                   index["size"].tolist(), index["crc32"].tolist())))
        except Exception as exc:  # noqa: BLE001 - any unreadable index is the same user-facing problem
            raise ShardError(f"{self.folder / INDEX}: unreadable shard index ({type(exc).__name__}: {exc})") from None
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, name: str) -> bool:
        return name in self._at

    def names(self) -> list[str]:
        return list(self._at)

    def shard_path(self, name: str) -> Path:
        """The shard file that holds member ``name``."""
        return self.folder / shard_name(self._entry(name)[0])

    def size(self, name: str) -> int:
        return int(self._entry(name)[2])

    def _entry(self, name: str) -> tuple[int, int, int, int]:
        try:
            return self._at[name]
        except KeyError:
            raise ShardError(f"{self.folder}: no member {name!r} in {INDEX}") from None

    def read(self, name: str) -> bytes:
        """The bytes of member ``name``, checked against its tar header and CRC-32.

        Raises:
            ShardError: no such member, the shard is missing or truncated, or its bytes are corrupt
                (the message names the shard file and the member).
        """
        shard, offset, size, crc = self._entry(name)
        where = self.folder / shard_name(shard)
        fd = self._fds.get(shard)
        if fd is None:
            try:
                fd = self._fds[shard] = os.open(where, os.O_RDONLY)
            except FileNotFoundError:
                raise ShardError(f"{where}: shard missing (it holds member {name!r})") from None
        buf = os.pread(fd, size + _BLOCK, offset - _BLOCK)
        if len(buf) != size + _BLOCK:
            raise ShardError(f"{where}: shard truncated at member {name!r} "
                             f"(needs bytes {offset - _BLOCK}..{offset + size}, the file ends at {os.fstat(fd).st_size})")
        try:
            info = tarfile.TarInfo.frombuf(buf[:_BLOCK], tarfile.ENCODING, "surrogateescape")
        except tarfile.HeaderError as exc:
            raise ShardError(f"{where}: corrupt tar header of member {name!r} ({exc})") from None
        if info.name != name or info.size != size:
            raise ShardError(f"{where}: the tar header at member {name!r}'s offset names {info.name!r} "
                             f"({info.size} bytes): {INDEX} does not match this shard")
        data = buf[_BLOCK:]
        if zlib.crc32(data) != crc:
            raise ShardError(f"{where}: member {name!r} is corrupt (CRC-32 differs from {INDEX})")
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


# ------------------------------------------------------------------ transparent reads by path

#: open readers by folder, with the (inode, mtime) of their index: a rewritten folder is reopened
_READERS: dict[str, tuple[tuple[int, int], ShardReader]] = {}


def is_shard_folder(folder: str | Path) -> bool:
    return (Path(folder) / INDEX).is_file()


def _reader(folder: Path) -> ShardReader | None:
    try:
        st = (folder / INDEX).stat()
    except OSError:
        _READERS.pop(str(folder), None)
        return None
    stamp = (st.st_ino, st.st_mtime_ns)
    hit = _READERS.get(str(folder))
    if hit is not None and hit[0] == stamp:
        return hit[1]
    reader = ShardReader(folder)
    _READERS[str(folder)] = (stamp, reader)
    return reader


def locate(path: str | Path) -> tuple[ShardReader, str] | None:
    """The shard folder serving ``path`` and the member name, or None (no parent is a shard folder)."""
    path = Path(os.path.abspath(path))
    for parent in path.parents:
        reader = _reader(parent)
        if reader is not None:
            return reader, path.relative_to(parent).as_posix()
    return None


def exists(path: str | Path) -> bool:
    """``path`` is a file, or a member of the shard folder above it."""
    if Path(path).is_file():
        return True
    hit = locate(path)
    return hit is not None and hit[1] in hit[0]


def read_bytes(path: str | Path) -> bytes:
    """The bytes of the file ``path``, or of the member that ``path`` names in a shard folder above it.

    Raises:
        FileNotFoundError: neither a file nor a member.
        ShardError: the member's shard is missing, truncated or corrupt.
    """
    try:
        return Path(path).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        hit = locate(path)
        if hit is None or hit[1] not in hit[0]:
            where = f" (no member {hit[1]!r} in {hit[0].folder / INDEX})" if hit is not None else ""
            raise FileNotFoundError(f"{path}: no such image file{where}") from None
        return hit[0].read(hit[1])


def open_image(path: str | Path):
    """A PIL image of the file or shard member ``path`` (see :func:`read_bytes`); loaded, so no file stays open.

    Raises:
        FileNotFoundError, ShardError: see :func:`read_bytes`; ShardError also when the member's
            bytes are no image (naming the shard and the member).
    """
    from PIL import Image, UnidentifiedImageError

    data = read_bytes(path)
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        hit = None if Path(path).is_file() else locate(path)
        if hit is None:
            raise
        raise ShardError(f"{hit[0].shard_path(hit[1])}: member {hit[1]!r} is not a readable image "
                         f"({type(exc).__name__}: {exc})") from None
    return im


def fingerprint(path: str | Path) -> tuple[int, int]:
    """``(size, mtime_ns)`` of a file, or of a member (its size, its shard's mtime): changes when it is rewritten.

    Raises:
        FileNotFoundError: neither a file nor a member.
    """
    try:
        st = Path(path).stat()
        return st.st_size, st.st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        hit = locate(path)
        if hit is None or hit[1] not in hit[0]:
            raise FileNotFoundError(f"{path}: no such image file or shard member") from None
        return hit[0].size(hit[1]), hit[0].shard_path(hit[1]).stat().st_mtime_ns


__all__ = ["INDEX", "ShardError", "ShardReader", "exists", "fingerprint", "is_shard_folder", "locate",
           "open_image", "read_bytes", "shard_name", "write_members", "write_shards"]
