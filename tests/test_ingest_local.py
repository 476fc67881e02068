"""Local-directory ingest: links instead of copies, atomic placement, mirror semantics, error paths."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cxr.ingest import ingest, split_source
from cxr.ingest.local import LocalIngestError, mirror
from cxr.params import IngestParams, ParamsError, parse_section


def _tree(root: Path) -> dict[str, bytes]:
    files = {
        "mimic-cxr/files/p10/p1/s2/a.dcm": b"DICM" * 100,
        "padchest/images/0/x.png": b"\x89PNG" * 50,
        "manifest.json": b"{}",  # a copy's own manifest is data like any other file
        "nih/BBox_List_2017.csv": b"Image Index,Finding Label\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / ".hidden").write_text("editor junk")
    return files


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_split_source_plain_path_is_file():
    assert split_source("/data/copy") == ("file", "/data/copy")
    assert split_source("file:///data/copy") == ("file", "/data/copy")
    assert split_source("gs://b/p") == ("gs", "b/p")


def test_ingest_local_hardlinks_by_default(tmp_path):
    src = tmp_path / "copy"
    files = _tree(src)
    out = tmp_path / "raw"
    summary = ingest(str(src), out, IngestParams(source=str(src)), seed=0)
    got = _files(out)
    manifest = json.loads(got.pop("ingest-manifest.json"))
    assert got == files
    assert manifest == {"source": "local", "files": [{"path": k, "size": len(v)} for k, v in sorted(files.items())]}
    assert summary["hardlink"] == len(files)
    a, b = (src / "padchest/images/0/x.png").stat(), (out / "padchest/images/0/x.png").stat()
    assert (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)  # no bytes copied

    again = ingest(f"file://{src}", out, IngestParams(source=f"file://{src}"), seed=0)
    assert again["unchanged"] == len(files) and "hardlink" not in again


@pytest.mark.parametrize("mode", ["copy", "symlink"])
def test_ingest_local_copy_and_symlink(tmp_path, mode):
    src = tmp_path / "copy"
    files = _tree(src)
    out = tmp_path / "raw"
    params = IngestParams(source=str(src), local={"mode": mode})
    summary = ingest(str(src), out, params, seed=0)
    assert summary[mode] == len(files)
    target = out / "mimic-cxr/files/p10/p1/s2/a.dcm"
    assert target.is_symlink() == (mode == "symlink")
    assert {k: v for k, v in _files(out).items() if k != "ingest-manifest.json"} == files
    assert ingest(str(src), out, params, seed=0)["unchanged"] == len(files)


def test_mirror_follows_growth_and_removal(tmp_path):
    src, out = tmp_path / "copy", tmp_path / "raw"
    files = _tree(src)
    mirror(src, out)
    (src / "nih" / "BBox_List_2017.csv").unlink()
    (src / "nih" / "new.png").write_bytes(b"new")
    s = mirror(src, out)
    assert s["removed"] == 1 and s["hardlink"] == 1 and s["unchanged"] == len(files) - 1
    assert not (out / "nih" / "BBox_List_2017.csv").exists() and (out / "nih" / "new.png").read_bytes() == b"new"
    assert not list(out.rglob("*.tmp"))


def test_source_is_output_is_used_in_place(tmp_path):
    src = tmp_path / "raw"
    files = _tree(src)
    s = mirror(src, src)
    assert s["in_place"] and len(s["files"]) == len(files)
    assert _files(src) == {**files, ".hidden": b"editor junk"}


def test_missing_and_empty_and_nested_sources(tmp_path):
    with pytest.raises(LocalIngestError, match="does not exist"):
        mirror(tmp_path / "nope", tmp_path / "raw")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LocalIngestError, match="no files"):
        mirror(tmp_path / "empty", tmp_path / "raw")
    src = tmp_path / "copy"
    _tree(src)
    with pytest.raises(LocalIngestError, match="nested"):
        mirror(src, src / "raw")
    with pytest.raises(LocalIngestError, match="nested"):
        mirror(src / "mimic-cxr", src)


def test_hardlink_mode_fails_clearly_across_devices(tmp_path):
    """/dev/shm is another file system on Linux: a hard link cannot cross it."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs a second file system (/dev/shm)")
    src = Path(os.environ.get("TMPDIR_SHM", shm)) / f"cxr-test-{os.getpid()}"
    try:
        _tree(src)
        with pytest.raises(LocalIngestError, match="cannot hard-link"):
            mirror(src, tmp_path / "raw", mode="hardlink")
        s = mirror(src, tmp_path / "raw2", mode="auto")  # auto falls back to copying
        assert s["copy"] == 4
    finally:
        import shutil

        shutil.rmtree(src, ignore_errors=True)


def test_local_mode_is_validated():
    with pytest.raises(ParamsError, match="ingest.local.mode"):
        parse_section("ingest", {"local": {"mode": "rsync"}})


@pytest.mark.parametrize("mode", ["auto", "copy", "symlink"])
def test_symlinks_leading_outside_the_source_are_refused_and_listed(tmp_path, mode):
    """Before: a link to an outside file was followed and hard-linked into data/raw (and DVC's cache)."""
    src, out = tmp_path / "copy", tmp_path / "raw"
    files = _tree(src)
    secret = tmp_path / "outside" / "hostname"
    secret.parent.mkdir()
    secret.write_bytes(b"outside-secret")
    (tmp_path / "outside" / "more.dcm").write_bytes(b"DICM outside")
    os.symlink(secret, src / "nih" / "leak.png")  # a file link out of the source
    os.symlink(tmp_path / "outside", src / "padchest" / "elsewhere")  # a folder link out of the source
    os.symlink(src / "padchest" / "images", src / "nih" / "inside")  # a folder link that stays inside: fine
    summary = ingest(str(src), out, IngestParams(source=str(src), local={"mode": mode}), seed=0)
    got = _files(out)
    manifest = json.loads(got.pop("ingest-manifest.json"))
    assert b"outside-secret" not in got.values() and b"DICM outside" not in got.values()
    assert not (out / "nih" / "leak.png").exists() and not (out / "padchest" / "elsewhere").exists()
    assert got["nih/inside/0/x.png"] == files["padchest/images/0/x.png"]
    assert manifest["refused"] == summary["refused"] == [
        {"path": "nih/leak.png", "reason": "file symlink resolving outside the source (refused)"},
        {"path": "padchest/elsewhere", "reason": "folder symlink resolving outside the source (refused)"},
    ]
    assert str(tmp_path) not in json.dumps(manifest)  # no absolute paths in the manifest


def test_source_with_only_outside_links_is_an_error(tmp_path):
    src = tmp_path / "copy"
    src.mkdir()
    (tmp_path / "secret").write_text("x")
    os.symlink(tmp_path / "secret", src / "a.dcm")
    with pytest.raises(LocalIngestError, match="contains no files .refused 1 symlinks"):
        mirror(src, tmp_path / "raw")
