"""Where does the default DAG spend its time? Per-stage wall time of one ``dvc repro --force``.

Runs ``dvc repro --force`` in a fresh copy of the repository (git clone of HEAD, so the
workspace is untouched), timestamps every ``Running stage`` line as DVC prints it, and prints
the stages sorted by wall time with their share of the total, the CPU flags, the torch thread
count and the precision the training stages chose. ``--profile STAGE`` then reruns that stage's
command under cProfile and prints its hottest functions (cumulative time).

``--isa avx2`` measures what a CPU without AVX512 / bf16 gets, on a CPU that has them: oneDNN and
ATen are limited to AVX2 kernels (``ONEDNN_MAX_CPU_ISA=AVX2``, ``ATEN_CPU_CAPABILITY=avx2``) and
``CXR_CPU_BF16=0`` makes ``precision: auto`` pick fp32, as on such a machine. It is an emulation:
an AVX2-only CPU also differs in clock and caches, so quote ratios, and confirm on real hardware.

    python bench/dag.py                      # the CPU as it is
    python bench/dag.py --isa avx2           # as an AVX2-only CPU would run it
    python bench/dag.py --profile detector --profile unet --profile train@densenet121
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import cpu_flags

REPO = Path(__file__).resolve().parents[1]
STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def isa_env(isa: str) -> dict[str, str]:
    env = dict(os.environ)
    if isa == "avx2":
        env.update(ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2", CXR_CPU_BF16="0")
    return env


def clone(dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True)
    # the working tree's uncommitted edits are not benchmarked: say so rather than time the wrong code
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    if dirty:
        print("note: uncommitted changes in the workspace are not in the benchmarked clone", file=sys.stderr)
    return dest


def repro(repo: Path, env: dict[str, str]) -> tuple[list[tuple[str, float]], float]:
    """``[(stage, seconds)]`` in run order and the total wall time of ``dvc repro --force``."""
    t0 = time.perf_counter()
    marks: list[tuple[str, float]] = []
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--force"], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        m = STAGE_LINE.search(line)
        if m:
            marks.append((m.group(1), time.perf_counter() - t0))
    rc = proc.wait()
    total = time.perf_counter() - t0
    if rc != 0:
        sys.exit("dvc repro failed:\n" + "".join(tail))
    out = []
    for k, (name, start) in enumerate(marks):
        end = marks[k + 1][1] if k + 1 < len(marks) else total
        out.append((name, end - start))
    return out, total


def stage_cmd(repo: Path, stage: str) -> str:
    """The resolved command of ``stage`` (``dvc.lock`` after the repro above holds it, matrix expanded)."""
    import yaml

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    try:
        return lock["stages"][stage]["cmd"]
    except KeyError:
        sys.exit(f"no stage {stage!r} in dvc.lock; stages: {sorted(lock.get('stages', {}))}")


def profile(repo: Path, stage: str, env: dict[str, str], top: int) -> str:
    """Run one stage's command under cProfile (in a subprocess, same env); the ``top`` functions by cumulative time."""
    out = Path(tempfile.mkdtemp()) / "prof.out"
    argv = shlex.split(stage_cmd(repo, stage))
    if argv[0] != "python":
        return f"{stage}: command does not start with python: {argv}"
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), *argv[1:]], cwd=repo, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    buf = io.StringIO()
    pstats.Stats(str(out), stream=buf).sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isa", choices=("native", "avx2"), default="native")
    ap.add_argument("--profile", action="append", default=[], metavar="STAGE", help="stage to profile (repeatable)")
    ap.add_argument("--top", type=int, default=25, help="functions shown per profiled stage")
    ap.add_argument("--keep", type=Path, default=None, help="run in this folder (kept) instead of a temp clone")
    args = ap.parse_args()
    env = isa_env(args.isa)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    # stage commands call plain ``python``: make it this interpreter (the venv's), as ``make repro`` does
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    import torch

    from cxr.precision import cpu_has_bf16

    os.environ.update({k: v for k, v in env.items() if k.startswith(("CXR_", "ONEDNN_", "ATEN_"))})
    print(f"CPU: {cpu_flags()}; isa: {args.isa}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"precision auto -> {'bf16-mixed' if cpu_has_bf16() else 'fp32'} for the CNN / UNet / detector training")
    with tempfile.TemporaryDirectory(prefix="cxr-bench-dag-") as tmp:
        repo = clone((args.keep or Path(tmp)) / "repo")
        env["PYTHONPATH"] = str(repo)  # the clone's code, not the editable install's
        stages, total = repro(repo, env)
        width = max(len(s) for s, _ in stages)
        print(f"\n{'stage':<{width}}  {'wall s':>8}  {'share':>6}")
        for name, sec in sorted(stages, key=lambda t: -t[1]):
            print(f"{name:<{width}}  {sec:>8.1f}  {sec / total:>6.1%}")
        print(f"{'total (dvc repro --force)':<{width}}  {total:>8.1f}  ({total / 60:.1f} min)")
        for st in args.profile:
            print(f"\n--- cProfile of {st} (cumulative) ---")
            print(profile(repo, st, env, args.top))


if __name__ == "__main__":
    main()
