"""Checks that turn a bad config value into one ConfigError naming the key, value and range."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from pfl.errors import ConfigError


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def positive(key: str, v: Any) -> float:
    if not _is_number(v) or not math.isfinite(v) or v <= 0:
        raise ConfigError(key, v, "a number > 0")
    return float(v)


def non_negative(key: str, v: Any, allowed: str = "a number >= 0") -> float:
    if not _is_number(v) or not math.isfinite(v) or v < 0:
        raise ConfigError(key, v, allowed)
    return float(v)


def fraction(key: str, v: Any, *, low_open: bool = False, high_open: bool = True) -> float:
    lo = "(0" if low_open else "[0"
    hi = "1)" if high_open else "1]"
    bad = (not _is_number(v) or not math.isfinite(v) or v < 0 or v > 1
           or (low_open and v == 0) or (high_open and v == 1))
    if bad:
        raise ConfigError(key, v, f"a number in {lo}, {hi}")
    return float(v)


def integer(key: str, v: Any, minimum: int = 0, maximum: int | None = None) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum or (maximum is not None and v > maximum):
        rng = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ConfigError(key, v, f"an integer {rng}")
    return v


def choice(key: str, v: Any, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    if v not in allowed:
        raise ConfigError(key, v, "one of " + ", ".join(map(str, allowed)))
    return v
