"""Errors for bad dataset input. All are :class:`~robustarch.errors.RobustarchError`."""

from __future__ import annotations

from robustarch.errors import RobustarchError


class DataError(RobustarchError):
    """Base class of the data errors."""


class DataLayoutError(DataError):
    """A dataset folder or file is missing or misnamed; the message names the expected layout."""


class CorruptFileError(DataError):
    """A file of the dataset cannot be decoded (truncated pickle, broken JPEG, bad idx header)."""


class ChecksumError(DataError):
    """A file's checksum differs from the official (or user-supplied) one."""


class ClassCountError(DataError):
    """The number of classes or of examples per class disagrees with the dataset's published counts."""


class CacheError(DataError):
    """The preprocessed-tensor cache cannot be used (e.g. its folder is not writable)."""
