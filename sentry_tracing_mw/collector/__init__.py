"""The local collector: a Sentry-compatible envelope endpoint, a SQLite store and a trace viewer.

Run ``python -m sentry_tracing_mw.collector`` (needs the ``collector`` extra) and point an app
at ``http://public@127.0.0.1:8969/1``; ``python -m sentry_tracing_mw.collector show`` prints
the stored traces as trees and http://127.0.0.1:8969/ shows them in a browser.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Collector", "RateLimit", "Store", "create_app", "main", "parse_rate_limit"]

if TYPE_CHECKING:
    from .__main__ import main
    from .server import Collector, RateLimit, create_app, parse_rate_limit
    from .store import Store


def __getattr__(name: str) -> Any:
    # lazy: ``show`` and the store need no web stack
    if name in ("Collector", "RateLimit", "create_app", "parse_rate_limit"):
        from . import server

        return getattr(server, name)
    if name == "Store":
        from .store import Store

        return Store
    if name == "main":
        from .__main__ import main

        return main
    raise AttributeError(name)
