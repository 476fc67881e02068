"""``cxr label``: label a CSV of reports like the CheXpert labeller does.

Input: a CSV with one report per row and no header (the CheXpert labeller's input), or a CSV
with a header and ``--column``. Output: the CheXpert labeller's output shape - a ``Reports``
column, then one column per observation with 1.0 / 0.0 / -1.0 / blank.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd

from cxr.io import write_csv
from cxr.labeler.context import VocabularyError
from cxr.labeler.labeler import Labeler

log = logging.getLogger("cxr.label")


def read_reports_csv(path: str | Path, column: str | None = None) -> list[str]:
    """Reports from a CSV (no header, first column; or the named ``column``).

    Raises:
        ValueError: unreadable file, missing column or an empty report cell (names the row).
    """
    path = Path(path)
    try:
        if column is None:
            df = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
            col = 0
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
            col = column
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read reports CSV ({type(exc).__name__}: {exc})") from None
    if col not in df.columns:
        raise ValueError(f"{path}: no column {column!r}; columns: {list(df.columns)}")
    reports = df[col].tolist()
    empty = [i + (1 if column is None else 2) for i, r in enumerate(reports) if not str(r).strip()]
    if empty:
        raise ValueError(f"{path}: empty report on line(s) {empty[:10]}")
    return reports


def label_csv(
    src: str | Path,
    out: str | Path,
    vocabulary: str = "chexpert14",
    sections: tuple[str, ...] = ("findings", "impression"),
    column: str | None = None,
) -> dict:
    """Label the reports of ``src`` and write the CheXpert-labeller-shaped CSV ``out`` atomically."""
    reports = read_reports_csv(src, column)
    labeller = Labeler(vocabulary, sections=sections)
    t0 = time.perf_counter()
    labels = labeller.label_many(reports)
    seconds = time.perf_counter() - t0
    labels.insert(0, "Reports", reports)
    write_csv(out, labels)
    return {"reports": len(reports), "seconds": seconds, "reports_per_s": len(reports) / seconds if seconds else None}


def add_label_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``label`` subcommand on a ``cxr`` subparsers object."""
    p = sub.add_parser("label", help="label a CSV of free-text reports (CheXpert labeller format)",
                       description="Rule-based labels (1 positive, 0 negative, -1 uncertain, blank not mentioned) "
                                   "for each report of a CSV, written in the CheXpert labeller's CSV format.")
    _add_arguments(p)
    p.set_defaults(func=_run)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("reports", type=Path, help="CSV with one report per row (no header unless --column)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output CSV")
    p.add_argument("--vocabulary", default="chexpert14", help="chexpert14 | chestxray14 | path to a vocabulary YAML")
    p.add_argument("--sections", default="findings,impression",
                   help="comma-separated sections to label (the whole text when a report has no headers)")
    p.add_argument("--column", default=None, help="report column name if the CSV has a header")


def _run(args: argparse.Namespace) -> int:
    try:
        s = label_csv(args.reports, args.out, args.vocabulary,
                      tuple(x.strip() for x in args.sections.split(",") if x.strip()), args.column)
    except (ValueError, VocabularyError) as exc:
        log.error("%s", exc)
        return 1
    log.info("labelled %d reports in %.2f s (%.0f reports/s) -> %s", s["reports"], s["seconds"],
             s["reports_per_s"] or 0, args.out)
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr label", description=__doc__)
    _add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (same as ``cxr label``)."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
