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

import importlib
import logging
import threading
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _tracing
from .._context import request_context
from .._fork import in_forked_child
from .._request import filter_query
from .._tracing import PropagationContext, Span, Transaction

if TYPE_CHECKING:
    from .._options import Options

__all__ = ["instrument", "is_instrumented", "uninstrument"]

logger = logging.getLogger("sentry_tracing_mw")

OP = "http.client"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

_lock = threading.Lock()
_installed: list[Callable[[], None]] | None = None
#: A thread of the parent process was patching when this process forked from it: what it
#: patched is unknown, and a library it was importing can never be imported here (the
#: import lock's owner is gone), so this process leaves the HTTP clients as they are.
_forked_while_patching = False


def _after_fork_in_child() -> None:
    global _lock, _forked_while_patching
    if _lock.locked():
        _forked_while_patching = True
    _lock = threading.Lock()  # the parent's may be held, by a thread gone in the child


in_forked_child(_after_fork_in_child)


# --------------------------------------------------------------------------- public API


def instrument() -> None:
    """Patch ``http.client`` (and urllib3's HTTPS connect, ``httpx``, when importable).
    Idempotent, thread-safe."""
    global _installed
    with _lock:
        if _installed is not None:
            return
        if _forked_while_patching:
            logger.warning(
                "sentry_tracing_mw: this process was forked while another thread was "
                "instrumenting the HTTP clients; they are not instrumented here"
            )
            return
        undo: list[Callable[[], None]] = []
        from . import _httplib

        undo.append(_httplib.install())
        for library, module in (("urllib3", "._urllib3"), ("httpx", "._httpx")):
            try:
                importlib.import_module(library)
            except ImportError:
                continue  # not installed: nothing to instrument
            try:
                undo.append(importlib.import_module(module, __package__).install())
            except Exception:
                logger.exception("sentry_tracing_mw: instrumenting %s failed", library)
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

# (scheme, host, port) -> (options, base URL, propagate); see ``route``.
ROUTES: dict[tuple[str, str, int | None], tuple[Options, str, bool | None]] = {}
_MAX_ROUTES = 1024


def route(
    opts: Options, scheme: str, host: str, port: int | None
) -> tuple[Options, str, bool | None]:
    """``(opts, base, propagate)`` for requests to ``scheme://host:port``, cached in ROUTES.

    ``base`` is ``scheme://host[:port]`` (the prefix of span descriptions); ``propagate`` is
    False toward the DSN's host and port, True when every URL is a target, None when each
    full URL has to be matched (``matches``).
    """
    key = (scheme, host, port)
    found = ROUTES.get(key)
    if found is not None and found[0] is opts:
        return found
    base = f"{scheme}://{netloc(scheme, host, port)}"
    propagate: bool | None
    if opts.dsn is not None and _is_dsn_target(opts, host, port, scheme):
        propagate = False
    elif opts.propagate_to_all:
        propagate = True
    elif not opts.trace_propagation_targets:
        propagate = False
    else:
        propagate = None
    found = (opts, base, propagate)
    if len(ROUTES) >= _MAX_ROUTES:
        ROUTES.clear()
    ROUTES[key] = found
    return found


def as_function(original: Any) -> Callable[..., Any]:
    """A method taken from a class ``__dict__``, callable as ``fn(self, *args)``.

    A plain function is returned as is. Anything else is a descriptor another library put
    there first (OpenTelemetry's and ddtrace's ``wrapt`` wrappers): it is bound to the
    instance at each call, as attribute lookup would, so it sees its instance.
    """
    if type(original) is types.FunctionType:
        return original
    if not hasattr(type(original), "__get__"):  # (a partial): lookup gives it unbound

        def call_unbound(self: Any, *args: Any, **kwargs: Any) -> Any:
            return original(*args, **kwargs)

        return call_unbound

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return original.__get__(self, type(self))(*args, **kwargs)

    return call


def trace_context(parent: Span | None) -> PropagationContext | None:
    """The trace an outgoing request belongs to: its parent span's, else the request's;
    None for an ambient trace (``start_span()`` outside any transaction or request starts a
    span of it: one trace per thread would join unrelated calls)."""
    if parent is None:
        return request_context()
    if type(parent) is Transaction:
        return parent._ctx
    ctx = parent._context()
    return None if ctx._ambient else ctx


def start_client_span(
    parent: Span | None, method: str, url: str, host: str, origin: str
) -> Span | None:
    """A recording ``http.client`` child of ``parent`` for ``method url``, or None."""
    if parent is None or not parent._recording:
        return None
    child = parent.start_child(OP, f"{method} {url}", origin=origin)
    if not child._recording:
        return None
    child._data = {"http.method": method, "url": url, "server.address": host}
    return child


def record_status(span: Span, status: int) -> None:
    """Record the response status on a client span (``set_http_status`` with the usual
    success case first)."""
    data = span._data
    if type(status) is int and 0 <= status < 400 and data is not None:
        data["http.response.status_code"] = status
        span._status = "ok"
    else:
        span.set_http_status(status)


_MAX_TRACESTATE_MEMBERS = 32  # W3C


def callers_tracestate(
    values: list[str], has_traceparent: bool, upstream: str | None
) -> str | None:
    """The ``tracestate`` to send for a request the caller gave ``tracestate`` ``values``:
    None when the caller also set the ``traceparent`` we replace (its tracestate belonged
    to that one, and ours goes instead); else the caller's members first, then those of
    the trace we continue whose keys the caller did not set, 32 at most. Vendor state an
    app adds on its own (as OpenTelemetry's propagator leaves it) is not ours to drop."""
    if not values or has_traceparent:
        return None
    members: list[str] = []
    keys: set[str] = set()
    for member in ",".join([*values, upstream or ""]).split(","):
        key = member.partition("=")[0].strip()
        if len(members) >= _MAX_TRACESTATE_MEMBERS:
            break
        if key and key not in keys:  # each key once: the first (the caller's) wins
            members.append(member.strip())
            keys.add(key)
    return ",".join(members) or None


def matches(opts: Options, url: str) -> bool:
    """Whether ``url`` matches one of ``trace_propagation_targets`` (``re.search``)."""
    return any(pattern.search(url) for pattern in opts.trace_propagation_targets)


def _is_dsn_target(opts: Options, host: str, port: int | None, scheme: str) -> bool:
    dsn = opts.dsn
    if dsn is None:
        return False
    if not host.isascii():  # an internationalized name: the DSN's host is in IDNA form
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return False
    if host.lower() != dsn.host.lower():
        return False
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
    dsn_port = dsn.port if dsn.port is not None else _DEFAULT_PORTS[dsn.scheme]
    return port == dsn_port


def netloc(scheme: str, host: str, port: int | None) -> str:
    """``host[:port]`` with IPv6 brackets, the scheme's default port left out."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return host
    return f"{host}:{port}"


# The last trace that made a call: (context, its sampled flag, our header lines split
# around the span id, our headers as (raw name, value before the span id, value after it
# or None) byte triples; both None when a value cannot go on the wire verbatim). One entry:
# the cache holds at most one context alive and costs a miss when concurrent traces
# alternate.
_PLACEHOLDER = "\x00" * 16
_Template = tuple[
    PropagationContext | None,
    bool | None,
    list[str] | None,
    list[tuple[bytes, bytes, bytes | None]] | None,
]
_template: _Template = (None, None, None, None)


def _current_template(ctx: PropagationContext) -> _Template:
    cached = _template
    if cached[0] is not ctx or cached[1] is not ctx.sampled:
        cached = _cache_template(ctx)
    return cached


def header_lines(ctx: PropagationContext, span_id: str | None) -> bytes | None:
    """Our trace headers for a call made while ``span_id`` is active, as wire lines.

    One ``name: value`` line (CRLF-terminated) for each of ``ctx.headers(span_id)``,
    without calling ``headers()`` again for the same trace: its values only vary with the
    span id and the sampling decision (the DSC is frozen on first use). None when a value
    holds a character that a header line cannot carry verbatim (forwarded text): use
    ``ctx.headers()`` and the client's own validation then.
    """
    parts = _current_template(ctx)[2]
    if parts is None:
        return None
    return (span_id or ctx.span_id).join(parts).encode("ascii")


def header_items(ctx: PropagationContext, span_id: str | None) -> list[tuple[bytes, bytes]] | None:
    """``ctx.headers(span_id)`` as ``(lowercase name, value)`` bytes, from the same cache as
    ``header_lines`` (None when a value cannot go on the wire verbatim)."""
    values = _current_template(ctx)[3]
    if values is None:
        return None
    sid = (span_id or ctx.span_id).encode("ascii")
    return [
        (name, before if after is None else before + sid + after) for name, before, after in values
    ]


def _cache_template(ctx: PropagationContext) -> _Template:
    global _template
    sampled = ctx.sampled
    headers = ctx.headers(_PLACEHOLDER)
    text = "".join([f"{k}: {v}\r\n" for k, v in headers.items()])
    parts: list[str] | None = text.split(_PLACEHOLDER)
    values: list[tuple[bytes, bytes, bytes | None]] | None = [
        (name.encode(), before.encode(), after.encode() if found else None)
        for name, (before, found, after) in (
            (name, value.partition(_PLACEHOLDER)) for name, value in headers.items()
        )
    ]
    joined = "".join(headers.values()).replace(_PLACEHOLDER, "")
    if not joined.isascii() or any(c in joined for c in "\r\n\x00"):
        parts = values = None
    cached = (ctx, sampled, parts, values)
    _template = cached
    return cached


def add_query(span: Span, query: str, fragment: str) -> None:
    """Record ``http.query`` / ``http.fragment`` (only with ``send_default_pii``)."""
    data = span._data
    if data is not None:
        if query:
            data["http.query"] = filter_query(query, True)
        if fragment:
            data["http.fragment"] = fragment


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


def late_response(span: Span, status: int) -> None:
    """A response read after sending the request failed (the server answered early and
    closed, e.g. a 413 before the whole body arrived, which urllib3 1.26 and plain
    ``http.client`` callers still read): the failed span takes the response's outcome
    and ends now (never raises)."""
    try:
        if span._data is not None:
            span._data.pop("error.type", None)
        span._end = None  # reopened: a finished span's setters change nothing
        record_status(span, status)
        span._end = _tracing._perf()  # (looked up: the span's own clock, mocks included)
    except Exception:
        logger.exception("sentry_tracing_mw: recording an HTTP response failed")


def finish(span: Span) -> None:
    """End ``span`` (never raises)."""
    try:
        span.finish()
    except Exception:
        logger.exception("sentry_tracing_mw: ending an HTTP client span failed")
