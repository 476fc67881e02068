"""`dvc push` / `dvc pull` of a folder of converted PNGs to a GCS remote: one object per file vs tar shards.

    python bench/remote.py                    # 5,000 and 20,000 files
    python bench/remote.py --files 2000 --shard 2000

A temporary git + DVC repository gets ``images/`` with N small PNGs (``--size`` px, random noise, so
about the bytes of a real PNG of that size), tracked by ``dvc add``; the remote is a bucket of a
local ``gcp-storage-emulator`` (``dvc-gs`` through ``endpointurl``, anonymous). Measured per N:
``dvc add`` (hash + cache), ``dvc push``, and ``dvc pull`` into an empty cache and workspace; then the
same images packed as tar shards of ``--shard`` images (``cxr.shards``), pushed and pulled the same
way. Both are measured in this run on this machine, side by side; the ratio is per file. The 377k
row is extrapolated linearly from the largest N (marked). An emulator on localhost has no network
latency but one Python process serving every request, so absolute times for a real bucket differ:
what carries over is the per-object cost and its ratio to one object per shard.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MIMIC = 377_110


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_emulator(data: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "--data-dir", str(data), "start",
                             "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("gcp-storage-emulator did not start")


def make_bucket(url: str, name: str) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    os.environ["STORAGE_EMULATOR_HOST"] = url
    storage.Client(project="bench", credentials=AnonymousCredentials()).create_bucket(name)


def write_pngs(folder: Path, n: int, size: int, seed: int) -> int:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buf, format="PNG", compress_level=3)
        (folder / f"{i:07d}.png").write_bytes(buf.getvalue())
        total += buf.tell()
    return total


def run(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return time.perf_counter() - t0


def measure(repo: Path, target: str, url: str, bucket: str, jobs: int) -> dict[str, float]:
    dvc = [sys.executable, "-m", "dvc"]
    run(["git", "init", "-q"], repo)
    run(dvc + ["init", "-q"], repo)
    run(dvc + ["config", "core.analytics", "false"], repo)
    run(dvc + ["remote", "add", "-d", "emu", f"gs://{bucket}/cache"], repo)
    run(dvc + ["remote", "modify", "emu", "endpointurl", url], repo)
    run(dvc + ["remote", "modify", "emu", "allow_anonymous_login", "true"], repo)
    add = run(dvc + ["add", "-q", target], repo)
    push = run(dvc + ["push", "-q", "-j", str(jobs)], repo)
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / target) if (repo / target).is_dir() else (repo / target).unlink()
    pull = run(dvc + ["pull", "-q", "-j", str(jobs)], repo)
    return {"add": add, "push": push, "pull": pull}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", default="5000,20000")
    p.add_argument("--size", type=int, default=64, help="PNG side in pixels")
    p.add_argument("--shard", type=int, default=2000, help="images per tar shard")
    p.add_argument("--jobs", type=int, default=8, help="dvc push/pull -j")
    args = p.parse_args(argv)
    from cxr.shards import write_shards

    # gcsfs >= 2025 first asks the storage control API (gRPC over TLS) for the bucket type and waits
    # 60 s for an answer an emulator never gives, on every dvc command; real GCS answers at once.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    sizes = [int(s) for s in args.files.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="cxr-remote-") as tmp:
        tmp = Path(tmp)
        proc, url = start_emulator(tmp / "gcs")
        try:
            for n in sizes:
                src = tmp / f"src-{n}"
                nbytes = write_pngs(src / "images", n, args.size, seed=n)
                for layout in ("files", "shards"):
                    repo = tmp / f"repo-{n}-{layout}"
                    repo.mkdir()
                    if layout == "files":
                        shutil.copytree(src / "images", repo / "images")
                        objects = n
                    else:
                        objects = len(write_shards(sorted((src / "images").glob("*.png")), repo / "images",
                                                   per_shard=args.shard))
                    bucket = f"bench-{n}-{layout}"
                    make_bucket(url, bucket)
                    t = measure(repo, "images", url, bucket, args.jobs)
                    rows.append({"n": n, "layout": layout, "objects": objects, "bytes": nbytes, **t})
                    print(f"  N={n:>6,} {layout:6s}: add {t['add']:6.1f} s, push {t['push']:6.1f} s, "
                          f"pull {t['pull']:6.1f} s", flush=True)
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"\nload average {os.getloadavg()[0]:.1f}; {args.size} px PNGs (about {rows[0]['bytes'] / sizes[0] / 1024:.1f} KiB each), dvc -j {args.jobs}, "
          f"gcp-storage-emulator on 127.0.0.1, {os.cpu_count()} cores visible; shards of {args.shard} images.\n")
    print("| N | layout | objects | dvc add s | push s | pull s | push ms/image | pull ms/image | push+pull vs files |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        base = next(r for r in rows if r["n"] == n and r["layout"] == "files")
        for r in (x for x in rows if x["n"] == n):
            ratio = (base["push"] + base["pull"]) / (r["push"] + r["pull"])
            print(f"| {n:,} | {r['layout']} | {r['objects']:,} | {r['add']:.1f} | {r['push']:.1f} | {r['pull']:.1f} | "
                  f"{r['push'] / n * 1e3:.2f} | {r['pull'] / n * 1e3:.2f} | {ratio:.1f}x faster |")
    # Extrapolation (marked): at the largest N both layouts move the same bytes, so their
    # difference is the per-object cost b; time = a + b * objects, a = the rest (dvc start-up,
    # hashing, bytes). Bytes grow with N too, which this does not model (same for both layouts).
    big = max(sizes)
    f_row = next(r for r in rows if r["n"] == big and r["layout"] == "files")
    s_row = next(r for r in rows if r["n"] == big and r["layout"] == "shards")
    shards_mimic = -(-MIMIC // args.shard)
    cells = {}
    for op in ("push", "pull"):
        b = (f_row[op] - s_row[op]) / (f_row["objects"] - s_row["objects"])
        a = max(0.0, s_row[op] - b * s_row["objects"])
        cells[op] = (b, a + b * MIMIC, a + b * shards_mimic)
    print(f"\nper object (from N={big:,}, files - shards): push {cells['push'][0] * 1e3:.1f} ms, "
          f"pull {cells['pull'][0] * 1e3:.1f} ms")
    print(f"| {MIMIC:,} (extrapolated) | files | {MIMIC:,} | | {cells['push'][1] / 60:.0f} min | "
          f"{cells['pull'][1] / 60:.0f} min | | | |")
    print(f"| {MIMIC:,} (extrapolated) | shards | {shards_mimic:,} | | {cells['push'][2] / 60:.1f} min | "
          f"{cells['pull'][2] / 60:.1f} min | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
