"""Errors a user can fix. The CLI prints them as one line and exits non-zero, no traceback."""

from __future__ import annotations

from typing import Any


class PflError(Exception):
    """A problem with the user's input, config, data or environment."""

    exit_code = 2


class ConfigError(PflError):
    """A config value is out of its allowed set or range."""

    def __init__(self, key: str, value: Any, allowed: str, hint: str | None = None):
        self.key, self.value, self.allowed = key, value, allowed
        msg = f"{key}={value!r} is not allowed: expected {allowed}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


class DataError(PflError):
    """Data missing, unreadable or inconsistent with the config."""
