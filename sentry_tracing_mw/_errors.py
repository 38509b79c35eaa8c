"""Exceptions raised by sentry-tracing-mw (only ever at configuration time)."""

from __future__ import annotations

__all__ = ["ConfigurationError"]


class ConfigurationError(ValueError):
    """An ``init()`` option or a DSN is invalid; the message names the option and the value."""
