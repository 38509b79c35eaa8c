"""The package's logger, ``sentry_tracing_mw``: a handler that raises never reaches us.

Every module logs through ``logging.getLogger("sentry_tracing_mw")``, from request
threads and from the transport's worker. A handler of the app's whose ``emit`` raises (a
log shipper whose endpoint is down) would otherwise raise out of our log call, into a
request or out of the worker thread. The record is then lost, never the request.
"""

from __future__ import annotations

import logging

__all__ = ["logger"]

logger = logging.getLogger("sentry_tracing_mw")
_call_handlers = logging.Logger.callHandlers


def _call_handlers_safely(record: logging.LogRecord) -> None:
    try:
        _call_handlers(logger, record)
    except Exception:  # a broken handler: not ours to raise (KeyboardInterrupt still is)
        pass


setattr(logger, "callHandlers", _call_handlers_safely)  # noqa: B010  (an instance override)
