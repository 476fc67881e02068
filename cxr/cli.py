"""The ``cxr`` command: library entry points for people (DVC stages live in stages/)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from cxr.params import ParamsError, SyntheticParams, load_section


def _cmd_synth(args: argparse.Namespace) -> int:
    from cxr.synth import generate
    from cxr.synth.preview import contact_sheet

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


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr", description="cxr-pipeline command line")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synth", help="generate the synthetic cohort")
    s.add_argument("--out", required=True, type=Path, help="output directory (replaced atomically)")
    s.add_argument("--profile", default="default", choices=["default", "tiny"])
    s.add_argument("--seed", type=int, default=None, help="seed (default: base.seed of --params, else 42)")
    s.add_argument("--signal", type=float, default=None, help="override ingest.synthetic.signal")
    s.add_argument("--params", type=Path, default=None, help="take ingest.synthetic from this params.yaml")
    s.add_argument("--preview", type=Path, default=None, help="also write a contact sheet PNG here")
    s.set_defaults(func=_cmd_synth)
    from cxr.labeler.cli import add_label_parser

    add_label_parser(sub)
    from cxr.predict import add_predict_parser

    add_predict_parser(sub)
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
