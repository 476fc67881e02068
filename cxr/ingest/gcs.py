"""``gs://bucket/prefix`` sources: download a GCS prefix into ``data/raw`` verifiably and resumably.

* Lists every object under the prefix with the official ``google-cloud-storage`` client and
  downloads them with a thread pool (``ingest.gcs.workers``).
* Every file is written atomically and checked against the server's CRC32C (MD5 when an object
  has no CRC32C, e.g. some composite uploads): a mismatch is retried, then reported as corrupt.
* Resume: a file already present with the server's size and checksum is not downloaded again,
  so an interrupted ``dvc repro`` (or a grown bucket) costs only what is missing.
* Transient errors (connection resets, 429, 5xx, checksum mismatches) are retried with
  exponential backoff (``ingest.gcs.retries``, ``ingest.gcs.backoff``).
* ``.zip`` objects are extracted next to themselves (``images/0.zip`` -> ``images/0/``) by
  :func:`cxr.ingest.safe.extract_zip`. Names that would escape ``data/raw`` are refused and listed;
  so are members failing their CRC-32 and whole archives over an ``ingest.archive`` budget (total
  bytes, expansion ratio, member count). An archive that cannot be opened at all is an error, raised
  after every other archive has been extracted.

Credentials: the standard Google chain (``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth
application-default login``, the metadata server on GCE), or ``ingest.gcs.anonymous: true`` for
public buckets. ``STORAGE_EMULATOR_HOST`` points the client at an emulator (what the tests do).
"""

from __future__ import annotations

import base64
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr.ingest import register_source
from cxr.ingest.safe import ArchiveRefused, UnsafePath, extract_zip, remove_partial_files, safe_target
from cxr.io import atomic_open, write_json
from cxr.params import ArchiveParams, GcsParams, IngestParams
from cxr.errors import CxrError
from cxr.progress import tqdm

log = logging.getLogger(__name__)

#: Written by this handler. Not "manifest.json": a bucket holding a pushed copy of data/raw has one.
MANIFEST = "ingest-manifest.json"


class GcsIngestError(CxrError, RuntimeError):
    """Credentials missing, bucket unreachable, or files that could not be fetched intact."""


class ChecksumMismatch(CxrError, IOError):
    """Downloaded bytes do not match the checksum the server lists for the object."""


@dataclass(frozen=True)
class RemoteFile:
    """One object to fetch: its name relative to the prefix and what the server says about it."""

    name: str  # full object name
    rel: str  # name below the prefix (the path under data/raw)
    size: int
    crc32c: str | None  # base64 of the big-endian CRC32C, as the JSON API gives it
    md5: str | None


def parse_location(location: str) -> tuple[str, str]:
    """``bucket/some/prefix`` -> (``bucket``, ``some/prefix/``); an empty prefix means the whole bucket."""
    bucket, _, prefix = location.partition("/")
    if not bucket:
        raise GcsIngestError(f"gs://{location}: no bucket name; expected gs://<bucket>/<prefix>")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/") if prefix else ""


def make_client(params: GcsParams) -> Any:
    """A ``google.cloud.storage.Client`` from the standard credential chain, or anonymous.

    Raises:
        GcsIngestError: no credentials were found (the message says how to provide them).
    """
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage

    if params.anonymous:
        client = storage.Client.create_anonymous_client()
        if params.project:
            client.project = params.project
        return client
    try:
        return storage.Client(project=params.project)
    except DefaultCredentialsError as exc:
        raise GcsIngestError(
            "no Google credentials found: set GOOGLE_APPLICATION_CREDENTIALS to a service-account key, run "
            "`gcloud auth application-default login`, or set ingest.gcs.anonymous: true for a public bucket "
            f"({exc})"
        ) from None


def _size_connection_pool(client: Any, n: int) -> None:
    """Give the client's HTTP session one pooled connection per download thread (default: 10)."""
    import requests

    session = getattr(client, "_http", None)
    if isinstance(session, requests.Session):
        adapter = requests.adapters.HTTPAdapter(pool_connections=n, pool_maxsize=n)
        session.mount("https://", adapter)
        session.mount("http://", adapter)


def file_checksums(path: Path) -> tuple[str, str]:
    """Base64 CRC32C and MD5 of a local file, in the encoding GCS uses."""
    import hashlib

    import google_crc32c

    crc = google_crc32c.Checksum()
    md5 = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            crc.update(chunk)
            md5.update(chunk)
    return base64.b64encode(crc.digest()).decode(), base64.b64encode(md5.digest()).decode()


class _HashingWriter:
    """File-like sink that computes CRC32C and MD5 of what passes through it."""

    def __init__(self, fh: Any) -> None:
        import hashlib

        import google_crc32c

        self._fh = fh
        self._crc = google_crc32c.Checksum()
        self._md5 = hashlib.md5()

    def write(self, data: bytes) -> int:
        self._crc.update(data)
        self._md5.update(data)
        return self._fh.write(data)

    def flush(self) -> None:
        self._fh.flush()

    def digests(self) -> tuple[str, str]:
        return base64.b64encode(self._crc.digest()).decode(), base64.b64encode(self._md5.digest()).decode()


def matches(path: Path, f: RemoteFile) -> bool:
    """True if ``path`` exists with the size and checksum the server lists for ``f``."""
    if not path.is_file() or path.stat().st_size != f.size:
        return False
    crc, md5 = file_checksums(path)
    if f.crc32c:
        return crc == f.crc32c
    if f.md5:
        return md5 == f.md5
    return False  # nothing to verify against: fetch again rather than trust a stale file


def list_remote(client: Any, bucket: str, prefix: str) -> tuple[list[RemoteFile], list[dict]]:
    """List objects under ``prefix``; split into fetchable files and refused names."""
    from google.api_core import exceptions as gexc

    files: list[RemoteFile] = []
    refused: list[dict] = []
    try:
        blobs = list(client.list_blobs(bucket, prefix=prefix or None))
    except gexc.NotFound:
        raise GcsIngestError(f"bucket gs://{bucket} not found") from None
    except gexc.Forbidden as exc:
        raise GcsIngestError(
            f"access to gs://{bucket}/{prefix} denied ({exc.message}); check the credentials' roles "
            "(roles/storage.objectViewer) or ingest.gcs.anonymous"
        ) from None
    for b in sorted(blobs, key=lambda b: b.name):
        if b.name.endswith("/") and not b.size:  # "folder" placeholder objects
            continue
        rel = b.name[len(prefix) :]
        if rel == MANIFEST:
            refused.append({"name": b.name, "reason": f"{MANIFEST} is written by ingest itself"})
            continue
        files.append(RemoteFile(b.name, rel, int(b.size or 0), b.crc32c, b.md5_hash))
    return files, refused


def _transient(exc: BaseException) -> bool:
    from google.api_core import exceptions as gexc

    try:
        from google.resumable_media.common import DataCorruption
    except ImportError:  # pragma: no cover
        DataCorruption = ChecksumMismatch  # type: ignore[misc,assignment]
    import requests

    transient = (
        ChecksumMismatch,
        DataCorruption,
        ConnectionError,
        TimeoutError,
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
        gexc.TooManyRequests,
        gexc.InternalServerError,
        gexc.BadGateway,
        gexc.ServiceUnavailable,
        gexc.GatewayTimeout,
        gexc.RetryError,
    )
    return isinstance(exc, transient)


def download_one(client: Any, bucket: str, f: RemoteFile, target: Path, params: GcsParams) -> str:
    """Fetch one object atomically and verify it; retry transient failures with backoff.

    Returns:
        ``"present"`` (already there and intact) or ``"downloaded"``.

    Raises:
        ChecksumMismatch: the bytes never matched the listed checksum.
        Exception: the last non-transient or exhausted transient error from the client.
    """
    if matches(target, f):
        return "present"
    blob = client.bucket(bucket).blob(f.name)
    delay = params.backoff
    for attempt in range(params.retries + 1):
        try:
            with atomic_open(target, "wb") as fh:
                # checksum=None: we verify against the *listed* checksum ourselves, below, before
                # the rename, so a mismatching file never appears under its final name.
                sink = _HashingWriter(fh)
                blob.download_to_file(sink, checksum=None, retry=None)  # retried below, once, visibly
                crc, md5 = sink.digests()
                want = f.crc32c or f.md5
                got = crc if f.crc32c else md5
                if want and got != want:
                    raise ChecksumMismatch(
                        f"gs://{bucket}/{f.name}: {'crc32c' if f.crc32c else 'md5'} {got} != server's {want}"
                    )
            return "downloaded"
        except Exception as exc:
            if attempt >= params.retries or not _transient(exc):
                raise
            log.warning("gs://%s/%s: %s; retry %d/%d in %.1fs", bucket, f.name, exc, attempt + 1, params.retries, delay)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def download_prefix(
    client: Any, bucket: str, prefix: str, out_dir: Path, params: GcsParams, archive: ArchiveParams | None = None
) -> dict:
    """Mirror ``gs://bucket/prefix`` into ``out_dir`` (see the module docstring).

    Returns:
        Summary: ``files`` (path, size, crc32c), counts ``downloaded`` / ``present``,
        ``bytes``, ``refused`` names and ``extracted`` zip members.

    Raises:
        GcsIngestError: listing failed, nothing matched the prefix, or some files could not be
            fetched intact (the others are kept; a rerun resumes).
    """
    out_dir = Path(out_dir)
    archive = archive or ArchiveParams()
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = remove_partial_files(out_dir)
    if stale:
        log.info("removed %d partial files left by an interrupted run", stale)
    files, refused = list_remote(client, bucket, prefix)
    jobs: list[tuple[RemoteFile, Path]] = []
    for f in files:
        try:
            jobs.append((f, safe_target(out_dir, f.rel)))
        except UnsafePath as exc:
            log.warning("refused object gs://%s/%s: %s", bucket, f.name, exc)
            refused.append({"name": f.name, "reason": str(exc)})
    if not jobs:
        raise GcsIngestError(f"no objects under gs://{bucket}/{prefix} (refused: {len(refused)})")

    outcome: dict[str, str] = {}
    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=params.workers) as pool, tqdm(
        total=len(jobs), desc="download", unit="file", disable=None, leave=False
    ) as bar:
        futures = {pool.submit(download_one, client, bucket, f, t, params): f for f, t in jobs}
        for fut, f in futures.items():
            try:
                outcome[f.rel] = fut.result()
            except Exception as exc:
                failures.append(f"gs://{bucket}/{f.name}: {type(exc).__name__}: {exc}")
            bar.update(1)
    if failures:
        raise GcsIngestError(
            f"{len(failures)} of {len(jobs)} objects could not be fetched intact (the rest are kept; rerun to "
            "resume):\n  " + "\n  ".join(failures[:20])
        )

    extracted: dict[str, dict] = {}
    broken: list[str] = []
    if params.extract_zips:
        limits = {"max_bytes": archive.max_bytes, "max_ratio": archive.max_ratio, "max_members": archive.max_members}
        for f, target in jobs:
            if f.rel.lower().endswith(".zip"):
                dest = target.with_suffix("")
                try:
                    res = extract_zip(target, dest, **limits)
                except ArchiveRefused as exc:  # over budget: refused whole, listed, the others go on
                    log.warning("refused archive gs://%s/%s: %s", bucket, f.name, exc)
                    refused.append({"name": f.name, "reason": str(exc)})
                    continue
                except Exception as exc:  # zipfile.BadZipFile and friends: the other archives still go on
                    broken.append(f"gs://{bucket}/{f.name}: cannot extract ({type(exc).__name__}: {exc})")
                    continue
                extracted[f.rel] = {"members": res["members"]}
                refused.extend({"name": f"{f.name}!{r['name']}", "reason": r["reason"]} for r in res["refused"])
    if broken:
        raise GcsIngestError(
            f"{len(broken)} archive(s) could not be opened (the other {len(extracted)} were extracted; "
            "replace the broken ones and rerun):\n  " + "\n  ".join(broken[:20])
        )

    summary = {
        "source": f"gs://{bucket}/{prefix}",
        "files": [{"path": f.rel, "size": f.size, "crc32c": f.crc32c} for f, _ in jobs],
        "downloaded": sum(v == "downloaded" for v in outcome.values()),
        "present": sum(v == "present" for v in outcome.values()),
        "bytes": sum(f.size for f, _ in jobs),
        "refused": sorted(refused, key=lambda r: r["name"]),
        "extracted": extracted,
    }
    log.info(
        "gs://%s/%s: %d files (%d downloaded, %d already present), %d refused",
        bucket, prefix, len(jobs), summary["downloaded"], summary["present"], len(refused),
    )
    return summary


@register_source("gs")
def ingest_gcs(location: str, out_dir: Path, params: IngestParams, seed: int) -> dict:
    """Handler for ``gs://bucket/prefix`` (``seed`` is unused: downloads are not random).

    Writes ``<out_dir>/ingest-manifest.json`` (source, files with sizes and CRC32C, refused names; no
    timestamps, so the same bucket content gives the same bytes).
    """
    bucket, prefix = parse_location(location)
    client = make_client(params.gcs)
    _size_connection_pool(client, params.gcs.workers)
    summary = download_prefix(client, bucket, prefix, Path(out_dir), params.gcs, params.archive)
    manifest = {k: v for k, v in summary.items() if k not in ("downloaded", "present")}
    write_json(Path(out_dir) / MANIFEST, manifest)
    return summary
