"""The one error type a user sees for bad input, and the one helper that raises it."""

from __future__ import annotations

from typing import Any, NoReturn


class ConfigError(ValueError):
    """An invalid configuration value; the message names field, value and what is allowed."""


def fail(field: str, value: Any, allowed: str) -> NoReturn:
    """Raise `ConfigError` as "<field>=<value!r> is invalid: <allowed>"."""
    raise ConfigError(f"{field}={value!r} is invalid: {allowed}")
