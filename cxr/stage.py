"""The small runner every ``stages/<name>.py`` uses: logging, its params sections, exit codes.

A stage script parses its paths, then hands :func:`run` its parser, the params sections it reads
and a ``body(args, *sections, log=...)`` that calls one ``cxr`` function. Exit status: 0 on
success (or what ``body`` returns), 2 for bad params (:class:`~cxr.params.ParamsError`, logged
with the dotted key), 1 for bad data: any :class:`~cxr.errors.CxrError`, ``OSError`` (missing or
unreadable file) or ``ValueError`` (a malformed table) is logged as one line, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from typing import Any

from cxr.errors import CxrError
from cxr.params import ParamsError, load_sections

FORMAT = "%(levelname)s %(name)s: %(message)s"
#: failures that are the data's (exit 1), as opposed to the params' (exit 2) or a bug (a traceback)
DATA_ERRORS = (CxrError, OSError, ValueError)


def run(name: str, parser: argparse.ArgumentParser, argv: Sequence[str] | None, sections: Sequence[str],
        body: Callable[..., int | None]) -> int:
    """Parse ``argv``, load ``sections`` of ``--params``, call ``body(args, *sections, log=log)``.

    Returns:
        the exit status (see the module docstring).
    """
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=FORMAT)
    log = logging.getLogger(name)
    try:
        loaded: tuple[Any, ...] = load_sections(args.params, *sections) if sections else ()
    except ParamsError as exc:
        log.error("%s", exc)
        return 2
    try:
        rc = body(args, *loaded, log=log)
    except ParamsError as exc:  # a params value that only the stage's own checks reject
        log.error("%s", exc)
        return 2
    except DATA_ERRORS as exc:
        log.error("%s", exc)
        return 1
    return 0 if rc is None else int(rc)
