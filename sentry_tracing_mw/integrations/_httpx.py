"""``httpx`` instrumentation at the transport layer.

``HTTPTransport.handle_request`` and ``AsyncHTTPTransport.handle_async_request`` are where
one request goes on the wire: every redirect hop and every retry a wrapping transport makes
is its own span with its own headers, and clients (and subclasses) created before
``instrument()`` are covered. The response stream is wrapped so that the span ends when the
body has been read to the end or the response closed.

Headers are set on the request object (what was sent stays visible on
``response.request``); re-sending the same request never grows ``baggage``. When a hop goes
to a URL that must not receive trace headers (a redirect to another host), headers this
module put on an earlier hop are taken off again.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

from .._context import CURRENT_SPAN, PROPAGATION_CONTEXT
from .._propagation import (
    BAGGAGE_HEADER,
    SENTRY_TRACE_HEADER,
    TRACEPARENT_HEADER,
    TRACESTATE_HEADER,
)
from .._tracing import PropagationContext, Span
from .http_clients import current, fail, finish, netloc, propagates, start_span

__all__ = ["ORIGIN", "install"]

logger = logging.getLogger("sentry_tracing_mw")

ORIGIN = "auto.http.httpx"
_TIMEOUTS: tuple[type[BaseException], ...] = (httpx.TimeoutException, TimeoutError)
# Request extension: (our sentry-trace, our traceparent, our baggage, the caller's baggage).
_INJECTED = "sentry_tracing_mw.injected"


def _full_url(url: httpx.URL) -> str:
    if url.userinfo:
        url = url.copy_with(username=None, password=None)
    return str(url)


def _strip_injected(request: httpx.Request, injected: tuple[str, ...]) -> None:
    """Take off headers an earlier hop of this request got from us."""
    headers = request.headers
    sentry_trace, traceparent, baggage, own = injected
    if headers.get(SENTRY_TRACE_HEADER) == sentry_trace:
        del headers[SENTRY_TRACE_HEADER]
    if traceparent and headers.get(TRACEPARENT_HEADER) == traceparent:
        del headers[TRACEPARENT_HEADER]
        if TRACESTATE_HEADER in headers:
            del headers[TRACESTATE_HEADER]
    if baggage and headers.get(BAGGAGE_HEADER) == baggage:
        if own:
            headers[BAGGAGE_HEADER] = own
        else:
            del headers[BAGGAGE_HEADER]


_OURS = {
    SENTRY_TRACE_HEADER.encode(): SENTRY_TRACE_HEADER,
    BAGGAGE_HEADER.encode(): BAGGAGE_HEADER,
    TRACEPARENT_HEADER.encode(): TRACEPARENT_HEADER,
    TRACESTATE_HEADER.encode(): TRACESTATE_HEADER,
}
_NAMES = {name: name.encode() for name in _OURS.values()}
_W3C = frozenset({TRACEPARENT_HEADER, TRACESTATE_HEADER})


def _inject(request: httpx.Request, ctx: PropagationContext, span_id: str | None) -> None:
    """Set our headers on the request (replacing the caller's, merging its baggage)."""
    headers = request.headers
    items = getattr(headers, "_list", None)
    if not isinstance(items, list):
        _inject_public(request, ctx, span_id)
        return
    w3c = ctx._client.options.propagate_traceparent
    kept = []
    bags: list[bytes] | None = None
    for item in items:  # (raw name, lowercase name, value), httpx's internal layout
        name = _OURS.get(item[1])
        if name is None or (not w3c and name in _W3C):
            kept.append(item)
        elif name == BAGGAGE_HEADER:
            if bags is None:
                bags = []
            bags.append(item[2])
    own = b",".join(bags).decode("utf-8", "surrogateescape") if bags else None
    extensions = request.extensions
    injected = extensions.get(_INJECTED)
    if injected is not None and own == injected[2]:
        own = injected[3] or None  # re-sent request: start again from the caller's baggage
    values = ctx.headers(span_id, own)
    for name, value in values.items():
        raw = _NAMES[name]
        kept.append((raw, raw, value.encode("utf-8", "surrogateescape")))
    items[:] = kept
    extensions[_INJECTED] = (
        values[SENTRY_TRACE_HEADER],
        values.get(TRACEPARENT_HEADER, ""),
        values.get(BAGGAGE_HEADER, ""),
        own or "",
    )


def _inject_public(request: httpx.Request, ctx: PropagationContext, span_id: str | None) -> None:
    """Same as _inject through the public Headers API (slower; other httpx layouts)."""
    headers = request.headers
    own = headers.get(BAGGAGE_HEADER)
    extensions = request.extensions
    injected = extensions.get(_INJECTED)
    if injected is not None and own == injected[2]:
        own = injected[3]
    values = ctx.headers(span_id, own or None)
    if (
        TRACEPARENT_HEADER in values
        and TRACESTATE_HEADER not in values
        and TRACESTATE_HEADER in headers
    ):
        del headers[TRACESTATE_HEADER]  # belonged to the traceparent we replace
    for name, value in values.items():
        headers[name] = value
    extensions[_INJECTED] = (
        values[SENTRY_TRACE_HEADER],
        values.get(TRACEPARENT_HEADER, ""),
        values.get(BAGGAGE_HEADER, ""),
        own or "",
    )


def _prepare(request: httpx.Request) -> Span | None:
    """Start the span and set the headers for one request on the wire."""
    found = current()
    if found is None:
        return None
    parent, ctx = found
    url = request.url
    scheme = url.scheme
    host = url.host
    port = url.port
    inject = propagates(ctx._client.options, scheme, host, port, lambda: _full_url(url))
    span: Span | None = None
    if parent is not None:
        span = start_span(
            parent,
            method=request.method,
            base=f"{scheme}://{netloc(scheme, host, port)}",
            path=url.path,
            host=host,
            origin=ORIGIN,
            query_fragment=lambda: (url.query.decode("ascii", "replace"), url.fragment),
        )
    if inject:
        span_id = span._span_id if span is not None else parent._span_id if parent else None
        _inject(request, ctx, span_id)
    else:
        injected = request.extensions.get(_INJECTED)
        if injected is not None:
            _strip_injected(request, injected)
    return span


class _EndsSpan:
    """The span of a response body stream, ended once: by the end of the body, its failure
    or the stream's close."""

    _span: Span | None

    def _end(self) -> None:
        span, self._span = self._span, None
        if span is not None:
            finish(span)

    def _fail(self, exc: BaseException) -> None:
        span, self._span = self._span, None
        if span is not None:
            fail(span, exc, _TIMEOUTS)


class _SyncStream(_EndsSpan, httpx.SyncByteStream):
    """Ends the span at the end of the body or on close."""

    def __init__(self, inner: httpx.SyncByteStream, span: Span) -> None:
        self._inner = inner
        self._span = span

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._inner
        except GeneratorExit:
            raise  # the reader stopped early; close() ends the span
        except BaseException as exc:
            self._fail(exc)
            raise
        self._end()

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._end()


class _AsyncStream(_EndsSpan, httpx.AsyncByteStream):
    """Ends the span at the end of the body or on aclose."""

    def __init__(self, inner: httpx.AsyncByteStream, span: Span) -> None:
        self._inner = inner
        self._span = span

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except GeneratorExit:
            raise
        except BaseException as exc:
            self._fail(exc)
            raise
        self._end()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._end()


def _track(response: httpx.Response, span: Span, stream_type: type[Any]) -> None:
    try:
        span.set_http_status(response.status_code)
        response.stream = stream_type(response.stream, span)
    except Exception:
        logger.exception("sentry_tracing_mw: tracking an httpx response failed")
        finish(span)


def install() -> Callable[[], None]:
    """Patch the httpx transports; returns the undo function."""
    sync_cls = httpx.HTTPTransport
    async_cls = httpx.AsyncHTTPTransport
    orig_sync = sync_cls.__dict__["handle_request"]
    orig_async = async_cls.__dict__["handle_async_request"]
    enabled = [True]

    def handle_request(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        if (CURRENT_SPAN.get() is None and PROPAGATION_CONTEXT.get() is None) or not enabled:
            return orig_sync(self, request)  # type: ignore[no-any-return]
        try:
            span = _prepare(request)
        except Exception:
            logger.exception("sentry_tracing_mw: instrumenting an httpx request failed")
            span = None
        if span is None:
            return orig_sync(self, request)  # type: ignore[no-any-return]
        try:
            response: httpx.Response = orig_sync(self, request)
        except BaseException as exc:
            fail(span, exc, _TIMEOUTS)
            raise
        _track(response, span, _SyncStream)
        return response

    async def handle_async_request(
        self: httpx.AsyncHTTPTransport, request: httpx.Request
    ) -> httpx.Response:
        if (CURRENT_SPAN.get() is None and PROPAGATION_CONTEXT.get() is None) or not enabled:
            return await orig_async(self, request)  # type: ignore[no-any-return]
        try:
            span = _prepare(request)
        except Exception:
            logger.exception("sentry_tracing_mw: instrumenting an httpx request failed")
            span = None
        if span is None:
            return await orig_async(self, request)  # type: ignore[no-any-return]
        try:
            response: httpx.Response = await orig_async(self, request)
        except BaseException as exc:
            fail(span, exc, _TIMEOUTS)
            raise
        _track(response, span, _AsyncStream)
        return response

    handle_request.__wrapped__ = orig_sync  # type: ignore[attr-defined]
    handle_async_request.__wrapped__ = orig_async  # type: ignore[attr-defined]
    sync_cls.handle_request = handle_request  # type: ignore[method-assign]
    async_cls.handle_async_request = handle_async_request  # type: ignore[method-assign]

    def undo() -> None:
        enabled.clear()
        if sync_cls.__dict__.get("handle_request") is handle_request:
            sync_cls.handle_request = orig_sync  # type: ignore[method-assign]
        if async_cls.__dict__.get("handle_async_request") is handle_async_request:
            async_cls.handle_async_request = orig_async  # type: ignore[method-assign]

    return undo
