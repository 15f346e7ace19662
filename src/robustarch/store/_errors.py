"""Errors of the results store; both are :class:`RobustarchError`, so the CLI prints them without a trace."""

from __future__ import annotations

from robustarch.errors import RobustarchError


class StoreFullError(RobustarchError):
    """A write failed for lack of disk space; it was rolled back and everything committed before is kept."""
