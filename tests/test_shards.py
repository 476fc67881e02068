"""Tar shards of small files: members read back byte for byte by name, any tar tool reads them,
same inputs give the same bytes, and bad folders / names are clear errors."""

from __future__ import annotations

import tarfile

import numpy as np
import pandas as pd
import pytest

from cxr.shards import INDEX, ShardError, ShardReader, exists, fingerprint, read_bytes, shard_name, write_shards


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


# ------------------------------------------------- convert.storage: shards, read back transparently


@pytest.fixture()
def raw_pngs(tmp_path):
    """A raw tree of 12 small chest-like PNGs (two folders), converted in a second."""
    from dicom_factory import chest
    from PIL import Image

    raw = tmp_path / "raw"
    for k in range(12):
        folder = raw / ("nih" if k % 2 else "padchest")
        folder.mkdir(parents=True, exist_ok=True)
        arr = chest(72 + 4 * k, 64)
        Image.fromarray((arr.astype(np.float64) / max(1, arr.max()) * 255).astype(np.uint8)).save(folder / f"img{k:02d}.png")
    return raw


def _convert(raw, out, **kw):
    from cxr.convert import convert
    from cxr.params import ConvertParams

    params = ConvertParams(workers=1, size=64, max_failure_fraction=0.5, **kw)
    summary = convert(raw, out / "images", out / "images.parquet", params)
    return summary, pd.read_parquet(out / "images.parquet")


def test_convert_to_shards_gives_the_same_table_pixels_and_training_cache(raw_pngs, tmp_path):
    from cxr.data import ImageCache

    s_files, files = _convert(raw_pngs, tmp_path / "f")
    s_shards, sharded = _convert(raw_pngs, tmp_path / "s", storage="shards", shard_size=5)
    pd.testing.assert_frame_equal(files, sharded)
    ok = files[files["status"] == "ok"]
    assert len(ok) == 12 and s_shards["converted"] == s_files["converted"] == 12
    folder = tmp_path / "s" / "images"
    n_shards = -(-len(ok) // 5)
    assert sorted(p.name for p in folder.iterdir()) == sorted([INDEX] + [shard_name(k) for k in range(n_shards)])
    assert not (tmp_path / "s" / ".images.staging").exists()  # the staging PNGs are packed and gone
    with ShardReader(folder) as r:
        assert r.names() == sorted(ok["png_path"])
        for png in ok["png_path"]:
            assert r.read(png) == (tmp_path / "f" / "images" / png).read_bytes()
    # the training cache reads <images_dir>/<png_path> either way: the same uint8 arrays
    ids = list(ok["image_id"])
    a = ImageCache.build(ids, [tmp_path / "f" / "images" / p for p in ok["png_path"]], 32, tmp_path / "ca", progress=False)
    b = ImageCache.build(ids, [folder / p for p in ok["png_path"]], 32, tmp_path / "cb", progress=False)
    np.testing.assert_array_equal(np.asarray(a.array), np.asarray(b.array))
    assert a.rows == b.rows


def test_shard_storage_is_incremental_and_switches_layout_without_decoding_again(raw_pngs, tmp_path):
    raw = raw_pngs
    out = tmp_path / "o"
    _convert(raw, out, storage="shards", shard_size=5)
    first = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    stamp = (out / "images" / INDEX).stat().st_mtime_ns
    again, _ = _convert(raw, out, storage="shards", shard_size=5)
    assert again["converted"] == 0 and (out / "images" / INDEX).stat().st_mtime_ns == stamp  # nothing rewritten
    # one source removed: its member leaves the shards, nothing else is decoded again
    table = pd.read_parquet(out / "images.parquet")
    gone = table[table["status"] == "ok"].iloc[3]
    (raw / gone["source_path"]).unlink()
    rerun, t2 = _convert(raw, out, storage="shards", shard_size=5)
    assert rerun["converted"] == 0 and rerun["removed_stale_png"] == 1
    with ShardReader(out / "images") as r:
        assert gone["png_path"] not in r and r.names() == sorted(t2.loc[t2["status"] == "ok", "png_path"])
    # shards -> files -> shards: unpacked and packed again, never decoded again, same bytes
    to_files, _ = _convert(raw, out)
    assert to_files["converted"] == 0 and not (out / "images" / INDEX).exists()
    assert all((out / "images" / p).is_file() for p in t2.loc[t2["status"] == "ok", "png_path"])
    back, _ = _convert(raw, out, storage="shards", shard_size=5)
    assert back["converted"] == 0 and not list((out / "images").rglob("*.png"))
    _convert(raw, tmp_path / "fresh", storage="shards", shard_size=5)
    for name in sorted(p.name for p in (tmp_path / "fresh" / "images").iterdir()):
        assert (out / "images" / name).read_bytes() == (tmp_path / "fresh" / "images" / name).read_bytes()
    assert first.keys() >= {INDEX}


def _packed(tmp_path, n=5, per_shard=2):
    from PIL import Image

    src = tmp_path / "png" / "mimic"
    src.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8)).save(src / f"i{i}.png")
    folder = tmp_path / "images"
    write_shards(sorted(src.glob("*.png")), folder, per_shard=per_shard, root=tmp_path / "png")
    return src, folder


def test_readers_resolve_paths_into_shards(tmp_path):
    from cxr.data import load_png_square

    src, folder = _packed(tmp_path)
    path = folder / "mimic" / "i3.png"  # the path a reader of a folder of files would open
    assert exists(path) and not exists(folder / "mimic" / "nope.png") and not path.exists()
    assert read_bytes(path) == (src / "i3.png").read_bytes()
    np.testing.assert_array_equal(load_png_square(path, 16), load_png_square(src / "i3.png", 16))
    assert fingerprint(path)[0] == (src / "i3.png").stat().st_size
    with pytest.raises(FileNotFoundError, match="no member 'mimic/nope.png'"):
        read_bytes(folder / "mimic" / "nope.png")
    # a rewritten folder is reopened, not served from the stale index
    write_shards([src / "i0.png"], folder, root=tmp_path / "png")
    assert not exists(path) and exists(folder / "mimic" / "i0.png")


def test_corrupt_or_truncated_shards_name_the_shard_and_the_member(tmp_path):
    from cxr.data import ImageCache

    src, folder = _packed(tmp_path)
    with ShardReader(folder) as r:
        off, size = int(r._at["mimic/i2.png"][1]), r.size("mimic/i2.png")
    shard = folder / "shard-00001.tar"  # holds i2, i3
    good = shard.read_bytes()
    flipped = bytearray(good)
    flipped[off + size // 2] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    paths = [folder / "mimic" / f"i{i}.png" for i in range(5)]
    with pytest.raises(ShardError, match=r"shard-00001\.tar: member 'mimic/i2.png' is corrupt"):
        ImageCache.build([f"i{i}" for i in range(5)], paths, 16, tmp_path / "cache", progress=False)
    assert read_bytes(paths[3]) == (src / "i3.png").read_bytes()  # the rest of the shard still reads
    header = bytearray(good)
    header[off - 512 + 10] ^= 0xFF  # inside the member's name field: the header checksum fails
    shard.write_bytes(bytes(header))
    with pytest.raises(ShardError, match=r"shard-00001\.tar: corrupt tar header of member 'mimic/i2.png'"):
        read_bytes(paths[2])
    shard.write_bytes(good[:off + size // 2])
    with pytest.raises(ShardError, match=r"shard-00001\.tar: shard truncated at member 'mimic/i2.png'"):
        read_bytes(paths[2])
    shard.unlink()
    with ShardReader(folder) as fresh, pytest.raises(ShardError, match=r"shard-00001\.tar: shard missing \(it holds member 'mimic/i3.png'\)"):
        fresh.read("mimic/i3.png")
