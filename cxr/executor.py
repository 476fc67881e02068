"""One interface to run a function over many items: serially, on a local process pool, or on Dask.

The converter (and anything else embarrassingly parallel) calls :meth:`Executor.map` and does not
care where the work runs::

    with make_executor(workers=0, scheduler=None) as ex:      # a process per core
        rows = ex.map(convert_chunk, chunks, desc="convert")

``scheduler="tcp://host:8786"`` sends the same tasks to a running Dask cluster instead. Results
always come back **in input order**, whatever order the workers finish in, so outputs stay
deterministic. Functions and items must be picklable (module-level functions, plain data).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from abc import ABC, abstractmethod
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

from cxr.errors import CxrError
from cxr.progress import tqdm

log = logging.getLogger(__name__)


class ExecutorError(CxrError, RuntimeError):
    """A worker pool died or a scheduler could not be reached."""


def default_workers() -> int:
    """One worker per CPU core available to this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class Executor(ABC):
    """Run ``fn`` over ``items`` and return the results in input order."""

    name = "executor"

    @abstractmethod
    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], *, desc: str = "") -> list[Any]:
        """Apply ``fn`` to every item; show a progress bar; return results in input order."""

    def close(self) -> None:
        """Release workers or connections."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bar(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc or None, unit="task", disable=total == 0 or None, leave=False)


class SerialExecutor(Executor):
    """In this process, one item after another (``workers=1``; also the easiest to debug)."""

    name = "serial"

    def map(self, fn, items, *, desc=""):
        out = []
        with _bar(len(items), desc) as bar:
            for item in items:
                out.append(fn(item))
                bar.update(1)
        return out


class ProcessExecutor(Executor):
    """A local :class:`~concurrent.futures.ProcessPoolExecutor` with ``workers`` processes.

    Args:
        workers: number of processes (>= 1).
        max_inflight: tasks submitted ahead of completion per worker (bounds memory).
    """

    name = "processes"

    def __init__(self, workers: int, max_inflight: int = 4) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.max_inflight = max_inflight
        # fork is cheap and inherits the imported decoders; spawn elsewhere (macOS, Windows).
        method = "fork" if "fork" in mp.get_all_start_methods() and os.name == "posix" else "spawn"
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method))

    def map(self, fn, items, *, desc=""):
        results: list[Any] = [None] * len(items)
        pending: dict[Any, int] = {}
        it = iter(enumerate(items))
        limit = self.workers * self.max_inflight
        try:
            with _bar(len(items), desc) as bar:
                while True:
                    while len(pending) < limit:
                        nxt = next(it, None)
                        if nxt is None:
                            break
                        pending[self._pool.submit(fn, nxt[1])] = nxt[0]
                    if not pending:
                        break
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        results[pending.pop(fut)] = fut.result()
                        bar.update(1)
        except BrokenProcessPool as exc:
            raise ExecutorError(
                f"a worker process died ({exc}); rerun with workers=1 to see which input crashes it"
            ) from None
        return results

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor(Executor):
    """Tasks on a running Dask cluster (``convert.scheduler: tcp://host:8786``).

    The workers need the ``cxr`` package installed and the input/output paths visible under the
    same names (a shared file system), exactly as the local process pool does.

    Args:
        address: scheduler address, or an existing ``distributed.Client``-compatible cluster.
        timeout: seconds to wait for the scheduler.
    """

    name = "dask"

    def __init__(self, address: Any, timeout: float = 30) -> None:
        try:
            from distributed import Client
        except ImportError as exc:  # pragma: no cover - distributed is a pinned dependency
            raise ExecutorError("convert.scheduler needs the 'distributed' package (pip install distributed)") from exc
        try:
            self._client = Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ExecutorError(f"cannot reach the Dask scheduler at {address!r}: {exc}") from None
        log.info("dask: %s", self._client)

    def map(self, fn, items, *, desc=""):
        futures = self._client.map(fn, list(items), pure=False)
        results: list[Any] = []
        with _bar(len(futures), desc) as bar:
            for fut in futures:  # in input order; the cluster still runs them all concurrently
                results.append(fut.result())
                bar.update(1)
        return results

    def close(self) -> None:
        self._client.close()


def make_executor(workers: int = 0, scheduler: str | None = None) -> Executor:
    """Pick the executor from params.

    Args:
        workers: local processes; 0 = one per core; 1 = serial in this process.
        scheduler: a Dask scheduler address; when set, ``workers`` is ignored.
    """
    if scheduler:
        return DaskExecutor(scheduler)
    n = default_workers() if workers == 0 else workers
    return SerialExecutor() if n == 1 else ProcessExecutor(n)
