"""Errors shared by every part of robustarch, and close-name suggestions for unknown names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RobustarchError(Exception):
    """Base class of the errors robustarch raises for bad input; the CLI prints them without a traceback."""


class UnknownNameError(RobustarchError, KeyError):
    """An unknown model, attack, dataset, preset or similar name; the message suggests close names."""

    def __init__(self, kind: str, name: str, choices: Iterable[str]):
        self.kind, self.name, self.choices = kind, name, sorted(set(choices))
        super().__init__(unknown_name_message(kind, name, self.choices))

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def close_names(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` entries of ``choices`` that look like ``name`` (case- and separator-insensitive)."""
    choices = list(choices)
    canon = {c.lower().replace("-", "_"): c for c in choices}
    hits = difflib.get_close_matches(name.lower().replace("-", "_"), list(canon), n=n, cutoff=0.5)
    return [canon[h] for h in hits]


def unknown_name_message(kind: str, name: str, choices: Iterable[str]) -> str:
    choices = sorted(set(choices))
    close = close_names(name, choices)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Known: {', '.join(choices)}"
