"""Value checks shared by params validation and the method specs (a leaf: imports only errors).

Each raises `ParamError` with one line naming the key, the bad value and what is allowed.
"""
from __future__ import annotations

from typing import Optional

from .errors import ParamError


def choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ParamError(f"{key}: {value!r} is not allowed; choose one of {', '.join(allowed)}")


def unit(key: str, value: float) -> None:
    if not (0.0 < value <= 1.0):
        raise ParamError(f"{key}: {value!r} is out of range; allowed values are in (0, 1]")


def at_least(key: str, value: float, low: float) -> None:
    if value < low:
        raise ParamError(f"{key}: {value!r} is out of range; allowed values are >= {low}")


def positive(key: str, value: Optional[float], allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ParamError(f"{key}: {value!r} is out of range; allowed values are > 0"
                         + (" or null" if allow_none else ""))


def names(key: str, values, allowed) -> None:
    """Every value allowed and none repeated."""
    for i, v in enumerate(values):
        choice(f"{key}[{i}]", v, tuple(allowed))
    if len(set(values)) != len(values):
        raise ParamError(f"{key}: {values!r} repeats a value")


def percents(key: str, values, hint: str = "") -> None:
    """One or more distinct kept percents, each an integer in [1, 100]."""
    if not values or len(set(values)) != len(values):
        raise ParamError(f"{key}: {values!r}; give one or more distinct integer percents{hint}")
    for i, b in enumerate(values):
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 100:
            raise ParamError(f"{key}[{i}]: {b!r} is out of range; kept percent, an integer in [1, 100]")


def seeds(key: str, values) -> None:
    """One or more distinct seeds."""
    if not values or len(set(values)) != len(values):
        raise ParamError(f"{key}: {values!r}; give one or more distinct seeds")
