"""``http.client`` instrumentation; ``urllib.request``, ``urllib3`` and ``requests`` use it.

Hooks (class level, so connections and subclasses created earlier are covered):
``putrequest`` decides span and propagation, ``putheader`` holds back the caller's own
``sentry-trace`` / ``traceparent`` / ``tracestate`` / ``baggage`` (ours replace them; the
caller's baggage members are merged), ``endheaders`` writes our headers, ``getresponse``
records the status and ``HTTPResponse._close_conn`` (EOF or close) ends the span.
Connection failures and timeouts end the span with a status; the exception is re-raised
unchanged. Nothing is allocated when no trace is current.
"""

from __future__ import annotations

import http.client
import logging
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .._context import CURRENT_SPAN, PROPAGATION_CONTEXT
from .._tracing import Span
from .http_clients import Outgoing, current, fail, finish, netloc, propagates, start_span

__all__ = ["ORIGIN", "install"]

logger = logging.getLogger("sentry_tracing_mw")

ORIGIN = "auto.http.stdlib"
_STATE = "_stm_outgoing"  # HTTPConnection: the request in flight (Outgoing | None)
_SPAN = "_stm_span"  # HTTPResponse: the span that ends with the body

_TIMEOUTS: tuple[type[BaseException], ...] = (TimeoutError,)
_NAME_LENGTHS = frozenset({7, 10, 11, 12})
_ALWAYS_OURS = frozenset({"sentry-trace", "baggage"})
_W3C = frozenset({"traceparent", "tracestate"})

_PREFIXES = {
    name: name.encode() + b": " for name in ("sentry-trace", "baggage", "traceparent", "tracestate")
}

_Conn = http.client.HTTPConnection
_Resp = http.client.HTTPResponse
_CONN_METHODS = ("putrequest", "putheader", "endheaders", "getresponse", "close")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    return str(value)


def _begin(conn: http.client.HTTPConnection, method: str, url: str) -> Outgoing | None:
    """Decide span and headers for a request that ``putrequest`` just started."""
    found = current()
    if found is None:
        return None
    parent, ctx = found
    opts = ctx._client.options
    scheme = "https" if conn.default_port == 443 else "http"
    tunnel = getattr(conn, "_tunnel_host", None)
    host: str
    port: int | None
    if tunnel:
        host, port = tunnel, getattr(conn, "_tunnel_port", None)
    else:
        host, port = conn.host, conn.port
    target = url
    if url[:1] != "/" and "://" in url:  # absolute form (plain HTTP through a proxy)
        parts = urlsplit(url)
        scheme = parts.scheme.lower() or scheme
        host = parts.hostname or host
        try:
            port = parts.port
        except ValueError:
            port = None
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
    base = f"{scheme}://{netloc(scheme, host, port)}"
    inject = propagates(opts, scheme, host, port, lambda: base + target)
    span: Span | None = None
    if parent is not None:
        path, _, rest = target.partition("?")
        if "#" in path:
            path, _, fragment = path.partition("#")
            rest = "#" + fragment
        span = start_span(
            parent,
            method=method,
            base=base,
            path=path,
            host=host,
            origin=ORIGIN,
            query_fragment=(lambda: _split_fragment(rest)) if rest else None,
        )
    if span is None and not inject:
        return None
    span_id = span._span_id if span is not None else parent._span_id if parent else None
    return Outgoing(ctx, span, span_id, inject)


def _split_fragment(rest: str) -> tuple[str, str]:
    query, _, fragment = rest.partition("#")
    return query, fragment


def _abandon(out: Outgoing) -> None:
    """A request ended without a response (connection closed or reused)."""
    span = out.span
    if span is None or span._end is not None:
        return
    exc = sys.exc_info()[1]  # closed while handling an error (e.g. a failed body upload)
    if exc is not None:
        fail(span, exc, _TIMEOUTS)
        return
    if span._status is None:
        span._status = "cancelled"
    finish(span)


def install() -> Callable[[], None]:
    """Patch ``HTTPConnection`` and ``HTTPResponse``; returns the undo function."""
    originals: dict[str, Any] = {name: _Conn.__dict__[name] for name in _CONN_METHODS}
    orig_putrequest = originals["putrequest"]
    orig_putheader = originals["putheader"]
    orig_endheaders = originals["endheaders"]
    orig_getresponse = originals["getresponse"]
    orig_close = originals["close"]
    orig_close_conn = _Resp.__dict__["_close_conn"]
    enabled = [True]

    def putrequest(
        self: http.client.HTTPConnection,
        method: str,
        url: str,
        skip_host: bool = False,
        skip_accept_encoding: bool = False,
    ) -> None:
        stale = self._stm_outgoing  # type: ignore[attr-defined]
        orig_putrequest(self, method, url, skip_host, skip_accept_encoding)
        if stale is not None:  # only after a request that never reached endheaders()
            self._stm_outgoing = None  # type: ignore[attr-defined]
            _abandon(stale)
        if CURRENT_SPAN.get() is None and PROPAGATION_CONTEXT.get() is None:
            return
        if not enabled:
            return
        try:
            out = _begin(self, method, url)
        except Exception:
            logger.exception("sentry_tracing_mw: instrumenting an http.client request failed")
            return
        if out is not None:
            self._stm_outgoing = out  # type: ignore[attr-defined]

    def putheader(self: http.client.HTTPConnection, header: Any, *values: Any) -> None:
        out = self._stm_outgoing  # type: ignore[attr-defined]
        if out is None or not out.inject or len(header) not in _NAME_LENGTHS:
            return orig_putheader(self, header, *values)  # type: ignore[no-any-return]
        try:
            name = _text(header).lower()
            if name in _ALWAYS_OURS:
                if name == "baggage":
                    own = out.own_baggage
                    if own is None:
                        own = out.own_baggage = []
                    own.extend(t for t in map(_text, values) if t)
                return None
            if name in _W3C and out.traceparent:
                return None
        except Exception:
            logger.exception("sentry_tracing_mw: inspecting an outgoing header failed")
        return orig_putheader(self, header, *values)  # type: ignore[no-any-return]

    def inject(conn: http.client.HTTPConnection, out: Outgoing) -> None:
        own = ",".join(out.own_baggage) if out.own_baggage else None
        try:
            headers = out.headers(own)
        except Exception:
            logger.exception("sentry_tracing_mw: building trace headers failed")
            headers = {"baggage": own} if own else {}
        output = getattr(conn, "_output", None)
        try:
            for name, value in headers.items():
                if output is None or (own is not None and name == "baggage"):
                    orig_putheader(conn, name, value)  # validated: may hold the caller's text
                else:  # values we formatted ourselves: skip http.client's re-validation
                    output(_PREFIXES[name] + value.encode("latin-1"))
        except Exception:
            logger.exception("sentry_tracing_mw: writing trace headers failed")

    def endheaders(
        self: http.client.HTTPConnection,
        message_body: Any = None,
        *,
        encode_chunked: bool = False,
    ) -> None:
        out = self._stm_outgoing  # type: ignore[attr-defined]
        if out is None:
            return orig_endheaders(  # type: ignore[no-any-return]
                self, message_body, encode_chunked=encode_chunked
            )
        if out.inject:
            inject(self, out)
        span = out.span
        if span is None:
            self._stm_outgoing = None  # type: ignore[attr-defined]
            return orig_endheaders(  # type: ignore[no-any-return]
                self, message_body, encode_chunked=encode_chunked
            )
        try:
            return orig_endheaders(  # type: ignore[no-any-return]
                self, message_body, encode_chunked=encode_chunked
            )
        except BaseException as exc:
            self._stm_outgoing = None  # type: ignore[attr-defined]
            fail(span, exc, _TIMEOUTS)
            raise

    def getresponse(self: http.client.HTTPConnection) -> http.client.HTTPResponse:
        out = self._stm_outgoing  # type: ignore[attr-defined]
        if out is None:
            return orig_getresponse(self)  # type: ignore[no-any-return]
        self._stm_outgoing = None  # type: ignore[attr-defined]
        span = out.span
        try:
            response: http.client.HTTPResponse = orig_getresponse(self)
        except BaseException as exc:
            if span is not None:
                fail(span, exc, _TIMEOUTS)
            raise
        if span is not None:
            try:
                span.set_http_status(response.status)
                if response.fp is None or response.length == 0:
                    finish(span)  # no body to wait for
                else:
                    response._stm_span = span  # type: ignore[attr-defined]
            except Exception:
                logger.exception("sentry_tracing_mw: tracking an http.client response failed")
                finish(span)
        return response

    def close(self: http.client.HTTPConnection) -> None:
        out = self._stm_outgoing  # type: ignore[attr-defined]
        if out is not None:
            self._stm_outgoing = None  # type: ignore[attr-defined]
            _abandon(out)
        orig_close(self)

    def _close_conn(self: http.client.HTTPResponse) -> None:
        span = self._stm_span  # type: ignore[attr-defined]
        if span is None:
            orig_close_conn(self)
            return
        self._stm_span = None  # type: ignore[attr-defined]
        try:
            orig_close_conn(self)
        finally:
            finish(span)

    wrappers: dict[str, Any] = {
        "putrequest": putrequest,
        "putheader": putheader,
        "endheaders": endheaders,
        "getresponse": getresponse,
        "close": close,
    }
    for name, fn in originals.items():
        wrappers[name].__wrapped__ = fn
        wrappers[name].__doc__ = fn.__doc__
    _close_conn.__wrapped__ = orig_close_conn  # type: ignore[attr-defined]
    setattr(_Conn, _STATE, None)
    setattr(_Resp, _SPAN, None)
    for name, fn in wrappers.items():
        setattr(_Conn, name, fn)
    setattr(_Resp, "_close_conn", _close_conn)  # noqa: B010 (private: not in the stubs)

    def undo() -> None:
        enabled.clear()  # a wrapper someone else chained on top of stays inert
        kept = False
        for name, fn in wrappers.items():
            if _Conn.__dict__.get(name) is fn:
                setattr(_Conn, name, originals[name])
            else:
                kept = True
                logger.warning(
                    "sentry_tracing_mw: HTTPConnection.%s was re-patched by "
                    "someone else; leaving it in place",
                    name,
                )
        if _Resp.__dict__.get("_close_conn") is _close_conn:
            setattr(_Resp, "_close_conn", orig_close_conn)  # noqa: B010
        else:
            kept = True
        if not kept:
            for cls, attr in ((_Conn, _STATE), (_Resp, _SPAN)):
                if attr in cls.__dict__:
                    delattr(cls, attr)

    return undo
