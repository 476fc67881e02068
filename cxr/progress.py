"""Progress bars that read well in a terminal and in a DVC log.

On a terminal this is tqdm. When stderr is not a terminal (``dvc repro`` captured in a log, CI, a
queued experiment's log), tqdm's carriage-return refreshes turn into one long line of overwritten
bars; there, each loop instead logs ONE line when it ends: what it did, how many, how long, how fast.

``from cxr.progress import tqdm`` is a drop-in for ``from tqdm import tqdm`` in this package (the
keywords used here: iterable, total, desc, unit, disable, leave, mininterval; methods update, close;
iteration; ``with``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm as _tqdm

log = logging.getLogger("cxr.progress")


def interactive() -> bool:
    """True when stderr is a terminal (where tqdm bars belong)."""
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None)) and stream.isatty()


class LineProgress:
    """Counts like a tqdm bar, prints nothing while running and one log line on close."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None,
                 unit: str = "it", **_ignored: Any) -> None:
        self.iterable, self.desc, self.unit = iterable, desc or "progress", unit
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self._t0, self._closed = total, 0, time.perf_counter(), False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable or ():
                yield item
                self.n += 1
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        dt = time.perf_counter() - self._t0
        of = f"/{self.total}" if self.total is not None and self.total != self.n else ""
        rate = f", {self.n / dt:.1f} {self.unit}/s" if dt > 0 and self.n else ""
        log.info("%s: %d%s %s in %.1f s%s", self.desc, self.n, of, self.unit, dt, rate)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tqdm(iterable: Iterable | None = None, *, disable: bool | None = False, **kw: Any):
    """tqdm on a terminal; :class:`LineProgress` otherwise; a disabled tqdm when ``disable`` is True.

    ``disable=None`` (tqdm's "off when not a terminal") also gives the one-line summary off a terminal.
    """
    if disable:
        return _tqdm(iterable, disable=True, **kw)
    if interactive():
        return _tqdm(iterable, disable=False, **kw)
    return LineProgress(iterable, **kw)
