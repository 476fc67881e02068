"""DVC stage `ingest`: bring the configured source into data/raw/ (see cxr.ingest)."""

from __future__ import annotations

import argparse
import logging
import sys

from cxr.ingest import ingest
from cxr.stage import run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--out", required=True, help="output directory (data/raw)")
    return p


def _run(args: argparse.Namespace, base, params, *, log: logging.Logger) -> int | None:
    summary = ingest(params.source, args.out, params, seed=base.seed)
    log.info("ingest done: %s", {k: v for k, v in summary.items() if k != "files"})
    return 0


def main(argv: list[str] | None = None) -> int:
    return run("ingest", get_args_parser(), argv, ("base", "ingest"), _run)


if __name__ == "__main__":
    sys.exit(main())
