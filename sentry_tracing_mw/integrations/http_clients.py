"""Outgoing HTTP: ``http.client`` child spans and trace propagation headers.

``instrument()`` patches, at class level:

* ``http.client.HTTPConnection`` (which ``urllib.request``, ``urllib3`` and ``requests``
  use underneath): one span per request written to the wire, headers injected just before
  the header block is sent (``_httplib``);
* ``httpx.HTTPTransport`` / ``httpx.AsyncHTTPTransport``: the layer that sends each request
  on the wire, so every redirect hop httpx follows is its own span with its own headers
  (``_httpx``).

Each request becomes an ``http.client`` child of the current span when a recording span
is current; otherwise no span is made but the request's trace is still propagated. Headers
go only to URLs matching ``trace_propagation_targets``, never to the DSN's host and port,
never from the transport's own worker thread. Spans end when the response body has been
read to the end or the response closed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._context import CURRENT_SPAN, PROPAGATION_CONTEXT, SUPPRESS_INSTRUMENTATION
from .._request import filter_query

if TYPE_CHECKING:
    from .._options import Options
    from .._tracing import PropagationContext, Span

__all__ = ["instrument", "is_instrumented", "uninstrument"]

logger = logging.getLogger("sentry_tracing_mw")

OP = "http.client"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

_lock = threading.Lock()
_installed: list[Callable[[], None]] | None = None


# --------------------------------------------------------------------------- public API


def instrument() -> None:
    """Patch ``http.client`` and ``httpx`` (when importable). Idempotent, thread-safe."""
    global _installed
    with _lock:
        if _installed is not None:
            return
        undo: list[Callable[[], None]] = []
        from . import _httplib

        undo.append(_httplib.install())
        try:
            import httpx  # noqa: F401
        except ImportError:
            pass
        else:
            from . import _httpx

            try:
                undo.append(_httpx.install())
            except Exception:
                logger.exception("sentry_tracing_mw: instrumenting httpx failed")
        _installed = undo


def uninstrument() -> None:
    """Restore the original methods. Idempotent, thread-safe."""
    global _installed
    with _lock:
        undo, _installed = _installed, None
        for fn in reversed(undo or ()):
            try:
                fn()
            except Exception:
                logger.exception("sentry_tracing_mw: uninstrumenting an HTTP client failed")


def is_instrumented() -> bool:
    """True between ``instrument()`` and ``uninstrument()``."""
    return _installed is not None


# --------------------------------------------------------------------------- shared helpers


class Outgoing:
    """What instrumentation decided for one request: its span and the headers to send."""

    __slots__ = ("ctx", "inject", "own_baggage", "span", "span_id", "traceparent")

    def __init__(
        self, ctx: PropagationContext, span: Span | None, span_id: str | None, inject: bool
    ) -> None:
        self.ctx = ctx
        self.span = span
        self.span_id = span_id
        self.inject = inject
        self.traceparent = inject and ctx._client.options.propagate_traceparent
        self.own_baggage: list[str] | None = None

    def headers(self, own_baggage: str | None) -> dict[str, str]:
        """The trace headers for this request (``own_baggage``: the caller's, merged)."""
        return self.ctx.headers(self.span_id, own_baggage)


def current() -> tuple[Span | None, PropagationContext] | None:
    """The current span (if any) and the trace it belongs to; None when nothing to do."""
    span = CURRENT_SPAN.get()
    if span is None:
        ctx = PROPAGATION_CONTEXT.get()
        if ctx is None:
            return None
    else:
        ctx = span._context()
    if SUPPRESS_INSTRUMENTATION.get():
        return None
    return span, ctx


def _is_dsn_target(opts: Options, host: str, port: int | None, scheme: str) -> bool:
    dsn = opts.dsn
    if dsn is None or host.lower() != dsn.host.lower():
        return False
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
    dsn_port = dsn.port if dsn.port is not None else _DEFAULT_PORTS[dsn.scheme]
    return port == dsn_port


def propagates(
    opts: Options, scheme: str, host: str, port: int | None, full_url: Callable[[], str]
) -> bool:
    """Whether trace headers may go to this URL (targets matched, never the DSN)."""
    if opts.dsn is not None and _is_dsn_target(opts, host, port, scheme):
        return False
    if opts.propagate_to_all:
        return True
    patterns = opts.trace_propagation_targets
    if not patterns:
        return False
    url = full_url()
    return any(p.search(url) for p in patterns)


def netloc(scheme: str, host: str, port: int | None) -> str:
    """``host[:port]`` with IPv6 brackets, the scheme's default port left out."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return host
    return f"{host}:{port}"


def start_span(
    parent: Span,
    *,
    method: str,
    base: str,
    path: str,
    host: str,
    origin: str,
    query_fragment: Callable[[], tuple[str, str]] | None = None,
) -> Span | None:
    """An ``http.client`` child of ``parent``; None when it would not be recorded.

    ``query_fragment`` is only called with ``send_default_pii`` (``http.query`` and
    ``http.fragment`` are personal data).
    """
    if not parent._recording:
        return None
    url = base + path
    child = parent.start_child(OP, f"{method} {url}", origin=origin)
    if not child._recording:
        return None
    data: dict[str, object] = {"http.method": method, "url": url, "server.address": host}
    if query_fragment is not None:
        tx = parent._tx
        if tx is not None and tx._client.options.send_default_pii:
            query, fragment = query_fragment()
            if query:
                data["http.query"] = filter_query(query, True)
            if fragment:
                data["http.fragment"] = fragment
    child._data = data
    return child


def fail(span: Span, exc: BaseException, timeouts: tuple[type[BaseException], ...]) -> None:
    """End ``span`` for a failed request (never raises)."""
    try:
        if isinstance(exc, timeouts):
            span._status = "deadline_exceeded"
        elif isinstance(exc, Exception):
            span._status = "internal_error"
        else:  # task cancellation, KeyboardInterrupt, an abandoned generator
            span._status = "cancelled"
        if span._data is not None:
            span._data.setdefault("error.type", type(exc).__qualname__)
        span.finish()
    except Exception:
        logger.exception("sentry_tracing_mw: ending an HTTP client span failed")


def finish(span: Span) -> None:
    """End ``span`` (never raises)."""
    try:
        span.finish()
    except Exception:
        logger.exception("sentry_tracing_mw: ending an HTTP client span failed")
