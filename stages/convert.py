"""DVC stage `convert`: every raw image -> normalised PNG + images.parquet (see cxr.convert)."""

from __future__ import annotations

import argparse
import logging
import sys

from cxr.convert import convert
from cxr.stage import run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--raw", required=True, help="input directory (data/raw)")
    p.add_argument("--images", required=True, help="PNG output directory (data/interim/images)")
    p.add_argument("--table", required=True, help="images table (data/interim/images.parquet)")
    return p


def _run(args: argparse.Namespace, params, *, log: logging.Logger) -> int | None:
    summary = convert(raw_dir=args.raw, images_dir=args.images, table_path=args.table, params=params)
    log.info(
        "convert done: %d ok, %d errors, %d skipped (%d converted, %d unchanged)",
        summary["ok"], summary["error"], summary["skipped"], summary["converted"], summary["reused"],
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run("convert", get_args_parser(), argv, ("convert",), _run)


if __name__ == "__main__":
    sys.exit(main())
