"""Local-directory sources (``/path/to/copy`` or ``file:///path/to/copy``): use an existing copy in place.

The files are mirrored into ``data/raw`` without copying bytes when that is possible:

* ``auto`` (default): a hard link per file (same inode, no extra disk), falling back to a copy
  when the source is on another file system or links are not allowed;
* ``hardlink`` / ``symlink`` / ``copy``: exactly that, failing with a clear error if impossible.

``ingest.local.folders`` mirrors only some subfolders of the source, each under the name its
adapter knows (``{nih: nih1000, jsrt: jsrt}``: ``data/raw/nih`` <- ``<source>/nih1000``).

Symlinks in the source are followed only while they stay inside it: a file or folder link that
resolves outside the source is refused, logged, and listed under ``refused`` in the manifest.

If the source *is* the output folder, nothing is touched. Files that vanished from the source
are removed from the mirror; files already mirrored (same inode, same link target, or same size
and mtime for copies) are left alone, so a rerun over a grown copy only adds what is new.
Every link or copy is created under a temporary name and renamed into place (atomic).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from cxr.ingest import register_source
from cxr.ingest.safe import is_inside, remove_partial_files
from cxr.io import write_json
from cxr.params import IngestParams
from cxr.errors import CxrError
from cxr.progress import tqdm

log = logging.getLogger(__name__)

#: Written by this handler (the copy may carry its own manifest.json, e.g. a synthetic cohort).
MANIFEST = "ingest-manifest.json"


class LocalIngestError(CxrError, RuntimeError):
    """The source directory is missing, overlaps the output, or a file cannot be linked/copied."""


def _list_files(root: Path, refused: list[dict] | None = None) -> list[str]:
    """Regular files below ``root`` (relative POSIX paths), following symlinks.

    With ``refused`` (a list to fill), a file or folder symlink that resolves outside ``root`` is
    left out and recorded instead: otherwise a link to ``/etc/hostname`` in the source would be
    hard-linked into data/raw, and DVC's cache (and ``dvc push``) would take the outside file.
    """
    out = []
    seen: set[tuple[int, int]] = set()  # (device, inode) of visited folders: symlink loops end here
    for dirpath, dirs, files in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        rel_dir = Path(dirpath).relative_to(root)
        keep = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            if refused is not None and not is_inside(Path(dirpath) / d, root):
                _refuse(refused, root, (rel_dir / d).as_posix(), "folder")
                continue
            keep.append(d)
        dirs[:] = keep
        for name in files:
            if name.startswith(".") or (rel_dir == Path(".") and name == MANIFEST):
                continue
            p = Path(dirpath) / name
            if not p.is_file():  # skips dangling symlinks, sockets, fifos
                continue
            if refused is not None and not is_inside(p, root):
                _refuse(refused, root, (rel_dir / name).as_posix(), "file")
                continue
            out.append((rel_dir / name).as_posix())
    if refused is not None:
        refused.sort(key=lambda r: r["path"])
    return sorted(out)


def _refuse(refused: list[dict], root: Path, rel: str, what: str) -> None:
    # the manifest gets no absolute path (same bytes on every machine); the log says where it led
    log.warning("refused %s symlink %s: it resolves to %s, outside the source %s",
                what, rel, os.path.realpath(root / rel), root)
    refused.append({"path": rel, "reason": f"{what} symlink resolving outside the source (refused)"})


def _up_to_date(src: Path, dst: Path, mode: str) -> bool:
    if not dst.exists() and not dst.is_symlink():
        return False
    if dst.is_symlink():
        return mode == "symlink" and os.readlink(dst) == str(src.resolve())
    s, d = src.stat(), dst.stat()
    if (s.st_dev, s.st_ino) == (d.st_dev, d.st_ino):
        return mode in ("auto", "hardlink")
    return mode in ("auto", "copy") and (s.st_size, int(s.st_mtime)) == (d.st_size, int(d.st_mtime))


def _place(src: Path, dst: Path, mode: str) -> str:
    """Link or copy ``src`` onto ``dst`` atomically; return the method used."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        if mode == "symlink":
            os.symlink(src.resolve(), tmp)
            used = "symlink"
        else:
            used = "copy"
            if mode in ("auto", "hardlink"):
                try:
                    os.link(src.resolve(), tmp)
                    used = "hardlink"
                except OSError as exc:
                    if mode == "hardlink":
                        raise LocalIngestError(
                            f"cannot hard-link {src} into {dst.parent} ({exc}); use ingest.local.mode: auto or copy"
                        ) from None
            if used == "copy":
                shutil.copy2(src, tmp)
        os.replace(tmp, dst)
        return used
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def _selected(src_dir: Path, folders: dict[str, str] | None, refused: list[dict]) -> dict[str, Path]:
    """``data/raw``-relative path -> source file: the whole source, or only ``folders`` (renamed).

    Symlinks resolving outside the source are left out and recorded in ``refused`` (see :func:`_list_files`).
    """
    if not folders:
        return {rel: src_dir / rel for rel in _list_files(src_dir, refused)}
    out: dict[str, Path] = {}
    for name, sub in sorted(folders.items()):
        sdir = src_dir / sub
        if not sdir.is_dir():
            raise LocalIngestError(f"ingest.local.folders: {name}: {sdir} is not a directory")
        if not is_inside(sdir, src_dir):
            raise LocalIngestError(f"ingest.local.folders: {name}: {sub!r} resolves outside the source {src_dir}")
        sub_refused: list[dict] = []
        for rel in _list_files(sdir, sub_refused):
            out[f"{name}/{rel}"] = sdir / rel
        refused.extend({**r, "path": f"{sub}/{r['path']}"} if "path" in r else r for r in sub_refused)
    return dict(sorted(out.items()))


def mirror(src_dir: Path, out_dir: Path, mode: str = "auto", folders: dict[str, str] | None = None) -> dict:
    """Mirror ``src_dir`` into ``out_dir`` by links (or copies); see the module docstring.

    Args:
        folders: mirror only these subfolders of ``src_dir``, each under a new name:
            ``out_dir/<key>/...`` <- ``src_dir/<value>/...`` (None or empty: the whole source).

    Returns:
        Summary: ``files`` (path, size), counts per method, ``unchanged``, ``removed``, ``refused``
            (symlinks resolving outside the source: path and reason).

    Raises:
        LocalIngestError: missing source or subfolder, source and output nested in each other, link failure.
    """
    src_dir, out_dir = Path(src_dir).expanduser(), Path(out_dir)
    if not src_dir.is_dir():
        raise LocalIngestError(f"ingest.source: local directory {src_dir} does not exist or is not a directory")
    refused: list[dict] = []
    pairs = _selected(src_dir, folders, refused)
    if not pairs:
        raise LocalIngestError(
            f"ingest.source: local directory {src_dir} contains no files"
            + (f" in ingest.local.folders {folders}" if folders else "")
            + (f" (refused {len(refused)} symlinks leading outside it)" if refused else "")
        )
    summary: dict = {"source": str(src_dir), "files": [], "unchanged": 0, "removed": 0, "refused": refused}
    if out_dir.exists() and os.path.samefile(src_dir, out_dir) and not folders:
        log.info("source is the output folder %s: used in place", out_dir)
        summary["in_place"] = True
    else:
        if is_inside(out_dir, src_dir) or is_inside(src_dir, out_dir):
            raise LocalIngestError(
                f"source {src_dir} and output {out_dir} are nested in each other; pick separate folders"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_files(out_dir)
        for rel in _list_files(out_dir):
            if rel not in pairs:
                (out_dir / rel).unlink()
                summary["removed"] += 1
        for rel, s in tqdm(pairs.items(), desc="link", unit="file", disable=None, leave=False):
            d = out_dir / rel
            if _up_to_date(s, d, mode):
                summary["unchanged"] += 1
                continue
            used = _place(s, d, mode)
            summary[used] = summary.get(used, 0) + 1
    summary["files"] = [{"path": rel, "size": s.stat().st_size} for rel, s in pairs.items()]
    log.info("local %s -> %s: %d files (%s)", src_dir, out_dir, len(pairs),
             {k: (len(v) if k == "refused" else v) for k, v in summary.items() if k not in ("files", "source")})
    return summary


@register_source("file")
def ingest_local(location: str, out_dir: Path, params: IngestParams, seed: int) -> dict:
    """Handler for local directories (``seed`` is unused). Writes ``<out_dir>/ingest-manifest.json``."""
    summary = mirror(Path(location), Path(out_dir), params.local.mode, params.local.folders)
    manifest = {"source": "local", "files": summary["files"]}  # no absolute path: same bytes on every machine
    if summary["refused"]:  # listed only when there are some, so a clean copy's manifest is unchanged
        manifest["refused"] = summary["refused"]
    write_json(Path(out_dir) / MANIFEST, manifest)
    return summary
