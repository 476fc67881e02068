"""The one base of every error the package raises on bad input, bad params or bad data.

Each layer keeps its own subclass (``ParamsError``, ``DataError``, ``AnatomyError``, ...), which
also keeps the builtin base it always had (``ValueError``, ``RuntimeError``), so
``except ValueError`` in old callers still works. A stage (:mod:`cxr.stage`) maps
:class:`ParamsError`-type failures to exit status 2 and every other :class:`CxrError` (and
``OSError``) to exit status 1 with the message logged, never a traceback.
"""

from __future__ import annotations


class CxrError(Exception):
    """Base of every cxr error; the message names the thing, the bad value and the fix."""


class TrainError(CxrError, RuntimeError):
    """Training cannot go on: non-finite loss, empty data, bad configuration (message names it)."""


class ModelDirError(CxrError, ValueError):
    """Not a model dir, or a model dir of another architecture than the caller loads."""


class PretrainedError(CxrError, ValueError):
    """A pretrained weights file that cannot be used: missing, corrupt, or not what it claims (names the file)."""


class AnatomyError(CxrError, ValueError):
    """Bad anatomy input: missing files, empty splits, unknown names (the message names the value)."""


class DataError(CxrError, ValueError):
    """Bad dataset input: missing columns, files, splits or a wrong input range (message names it)."""
