"""The package's logger, ``sentry_tracing_mw``: a handler that raises never reaches us.

Every module logs through ``logging.getLogger("sentry_tracing_mw")``, from request
threads and from the transport's worker. A handler of the app's whose ``emit`` raises (a
log shipper whose endpoint is down) would otherwise raise out of our log call, into a
request or out of the worker thread. The record is then lost, never the request.
"""

from __future__ import annotations

import logging

__all__ = ["guard", "logger"]


def guard(log: logging.Logger) -> logging.Logger:
    """Make ``log`` call its handlers (and its ancestors') under a guard (idempotent)."""
    if getattr(log, "_stm_guarded", False):
        return log
    call_handlers = type(log).callHandlers

    def call_handlers_safely(record: logging.LogRecord) -> None:
        try:
            call_handlers(log, record)
        except Exception:  # a broken handler: not ours to raise (KeyboardInterrupt still is)
            pass

    setattr(log, "callHandlers", call_handlers_safely)  # noqa: B010  (an instance override)
    setattr(log, "_stm_guarded", True)  # noqa: B010
    return log


logger = guard(logging.getLogger("sentry_tracing_mw"))
