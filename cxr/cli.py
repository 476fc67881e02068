"""The ``cxr`` command: library entry points for people (DVC stages live in stages/)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cxr.labeler.cli import add_label_parser
from cxr.params import ParamsError, SyntheticParams, load_section, override_args
from cxr.predict import add_predict_parser
from cxr.segment import add_segment_parser
from cxr.synth import generate
from cxr.synth.preview import contact_sheet
from cxr import __version__
from cxr.plots import add_plots_parser


def _cmd_synth(args: argparse.Namespace) -> int:
    if args.params:
        params = load_section("ingest", args.params).synthetic
        seed = args.seed if args.seed is not None else load_section("base", args.params).seed
    else:
        params, seed = SyntheticParams(), args.seed if args.seed is not None else 42
    if args.signal is not None:
        params = params.model_copy(update={"signal": args.signal})
    t0 = time.perf_counter()
    summary = generate(args.out, profile=args.profile, seed=seed, params=params)
    logging.getLogger("cxr.synth").info("generated %s in %.1f s: %s", args.out, time.perf_counter() - t0,
                                        json.dumps(summary["counts"]))
    if args.preview:
        path = contact_sheet(args.out, args.preview)
        logging.getLogger("cxr.synth").info("contact sheet: %s", path)
    return 0


def _cmd_exp_run(args: argparse.Namespace) -> int:
    beside = Path(sys.executable).parent / "dvc"  # the dvc of this environment first
    dvc = str(beside) if beside.is_file() else shutil.which("dvc")
    if dvc is None:
        logging.getLogger("cxr").error("dvc is not on PATH (activate the project's virtual environment)")
        return 2
    cmd = [dvc, "exp", "run", *override_args(args.file), *args.dvc_args]
    logging.getLogger("cxr").info("running: %s", " ".join(repr(c) if " " in c else c for c in cmd))
    if args.dry_run:
        print("\n".join(cmd[1:]))
        return 0
    return subprocess.call(cmd)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr", description="cxr-pipeline command line: the pipeline's library for "
                                "people (the DVC stages live in stages/); `cxr VERB --help` for each verb")
    p.add_argument("--version", action="version", version=f"cxr-pipeline {__version__}",
                   help="print the version of cxr-pipeline and exit")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synth", help="generate the synthetic cohort",
                       description="Write a synthetic cohort in the real datasets' layouts (MIMIC-CXR DICOMs and "
                                   "reports, Chest ImaGenome scene graphs, PadChest, NIH boxes) for tests and demos; "
                                   "its images and labels are made up.")
    s.add_argument("-o", "--out", required=True, type=Path, help="output directory (replaced atomically)")
    s.add_argument("--profile", default="default", choices=["default", "tiny"],
                   help="cohort size: default (about 600 images) or tiny (about 35, for tests)")
    s.add_argument("--seed", type=int, default=None, help="seed (default: base.seed of --params, else 42)")
    s.add_argument("--signal", type=float, default=None, help="override ingest.synthetic.signal")
    s.add_argument("--params", type=Path, default=None, help="take ingest.synthetic from this params.yaml")
    s.add_argument("--preview", type=Path, default=None, help="also write a contact sheet PNG here")
    s.set_defaults(func=_cmd_synth)
    e = sub.add_parser("exp-run", help="dvc exp run with every key of a partial params file as -S key=value",
                       description="Run the DAG as a DVC experiment whose params are params.yaml overridden by FILE "
                                   "(e.g. params-real.yaml); arguments after FILE go to dvc exp run as they are.")
    e.add_argument("file", type=Path, help="partial params file (sections and keys of params.yaml)")
    e.add_argument("dvc_args", nargs=argparse.REMAINDER, help="more dvc exp run arguments (-S key=value, -n NAME, ...)")
    e.add_argument("--dry-run", action="store_true", help="print the dvc arguments, one per line, and stop")
    e.set_defaults(func=_cmd_exp_run)
    add_label_parser(sub)
    add_predict_parser(sub)
    add_segment_parser(sub)
    add_plots_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ParamsError as exc:
        logging.getLogger("cxr").error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
