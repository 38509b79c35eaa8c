"""Settings shared by the example apps: where to send traces and where the other services are.

Every value comes from an environment variable with a default that works on one machine:
the local collector (``python -m sentry_tracing_mw.collector``) on its default port and the
three apps on ports 8000 (storefront), 8001 (pricing) and 8002 (inventory).
"""

from __future__ import annotations

import os

__all__ = [
    "DEFAULT_DSN",
    "dsn",
    "environment",
    "inventory_url",
    "pricing_url",
    "traces_sample_rate",
]

#: The local collector's DSN (``python -m sentry_tracing_mw.collector`` prints it too).
DEFAULT_DSN = "http://public@127.0.0.1:8969/1"


def dsn() -> str:
    """``SENTRY_DSN``, else the local collector."""
    return os.environ.get("SENTRY_DSN") or DEFAULT_DSN


def traces_sample_rate() -> float:
    """``SENTRY_TRACES_SAMPLE_RATE``, else 1.0 (keep every trace: this is a demo)."""
    return float(os.environ.get("SENTRY_TRACES_SAMPLE_RATE") or "1.0")


def environment() -> str:
    """``SENTRY_ENVIRONMENT``, else ``demo``."""
    return os.environ.get("SENTRY_ENVIRONMENT") or "demo"


def pricing_url() -> str:
    """Base URL of the pricing service (``PRICING_URL``)."""
    return (os.environ.get("PRICING_URL") or "http://127.0.0.1:8001").rstrip("/")


def inventory_url() -> str:
    """Base URL of the inventory service (``INVENTORY_URL``)."""
    return (os.environ.get("INVENTORY_URL") or "http://127.0.0.1:8002").rstrip("/")
