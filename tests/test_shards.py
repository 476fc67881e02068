"""Tar shards of small files: members read back byte for byte by name, any tar tool reads them,
same inputs give the same bytes, and bad folders / names are clear errors."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from cxr.shards import ShardError, ShardReader, write_shards


def _files(tmp_path, n=7):
    rng = np.random.default_rng(0)
    src = tmp_path / "src" / "mimic"
    src.mkdir(parents=True)
    out = []
    for i in range(n):
        p = src / f"img{i}.png"
        p.write_bytes(rng.integers(0, 256, int(rng.integers(1, 1500)), dtype=np.uint8).tobytes())
        out.append(p)
    return out


def test_shards_round_trip_by_name_and_are_plain_tar(tmp_path):
    files = _files(tmp_path)
    shards = write_shards(files, tmp_path / "sh", per_shard=3, root=tmp_path / "src")
    assert [s.name for s in shards] == ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    with ShardReader(tmp_path / "sh") as r:
        assert len(r) == 7 and "mimic/img6.png" in r
        for p in reversed(files):  # any order: one seek per member
            assert r.read(f"mimic/{p.name}") == p.read_bytes()
        with pytest.raises(ShardError, match="no member 'mimic/nope.png'"):
            r.read("mimic/nope.png")
    with tarfile.open(shards[1]) as tar:
        assert tar.getnames() == ["mimic/img3.png", "mimic/img4.png", "mimic/img5.png"]
        assert tar.extractfile("mimic/img4.png").read() == files[4].read_bytes()


def test_shards_are_deterministic_and_errors_are_clear(tmp_path):
    files = _files(tmp_path)
    write_shards(files, tmp_path / "a", per_shard=4)
    write_shards(files, tmp_path / "b", per_shard=4)
    for f in sorted(p.name for p in (tmp_path / "a").iterdir()):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    with pytest.raises(ShardError, match="not a shard folder"):
        ShardReader(tmp_path / "src")
    with pytest.raises(ShardError, match="per_shard"):
        write_shards(files, tmp_path / "c", per_shard=0)
    shard = tmp_path / "a" / "shard-00001.tar"
    shard.write_bytes(shard.read_bytes()[:600])
    with ShardReader(tmp_path / "a") as r, pytest.raises(ShardError, match="truncated"):
        r.read("img6.png")
