"""Known third-party noise, silenced where it is raised (never a global ``filterwarnings("ignore")``).

Every stage printed the same lines, which buried its own messages in DVC logs:

- timm (``create_norm_act``) calls ``torch.jit.script``: torch 2.14 emits a FutureWarning that it is
  deprecated, once per model built;
- Lightning's pytree helper checks ``isinstance(x, LeafSpec)``: torch warns that this is deprecated;
- Lightning's Trainer logs a "Tip" advertising its cloud logger (litlogger / litmodels) at INFO.

:func:`quiet` (a decorator and a context manager) ignores exactly these warnings, matched by category and
message, inside the decorated call; :func:`drop_lightning_tips` filters the tips off Lightning's
``rank_zero`` logger. Any other warning still shows.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

KNOWN_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),
    (Warning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
)
LIGHTNING_LOGGER = "lightning.pytorch.utilities.rank_zero"


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("💡 Tip:") and ("litlogger" in msg or "litmodels" in msg))


def drop_lightning_tips() -> None:
    """Filter Lightning's cloud-service tips off its ``rank_zero`` logger (idempotent)."""
    lg = logging.getLogger(LIGHTNING_LOGGER)
    if not any(isinstance(f, _DropTips) for f in lg.filters):
        lg.addFilter(_DropTips())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    drop_lightning_tips()
    with warnings.catch_warnings():
        for category, message in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def quiet(fn: F | None = None) -> Any:
    """``@quiet`` on a function, or ``with quiet():`` around a block: the known noise is off inside."""
    if fn is None:
        return _quiet()

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _quiet():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
