"""DVC stage `ingest`: bring the configured source into data/raw/ (see cxr.ingest)."""

from __future__ import annotations

import argparse
import logging
import sys

from cxr.ingest import ingest
from cxr.params import load_sections


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--out", required=True, help="output directory (data/raw)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("ingest")
    loaded = load_sections(args.params, "base", "ingest", log=log)
    if loaded is None:
        return 2
    base, params = loaded
    summary = ingest(params.source, args.out, params, seed=base.seed)
    log.info("ingest done: %s", {k: v for k, v in summary.items() if k != "files"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
