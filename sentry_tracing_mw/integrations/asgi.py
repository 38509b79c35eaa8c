"""ASGI middleware: the request lifecycle for any ASGI app (and Starlette / FastAPI).

A pure ASGI class: options are validated in ``__init__``; ``__call__`` continues the
trace, starts the transaction and wraps ``send`` to read the response status. The
transaction ends when the app returns (after streamed bodies and background tasks).
The generic middleware names the transaction from the raw path with source ``url``;
apps rename it through ``stm.get_current_span()`` (the transaction at the root).

Lifespan passes through untouched, except that the client is flushed on shutdown:
uvicorn re-raises SIGTERM after a graceful shutdown, so atexit handlers never run there.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from contextvars import Token
from itertools import chain
from operator import itemgetter
from typing import Any, TypeVar

from .._client import Client, get_client
from .._context import CURRENT_SPAN, PROPAGATION_CONTEXT
from .._errors import ConfigurationError
from .._propagation import ASGI_GETTER, IncomingTrace, extract, extract_values
from .._request import MAX_HEADERS, request_info
from .._tracing import Transaction
from ._common import (
    REQUEST_TX_KEY,
    capture_untraced,
    ensure_client,
    finish_request,
    split_options,
    start_request,
)

__all__ = [
    "SCOPE_KEY",
    "TracingMiddleware",
    "answer_lifespan",
    "asgi_request_info",
    "flush_client",
]

logger = logging.getLogger("sentry_tracing_mw")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The request's transaction in the scope, for inner integrations that only name it.
SCOPE_KEY = REQUEST_TX_KEY

#: Set in a lifespan scope by an app that flushed the client on shutdown.
_FLUSHED_KEY = "sentry_tracing_mw.flushed"
_F = TypeVar("_F", bound=Callable[..., Any])
#: The code of our coroutines that serve a request, each with how to find the request's
#: transaction in its frame's variables (``serves_requests``): lifespan shutdown waits for
#: the tasks running one whose sampled transaction has not ended (a server cancels them
#: right before it). Found by walking each task's awaits at shutdown: a request pays
#: nothing for it.
_SERVING: dict[Any, Callable[[Mapping[str, Any]], Any]] = {}
#: Turns of the loop cancelled requests get before the shutdown flush where they cannot
#: be told apart (Python 3.10: no ``Task.cancelling()``).
_UNWIND_TURNS = 20
#: How often (seconds) the shutdown wait checks whether those transactions have ended.
_RECHECK = 0.05
#: How deep the walk looks down a task's chain of awaits.
_MAX_AWAIT_DEPTH = 200
#: Response body messages: the last one has no ``more_body`` (ASGI's zero-copy send
#: extension has one too); a path send is always the whole body.
_BODY = frozenset({"http.response.body", "http.response.zerocopysend"})
_FINAL_BODY = frozenset({"http.response.pathsend"})
#: Messages that can end a response: a body one without ``more_body``, trailers (sent
#: after the body when the response start announced them) without ``more_trailers``.
_FINAL = _FINAL_BODY | _BODY | {"http.response.trailers"}
_first = itemgetter(0)
#: The propagation headers' names as ASGI servers send them.
_TRACE_HEADERS = frozenset({b"sentry-trace", b"baggage", b"traceparent", b"tracestate"})


def _incoming(scope: Scope) -> IncomingTrace | None:
    """The trace a request continues, from its propagation headers; None when it has none
    that can be read (never raises).

    The usual shape (a list of lowercase byte names with byte values: what ASGI servers
    send) is read in C-level passes, thousands of repeated headers costing little more
    than a few: a dict of the pairs (names are unique unless it is shorter), a repeated
    trace header's values joined with ",", and the four headers picked from it. Anything
    else (other types, odd pairs) goes through the general reader,
    ``extract(..., ASGI_GETTER)``, which skips what is not a header.
    """
    headers = scope.get("headers")
    if type(headers) is not list:
        try:
            headers = list(headers or ())  # any iterable (a generator too), read once
        except Exception:
            logger.debug("ignoring unreadable request headers", exc_info=True)
            return None
    try:
        by_name = dict(headers)
        if by_name.keys().isdisjoint(_TRACE_HEADERS):
            return None
        if len(by_name) != len(headers):  # a repeated name: a repeated trace header joined
            names = list(map(_first, headers))
            for raw in _TRACE_HEADERS:
                if raw in by_name and names.count(raw) > 1:
                    by_name[raw] = b",".join([v for n, v in headers if n == raw])
        sentry_trace = by_name.get(b"sentry-trace")
        traceparent = by_name.get(b"traceparent")
        baggage = by_name.get(b"baggage")
        tracestate = by_name.get(b"tracestate") if traceparent else None
        if (
            (sentry_trace is None or type(sentry_trace) is bytes)
            and (traceparent is None or type(traceparent) is bytes)
            and (baggage is None or type(baggage) is bytes)
            and (tracestate is None or type(tracestate) is bytes)
        ):
            return extract_values(
                None if sentry_trace is None else sentry_trace.decode("latin-1"),
                None if traceparent is None else traceparent.decode("latin-1"),
                None if baggage is None else baggage.decode("latin-1"),
                None if tracestate is None else tracestate.decode("latin-1"),
                True,
            )
    except Exception:  # not (name, value) pairs, names that cannot be hashed, bad values
        pass
    return extract({"headers": headers}, ASGI_GETTER, lazy=True)


def defer_asgi_request_info(tx: Transaction, scope: Scope, pii: bool) -> None:
    """Give ``tx`` the request interface of ``scope`` as it is now, built later.

    Routers edit the scope in place (``root_path``, ``path``), so the scope is copied
    (shallow, as it is at the start of the request: no request body is in it) and the
    headers counted against the transport queue's byte bound; the transport worker builds
    the request interface from the keys it sends.
    """
    snapshot = dict(scope)  # a C-level copy; the worker reads the keys it needs
    headers = scope.get("headers")
    headers = list(headers) if headers else []
    snapshot["headers"] = headers
    try:
        tx._extra_bytes += sum(map(len, chain.from_iterable(headers)))
    except TypeError:  # not (name, value) byte pairs: a generous flat estimate
        tx._extra_bytes += 64 * len(headers)
    tx._request = functools.partial(asgi_request_info, snapshot, pii)


def asgi_request_info(scope: Scope, pii: bool) -> dict[str, Any]:
    """The event ``request`` interface from an ASGI scope (privacy rules applied)."""
    headers: list[tuple[str, str]] = []
    host = ""
    for item in scope.get("headers") or ():
        if len(headers) >= MAX_HEADERS:  # the rest is not sent: only look for Host
            if not host and item[0] == b"host":
                host = bytes(item[1]).decode("latin-1")
            continue
        try:
            name = item[0].decode("latin-1")
            value = item[1].decode("latin-1")
        except Exception:
            continue
        if name.lower() == "host":
            host = value
        headers.append((name.title(), value))
    # The ASGI default when the server leaves it out (daphne for websockets).
    scheme = str(scope.get("scheme") or ("ws" if scope.get("type") == "websocket" else "http"))
    server = scope.get("server")
    port = None
    if server and len(server) == 2 and server[1] is not None:
        port = str(server[1])
        if not host:
            default = "443" if scheme in ("https", "wss") else "80"
            host = str(server[0]) if port == default else f"{server[0]}:{port}"
    client = scope.get("client")
    raw_query = scope.get("query_string") or b""
    query = raw_query.decode("latin-1") if isinstance(raw_query, bytes) else str(raw_query)
    path = scope.get("path") or "/"
    root = scope.get("root_path") or ""
    if root and not path.startswith(root):
        path = root + path  # servers that strip root_path from path (ASGI spec < 2.4 style)
    return request_info(
        method=str(scope.get("method") or "GET"),
        scheme=scheme,
        host=host or "localhost",
        path=str(path),
        query=query,
        headers=headers,
        send_default_pii=pii,
        server_name=str(server[0]) if server else None,
        server_port=port,
        peer=str(client[0]) if client else None,
    )


_asgi_request_info = asgi_request_info  # backwards-compatible private alias


async def flush_client() -> None:
    """Flush the process client within ``shutdown_timeout``, off the event loop (never
    raises). For lifespan shutdown: uvicorn re-raises SIGTERM after its graceful shutdown,
    so atexit handlers never run there."""
    try:
        client = get_client()
        transport = client.transport
        if transport is None:
            return
        timeout = client.options.shutdown_timeout
        deadline = time.monotonic() + timeout
        running = await _running_request_tasks()
        if running:
            # Requests the server cancelled right before lifespan shutdown (uvicorn's
            # timeout_graceful_shutdown) end their transactions as they unwind: flush what
            # is queued meanwhile, then what they queued, all within the one timeout.
            flushing = asyncio.ensure_future(_in_thread(client.flush, timeout))
            try:
                await _requests_ended(running, deadline)
            except BaseException:  # this lifespan task cancelled: no task left behind
                flushing.cancel()
                raise
            await flushing
        if await _in_thread(client.flush, max(0.0, deadline - time.monotonic())):
            client._shutdown_spent = False
            return
        client._shutdown_spent = True  # the exit's close() does not wait a second time
        # The server may end the process right after lifespan (uvicorn re-raises SIGTERM):
        # what is still queued is then lost, where no client report can count it.
        (transactions, spans, events), in_flight = transport.unsent()
        if transactions or events or in_flight:
            logger.warning(
                "sentry_tracing_mw: lifespan shutdown: %d transaction(s) (%d span(s)) and %d "
                "error event(s) still queued after shutdown_timeout=%ss%s; they are lost if "
                "the process exits now (a larger shutdown_timeout gives Sentry more time)",
                transactions,
                spans,
                events,
                timeout,
                ", one more envelope still being sent" if in_flight else "",
            )
    except Exception:
        logger.debug("flush on lifespan shutdown failed", exc_info=True)


def serves_requests(transaction_of: Callable[[Mapping[str, Any]], Any]) -> Callable[[_F], _F]:
    """Register a coroutine function of ours as serving a request: at lifespan shutdown a
    task running it is waited for while ``transaction_of(its frame's variables)`` is a
    sampled transaction that has not ended (see ``flush_client``)."""

    def register(fn: _F) -> _F:
        _SERVING[fn.__code__] = transaction_of
        return fn

    return register


def _serving_request(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` runs one of our request-serving coroutines (its chain of awaits,
    from the server's coroutine down) whose sampled transaction has not ended."""
    awaited: Any = task.get_coro()
    for _ in range(_MAX_AWAIT_DEPTH):
        code = getattr(awaited, "cr_code", None)
        if code is None:
            return False  # a future, an async generator's step, the end of the chain
        transaction_of = _SERVING.get(code)
        frame = awaited.cr_frame
        if transaction_of is not None and frame is not None:
            tx = transaction_of(frame.f_locals)
            if isinstance(tx, Transaction) and tx._recording and tx._end is None:
                return True
        awaited = awaited.cr_await
    return False


async def _running_request_tasks() -> list[asyncio.Task[Any]]:
    """The other tasks of this asyncio loop that the server cancelled while they serve a
    sampled request of ours still open (none on trio): at lifespan shutdown, they are
    unwinding and about to end their transactions. Python 3.10 cannot tell them: they get
    a few turns of the loop instead, and none is returned."""
    if _running_trio() is not None:
        return []
    try:
        current = asyncio.current_task()
        tasks = asyncio.all_tasks()
    except RuntimeError:  # not an asyncio loop
        return []
    if sys.version_info < (3, 11):
        # No Task.cancelling(): which requests the server cancelled cannot be told from
        # those it leaves open (granian's websockets): a few turns of the loop to unwind.
        for _ in range(_UNWIND_TURNS):
            await asyncio.sleep(0)
        return []
    return [task for task in tasks if task is not current and _unwinding_request(task)]


def _unwinding_request(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` was cancelled (by the server) while serving a request of ours whose
    sampled transaction is still open (never raises)."""
    try:
        cancelling = getattr(task, "cancelling", None)  # Python 3.11+
        return (
            cancelling is not None
            and not task.done()
            and cancelling() > 0
            and _serving_request(task)
        )
    except Exception:  # a task of another kind
        logger.debug("inspecting a task at shutdown failed", exc_info=True)
        return False


async def _requests_ended(running: list[asyncio.Task[Any]], deadline: float) -> None:
    """Wait until none of ``running`` serves a request whose transaction is still open
    (the task ended, or only the transaction did), or until ``deadline``."""
    while running:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        await asyncio.wait(
            running, timeout=min(remaining, _RECHECK), return_when=asyncio.FIRST_COMPLETED
        )
        running = [task for task in running if _unwinding_request(task)]


def _running_trio() -> Any:
    """The ``trio`` module when this task runs on trio (directly or under anyio), else None."""
    trio = sys.modules.get("trio")
    if trio is None:
        return None
    try:
        trio.lowlevel.current_task()
    except RuntimeError:  # trio is imported, but this is not a trio task
        return None
    return trio


async def _in_thread(fn: Callable[[float], bool], timeout: float) -> bool:
    """``fn(timeout)`` in a worker thread, awaited on the running event loop: trio's
    (Starlette and FastAPI run on it through anyio; checked first: trio in guest mode runs
    inside an asyncio loop) or asyncio's; on any other, called here. On trio the wait is
    shielded from cancellation (a cancelled lifespan still flushes, within ``timeout``)."""
    trio = _running_trio()
    if trio is not None:
        with trio.CancelScope(shield=True):
            return bool(await trio.to_thread.run_sync(fn, timeout))
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # an event loop we do not know: block it (shutdown only)
        return fn(timeout)
    return bool(await loop.run_in_executor(None, fn, timeout))


def _cancelled(exc: BaseException) -> bool:
    """A task cancellation: asyncio's ``CancelledError`` or trio's ``Cancelled``."""
    if isinstance(exc, asyncio.CancelledError):
        return True
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(exc, trio.Cancelled)


async def answer_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    """The lifespan protocol for an app that has none (Django's ASGI handler refuses the
    scope): startup completes at once, shutdown completes once the client is flushed (and
    marks the scope so that an outer middleware does not wait a second time)."""
    while True:
        message = await receive()
        kind = message.get("type")
        if kind == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif kind == "lifespan.shutdown":
            await flush_client()
            try:
                scope[_FLUSHED_KEY] = True
            except Exception:
                pass
            await send({"type": "lifespan.shutdown.complete"})
            return


def _ignored(ignore: Any, path: Any, scope: Scope) -> bool:
    """``ignore_paths`` match the path, or the path below ``root_path`` (as WSGI's
    ``PATH_INFO`` is below ``SCRIPT_NAME``: the same app ignores the same paths when it
    is served under ``uvicorn --root-path``)."""
    if ignore.match(path):
        return True
    root = scope.get("root_path")
    if root and type(path) is str and path.startswith(root) and len(path) > len(root):
        return bool(ignore.match(path[len(root) :]))
    return False


def _watched_send(
    send: Send, on_5xx: Callable[[Scope, Message], None] | None = None, scope: Any = None
) -> tuple[Send, list[bool]]:
    """``send`` and a flag set when sending failed: the client went away, which makes the
    exception the app then raises no application error. ``on_5xx(scope, message)`` sees
    a 5xx response start (never raises into the app). The response's last message is sent
    with no trace context current (see ``_clear_context``, inlined here)."""
    gone = [False]

    async def watched_send(message: Message) -> None:
        try:
            if (
                message.get("more_body")
                or message.get("more_trailers")
                or message.get("type") not in _FINAL
            ):
                if (
                    on_5xx is not None
                    and message.get("type") == "http.response.start"
                    and isinstance(message.get("status"), int)
                    and message["status"] >= 500
                ):
                    try:
                        on_5xx(scope, message)
                    except Exception:
                        logger.debug("watching the response start failed", exc_info=True)
                await send(message)
                return
            span_token = CURRENT_SPAN.set(None)
            token = PROPAGATION_CONTEXT.set(None)
            try:
                await send(message)
            finally:
                PROPAGATION_CONTEXT.reset(token)
                CURRENT_SPAN.reset(span_token)
        except OSError:
            gone[0] = True
            raise

    return watched_send, gone


def _clear_context() -> tuple[Token[Any], Token[Any]]:
    """Clear the trace context around a response's last message (restored after it by
    ``_restore_context``, also what the send set): a server may start the connection's
    next request inside that send (uvicorn, for a request already buffered), and that
    request's task starts with a copy of the current context. Plain calls, not a coroutine
    around the send: one frame less per request."""
    return CURRENT_SPAN.set(None), PROPAGATION_CONTEXT.set(None)


def _restore_context(tokens: tuple[Token[Any], Token[Any]]) -> None:
    PROPAGATION_CONTEXT.reset(tokens[1])
    CURRENT_SPAN.reset(tokens[0])


def _fail(
    client: Client,
    tx: Transaction,
    exc: BaseException,
    disconnected: bool,
    mechanism: str,
    scope: Scope,
) -> None:
    """Record an exception leaving the app (never raises)."""
    try:
        if disconnected or _cancelled(exc):
            # The client went away (the app saw it as a failed send), or the server
            # cancelled the request's task: not an application error.
            if tx._status is None or tx._status == "ok":
                tx._status = "cancelled"
            return
        tx._status = "internal_error"
        if isinstance(exc, Exception):
            if tx._request is None:  # unsampled: the request data is for the event only
                defer_asgi_request_info(tx, scope, client.options.send_default_pii)
            client.capture_exception(exc, span=tx, mechanism=mechanism, handled=False)
    except Exception:
        logger.exception("sentry_tracing_mw: recording an exception failed")


class TracingMiddleware:
    """Trace every HTTP and WebSocket request of an ASGI app.

    ``app = TracingMiddleware(app, **options)``: any ``init()`` option (used only when
    ``init()`` was not called) plus ``transaction_style``, ``ignore_paths`` and
    ``http_methods_to_capture``.
    """

    origin = "auto.http.asgi"
    #: The ``mechanism.type`` of the errors it captures.
    mechanism = "asgi"
    #: Framework integrations name unmatched requests "GET 404"; the generic one keeps the URL.
    name_unmatched = False

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        self.app = app
        try:
            self.config, init_options = split_options(options)
            ensure_client(init_options, type(self).__name__)
        except ConfigurationError as exc:
            # Starlette builds its middleware on its first call, the lifespan scope, whose
            # failure uvicorn's default lifespan mode reports only as "unsupported" (then
            # every request fails): say what is wrong where the app starts, too.
            logger.error("sentry_tracing_mw: %s: %s", type(self).__name__, exc)
            raise

    # -- hooks for framework integrations ---------------------------------------------
    def resolve_route(self, scope: Scope) -> str | None:
        """The route template before the app runs (for ``traces_sampler``); None here."""
        return None

    def request_origin(self, scope: Scope) -> str:
        """The span origin for this request (a framework may tell apps apart)."""
        return self.origin

    def app_scope(self, scope: Scope, tx: Transaction, method: str) -> Scope:
        """The scope handed to the app; a framework integration may watch its routing."""
        return scope

    def unsampled_scope(self, scope: Scope, tx: Transaction, method: str) -> Scope:
        """The scope handed to the app in an unsampled request (whose name a framework
        integration may resolve only when it is read: ``tx._namer``)."""
        return scope

    def unsampled_end(self, scope: Scope, tx: Transaction) -> None:
        """An unsampled request has ended (never raises)."""

    #: Sees a 5xx response start of an unsampled request the app got the scope of:
    #: ``unsampled_5xx(scope, message)`` (None: nothing to see).
    unsampled_5xx: Callable[[Scope, Message], None] | None = None

    def name_on_response(self, tx: Transaction, scope: Scope, method: str, code: int) -> None:
        """Called at ``http.response.start`` while the name still has source ``url``."""
        if self.name_unmatched:
            tx.set_name(f"{method} {code}", "route")

    def routed(self, scope: Scope) -> bool:
        """Whether the framework's router has seen this request (a websocket closed before
        that was turned away by a middleware, not by the router)."""
        return True

    def unhandled_status(self, scope: Scope) -> int | None:
        """The status sent for an exception that left the app before any response started:
        the server's 500 (None when something outside us answers in a way we cannot see)."""
        return 500

    def client_went_away(self, exc: BaseException) -> bool:
        """Whether ``exc`` is how the framework tells the app that the client went away
        (Starlette's ``WebSocketDisconnect``, ``ClientDisconnect``): raised out of the app,
        it is a disconnect the app did not handle, not an application error."""
        return False

    def _gone(self, exc: BaseException) -> bool:
        try:
            return self.client_went_away(exc)
        except Exception:
            logger.debug("checking for a client disconnect failed", exc_info=True)
            return False

    async def name_only(
        self, scope: Scope, receive: Receive, send: Send, tx: Transaction | None
    ) -> None:
        """An outer middleware owns the request: the generic middleware passes through."""
        await self.app(scope, receive, send)

    # -- dispatch ------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind != "http" and kind != "websocket":
            if kind == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        # An outer middleware owns the request when the scope says so. Never the current
        # span: a request's task may start with a copy of an earlier request's context on
        # the same connection (uvicorn starts a buffered request inside the previous one's
        # last send, and resumes reading inside an app's receive()).
        owner = scope.get(SCOPE_KEY)
        if owner is not None:
            await self.name_only(scope, receive, send, owner)
            return
        # The request's owner: one coroutine for the whole unsampled path (each await of
        # a helper coroutine costs a frame per request).
        path = scope.get("path") or "/"
        ignore = self.config.ignore_paths
        if ignore is not None and _ignored(ignore, path, scope):
            span_token = CURRENT_SPAN.set(None)
            token = PROPAGATION_CONTEXT.set(None)
            try:
                await self.app(scope, receive, send)
            finally:
                PROPAGATION_CONTEXT.reset(token)
                CURRENT_SPAN.reset(span_token)
            return
        client = get_client()
        websocket = kind == "websocket"
        method = "GET" if websocket else str(scope.get("method") or "GET").upper()
        try:
            peer = scope.get("client")
            tx, ctx = start_request(
                client,
                method,
                str(path),
                _incoming(scope),
                str(peer[0]) if peer else None,
                scope,
                "asgi_scope",
                websocket or method in self.config.methods,
                self.request_origin(scope),
                "websocket.server" if websocket else "http.server",
                (lambda: self.resolve_route(scope))
                if client.options.traces_sampler is not None
                else None,
            )
            if tx is not None:
                scope[SCOPE_KEY] = tx
                if tx._recording:
                    defer_asgi_request_info(tx, scope, client.options.send_default_pii)
        except Exception:
            logger.exception("sentry_tracing_mw: starting the request transaction failed")
            await self.app(scope, receive, send)
            return
        if tx is None:  # a method that is not traced: propagation and errors only
            await self._untraced(scope, receive, send, ctx, client)
            return
        if tx._recording:
            try:
                inner = self.app_scope(scope, tx, method)
            except Exception:
                logger.exception("sentry_tracing_mw: preparing the request scope failed")
                inner = scope
            await self._traced(scope, inner, receive, send, tx, client, method)
            return
        # Unsampled: the trace is current and errors are captured, but no status, timing,
        # disconnect or routing is watched (nothing of it is sent); the name is resolved
        # only if something reads it (trace headers, an error event).
        try:
            inner = self.unsampled_scope(scope, tx, method)
        except Exception:
            logger.exception("sentry_tracing_mw: preparing the request scope failed")
            inner = scope
        if inner is scope:
            unrecorded_send, gone = _watched_send(send, self.unsampled_5xx, scope)
        else:
            unrecorded_send, gone = _watched_send(send)
        span_token = CURRENT_SPAN.set(tx)
        try:
            await self.app(inner, receive, unrecorded_send)
        except BaseException as exc:
            went = gone[0] or self._gone(exc)
            if isinstance(exc, Exception) and not went:
                self._name_failed(tx, inner, method)
            _fail(client, tx, exc, went, self.mechanism, scope)
            raise
        finally:
            CURRENT_SPAN.reset(span_token)
            finish_request(tx, scope)
            self.unsampled_end(scope, tx)

    async def _untraced(
        self, scope: Scope, receive: Receive, send: Send, ctx: Any, client: Client
    ) -> None:
        untraced_send, gone = _watched_send(send)
        span_token = CURRENT_SPAN.set(None)
        token = PROPAGATION_CONTEXT.set(ctx)
        try:
            await self.app(scope, receive, untraced_send)
        except Exception as exc:
            if not gone[0] and not self._gone(exc):
                capture_untraced(exc, self.mechanism, functools.partial(asgi_request_info, scope))
            raise
        finally:
            PROPAGATION_CONTEXT.reset(token)
            CURRENT_SPAN.reset(span_token)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        flushed = False

        async def flush() -> None:
            nonlocal flushed
            if flushed or scope.get(_FLUSHED_KEY):  # an inner app flushed already
                return
            flushed = True
            await flush_client()
            try:
                scope[_FLUSHED_KEY] = True  # an outer middleware does not wait again
            except Exception:
                pass

        async def lifespan_send(message: Message) -> None:
            if message.get("type") in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await flush()
            await send(message)

        shutting_down = False

        async def lifespan_receive() -> Message:
            nonlocal shutting_down
            message = await receive()
            if message.get("type") == "lifespan.shutdown":
                shutting_down = True
            return message

        try:
            await self.app(scope, lifespan_receive, lifespan_send)
        finally:
            if shutting_down:
                await flush()

    @serves_requests(lambda names: names.get("tx"))
    async def _traced(
        self,
        scope: Scope,
        inner: Scope,
        receive: Receive,
        send: Send,
        tx: Transaction,
        client: Client,
        method: str,
    ) -> None:
        """A sampled request: status, timing and client disconnects are recorded."""
        complete = False
        disconnected = False
        body_read = False  # the app received the whole request body
        ahead: list[Message] = []  # messages read ahead by the disconnect watcher
        watcher: asyncio.Future[None] | None = None
        watch_tried = False
        receiving = 0  # the app's receive() calls waiting on the server
        watch_skipped = False  # skipped while the app listened: retried if it stops
        name_on_response = self.name_on_response
        head = method == "HEAD"  # no body follows its response start: all sent with it
        headers_sent = False  # (a HEAD response's: a client leaving after it left nothing)

        async def watch() -> None:
            # Servers may drop sends to a gone client silently (ASGI < 2.4), so an app
            # streaming without reading again would look complete. Once no request body
            # is pending, read ahead for http.disconnect; the app gets every message.
            nonlocal disconnected
            message = await receive()
            ahead.append(message)
            if message.get("type") == "http.request" and not message.get("more_body", False):
                message = await receive()
                ahead.append(message)
            if message.get("type") == "http.disconnect" and not (complete or headers_sent):
                disconnected = True

        def start_watch() -> None:
            nonlocal watcher, watch_tried, watch_skipped
            watch_tried = True
            watch_skipped = False
            if receiving:
                # The app listens for the disconnect itself (Starlette's StreamingResponse
                # under ASGI < 2.4): its receive() reports it, and a second concurrent one
                # is answered with a disconnect by some servers (granian).
                watch_skipped = True
                return
            if not body_read:
                for name, value in scope.get("headers") or ():
                    if name == b"transfer-encoding" or (
                        name == b"content-length" and value.strip() not in (b"0", b"")
                    ):
                        return  # a body the app did not read: don't touch it
            if _running_trio() is not None:
                return  # asyncio only (ensure_future would use an idle asyncio loop)
            try:
                watcher = asyncio.get_running_loop().create_task(watch())
            except Exception:
                logger.debug("cannot watch for client disconnects", exc_info=True)

        async def traced_send(message: Message) -> None:
            nonlocal complete, disconnected, headers_sent
            kind = message.get("type")
            if kind in _BODY:
                if not message.get("more_body", False):
                    complete = True
                elif not watch_tried and not disconnected:
                    start_watch()
            elif kind == "http.response.start" or kind == "websocket.http.response.start":
                # (the second: a websocket handshake answered with an HTTP response)
                headers_sent = head
                try:
                    code = int(message["status"])
                    if tx._recording:
                        tx.set_http_status(code)  # data and tags nobody sends otherwise
                    if tx._namer is not None:
                        tx._settle_name()
                    if tx._source == "url":
                        name_on_response(tx, inner, method, code)
                except Exception:
                    logger.debug("unreadable ASGI response start %r", message.get("status"))
            elif kind == "websocket.accept":
                if tx._status is None:
                    tx._status = "ok"
            elif kind == "websocket.close" and tx._status is None:
                # Closed before accept: the server answers the handshake (a GET) with 403.
                # Unnamed (framework integrations): if the router ran, it found no route,
                # recorded as the 404 it is (named "GET 404", dropped by
                # trace_ignore_status_codes={404} as unmatched requests are); else a
                # middleware turned it away ("GET 403").
                try:
                    code = 403
                    if tx._namer is not None:
                        tx._settle_name()
                    if tx._source == "url" and self.name_unmatched:
                        if self.routed(inner):
                            code = 404
                        name_on_response(tx, inner, method, code)
                    tx.set_http_status(code)
                except Exception:
                    logger.debug("recording a refused websocket failed", exc_info=True)
            elif kind in _FINAL_BODY:
                complete = True
            try:
                if complete or (
                    kind == "http.response.trailers" and not message.get("more_trailers")
                ):
                    tokens = _clear_context()
                    try:
                        await send(message)
                    finally:
                        _restore_context(tokens)
                else:
                    await send(message)
            except OSError:
                if not complete:
                    disconnected = True
                raise

        async def traced_receive() -> Message:
            nonlocal disconnected, body_read, receiving
            if watcher is not None and not ahead and not watcher.done():
                try:
                    await asyncio.shield(watcher)
                except Exception:
                    pass
            if ahead:
                message = ahead.pop(0)
            else:
                receiving += 1
                try:
                    message = await receive()
                except BaseException:
                    # The app stopped listening (a timeout, a cancelled listener): watch
                    # in its place if that was skipped for it.
                    receiving -= 1
                    if watch_skipped and not receiving and not complete and not disconnected:
                        start_watch()
                    raise
                receiving -= 1
            kind = message.get("type")
            if kind == "http.request":
                if not message.get("more_body", False):
                    body_read = True
            elif kind == "http.disconnect" and not (complete or headers_sent):
                disconnected = True
            return message

        token = CURRENT_SPAN.set(tx)
        try:
            await self.app(inner, traced_receive, traced_send)
        except BaseException as exc:
            went = disconnected or self._gone(exc)
            if isinstance(exc, Exception) and not went:
                self._name_failed(tx, inner, method)
            _fail(client, tx, exc, went, self.mechanism, scope)
            if (
                tx._response_status is None
                and not went
                and isinstance(exc, Exception)
                and scope.get("type") == "http"
            ):
                self._unhandled_response(tx, scope)
            raise
        else:
            if tx._response_status is None and not disconnected and scope.get("type") == "http":
                self._no_response(tx, inner, method)
        finally:
            CURRENT_SPAN.reset(token)
            if watcher is not None:
                if not watcher.done():
                    watcher.cancel()
                elif not watcher.cancelled():
                    watcher.exception()  # retrieved: no "never retrieved" warning
            if disconnected and tx._status in (None, "ok"):
                tx._status = "cancelled"
            if tx._namer is not None:
                tx._settle_name()  # (named by now unless no response started)
            finish_request(tx, scope)

    def _name_failed(self, tx: Transaction, scope: Scope, method: str) -> None:
        """An exception left the app before anything named the request (a middleware
        failed before routing): ``"GET 500"``, never the raw path (framework integrations;
        the generic middleware keeps the URL)."""
        if tx._namer is not None:
            tx._settle_name()
        if tx._source == "url" and self.name_unmatched:
            try:
                self.name_on_response(tx, scope, method, 500)
            except Exception:
                logger.debug("naming a failed request failed", exc_info=True)

    def _no_response(self, tx: Transaction, scope: Scope, method: str) -> None:
        """The app returned without starting a response (an exception handler that
        returned None, say): an application error. What the client gets is not ours to see
        (uvicorn, hypercorn and granian answer 500; daphne nothing; a middleware outside
        ours may answer), so no status code is recorded."""
        self._name_failed(tx, scope, method)
        tx._status = "internal_error"

    def _unhandled_response(self, tx: Transaction, scope: Scope) -> None:
        """Record the response the server (or the framework's error middleware) sends for
        an exception that left the app: status code, tag and response context."""
        try:
            code = self.unhandled_status(scope)
            if code is not None:
                tx.set_http_status(code)
                tx._status = "internal_error"  # the exception's status, whatever the code
        except Exception:
            logger.debug("recording the error response failed", exc_info=True)
