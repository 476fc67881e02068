"""DVC stage `convert`: every raw image -> normalised PNG + images.parquet (see cxr.convert)."""

from __future__ import annotations

import argparse
import logging
import sys

from cxr.convert import ConvertError, convert
from cxr.executor import ExecutorError
from cxr.params import load_sections


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--raw", required=True, help="input directory (data/raw)")
    p.add_argument("--images", required=True, help="PNG output directory (data/interim/images)")
    p.add_argument("--table", required=True, help="images table (data/interim/images.parquet)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("convert")
    loaded = load_sections(args.params, "convert", log=log)
    if loaded is None:
        return 2
    params, = loaded
    try:
        summary = convert(raw_dir=args.raw, images_dir=args.images, table_path=args.table, params=params)
    except (ConvertError, ExecutorError) as exc:
        log.error("%s", exc)
        return 1
    log.info(
        "convert done: %d ok, %d errors, %d skipped (%d converted, %d unchanged)",
        summary["ok"], summary["error"], summary["skipped"], summary["converted"], summary["reused"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
