"""gs:// ingest: the real google-cloud-storage client against a real gcp-storage-emulator on 127.0.0.1."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cxr.ingest import ingest
from cxr.ingest.gcs import GcsIngestError, RemoteFile, download_one, make_client, parse_location
from cxr.ingest.safe import ArchiveRefused, UnsafePath, extract_zip, safe_target
from cxr.params import GcsParams, IngestParams

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """A gcp-storage-emulator process storing on disk (so tests can corrupt a stored object)."""
    data = tmp_path_factory.mktemp("gcs")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "--data-dir", str(data), "start",
         "--host", "127.0.0.1", "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("gcp-storage-emulator did not start")
            time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "data": data / ".cloudstorage"}
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture()
def gcs(emulator, monkeypatch, request):
    """(client, bucket, emulator info) with a fresh bucket per test and the env pointing at the emulator."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator["url"])
    client = storage.Client(project="test", credentials=AnonymousCredentials())
    name = "b-" + request.node.name.lower().replace("_", "-")[:50].strip("-")
    bucket = client.create_bucket(name)
    return client, bucket, emulator


def _upload_tree(bucket, root: Path, prefix: str) -> dict[str, bytes]:
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            data = p.read_bytes()
            bucket.blob(f"{prefix}/{rel}").upload_from_string(data)
            files[rel] = data
    return files


def _params(**gcs) -> IngestParams:
    return IngestParams(source="gs://unused/x", gcs={"retries": 1, "backoff": 0.01, **gcs})


def test_ingest_cohort_every_byte(gcs, tiny_cohort, tmp_path):
    client, bucket, _ = gcs
    files = _upload_tree(bucket, tiny_cohort, "cohort")
    out = tmp_path / "raw"
    summary = ingest(f"gs://{bucket.name}/cohort", out, _params(), seed=0)
    assert summary["downloaded"] == len(files) and summary["present"] == 0 and not summary["refused"]
    got = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    manifest = json.loads(got.pop("ingest-manifest.json"))
    assert got == files
    assert [f["path"] for f in manifest["files"]] == sorted(files)
    assert manifest["source"] == f"gs://{bucket.name}/cohort/"

    again = ingest(f"gs://{bucket.name}/cohort/", out, _params(), seed=0)
    assert (again["downloaded"], again["present"]) == (0, len(files))
    want = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    assert (out / "ingest-manifest.json").read_bytes() == want


def test_killed_transfer_resumes(gcs, tmp_path):
    _, bucket, emu = gcs
    rng = np.random.default_rng(0)
    blobs = {f"part/{i:03d}.bin": rng.bytes(48_000) for i in range(120)}
    for name, data in blobs.items():
        bucket.blob(f"big/{name}").upload_from_string(data)
    out = tmp_path / "raw"
    code = (
        "from cxr.ingest import ingest; from cxr.params import IngestParams; "
        f"ingest('gs://{bucket.name}/big', {str(out)!r}, IngestParams(source='gs://bkt/y', gcs={{'workers': 1}}), 0)"
    )
    env = {**os.environ, "STORAGE_EMULATOR_HOST": emu["url"]}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO)
    deadline = time.monotonic() + 60
    done = []
    while time.monotonic() < deadline and proc.poll() is None:
        done = list((out / "part").glob("*.bin")) if (out / "part").is_dir() else []
        if len(done) >= 10:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = sorted((out / "part").glob("*.bin"))
    assert 10 <= len(first) < len(blobs), "the transfer was not interrupted midway"
    assert not (out / "ingest-manifest.json").exists()

    summary = ingest(f"gs://{bucket.name}/big", out, _params(workers=4), seed=0)
    assert summary["present"] == len(first)
    assert summary["downloaded"] == len(blobs) - len(first)
    for name, data in blobs.items():
        assert (out / name).read_bytes() == data
    assert not list(out.rglob("*.tmp"))  # partial files of the killed run are gone


def test_corrupted_blob_is_detected(gcs, tmp_path):
    _, bucket, emu = gcs
    bucket.blob("c/good.bin").upload_from_string(b"g" * 5000)
    bucket.blob("c/bad.bin").upload_from_string(b"b" * 5000)
    stored = emu["data"] / bucket.name / "c" / "bad.bin"
    stored.write_bytes(b"B" + stored.read_bytes()[1:])  # bit rot on the server after the upload
    out = tmp_path / "raw"
    with pytest.raises(GcsIngestError, match=r"(?s)1 of 2 objects .*bad.bin: ChecksumMismatch: .*crc32c"):
        ingest(f"gs://{bucket.name}/c", out, _params(), seed=0)
    assert (out / "good.bin").read_bytes() == b"g" * 5000
    assert not (out / "bad.bin").exists() and not list(out.rglob("*.tmp"))


def test_escaping_blob_name_is_refused(gcs, tmp_path):
    _, bucket, _ = gcs
    bucket.blob("esc/fine.txt").upload_from_string(b"ok")
    bucket.blob("esc//etc/evil.txt").upload_from_string(b"evil")  # rel name '/etc/evil.txt': absolute
    out = tmp_path / "raw"
    summary = ingest(f"gs://{bucket.name}/esc", out, _params(), seed=0)
    assert [r["name"] for r in summary["refused"]] == ["esc//etc/evil.txt"]
    assert "absolute" in summary["refused"][0]["reason"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "raw/fine.txt", "raw/ingest-manifest.json"
    ]
    assert json.loads((out / "ingest-manifest.json").read_text())["refused"] == summary["refused"]


def _zip_bytes(members: list[tuple[str, bytes, bool]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, is_link in members:
            info = zipfile.ZipInfo(name)
            if is_link:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, data)
    return buf.getvalue()


def test_zip_blobs_are_extracted_safely(gcs, tmp_path):
    _, bucket, _ = gcs
    data = _zip_bytes([
        ("a.png", b"PNG-A", False),
        ("sub/b.png", b"PNG-B", False),
        ("../evil.txt", b"evil", False),
        ("/abs.txt", b"evil", False),
        ("link", b"/etc/passwd", True),
    ])
    bucket.blob("pc/images/0.zip").upload_from_string(data)
    out = tmp_path / "work" / "raw"
    summary = ingest(f"gs://{bucket.name}/pc", out, _params(), seed=0)
    assert (out / "images" / "0" / "a.png").read_bytes() == b"PNG-A"
    assert (out / "images" / "0" / "sub" / "b.png").read_bytes() == b"PNG-B"
    assert summary["extracted"] == {"images/0.zip": {"members": 2}}
    assert sorted(r["name"].split("!")[1] for r in summary["refused"]) == ["../evil.txt", "/abs.txt", "link"]
    assert not (out / "images" / "evil.txt").exists() and not (tmp_path / "work" / "evil.txt").exists()
    assert not (out / "images" / "0" / "link").exists()
    again = ingest(f"gs://{bucket.name}/pc", out, _params(), seed=0)  # resumable / idempotent
    assert again["present"] == 1 and again["extracted"] == summary["extracted"]


def test_corrupt_zip_is_an_error(gcs, tmp_path):
    _, bucket, _ = gcs
    bucket.blob("z/x.zip").upload_from_string(b"PK\x03\x04 not really a zip")
    with pytest.raises(GcsIngestError, match="cannot extract"):
        ingest(f"gs://{bucket.name}/z", tmp_path / "raw", _params(), seed=0)


def test_missing_bucket_and_empty_prefix(gcs, tmp_path):
    _, bucket, _ = gcs
    with pytest.raises(GcsIngestError, match="not found"):
        ingest("gs://no-such-bucket-here/x", tmp_path / "raw", _params(), seed=0)
    with pytest.raises(GcsIngestError, match="no objects under"):
        ingest(f"gs://{bucket.name}/nothing-here", tmp_path / "raw", _params(), seed=0)


def test_anonymous_client_works_against_emulator(gcs, tmp_path):
    _, bucket, _ = gcs
    bucket.blob("pub/x.txt").upload_from_string(b"public")
    summary = ingest(f"gs://{bucket.name}/pub", tmp_path / "raw", _params(anonymous=True), seed=0)
    assert summary["downloaded"] == 1 and (tmp_path / "raw" / "x.txt").read_bytes() == b"public"


def test_transient_errors_are_retried_then_reported(tmp_path, caplog):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens: connection refused, a transient error
    client = storage.Client(project="t", credentials=AnonymousCredentials(), client_options={"api_endpoint": dead})
    f = RemoteFile("p/x.bin", "x.bin", 3, "AAAAAA==", None)
    caplog.set_level(logging.WARNING, logger="cxr.ingest.gcs")
    t0 = time.monotonic()
    with pytest.raises(Exception, match="(?i)connect"):
        download_one(client, "b", f, tmp_path / "x.bin", GcsParams(retries=2, backoff=0.05))
    assert time.monotonic() - t0 >= 0.15  # 0.05 + 0.1 of backoff
    assert sum("retry" in r.message for r in caplog.records) == 2
    assert not list(tmp_path.iterdir())


def test_missing_credentials_message(monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing-key.json"))
    with pytest.raises(GcsIngestError, match="GOOGLE_APPLICATION_CREDENTIALS.*ingest.gcs.anonymous: true"):
        make_client(GcsParams())


@pytest.mark.parametrize(
    "location, want", [("bkt/a/b", ("bkt", "a/b/")), ("bkt", ("bkt", "")), ("bkt/a/", ("bkt", "a/"))]
)
def test_parse_location(location, want):
    assert parse_location(location) == want


def test_parse_location_needs_bucket():
    with pytest.raises(GcsIngestError, match="no bucket"):
        parse_location("/x")


@pytest.mark.parametrize(
    "name", ["../x", "a/../../x", "/etc/passwd", "C:/x", "a\\..\\x", "", "a\x00b", ".", "./"]
)
def test_safe_target_refuses(tmp_path, name):
    with pytest.raises(UnsafePath):
        safe_target(tmp_path, name)


def test_safe_target_refuses_symlinked_parent(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePath, match="symlink"):
        safe_target(out, "link/x.txt")
    assert safe_target(out, "a/./b.txt") == out / "a" / "b.txt"


def test_zip_bomb_member_refused(tmp_path):
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (40 * 2**20))
    res = extract_zip(z, tmp_path / "bomb")
    assert res["members"] == 0 and "decompression bomb" in res["refused"][0]["reason"]


def test_dvc_remote_on_gcs_push_pull(gcs, tmp_path):
    """The README's `dvc remote add -d gcs gs://...` recipe, with dvc-gs against the emulator."""
    _, bucket, emu = gcs
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "STORAGE_EMULATOR_HOST": emu["url"], "DVC_NO_ANALYTICS": "1"}

    def run(*args: str) -> str:
        res = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"{args}: {res.stdout}\n{res.stderr}"
        return res.stdout

    dvc = (sys.executable, "-m", "dvc")
    run("git", "init", "-q")
    run(*dvc, "init", "-q")
    (repo / "images.parquet").write_bytes(b"PAR1 not really" * 100)
    run(*dvc, "add", "-q", "images.parquet")
    run(*dvc, "remote", "add", "-d", "gcs", f"gs://{bucket.name}/dvc-cache")
    assert "1 file pushed" in run(*dvc, "push")
    assert list((emu["data"] / bucket.name / "dvc-cache").rglob("*"))
    import shutil

    shutil.rmtree(repo / ".dvc" / "cache")
    (repo / "images.parquet").unlink()
    run(*dvc, "pull")
    assert (repo / "images.parquet").read_bytes() == b"PAR1 not really" * 100


def test_gcs_params_are_validated():
    from cxr.params import ParamsError, parse_section

    with pytest.raises(ParamsError, match=r"ingest.gcs.workers = 0: .*>= 1"):
        parse_section("ingest", {"gcs": {"workers": 0}})
    with pytest.raises(ParamsError, match="unknown key ingest.gcs.token"):
        parse_section("ingest", {"gcs": {"token": "x"}})


def _many_zeros_zip(path: Path, members: int, size: int) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(members):
            zf.writestr(f"m{i:02d}.bin", b"\0" * size)
    return path


def test_zip_bomb_of_small_members_refused_by_the_archive_budget(tmp_path):
    """Before: 24 members of 16 MiB zeros (each under the per-member limit) extracted to 385 MiB."""
    z = _many_zeros_zip(tmp_path / "bomb.zip", 24, 16 * 2**20)
    assert z.stat().st_size < 500_000
    with pytest.raises(ArchiveRefused, match=r"ratio \d+ > ingest.archive.max_ratio=100"):
        extract_zip(z, tmp_path / "bomb")
    assert not (tmp_path / "bomb").exists()  # refused before anything is written


def test_archive_size_and_member_budgets(tmp_path):
    small = tmp_path / "small.zip"
    with zipfile.ZipFile(small, "w") as zf:
        for i in range(5):
            zf.writestr(f"f{i}.txt", b"x" * 100)
    with pytest.raises(ArchiveRefused, match="5 members > ingest.archive.max_members=4"):
        extract_zip(small, tmp_path / "a", max_members=4)
    with pytest.raises(ArchiveRefused, match="expands to 500 bytes > ingest.archive.max_bytes=499"):
        extract_zip(small, tmp_path / "b", max_bytes=499)
    assert extract_zip(small, tmp_path / "c", max_members=5, max_bytes=500)["members"] == 5


def _corrupt_one_member(path: Path, name: str) -> None:
    """Flip a byte inside ``name``'s stored data, so only that member fails its CRC-32."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    raw = bytearray(path.read_bytes())
    at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 2
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_bad_crc_member_is_refused_and_the_rest_extracted(tmp_path):
    z = tmp_path / "crc.zip"
    with zipfile.ZipFile(z, "w") as zf:  # stored: the flipped byte reaches the CRC check unchanged
        for name in ("a.png", "b.png", "c.png"):
            zf.writestr(name, name.encode() * 50)
    _corrupt_one_member(z, "b.png")
    res = extract_zip(z, tmp_path / "out")
    assert res["members"] == 2 and [r["name"] for r in res["refused"]] == ["b.png"]
    assert "Bad CRC-32" in res["refused"][0]["reason"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]


def test_one_bad_archive_does_not_stop_the_others(gcs, tmp_path):
    """A bad CRC in one archive, a bomb in another: both listed; the good archive is extracted."""
    _, bucket, _ = gcs
    good = _zip_bytes([("x.png", b"PNG-X", False)])
    crc = tmp_path / "crc.zip"
    with zipfile.ZipFile(crc, "w") as zf:
        zf.writestr("bad.png", b"B" * 200)
        zf.writestr("fine.png", b"F" * 200)
    _corrupt_one_member(crc, "bad.png")
    bomb = _many_zeros_zip(tmp_path / "bomb.zip", 24, 16 * 2**20)
    bucket.blob("p/0.zip").upload_from_string(crc.read_bytes())
    bucket.blob("p/1.zip").upload_from_string(bomb.read_bytes())
    bucket.blob("p/2.zip").upload_from_string(good)
    out = tmp_path / "raw"
    summary = ingest(f"gs://{bucket.name}/p", out, _params(), seed=0)
    assert (out / "2" / "x.png").read_bytes() == b"PNG-X" and (out / "0" / "fine.png").exists()
    assert not (out / "0" / "bad.png").exists() and not (out / "1").exists()
    reasons = {r["name"]: r["reason"] for r in summary["refused"]}
    assert "Bad CRC-32" in reasons["p/0.zip!bad.png"] and "ingest.archive.max_ratio" in reasons["p/1.zip"]
    assert summary["extracted"] == {"0.zip": {"members": 1}, "2.zip": {"members": 1}}
    # the budget is a param: the same archive under a tighter member limit names that key instead
    strict = IngestParams(source="gs://unused/x", gcs={"retries": 1, "backoff": 0.01}, archive={"max_members": 1})
    summary = ingest(f"gs://{bucket.name}/p", out, strict, seed=0)
    assert "ingest.archive.max_members=1" in {r["name"]: r["reason"] for r in summary["refused"]}["p/1.zip"]


def test_corrupt_archive_is_an_error_after_the_others_are_extracted(gcs, tmp_path):
    _, bucket, _ = gcs
    bucket.blob("z/a.zip").upload_from_string(b"PK\x03\x04 not really a zip")
    bucket.blob("z/b.zip").upload_from_string(_zip_bytes([("y.png", b"PNG-Y", False)]))
    with pytest.raises(GcsIngestError, match=r"1 archive\(s\) could not be opened \(the other 1 were extracted"):
        ingest(f"gs://{bucket.name}/z", tmp_path / "raw", _params(), seed=0)
    assert (tmp_path / "raw" / "b" / "y.png").read_bytes() == b"PNG-Y"
