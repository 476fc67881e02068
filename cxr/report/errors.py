"""The one exception of the report package."""

from __future__ import annotations

from cxr.errors import CxrError


class ReportError(CxrError, ValueError):
    """A declared report input is missing or malformed; the message names the file and the fix."""
