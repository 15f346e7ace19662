"""The attack registry: one class per attack id, looked up by name; ``create`` is the one door in.

Adding an attack = one file defining an :class:`~robustarch.attacks._base.Attack` subclass decorated with
:func:`register_attack`, plus its module name in ``ATTACK_MODULES`` in ``robustarch/attacks/__init__.py``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from robustarch.errors import RobustarchError, UnknownNameError

PROFILES: tuple[str, ...] = ("paper", "standard")

_ATTACKS: dict[str, type] = {}

T = TypeVar("T", bound=type)


def register_attack(cls: T) -> T:
    """Class decorator: register ``cls`` under ``cls.name`` (an attack id such as ``"pgd"``)."""
    name = cls.name  # type: ignore[attr-defined]
    if name in _ATTACKS:
        raise RuntimeError(f"attack {name!r} registered twice")
    _ATTACKS[name] = cls
    return cls


def list_attacks(profile: str | None = None) -> list[str]:
    """Registered attack ids, in registration order; with ``profile``, only those offering that profile."""
    if profile is not None:
        check_profile(profile)
        return [n for n, c in _ATTACKS.items() if profile in c.profiles]  # type: ignore[attr-defined]
    return list(_ATTACKS)


def attack_class(name: str) -> type:
    try:
        return _ATTACKS[name]
    except KeyError:
        raise UnknownNameError("attack", name, _ATTACKS) from None


def attack_profiles(name: str) -> tuple[str, ...]:
    """The profiles attack ``name`` offers (the study's four attacks: ``paper`` and ``standard``)."""
    return tuple(attack_class(name).profiles)  # type: ignore[attr-defined]


def unavailable_reason(name: str, **params: Any) -> str | None:
    """Why attack ``name`` (with ``params``) cannot be built here, or None (e.g. ``autoattack`` before the
    FAB attack it runs is registered)."""
    return attack_class(name).unavailable_reason(**params)  # type: ignore[attr-defined]


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise UnknownNameError("attack profile", str(profile), PROFILES)
    return profile


def create(name: str, profile: str = "standard", **params: Any) -> Any:
    """Build attack ``name`` with ``profile`` (``"standard"``: correct modern semantics, the default;
    ``"paper"``: torchattacks 1.3 semantics as the study ran them) and parameters overriding the profile's
    defaults. Unknown names, profiles and parameters raise errors that suggest close names."""
    cls = attack_class(name)
    check_profile(profile)
    if profile not in cls.profiles:  # type: ignore[attr-defined]
        raise RobustarchError(
            f"attack {name!r} has no {profile!r} profile (it offers: {', '.join(cls.profiles)}); "  # type: ignore[attr-defined]
            "the study did not run it, so there is no historical semantics to reproduce"
        )
    return cls(profile=profile, **params)


def constructor_params(params: dict[str, Any]) -> dict[str, Any]:
    """``Attack.params`` as the constructor takes them: mean and std only where given (with the flaw)."""
    params = dict(params)
    if params.get("mean") is None:
        params.pop("mean", None)
        params.pop("std", None)
    return params


def from_record(name: str, profile: str, params: dict[str, Any]) -> Any:
    """The attack a stored run records (its id, profile and the parameters ``Attack.params`` gave), rebuilt
    to read what it is like (``traits``) or how to name it (``describe()``)."""
    return create(name, profile, **constructor_params(params))
