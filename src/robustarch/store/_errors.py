"""Errors of the results store; both are :class:`RobustarchError`, so the CLI prints them without a trace."""

from __future__ import annotations

from robustarch.errors import RobustarchError


class StoreDamagedError(RobustarchError):
    """The store file failed SQLite's integrity check: its numbers cannot be trusted (see the message)."""


class StoreFullError(RobustarchError):
    """A write failed for lack of disk space; it was rolled back and everything committed before is kept."""
