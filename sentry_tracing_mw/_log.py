"""The package's logger, ``sentry_tracing_mw``: a handler that raises never reaches us.

Every module logs through ``logging.getLogger("sentry_tracing_mw")``, from request
threads and from the transport's worker. A handler of the app's whose ``emit`` raises (a
log shipper whose endpoint is down) would otherwise raise out of our log call, into a
request or out of the worker thread. The record is then lost, never the request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable

from ._fork import new_lock_in_child

__all__ = ["guard", "logger", "raised_at", "warn_once"]

#: Causes already warned about (``warn_once``); bounded, then DEBUG only.
_warned: set[Hashable] = set()
_warned_lock = threading.Lock()
new_lock_in_child(globals(), "_warned_lock", threading.Lock)
_MAX_WARNED = 64


def guard(log: logging.Logger) -> logging.Logger:
    """Make ``log`` call its handlers (and its ancestors') under a guard (idempotent)."""
    if getattr(log, "_stm_guarded", False):
        return log

    def call_handlers_safely(record: logging.LogRecord) -> None:
        try:
            # The class's method, looked up now: a logging integration that patches
            # ``Logger.callHandlers`` later (sentry-sdk's, at its init) sees our records too.
            type(log).callHandlers(log, record)
        except Exception:  # a broken handler: not ours to raise (KeyboardInterrupt still is)
            pass

    setattr(log, "callHandlers", call_handlers_safely)  # noqa: B010  (an instance override)
    setattr(log, "_stm_guarded", True)  # noqa: B010
    return log


logger = guard(logging.getLogger("sentry_tracing_mw"))


def warn_once(key: Hashable, msg: str, *args: object, exc_info: bool = False) -> None:
    """Log a request-time problem at WARNING the first time ``key`` (its cause) is seen,
    at DEBUG after that (and for every cause past the first ``_MAX_WARNED``)."""
    with _warned_lock:
        first = key not in _warned and len(_warned) < _MAX_WARNED
        if first:
            _warned.add(key)
    if first:
        logger.warning(msg + " (logged once for this cause)", *args, exc_info=exc_info)
    else:
        logger.debug(msg, *args, exc_info=exc_info)


def raised_at(exc: BaseException) -> tuple[str, str, int]:
    """An exception's type and innermost frame: one cause, whatever its message says."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code if tb is not None else None
    return type(exc).__qualname__, code.co_filename if code else "", tb.tb_lineno if tb else 0
