"""``http.client`` instrumentation; ``urllib.request``, ``urllib3`` and ``requests`` use it.

Hooks (class level, so connections and subclasses created earlier are covered):
``putrequest`` decides span and propagation, ``endheaders`` takes the caller's own
``sentry-trace`` / ``traceparent`` / ``tracestate`` / ``baggage`` lines out of the header
block (ours replace them; the caller's baggage members are merged) and adds ours,
``getresponse`` records the status and ``HTTPResponse._close_conn`` (EOF or close) ends the
span, or ``readline`` / ``read1`` when they read the last announced byte (they never close).
Connection failures and timeouts end the span with a status; the exception is re-raised
unchanged. Nothing is allocated when no trace is current.
"""

from __future__ import annotations

import errno
import http.client
import logging
import operator
import sys
from collections.abc import Callable
from sys import exc_info
from typing import Any
from urllib.parse import urlsplit

from .._context import CURRENT_SPAN, PROPAGATION_CONTEXT, SUPPRESS_INSTRUMENTATION
from .._propagation import TRACESTATE_HEADER
from .._tracing import PropagationContext, Span
from .http_clients import (
    add_query,
    as_function,
    callers_tracestate,
    fail,
    finish,
    header_lines,
    late_response,
    matches,
    record_status,
    route,
    start_client_span,
    trace_context,
)

__all__ = ["ORIGIN", "install"]

logger = logging.getLogger("sentry_tracing_mw")

ORIGIN = "auto.http.stdlib"
_STATE = "_stm_outgoing"  # HTTPConnection: the request in flight (_Outgoing | None)
_ROUTE = "_stm_route"  # HTTPConnection: (options, host, base URL, inject) of its destination
_STARTED = "_stm_started"  # HTTPConnection: when urllib3 began connecting for the next request
_SPAN = "_stm_span"  # HTTPResponse: the span that ends with the body

#: Sending the request failed because the server closed the connection: it may have
#: answered first (a 413 before the whole body), which the caller can still read.
_PEER_CLOSED = frozenset({errno.EPIPE, errno.ESHUTDOWN, errno.ECONNRESET, errno.EPROTOTYPE})
# First byte of a header line (either case) that may name one of our headers: s, b, t.
_FIRST = frozenset(b"sSbBtT")
_FIRST_BYTES = frozenset(bytes((c,)) for c in _FIRST)
_head = operator.itemgetter(slice(0, 1))  # a line's first byte as bytes (b"" when empty)
_ALWAYS_OURS = frozenset({b"sentry-trace", b"baggage"})
_W3C = frozenset({b"traceparent", b"tracestate"})

_Conn = http.client.HTTPConnection
_Resp = http.client.HTTPResponse
_CONN_METHODS = ("putrequest", "endheaders", "getresponse", "close")

# What putrequest decided: (trace, span or None, span id for the headers, inject headers).
_Outgoing = tuple[PropagationContext, Span | None, str | None, bool]


def _begin(
    conn: http.client.HTTPConnection,
    parent: Span | None,
    method: str,
    url: str,
    started: float | None,
) -> _Outgoing | None:
    """Decide span and headers for a request that ``putrequest`` just started (``started``:
    when urllib3 began connecting for it, else None)."""
    ctx = trace_context(parent)
    if ctx is None:
        return None
    opts = ctx._client.options
    target = url
    host: str
    known = conn._stm_route  # type: ignore[attr-defined]
    if known is not None and known[0] is opts and url[:1] == "/":
        # a kept-alive connection: its destination was worked out for an earlier request
        _, host, base, inject = known
    else:
        scheme = "https" if conn.default_port == 443 else "http"
        tunnel = getattr(conn, "_tunnel_host", None)
        port: int | None
        if tunnel:
            host, port = tunnel, getattr(conn, "_tunnel_port", None)
        else:
            host, port = conn.host, conn.port
        if "@" in host:  # "user:pass@host" given as the host: never in a span
            host = host.rpartition("@")[2]
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
            _, base, inject = route(opts, scheme, host, port)
        else:  # host and tunnel are fixed for the connection's life: remember them
            _, base, inject = route(opts, scheme, host, port)
            conn._stm_route = (opts, host, base, inject)  # type: ignore[attr-defined]
    if inject is None:
        inject = matches(opts, base + target)
    span: Span | None = None
    if parent is not None and parent._recording:
        path = target
        rest = ""
        cut = target.find("?")
        fragment_at = target.find("#")
        if fragment_at >= 0 and (cut < 0 or fragment_at < cut):
            cut = fragment_at
        if cut >= 0:
            path, rest = target[:cut], target[cut:]
        elif path == "*":  # OPTIONS * (the server as a whole): the URL's empty path
            path = ""
        span = start_client_span(parent, method, base + path, host, ORIGIN)
        if span is not None and started is not None and started < span._start:
            span._start = started  # urllib3 connected for this request first (_urllib3)
        if span is not None and rest and opts.send_default_pii:
            query, _, fragment = rest.partition("#")
            add_query(span, query[1:], fragment)
    if span is None and not inject:
        return None
    span_id = span._span_id if span is not None else parent._span_id if parent else None
    return ctx, span, span_id, inject


def _abandon(out: _Outgoing) -> None:
    """A request ended without a response (connection closed or reused)."""
    span = out[1]
    if span is None or span._end is not None:
        return
    exc = sys.exc_info()[1]  # closed while handling an error (e.g. a failed body upload)
    if exc is not None:
        _failed(span, exc)
        return
    if span._status is None:
        span._status = "cancelled"
    finish(span)


#: Modules a failure to read a response body is raised in (innermost Python frame).
_IO_MODULES = frozenset({"socket", "ssl", "http.client", "urllib3.response"})
_HTTPLIB_FILE = http.client.__file__


def _raised_reading(exc: BaseException, response: http.client.HTTPResponse) -> bool:
    """Whether ``exc`` (or what it wraps) was raised reading ``response``'s body: raised in
    the I/O modules, with one of ``response``'s own methods on the way. Not the caller's
    code (``except HTTPError as e: e.read()`` reads a body while handling an exception
    that has nothing to do with it), nor another request's failure while this response is
    closed (``with urlopen(a) as r: urlopen(b)`` failing)."""
    cause: BaseException | None = exc
    for _ in range(4):
        if cause is None:
            return False
        tb = cause.__traceback__
        mine = False
        while tb is not None:
            frame = tb.tb_frame
            if not mine and frame.f_code.co_filename == _HTTPLIB_FILE:
                mine = frame.f_locals.get("self") is response
            elif not mine and frame.f_globals.get("__name__") == "urllib3.response":
                # urllib3 reads chunked bodies from the socket itself, past http.client
                mine = getattr(frame.f_locals.get("self"), "_fp", None) is response
            if tb.tb_next is None:
                if mine and frame.f_globals.get("__name__") in _IO_MODULES:
                    return True
                break
            tb = tb.tb_next
        cause = cause.__cause__ or cause.__context__
    return False


def _failed(span: Span, exc: BaseException) -> None:
    """End ``span`` for a request or body that failed: a timeout, or an exception raised
    ``from`` one (urllib3's ``ConnectTimeoutError``/``ReadTimeoutError`` wrap the socket's),
    is ``deadline_exceeded``, else ``internal_error`` (``cancelled`` for a BaseException).
    Only explicit causes: an exception the app was handling when it made the request (its
    own TimeoutError) is the implicit context of any failure, not a cause of this one."""
    cause: BaseException | None = exc
    for _ in range(4):
        if cause is None:
            break
        if isinstance(cause, TimeoutError) or type(cause).__name__.endswith("TimeoutError"):
            fail(span, exc, (type(exc),))
            return
        cause = cause.__cause__
    fail(span, exc, ())


def _callers_headers(
    buffer: list[bytes], w3c: bool
) -> tuple[list[bytes], str | None, list[str], bool]:
    """The header block without the caller's trace headers, the caller's baggage, its
    ``tracestate`` values and whether it set a ``traceparent``."""
    kept = buffer[:1]  # the request line
    own: list[str] = []
    states: list[str] = []
    parent = False
    for line in buffer[1:]:
        if line and line[0] in _FIRST:
            name = line.partition(b":")[0].strip().lower()
            if name in _ALWAYS_OURS or (w3c and name in _W3C):
                if name == b"baggage":
                    value = line.partition(b":")[2].decode("latin-1")
                    own.extend(v.strip() for v in value.split("\r\n") if v.strip())
                elif name == b"tracestate":  # (values given in parts are folded lines)
                    value = line.partition(b":")[2].decode("latin-1")  # putheader's encoding
                    states.extend(v.strip() for v in value.split("\r\n") if v.strip())
                elif name == b"traceparent":
                    parent = True
                continue
        kept.append(line)
    return kept, ",".join(own) or None, states, parent


def _inject(
    conn: http.client.HTTPConnection,
    ctx: PropagationContext,
    span_id: str | None,
    putheader: Callable[..., None],
) -> None:
    """Write our trace headers into the header block (before ``endheaders`` sends it)."""
    buffer = getattr(conn, "_buffer", None)
    if type(buffer) is not list:  # not http.client's layout: add ours, merge nothing
        for name, value in ctx.headers(span_id).items():
            putheader(conn, name, value)
        return
    own = None
    kept = None
    state = None
    if not _FIRST_BYTES.isdisjoint(map(_head, buffer)):  # maybe the caller's trace header
        kept, own, states, parent = _callers_headers(
            buffer, ctx._client.options.propagate_traceparent
        )
        state = callers_tracestate(states, parent, ctx.tracestate)
    # The caller's headers are replaced only once ours are known: a failure leaves them.
    if own is None and state is None:
        lines = header_lines(ctx, span_id)
        if lines is not None:
            if kept is not None:
                buffer[:] = kept
            buffer.append(lines[:-2])  # http.client ends each buffered line itself
            return
    headers = ctx.headers(span_id, own)
    if state is not None:
        headers[TRACESTATE_HEADER] = state  # the caller's, with the continued trace's
    if kept is not None:
        buffer[:] = kept
    for name, value in headers.items():
        putheader(conn, name, value)  # validated: may hold forwarded or the caller's text


def install() -> Callable[[], None]:
    """Patch ``HTTPConnection`` and ``HTTPResponse``; returns the undo function."""
    originals: dict[str, Any] = {name: _Conn.__dict__[name] for name in _CONN_METHODS}
    orig_putrequest = as_function(originals["putrequest"])
    orig_putheader = as_function(_Conn.__dict__["putheader"])
    orig_endheaders = as_function(originals["endheaders"])
    orig_getresponse = as_function(originals["getresponse"])
    orig_close = as_function(originals["close"])
    raw_close_conn = _Resp.__dict__["_close_conn"]
    orig_close_conn = as_function(raw_close_conn)
    enabled = [True]
    get_span = CURRENT_SPAN.get
    get_context = PROPAGATION_CONTEXT.get
    suppressed = SUPPRESS_INSTRUMENTATION.get

    def putrequest(
        self: http.client.HTTPConnection,
        method: str,
        url: str,
        skip_host: bool = False,
        skip_accept_encoding: bool = False,
    ) -> None:
        stale = self._stm_outgoing  # type: ignore[attr-defined]
        started = self._stm_started  # type: ignore[attr-defined]
        if started is not None:  # this request's only: never a later one's on the connection
            self._stm_started = None  # type: ignore[attr-defined]
        orig_putrequest(self, method, url, skip_host, skip_accept_encoding)
        if stale is not None:  # only after a request that never reached endheaders()
            self._stm_outgoing = None  # type: ignore[attr-defined]
            _abandon(stale)
        parent = get_span()
        if (parent is None and get_context() is None) or not enabled or suppressed():
            return
        try:
            out = _begin(self, parent, method, url, started)
        except Exception:
            logger.exception("sentry_tracing_mw: instrumenting an http.client request failed")
            return
        if out is not None:
            self._stm_outgoing = out  # type: ignore[attr-defined]

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
        ctx, span, span_id, inject = out
        if inject:
            try:
                _inject(self, ctx, span_id, orig_putheader)
            except Exception:
                logger.exception("sentry_tracing_mw: writing trace headers failed")
        if span is None:
            self._stm_outgoing = None  # type: ignore[attr-defined]
            return orig_endheaders(  # type: ignore[no-any-return]
                self, message_body, encode_chunked=encode_chunked
            )
        if inject:  # once: a second endheaders() (refused) must not add them again
            self._stm_outgoing = (ctx, span, span_id, False)  # type: ignore[attr-defined]
        try:
            return orig_endheaders(  # type: ignore[no-any-return]
                self, message_body, encode_chunked=encode_chunked
            )
        except http.client.CannotSendHeader:
            raise  # endheaders() called again: the caller's mistake; the request goes on
        except BaseException as exc:
            _failed(span, exc)
            if not (isinstance(exc, OSError) and exc.errno in _PEER_CLOSED):
                self._stm_outgoing = None  # type: ignore[attr-defined]
            # else kept: a response read next gives the (ended) span its outcome
            raise

    def getresponse(self: http.client.HTTPConnection) -> http.client.HTTPResponse:
        out = self._stm_outgoing  # type: ignore[attr-defined]
        if out is None:
            return orig_getresponse(self)  # type: ignore[no-any-return]
        self._stm_outgoing = None  # type: ignore[attr-defined]
        span = out[1]
        try:
            response: http.client.HTTPResponse = orig_getresponse(self)
        except http.client.ResponseNotReady:
            # The previous response is still being read: this request waits for a retry.
            self._stm_outgoing = out  # type: ignore[attr-defined]
            raise
        except BaseException as exc:
            if span is not None:
                _failed(span, exc)
            raise
        if span is not None and span._end is not None:  # sending failed, yet it answered
            late_response(span, response.status)
        elif span is not None:
            try:
                record_status(span, response.status)
                if response.fp is None or response.length == 0:
                    span.finish()  # no body to wait for
                else:
                    ambient = exc_info()[1]  # an exception the caller is handling now
                    response._stm_span = (  # type: ignore[attr-defined]
                        span if ambient is None else (span, id(ambient))  # id: not kept alive
                    )
            except Exception:
                logger.exception("sentry_tracing_mw: tracking an http.client response failed")
                finish(span)
        return response

    def close(self: http.client.HTTPConnection) -> None:
        out = self._stm_outgoing  # type: ignore[attr-defined]
        if out is not None:
            self._stm_outgoing = None  # type: ignore[attr-defined]
            _abandon(out)
        if self._stm_route is not None:  # type: ignore[attr-defined]
            self._stm_route = None  # type: ignore[attr-defined]  # set_tunnel() may follow
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
            ambient = None
            if type(span) is tuple:
                span, ambient = span
            failure = exc_info()[1]  # closed because reading the body failed?
            if failure is not None and id(failure) != ambient and _raised_reading(failure, self):
                _failed(span, failure)
            elif self.length and sys._getframe(1).f_code.co_name != "close":
                # The server closed before the announced length: http.client reads that
                # as EOF without raising (urllib3 raises later, after the span ended).
                fail(span, http.client.IncompleteRead(b"", self.length), ())
            else:
                try:
                    span.finish()
                except Exception:
                    logger.exception("sentry_tracing_mw: ending an HTTP client span failed")

    raw_read = _Resp.__dict__["read"]
    raw_readinto = _Resp.__dict__["readinto"]
    raw_readline = _Resp.__dict__["readline"]
    raw_read1 = _Resp.__dict__["read1"]
    orig_read = as_function(raw_read)
    orig_readinto = as_function(raw_readinto)
    orig_readline = as_function(raw_readline)
    orig_read1 = as_function(raw_read1)

    def _ended(self: http.client.HTTPResponse) -> None:
        """The announced length was read by readline()/read1(), which (unlike read())
        never close the response at its end: the span ends here."""
        span = self._stm_span  # type: ignore[attr-defined]
        self._stm_span = None  # type: ignore[attr-defined]
        if type(span) is tuple:
            span = span[0]
        finish(span)

    def _read_failed(self: http.client.HTTPResponse, exc: BaseException) -> None:
        """Reading the body raised without closing the response (a read timeout, a reset
        connection: http.client closes only on a short read): the span fails now, as the
        caller may never close it, or close it long after handling the error."""
        span = self._stm_span  # type: ignore[attr-defined]
        if span is None:  # closed while failing (_close_conn ended the span)
            return
        self._stm_span = None  # type: ignore[attr-defined]
        if type(span) is tuple:
            span = span[0]
        try:
            _failed(span, exc)
        except Exception:
            logger.exception("sentry_tracing_mw: ending an HTTP client span failed")

    def read(self: http.client.HTTPResponse, amt: int | None = None) -> bytes:
        if self._stm_span is None:  # type: ignore[attr-defined]
            return orig_read(self, amt)  # type: ignore[no-any-return]
        try:
            return orig_read(self, amt)  # type: ignore[no-any-return]
        except BaseException as exc:
            _read_failed(self, exc)
            raise

    def readinto(self: http.client.HTTPResponse, b: Any) -> int:
        if self._stm_span is None:  # type: ignore[attr-defined]
            return orig_readinto(self, b)  # type: ignore[no-any-return]
        try:
            return orig_readinto(self, b)  # type: ignore[no-any-return]
        except BaseException as exc:
            _read_failed(self, exc)
            raise

    def readline(self: http.client.HTTPResponse, limit: int = -1) -> bytes:
        if self._stm_span is None:  # type: ignore[attr-defined]
            return orig_readline(self, limit)  # type: ignore[no-any-return]
        try:
            line: bytes = orig_readline(self, limit)
        except BaseException as exc:
            _read_failed(self, exc)
            raise
        if self._stm_span is not None and self.length == 0:  # type: ignore[attr-defined]
            _ended(self)
        return line

    def read1(self: http.client.HTTPResponse, n: int = -1) -> bytes:
        if self._stm_span is None:  # type: ignore[attr-defined]
            return orig_read1(self, n)  # type: ignore[no-any-return]
        try:
            data: bytes = orig_read1(self, n)
        except BaseException as exc:
            _read_failed(self, exc)
            raise
        if self._stm_span is not None and self.length == 0:  # type: ignore[attr-defined]
            _ended(self)
        return data

    response_wrappers: dict[str, Any] = {
        "_close_conn": _close_conn,
        "read": read,
        "readinto": readinto,
        "readline": readline,
        "read1": read1,
    }
    response_originals: dict[str, Any] = {
        "_close_conn": raw_close_conn,
        "read": raw_read,
        "readinto": raw_readinto,
        "readline": raw_readline,
        "read1": raw_read1,
    }

    wrappers: dict[str, Any] = {
        "putrequest": putrequest,
        "endheaders": endheaders,
        "getresponse": getresponse,
        "close": close,
    }
    for name, fn in originals.items():
        wrappers[name].__wrapped__ = fn
        wrappers[name].__doc__ = fn.__doc__
    for name, fn in response_wrappers.items():
        fn.__wrapped__ = response_originals[name]
        fn.__doc__ = response_originals[name].__doc__
    setattr(_Conn, _STATE, None)
    setattr(_Conn, _ROUTE, None)
    setattr(_Conn, _STARTED, None)
    setattr(_Resp, _SPAN, None)
    for name, fn in wrappers.items():
        setattr(_Conn, name, fn)
    for name, fn in response_wrappers.items():
        setattr(_Resp, name, fn)

    def undo() -> None:
        enabled.clear()  # a wrapper someone else chained on top of stays inert
        for name, fn in wrappers.items():
            if _Conn.__dict__.get(name) is fn:
                setattr(_Conn, name, originals[name])
            else:
                logger.warning(
                    "sentry_tracing_mw: HTTPConnection.%s was re-patched by "
                    "someone else; leaving it in place",
                    name,
                )
        for name, fn in response_wrappers.items():
            if _Resp.__dict__.get(name) is fn:
                setattr(_Resp, name, response_originals[name])
        # The class defaults (_stm_outgoing, _stm_span = None) stay: a thread already inside
        # a wrapper, or code that kept a bound wrapper, still reads them after this.

    return undo
