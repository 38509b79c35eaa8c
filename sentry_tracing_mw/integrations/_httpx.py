"""``httpx`` instrumentation at the transport layer.

``HTTPTransport.handle_request`` and ``AsyncHTTPTransport.handle_async_request`` are where
one request goes on the wire: every redirect hop and every retry a wrapping transport makes
is its own span with its own headers, and clients (and subclasses) created before
``instrument()`` are covered. ``MockTransport``, ``WSGITransport`` and ``ASGITransport``
are instrumented the same way. The response stream is wrapped so that the span ends when
the response is closed, which httpx does as soon as the body has been read to the end.

Trace headers are added to httpx's header list only while the transport sends the request
(replacing the caller's ``sentry-trace`` / ``traceparent``, merging its ``baggage``), then
the caller's headers are put back: re-sending the same request never grows ``baggage``, and
a redirect hop to a URL that must not get trace headers carries none of ours. A request
object that is already being sent (the same object sent from several threads or tasks at
once) is not touched: the transport gets a copy that carries the headers. The header values
come from the per-trace cache shared with ``http.client`` (``header_items``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import types
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

from .._context import CURRENT_SPAN, PROPAGATION_CONTEXT, SUPPRESS_INSTRUMENTATION
from .._propagation import (
    BAGGAGE_HEADER,
    SENTRY_TRACE_HEADER,
    TRACEPARENT_HEADER,
    TRACESTATE_HEADER,
)
from .._tracing import PropagationContext, Span
from .http_clients import (
    add_query,
    as_function,
    callers_tracestate,
    fail,
    finish,
    header_items,
    matches,
    record_status,
    route,
    start_client_span,
    trace_context,
)

__all__ = ["ORIGIN", "install"]

logger = logging.getLogger("sentry_tracing_mw")

ORIGIN = "auto.http.httpx"
_TIMEOUTS: tuple[type[BaseException], ...] = (httpx.TimeoutException, TimeoutError)

_NAMES = {
    name: name.encode()
    for name in (SENTRY_TRACE_HEADER, BAGGAGE_HEADER, TRACEPARENT_HEADER, TRACESTATE_HEADER)
}
_OURS = frozenset(_NAMES.values())
_W3C = frozenset({_NAMES[TRACEPARENT_HEADER], _NAMES[TRACESTATE_HEADER]})
_SENDING = "_stm_sending"  # in a Request's __dict__ while our headers are in it
#: A send's token: the caller's own header list, while the request carries ours.
_Sending = tuple[list[Any]]


def _full_url(url: httpx.URL) -> str:
    if url.userinfo:
        url = url.copy_with(username=None, password=None)
    return str(url)


def _prepare(
    request: httpx.Request, parent: Span | None, in_process: bool
) -> tuple[Span | None, httpx.Request, _Sending | None]:
    """Start the span and add the trace headers for one request on the wire; returns the
    span, the request to send (``request``, or a copy with the headers when ``request`` is
    already being sent, or goes to an ``in_process`` transport, whose handler may keep
    it) and what puts the caller's headers back (None: nothing to undo)."""
    ctx = trace_context(parent)
    if ctx is None:
        return None, request, None
    opts = ctx._client.options
    url = request.url
    ref = getattr(url, "_uri_reference", None)  # httpx's parsed URL: no property calls
    if ref is not None:
        scheme, host, port, path = ref.scheme, ref.host, ref.port, ref.path or "/"
        if host[:4] == "xn--":
            host = url.host  # IDNA: the readable form
    else:
        scheme, host, port = url.scheme, url.host, url.port
        path = url.raw_path.partition(b"?")[0].decode("ascii")
    _, base, inject = route(opts, scheme, host, port)
    if inject is None:
        inject = matches(opts, _full_url(url))
    span = start_client_span(parent, request.method, base + path, host, ORIGIN)
    if span is not None and opts.send_default_pii:
        add_query(span, url.query.decode("ascii", "replace"), url.fragment)
    if not inject:
        return span, request, None
    span_id = span._span_id if span is not None else parent._span_id if parent else None
    fields = getattr(request, "__dict__", None)
    headers = request.headers
    items = getattr(headers, "_list", None)
    if type(fields) is not dict or type(items) is not list:
        return span, _with_headers_public(request, ctx, span_id), None
    token = (items,)  # unique to this send; holds the caller's own header list
    # One send at a time owns the request (setdefault is atomic); an in-process
    # transport always gets a copy: its handler may keep the request it was given.
    owner = token if in_process else fields.setdefault(_SENDING, token)
    if owner is not token or in_process:
        # (Being sent by another thread or task right now: its headers are in the request
        # until it puts the caller's back.) Ours go on the caller's own list (the owner's
        # token), in a copy for the transport.
        copied = object.__new__(type(headers))
        copied.__dict__.update(headers.__dict__)
        copied._list = _with_ours(owner[0], ctx, span_id)
        return span, _copy(request, copied), None
    try:
        # A new list: the caller's own stays untouched, for the restore and for copies.
        headers._list = _with_ours(items, ctx, span_id)
    except BaseException:
        del fields[_SENDING]
        raise
    return span, request, token


def _with_ours(items: list[Any], ctx: PropagationContext, span_id: str | None) -> list[Any]:
    """A new httpx header list: ``items`` with our trace headers (the caller's trace
    headers replaced, its baggage members merged into ours)."""
    for item in items:  # (raw name, lowercase name, value), httpx's internal layout
        if item[1] in _OURS:
            break
    else:  # the usual case: the caller set no trace headers, ours are appended
        cached = header_items(ctx, span_id)
        if cached is None:  # a value that needs the careful encoding
            cached = [
                (_NAMES[name], value.encode("utf-8", "surrogateescape"))
                for name, value in ctx.headers(span_id).items()
            ]
        return items + [(name, name, value) for name, value in cached]
    w3c = ctx._client.options.propagate_traceparent
    kept = []
    bags: list[bytes] = []
    states = []
    parent = False
    for item in items:
        name = item[1]
        if name not in _OURS or (not w3c and name in _W3C):
            kept.append(item)
        elif name == b"baggage":
            bags.append(item[2])
        elif name == b"tracestate":
            states.append(item[2].decode("utf-8", "surrogateescape"))
        elif name == b"traceparent":
            parent = True
    own = b",".join(bags).decode("utf-8", "surrogateescape") if bags else None
    values = ctx.headers(span_id, own)
    state = callers_tracestate(states, parent, ctx.tracestate)
    if state is not None:
        values[TRACESTATE_HEADER] = state  # the caller's, with the continued trace's
    kept.extend(
        (_NAMES[name], _NAMES[name], value.encode("utf-8", "surrogateescape"))
        for name, value in values.items()
    )
    return kept


def _restore(request: httpx.Request, token: _Sending) -> None:
    """After the transport call: the caller's own header list goes back, then the request
    is free for the next send (in that order: a send starting in between copies)."""
    try:
        request.headers._list = token[0]
    except Exception:
        logger.exception("sentry_tracing_mw: restoring an httpx request failed")
    fields = request.__dict__
    if fields.get(_SENDING) is token:
        del fields[_SENDING]


def _copy(request: httpx.Request, headers: httpx.Headers) -> httpx.Request:
    """``request`` (any ``Request`` subclass) with other headers, without re-parsing
    anything or pickling (httpx's ``__getstate__`` drops the body stream): a ``Request``
    keeps its fields in ``__dict__``."""
    sent = object.__new__(type(request))
    sent.__dict__.update(request.__dict__)
    sent.__dict__.pop(_SENDING, None)
    sent.headers = headers
    return sent


def _with_headers_public(
    request: httpx.Request, ctx: PropagationContext, span_id: str | None
) -> httpx.Request:
    """Our headers through the public ``Headers`` API, on a copy of the request (another
    httpx layout); the request as it is when it cannot be copied so."""
    headers = request.headers.copy()
    values = ctx.headers(span_id, headers.get(BAGGAGE_HEADER) or None)
    if TRACEPARENT_HEADER in values and TRACESTATE_HEADER in headers:
        state = callers_tracestate(
            headers.get_list(TRACESTATE_HEADER), TRACEPARENT_HEADER in headers, ctx.tracestate
        )
        del headers[TRACESTATE_HEADER]  # the caller's own: belonged to a traceparent we replace
        if state is not None:
            values[TRACESTATE_HEADER] = state  # or kept, with the continued trace's
    for name, value in values.items():
        headers[name] = value
    try:
        return _copy(request, headers)
    except Exception:  # no __dict__: sent without our headers rather than changed
        logger.debug("cannot copy an httpx request of type %s", type(request).__name__)
        return request


class _ClosesSpan:
    """A response stream that ends its span when closed (httpx closes a response once its
    body has been read to the end, and when reading it fails). Built without ``__init__``."""

    __slots__ = ("_ambient", "_inner", "_request", "_span")
    _ambient: BaseException | None
    _inner: Any
    _request: httpx.Request
    _span: Span | None

    def _end(self) -> None:
        span = self._span
        if span is None:
            return
        self._span = None
        exc = sys.exc_info()[1]  # closed while an error propagates: did reading this fail?
        if (
            exc is not None
            # one being handled already when the response came (a retry in an except
            # block, a call in a finally): not this response's
            and exc is not self._ambient
            and (
                not isinstance(exc, Exception)  # cancelled
                or (
                    isinstance(exc, httpx.TransportError)
                    and getattr(exc, "_request", None) is self._request
                )
            )
        ):
            fail(span, exc, _TIMEOUTS)
            return
        try:
            span.finish()
        except Exception:
            logger.exception("sentry_tracing_mw: ending an HTTP client span failed")


class _SyncStream(_ClosesSpan, httpx.SyncByteStream):
    __slots__ = ()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._inner)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._end()


class _AsyncStream(_ClosesSpan, httpx.AsyncByteStream):
    __slots__ = ()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._inner.__aiter__()  # type: ignore[no-any-return]

    def aclose(self) -> Any:  # the inner stream's awaitable: no coroutine of our own
        try:
            self._end()
        except Exception:  # the stream is closed whatever ending the span does
            logger.exception("sentry_tracing_mw: ending an HTTP client span failed")
        return self._inner.aclose()


def _track(
    request: httpx.Request, response: httpx.Response, span: Span, stream_type: type[_ClosesSpan]
) -> None:
    """Record the status; end the span when the response is closed (never raises)."""
    try:
        record_status(span, response.status_code)
        if response.is_closed:  # built with its body (a MockTransport's): read already
            finish(span)
            return
        stream = stream_type.__new__(stream_type)
        stream._inner = response.stream
        stream._request = request
        stream._span = span
        stream._ambient = sys.exc_info()[1]
        response.stream = stream  # type: ignore[assignment]
    except Exception:
        logger.exception("sentry_tracing_mw: tracking an httpx response failed")
        finish(span)


#: Where httpx hands one request to whatever sends it: the network transports, and the
#: in-process ones (``MockTransport`` in tests, ``WSGITransport`` / ``ASGITransport``
#: calling an app) so their requests are spans with headers too, as with sentry-sdk.
#: An in-process transport gets a copy of the request with the headers: its handler may
#: keep the request it was given, and should see in it what was sent.
_TARGETS = (
    ("HTTPTransport", "handle_request"),
    ("AsyncHTTPTransport", "handle_async_request"),
    ("MockTransport", "handle_request"),
    ("MockTransport", "handle_async_request"),
    ("WSGITransport", "handle_request"),
    ("ASGITransport", "handle_async_request"),
)


def _read_back(request: httpx.Request, sent: httpx.Request) -> None:
    """The body a transport read from the copy it was given (``request.read()``: the
    stream is one-shot) goes to the caller's request too, for a redirect or retry that
    sends it again and for ``response.request.content``."""
    try:
        fields = sent.__dict__
        if "_content" in fields and "_content" not in request.__dict__:
            request._content = fields["_content"]
            request.stream = fields["stream"]
    except Exception:
        logger.debug("sharing an httpx request body failed", exc_info=True)


def _detached_sync(original: Callable[..., Any]) -> Callable[..., Any]:
    """An in-process transport's call with no current span: the app it calls is another
    service (its own transaction, continuing the trace from the headers), not a part of
    the caller's request (a WSGI middleware would take it for a mounted app)."""

    def call(self: Any, request: httpx.Request) -> Any:
        token = CURRENT_SPAN.set(None)
        try:
            return original(self, request)
        finally:
            CURRENT_SPAN.reset(token)

    return call


def _detached_async(original: Callable[..., Any]) -> Callable[..., Any]:
    """``_detached_sync`` for ``handle_async_request``."""

    async def call(self: Any, request: httpx.Request) -> Any:
        token = CURRENT_SPAN.set(None)
        try:
            return await original(self, request)
        finally:
            CURRENT_SPAN.reset(token)

    return call


def _start(
    request: httpx.Request, parent: Span | None, in_process: bool
) -> tuple[Span | None, httpx.Request, _Sending | None]:
    """``_prepare`` that never raises: on failure the request goes as it is, untraced."""
    try:
        return _prepare(request, parent, in_process)
    except Exception:
        logger.exception("sentry_tracing_mw: instrumenting an httpx request failed")
        return None, request, None


def _give_back(request: httpx.Request, sent: httpx.Request, token: _Sending | None) -> None:
    """After the transport call: the caller's request as it was, with the body the
    transport read from a copy."""
    if token is not None:
        _restore(request, token)
    if sent is not request:
        _read_back(request, sent)


def _sync_wrapper(
    original: Callable[..., Any], enabled: list[bool], in_process: bool
) -> Callable[..., Any]:
    get_span = CURRENT_SPAN.get
    get_context = PROPAGATION_CONTEXT.get
    suppressed = SUPPRESS_INSTRUMENTATION.get

    def handle_request(self: httpx.BaseTransport, request: httpx.Request) -> httpx.Response:
        parent = get_span()
        if (parent is None and get_context() is None) or not enabled or suppressed():
            return original(self, request)  # type: ignore[no-any-return]
        span, sent, token = _start(request, parent, in_process)
        try:
            response: httpx.Response = original(self, sent)
        except BaseException as exc:
            if span is not None:
                fail(span, exc, _TIMEOUTS)
            _give_back(request, sent, token)
            raise
        _give_back(request, sent, token)
        if span is not None:
            _track(request, response, span, _SyncStream)
        return response

    return handle_request


def _async_wrapper(
    original: Callable[..., Any], enabled: list[bool], in_process: bool
) -> Callable[..., Any]:
    get_span = CURRENT_SPAN.get
    get_context = PROPAGATION_CONTEXT.get
    suppressed = SUPPRESS_INSTRUMENTATION.get

    async def handle_async_request(
        self: httpx.AsyncBaseTransport, request: httpx.Request
    ) -> httpx.Response:
        parent = get_span()
        if (parent is None and get_context() is None) or not enabled or suppressed():
            return await original(self, request)  # type: ignore[no-any-return]
        span, sent, token = _start(request, parent, in_process)
        try:
            response: httpx.Response = await original(self, sent)
        except BaseException as exc:
            if span is not None:
                fail(span, exc, _TIMEOUTS)
            _give_back(request, sent, token)
            raise
        _give_back(request, sent, token)
        if span is not None:
            _track(request, response, span, _AsyncStream)
        return response

    return handle_async_request


def _wrap(original: Any, enabled: list[bool], is_async: bool, in_process: bool) -> Any:
    """Our wrapper of a transport's ``handle_request`` / ``handle_async_request``."""
    call = as_function(original)
    if in_process:
        call = (_detached_async if is_async else _detached_sync)(call)
    made = (_async_wrapper if is_async else _sync_wrapper)(call, enabled, in_process)
    made.__wrapped__ = original  # type: ignore[attr-defined]
    _WRAPPERS[made] = enabled  # emptied by the undo
    return made


#: Our wrappers, each with its switch (known by identity: a wrapper another tracer made
#: with ``functools.wraps(ours)`` copies our attributes, not our identity).
_WRAPPERS: weakref.WeakKeyDictionary[Any, list[bool]] = weakref.WeakKeyDictionary()


def _inert(method: Any) -> bool:
    """A wrapper of ours switched off by its undo (ours are plain functions: a ``wrapt``
    proxy around one hashes and compares as the function it wraps)."""
    if type(method) is not types.FunctionType:
        return False
    return _WRAPPERS.get(method) == []


def _without_inert_layers(method: Any) -> Any:
    """``method`` without the switched-off wrappers of ours on top: one that another
    tracer's uninstrument put back on the class (it had wrapped ours, and gave back what
    it wrapped) only calls through, and would pile up, one per ``init()``."""
    for _ in range(64):
        if not _inert(method):
            return method
        method = method.__wrapped__
    return method


def _is_wrapt_proxy(obj: Any) -> bool:
    """A ``wrapt`` function wrapper (OpenTelemetry's and ddtrace's instrumentations use
    them): a proxy whose ``__wrapped__`` it calls, and which can be given a new one."""
    if type(obj) is types.FunctionType:  # (a proxy says it is one to isinstance)
        return False
    try:
        return any(c.__name__ == "ObjectProxy" for c in type(obj).__mro__) and callable(
            obj.__wrapped__
        )
    except Exception:  # a proxy whose attributes fail
        return False


def install() -> Callable[[], None]:
    """Patch the httpx transports; returns the undo."""
    enabled = [True]
    patched: list[tuple[type[Any], str, Any, Any, Any, Any]] = []
    for class_name, method in _TARGETS:
        cls = getattr(httpx, class_name, None)
        if not isinstance(cls, type) or method not in cls.__dict__:  # an httpx without it
            continue
        raw = cls.__dict__[method]
        if _inert(raw):
            raw = _without_inert_layers(raw)
            setattr(cls, method, raw)
        # Another tracer's wrapt wrapper (OpenTelemetry's, ddtrace's) installed first: ours
        # goes inside it, next to the transport, as when it comes first. Outside, theirs
        # would rewrite the request's traceparent and baggage after ours.
        holder = raw if _is_wrapt_proxy(raw) else None
        target = holder.__wrapped__ if holder is not None else raw
        if holder is not None and _inert(target):
            target = _without_inert_layers(target)
            with contextlib.suppress(Exception):
                holder.__wrapped__ = target
        is_async = method == "handle_async_request"
        in_process = not class_name.endswith("HTTPTransport")

        wrapper = _wrap(target, enabled, is_async, in_process)
        if holder is not None:
            try:
                holder.__wrapped__ = wrapper
            except Exception:  # a proxy that will not take it: ours outside, as before
                holder, target = None, raw
                wrapper = _wrap(raw, enabled, is_async, in_process)
        if holder is None:
            setattr(cls, method, wrapper)
        patched.append((cls, method, raw, wrapper, holder, target))

    def undo() -> None:
        enabled.clear()
        for cls, method, raw, wrapper, holder, target in patched:
            if holder is not None:
                if getattr(holder, "__wrapped__", None) is wrapper:
                    holder.__wrapped__ = target
                if cls.__dict__.get(method) is wrapper:
                    # their uninstrument put what their proxy wrapped (ours) on the class
                    setattr(cls, method, target)
            elif cls.__dict__.get(method) is wrapper:
                setattr(cls, method, raw)
            else:
                # Another tracer's wrapt wrapper installed after ours, around it: ours
                # leaves it (theirs would give it back to the class when uninstrumented)
                current: Any = cls.__dict__.get(method)
                if _is_wrapt_proxy(current) and getattr(current, "__wrapped__", None) is wrapper:
                    with contextlib.suppress(Exception):
                        current.__wrapped__ = raw

    return undo
