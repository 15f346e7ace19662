"""Lazy re-exports for package ``__init__`` modules (PEP 562 module ``__getattr__``).

A package lists which of its submodules defines each public name; the submodule is imported the first time
one of its names (or the submodule itself) is read. So ``import robustarch.runtime`` or ``import
robustarch.zoo`` costs no torch import until a name that needs torch is used, and ``robustarch --help``
and the commands that need no torch start at once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for the package ``package`` whose public ``name`` is defined in
    submodule ``exports[name]`` (a name relative to the package, e.g. ``"prepare"``). ``namespace`` is the
    package's ``globals()``: a resolved name is stored there, so each is looked up once. Submodules named in
    ``exports`` resolve too (``robustarch.runtime.prepare``)."""
    submodules = set(exports.values())

    def getattr_(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        elif name in submodules:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return getattr_, dir_
