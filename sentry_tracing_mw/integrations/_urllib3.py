"""``urllib3`` (and so ``requests``): a span for HTTPS requests that fail before ``http.client``.

An HTTPS pool connects (TCP, TLS handshake) in ``_validate_conn``, and through an HTTPS
proxy opens the tunnel in ``_prepare_proxy`` first, before it calls ``putrequest``, where the
``http.client`` hook starts the span: a refused connection, a proxy that is down or a
handshake timeout would leave no span at all. Both ``HTTPSConnectionPool`` methods are
wrapped; when one raises inside a recording span, an ``http.client`` span for the
request (method and URL read from the calling ``_make_request`` or ``urlopen``) ends
with the error's status, and the exception goes on unchanged; when they succeed, the request's
span is dated back to when they started, so it covers the connection made for it. Plain
HTTP pools connect inside ``http.client`` (already covered), so they are not touched.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from .. import _tracing
from .._context import CURRENT_SPAN, SUPPRESS_INSTRUMENTATION
from ._httplib import ORIGIN
from .http_clients import as_function, fail, route, start_client_span

__all__ = ["install"]

logger = logging.getLogger("sentry_tracing_mw")


def _request_of(frame: FrameType | None) -> tuple[str, str] | None:
    """``(method, url)`` of the ``_make_request`` (or ``urlopen``) call that validated."""
    for _ in range(3):
        if frame is None:
            return None
        local = frame.f_locals
        method, url = local.get("method"), local.get("url")
        if isinstance(method, str) and isinstance(url, str):
            return method, url
        frame = frame.f_back
    return None


def _failed(pool: Any, exc: BaseException, caller: FrameType | None, started: float) -> None:
    """Record the failed request as an ended span from ``started`` (never raises)."""
    try:
        parent = CURRENT_SPAN.get()
        if parent is None or not parent._recording or SUPPRESS_INSTRUMENTATION.get():
            return
        request = _request_of(caller)
        if request is None:
            return
        method, url = request
        opts = parent._context()._client.options
        if url[:1] == "/":
            scheme = str(getattr(pool, "scheme", "https") or "https")
            host = str(getattr(pool, "host", "") or "")
            port = getattr(pool, "port", None)
            path = url
        else:  # absolute form (through a proxy)
            parts = urlsplit(url)
            scheme, host = parts.scheme or "https", parts.hostname or ""
            port = parts.port
            path = parts.path or "/"
        _, base, _ = route(opts, scheme, host, port if isinstance(port, int) else None)
        full = base + path.partition("?")[0].partition("#")[0]
        span = start_client_span(parent, method.upper(), full, host, ORIGIN)
        if span is not None:
            span._start = min(span._start, started)
            fail(span, exc, _timeouts(exc))
    except Exception:
        logger.debug("recording a failed HTTPS connection failed", exc_info=True)


def _timeouts(exc: BaseException) -> tuple[type[BaseException], ...]:
    """What counts as a timeout: urllib3's ``NewConnectionError`` (a refused or unreachable
    host) subclasses its ``ConnectTimeoutError`` for old callers, but is no timeout."""
    from urllib3.exceptions import NewConnectionError
    from urllib3.exceptions import TimeoutError as Urllib3Timeout

    if isinstance(exc, NewConnectionError):
        return ()
    return (TimeoutError, Urllib3Timeout)


#: The pool methods that connect before ``putrequest``: TCP and TLS (``_validate_conn``),
#: and the tunnel through an HTTPS proxy (``_prepare_proxy``, called by ``urlopen`` first).
_CONNECTING = ("_validate_conn", "_prepare_proxy")


def _wrap(original: Callable[[Any, Any], None], name: str) -> Callable[[Any, Any], None]:
    call = as_function(original)

    def connecting(self: Any, conn: Any) -> None:
        started = _tracing._perf()  # (looked up: the span's own clock, mocks included)
        try:
            call(self, conn)
        except BaseException as exc:
            _failed(self, exc, sys._getframe(1), started)
            raise
        # The span starts at putrequest, after this: it is dated back to include the
        # connection (TCP, TLS handshake, proxy tunnel) made here for it.
        try:  # the earliest of the two (the tunnel first), taken by the next putrequest
            if conn._stm_started is None:
                conn._stm_started = started
        except Exception:
            pass

    connecting.__wrapped__ = original  # type: ignore[attr-defined]
    connecting.__name__ = getattr(original, "__name__", name)
    connecting.__qualname__ = getattr(original, "__qualname__", name)
    connecting.__doc__ = getattr(original, "__doc__", None)
    return connecting


def install() -> Callable[[], None]:
    """Wrap the connecting methods of ``HTTPSConnectionPool``; returns the undo function."""
    from urllib3.connectionpool import HTTPSConnectionPool

    patched = {}
    for name in _CONNECTING:
        original = HTTPSConnectionPool.__dict__.get(name)
        if original is not None:
            patched[name] = (original, _wrap(original, name))
    for name, (_, wrapper) in patched.items():
        setattr(HTTPSConnectionPool, name, wrapper)

    def undo() -> None:
        for name, (original, wrapper) in patched.items():
            if HTTPSConnectionPool.__dict__.get(name) is wrapper:
                setattr(HTTPSConnectionPool, name, original)
            else:
                logger.warning(
                    "sentry_tracing_mw: HTTPSConnectionPool.%s was re-patched by someone "
                    "else; leaving it in place",
                    name,
                )

    return undo
