"""Many small files as a few tar shards with an index: one remote object per shard, reads by offset.

``dvc push`` / ``dvc pull`` move one object per file; at MIMIC-CXR size (377k converted PNGs) the
per-object cost dominates (``bench/remote.py``). A shard folder holds ``shard-00000.tar``, ... of
``per_shard`` members each (plain, uncompressed POSIX tar: PNG is compressed already, and any tar
tool lists or extracts them) and ``index.parquet`` (``name``, ``shard``, ``offset``, ``size``): a
member is read with one seek, never by scanning the archive. Deterministic: same inputs, same
bytes (sorted names, zero mtimes and owners).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cxr.io import atomic_dir

INDEX = "index.parquet"


class ShardError(ValueError):
    """A missing shard folder, member or a corrupt index."""


def write_shards(paths: Sequence[str | Path], out_dir: str | Path, per_shard: int = 2000,
                 root: str | Path | None = None) -> list[Path]:
    """Pack ``paths`` into tar shards of ``per_shard`` files under ``out_dir`` (written atomically).

    Args:
        paths: files to pack, in the order they are stored.
        out_dir: the shard folder (replaced).
        per_shard: members per shard.
        root: member names are the paths relative to it (default: the file names).

    Returns:
        The shard paths.
    """
    if per_shard < 1:
        raise ShardError(f"per_shard must be >= 1, got {per_shard}")
    rows, shards = [], []
    with atomic_dir(out_dir) as tmp:
        for k, start in enumerate(range(0, len(paths), per_shard)):
            name = f"shard-{k:05d}.tar"
            with tarfile.open(tmp / name, "w", format=tarfile.USTAR_FORMAT) as tar:
                for p in paths[start:start + per_shard]:
                    p = Path(p)
                    member = p.relative_to(root).as_posix() if root is not None else p.name
                    data = p.read_bytes()
                    info = tarfile.TarInfo(member)
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tar.addfile(info, io.BytesIO(data))
                    rows.append((member, k, tar.offset - tarfile.BLOCKSIZE * -(-len(data) // tarfile.BLOCKSIZE),
                                 len(data)))
            shards.append(Path(out_dir) / name)
        pd.DataFrame(rows, columns=["name", "shard", "offset", "size"]).to_parquet(tmp / INDEX, index=False)
    return shards


class ShardReader:
    """Read members of a shard folder by name (one open file per shard, kept)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not (self.folder / INDEX).is_file():
            raise ShardError(f"{self.folder}: not a shard folder ({INDEX} missing); write it with cxr.shards.write_shards")
        index = pd.read_parquet(self.folder / INDEX)
        self._at = dict(zip(index["name"], zip(index["shard"].tolist(), index["offset"].tolist(), index["size"].tolist())))
        self._files: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, name: str) -> bool:
        return name in self._at

    def names(self) -> list[str]:
        return list(self._at)

    def read(self, name: str) -> bytes:
        """The bytes of member ``name``."""
        try:
            shard, offset, size = self._at[name]
        except KeyError:
            raise ShardError(f"{self.folder}: no member {name!r}") from None
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.folder / f"shard-{shard:05d}.tar", "rb")  # noqa: SIM115
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise ShardError(f"{self.folder}: shard {shard} is truncated at member {name!r}")
        return data

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


__all__ = ["INDEX", "ShardError", "ShardReader", "write_shards"]
