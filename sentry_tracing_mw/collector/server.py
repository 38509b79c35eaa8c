"""The collector's HTTP side: a Starlette app served by uvicorn.

``POST /api/<project_id>/envelope/`` takes Sentry envelopes (plain, gzip, deflate or br), checks
the key, parses them with the package's own envelope parser and stores them; ``/`` serves the
trace viewer and ``/api/ui/...`` its JSON.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
import re
import signal
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .._envelope import Envelope, EnvelopeError, decode_body, parse_envelope
from .._log import guard
from . import viewer
from .store import (
    CATEGORY_OF_ITEM,
    DEFAULT_MAX_ENVELOPES,
    MAX_JSON_DEPTH,
    Store,
    json_too_deep,
    prepare_envelope,
)
from .tree import printable

__all__ = [
    "MAX_BODY",
    "Collector",
    "RateLimit",
    "create_app",
    "parse_rate_limit",
]

logger = guard(logging.getLogger("sentry_tracing_mw.collector"))

#: Largest accepted body, compressed or decompressed (bytes).
MAX_BODY = 20 * 1024 * 1024
#: Largest accepted envelope or item header line (bytes of JSON).
MAX_HEADER = 64 * 1024

#: Seconds a connection may take to send a complete request head (slow clients are closed).
HEAD_TIMEOUT = 10.0
#: Seconds a body may pause between two chunks, and take in all.
BODY_IDLE_TIMEOUT = 15.0
BODY_TIMEOUT = 60.0
#: Bytes of request bodies held at once across all connections; more is answered 503.
MAX_BODIES_IN_FLIGHT = 3 * MAX_BODY

STATIC_DIR = Path(__file__).resolve().parent / "static"

_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "X-Sentry-Rate-Limits, Retry-After",
}


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A ``--rate-limit`` rule: answer with a limit of ``seconds`` for these categories."""

    seconds: int
    categories: frozenset[str]  # empty: every category

    def applies_to(self, category: str) -> bool:
        """Whether items of ``category`` are limited by this rule."""
        return not self.categories or category in self.categories

    def header(self) -> str:
        """This rule in ``X-Sentry-Rate-Limits`` syntax (scope ``key``)."""
        return f"{self.seconds}:{';'.join(sorted(self.categories))}:key"


def parse_rate_limit(text: str) -> RateLimit:
    """Parse ``SECONDS[:CATEGORY[;CATEGORY...]]`` (empty categories: all); ``ValueError``."""
    seconds_text, _, cats = text.strip().partition(":")
    try:
        seconds = int(seconds_text)
    except ValueError:
        raise ValueError(f"rate limit {text!r}: SECONDS must be an integer")
    if seconds <= 0:
        raise ValueError(f"rate limit {text!r}: SECONDS must be positive")
    categories = frozenset(c.strip() for c in cats.replace(",", ";").split(";") if c.strip())
    for cat in categories:
        if not cat.replace("_", "").isalnum():
            raise ValueError(f"rate limit {text!r}: bad category {cat!r}")
    return RateLimit(seconds, categories)


class _Reject(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _auth_key(request: Request) -> str | None:
    """The ``sentry_key`` from ``X-Sentry-Auth`` or the query string (they must agree)."""
    keys: set[str] = set()
    header = request.headers.get("x-sentry-auth")
    if header is not None:
        text = header.strip()
        if text[:7].lower() == "sentry ":
            text = text[7:]
        for part in text.split(","):
            name, sep, value = part.strip().partition("=")
            if sep and name.strip() == "sentry_key":
                keys.add(value.strip())
    query_key = request.query_params.get("sentry_key")
    if query_key is not None:
        keys.add(query_key)
    if len(keys) > 1:
        raise _Reject(403, "conflicting sentry_key values in X-Sentry-Auth and query string")
    return next(iter(keys)) if keys else None


def _dsn_key(headers: dict[str, Any], project: str) -> str | None:
    """The key of the envelope's ``dsn`` header; its project must be the URL's (§1: auth
    forms that disagree on project or key are rejected)."""
    dsn = headers.get("dsn")
    if dsn is None:
        return None
    if not isinstance(dsn, str):
        raise _Reject(400, "envelope header 'dsn' is not a string")
    try:
        parts = urlsplit(dsn)
        user = parts.username
    except ValueError:
        user = None
    if not user:
        raise _Reject(400, f"envelope header 'dsn' has no public key: {dsn[:200]!r}")
    dsn_project = parts.path.rstrip("/").rpartition("/")[2]
    if dsn_project and dsn_project != project:
        raise _Reject(
            403, f"the envelope's dsn is for project {dsn_project[:64]!r}, not {project!r}"
        )
    return user.partition(":")[0]


class _BodyBudget:
    """Bytes of request bodies held by all connections together (one event loop)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, n: int) -> None:
        if self.held + n > self.limit:
            raise _Reject(
                503, "too many bodies being uploaded at once; retry later", {"Retry-After": "5"}
            )
        self.held += n


async def _read_body(request: Request, budget: _BodyBudget) -> bytes:
    """The whole body within MAX_BODY, the shared budget and the body timeouts."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise _Reject(400, "invalid Content-Length")
        if declared > MAX_BODY:
            raise _Reject(413, f"body of {declared} bytes exceeds the limit of {MAX_BODY} bytes")
    chunks: list[bytes] = []
    total = 0
    deadline = time.monotonic() + BODY_TIMEOUT
    stream = request.stream().__aiter__()
    try:
        while True:
            wait = min(BODY_IDLE_TIMEOUT, deadline - time.monotonic())
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), max(wait, 0.0))
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise _Reject(408, "the body arrived too slowly")
            total += len(chunk)
            if total > MAX_BODY:
                raise _Reject(413, f"body exceeds the limit of {MAX_BODY} bytes")
            budget.take(len(chunk))
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        budget.held -= sum(map(len, chunks))


def _decode_and_parse(raw: bytes, encoding: str | None) -> Envelope:
    try:
        body = decode_body(raw, encoding, MAX_BODY)
    except EnvelopeError as exc:
        text = str(exc)
        if "exceeds" in text:
            raise _Reject(413, text)
        if "unsupported Content-Encoding" in text:
            raise _Reject(415, text)
        raise _Reject(400, text)
    if not body:
        raise _Reject(400, "empty body: an envelope needs at least its header line")
    nl = body.find(b"\n")
    if (nl if nl >= 0 else len(body)) > MAX_HEADER:
        raise _Reject(400, f"envelope header line longer than {MAX_HEADER} bytes")
    try:
        envelope = parse_envelope(body)
    except EnvelopeError as exc:
        raise _Reject(400, f"malformed envelope: {exc}")
    if json_too_deep(envelope.headers):
        raise _Reject(400, f"envelope header: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    for index, item in enumerate(envelope.items):
        if json_too_deep(item.headers):
            raise _Reject(400, f"item {index}: header nested deeper than {MAX_JSON_DEPTH} levels")
        if len(json.dumps(item.headers, default=str)) > MAX_HEADER:
            raise _Reject(400, f"item {index}: header longer than {MAX_HEADER} bytes")
    return envelope


def _head_timeout_protocol() -> Any:
    """uvicorn's h11 protocol, closing a connection whose request head is not complete
    within HEAD_TIMEOUT (uvicorn has no such timeout: slow heads would hold connections
    until ``limit_concurrency`` turns every other client away)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeoutH11Protocol(H11Protocol):
        _stm_timer: asyncio.TimerHandle | None = None

        def _stm_arm(self) -> None:
            if self._stm_timer is not None:
                self._stm_timer.cancel()
            self._stm_timer = self.loop.call_later(HEAD_TIMEOUT, self._stm_expired)

        def _stm_expired(self) -> None:
            self._stm_timer = None
            cycle = self.cycle
            if (cycle is None or cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()  # no request head completed in time

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._stm_arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._stm_arm()  # the next request head (keep-alive) gets its own time

        def connection_lost(self, exc: Exception | None) -> None:
            if self._stm_timer is not None:
                self._stm_timer.cancel()
                self._stm_timer = None
            super().connection_lost(exc)

    return HeadTimeoutH11Protocol


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, IPv6 with or without brackets) is loopback."""
    name = host.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name == "localhost" or name.endswith(".localhost"):  # RFC 6761: always loopback
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def _host_name(value: str) -> str:
    """The name of a ``Host`` header value, without its port (``[::1]:80`` -> ``[::1]``)."""
    if value.startswith("["):
        return value.partition("]")[0] + "]"
    return value.partition(":")[0]


#: Paths every client may reach whatever its ``Host``: ingestion (SDKs use any host name).
_ANY_HOST = re.compile(r"/api/[^/]+/envelope/?|/healthz")


class _LoopbackHostOnly:
    """Answer 403 to viewer and API requests whose ``Host`` is not a loopback name.

    A collector bound to loopback is meant for this machine only; a web page could
    still reach it by pointing its own host name at 127.0.0.1 (DNS rebinding) and read
    the stored traces. Its requests carry the page's host name, not a loopback one.
    ``allowed`` adds host names (a reverse proxy on this machine that keeps its own).
    """

    def __init__(self, app: ASGIApp, allowed: Sequence[str] = ()) -> None:
        self.app = app
        self.allowed = frozenset(_host_name(h.strip().lower()).rstrip(".") for h in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _ANY_HOST.fullmatch(scope["path"]):
            hosts = [v for k, v in scope["headers"] if k == b"host"]
            name = _host_name(hosts[0].decode("latin-1")) if hosts else "localhost"
            if len(hosts) > 1 or not (
                is_loopback(name) or name.lower().rstrip(".") in self.allowed
            ):
                detail = (
                    "the viewer answers loopback host names only (localhost, 127.0.0.1, "
                    "[::1]) and those given with --allow-host"
                )
                await JSONResponse({"detail": detail}, 403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _App:
    """Request handlers bound to one store, key and rate-limit set."""

    def __init__(self, store: Store, key: str, rate_limits: Sequence[RateLimit]) -> None:
        self.store = store
        self.key = key
        self.rate_limits = tuple(rate_limits)
        #: responses by status code since start (accepted and rejected envelopes)
        self.responses: dict[int, int] = {}
        self.budget = _BodyBudget(MAX_BODIES_IN_FLIGHT)

    # -- ingestion ----------------------------------------------------------------------

    def _check_key(self, given: str | None) -> None:
        if given is None:
            return
        if not hmac.compare_digest(given.encode(), self.key.encode()):
            raise _Reject(403, "invalid sentry_key")

    def _apply_rate_limits(self, envelope: Envelope) -> tuple[Envelope, dict[str, str]]:
        if not self.rate_limits:
            return envelope, {}
        hit: list[RateLimit] = []
        kept = []
        for item in envelope.items:
            category = CATEGORY_OF_ITEM.get(item.type, item.type)
            rules = [r for r in self.rate_limits if r.applies_to(category)]
            if rules:
                hit.extend(r for r in rules if r not in hit)
            else:
                kept.append(item)
        if not hit:
            return envelope, {}
        headers = {
            "X-Sentry-Rate-Limits": ", ".join(r.header() for r in hit),
            "Retry-After": str(max(r.seconds for r in hit)),
        }
        if not kept:
            raise _Reject(429, "rate limited (collector started with --rate-limit)", headers)
        return Envelope(envelope.headers, kept), headers

    def _ingest(self, raw: bytes, encoding: str | None, project: str, key: str | None) -> Any:
        envelope = _decode_and_parse(raw, encoding)
        dsn_key = _dsn_key(envelope.headers, project)
        if key is not None and dsn_key is not None and key != dsn_key:
            raise _Reject(403, "the envelope's dsn key differs from the request's sentry_key")
        if key is None and dsn_key is None:
            raise _Reject(
                403, "missing sentry_key (X-Sentry-Auth header, query string or envelope dsn)"
            )
        self._check_key(key if key is not None else dsn_key)
        envelope, limit_headers = self._apply_rate_limits(envelope)
        try:
            prepared = prepare_envelope(envelope, project, len(raw))
        except EnvelopeError as exc:
            raise _Reject(400, f"invalid envelope: {exc}")
        result = self.store.ingest(prepared)
        if logger.isEnabledFor(logging.INFO):
            parts = [f"{result.transactions} transaction(s)"] if result.transactions else []
            for tx in prepared.transactions:
                name, service = printable(tx.name), printable(tx.service)
                parts.append(f"'{name}' [{service}] {len(tx.spans) + 1} span(s)")
            if prepared.segments:
                parts.append(f"{result.spans} streamed span(s)")
            if result.errors:
                parts.append(f"{result.errors} error(s)")
            if result.client_reports:
                parts.append(f"{result.client_reports} client report line(s)")
            if result.ignored:
                parts.append(f"ignored {printable(', '.join(result.ignored))}")
            logger.info("project %s: stored %s", project, "; ".join(parts) or "empty envelope")
        return envelope.headers.get("event_id"), result, limit_headers

    async def envelope(self, request: Request) -> Response:
        project = request.path_params["project_id"]
        try:
            if not project or len(project) > 64 or not project.isalnum():
                raise _Reject(404, f"invalid project id {project[:64]!r}")
            key = _auth_key(request)
            self._check_key(key)  # reject a wrong key before reading the body
            raw = await _read_body(request, self.budget)
            event_id, result, headers = await run_in_threadpool(
                self._ingest, raw, request.headers.get("content-encoding"), project, key
            )
        except _Reject as exc:
            self.responses[exc.status] = self.responses.get(exc.status, 0) + 1
            if exc.status != 429:
                logger.warning("rejected envelope (%s): %s", exc.status, printable(exc.message))
            return JSONResponse(
                {"detail": exc.message}, exc.status, headers={**_CORS, **exc.headers}
            )
        except ClientDisconnect:
            logger.info("client went away before sending the whole body")
            return Response(status_code=400)
        except Exception as exc:  # the server keeps serving whatever happens
            self.responses[500] = self.responses.get(500, 0) + 1
            logger.exception("failed to store an envelope")
            return JSONResponse(
                {"detail": f"internal error: {type(exc).__name__}: {exc}"}, 500, headers=_CORS
            )
        self.responses[200] = self.responses.get(200, 0) + 1
        body = {"id": event_id, "stored": result.as_dict()}
        return JSONResponse(body, 200, headers={**_CORS, **headers})

    async def preflight(self, request: Request) -> Response:
        return Response(
            status_code=204,
            headers={
                **_CORS,
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": "Content-Type, Content-Encoding, X-Sentry-Auth",
                "Access-Control-Max-Age": "3600",
            },
        )

    # -- viewer -------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    @staticmethod
    def _float_param(request: Request, name: str) -> float | None:
        value = request.query_params.get(name)
        if value is None or value == "":
            return None
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or abs(number) > 1e15:
            raise _Reject(400, f"{name} must be a finite number, not {value[:50]!r}")
        return number

    async def _json(self, fn: Any, *args: Any, **kwargs: Any) -> Response:
        try:
            data = await run_in_threadpool(fn, *args, **kwargs)
        except _Reject as exc:
            return JSONResponse({"detail": exc.message}, exc.status)
        except ValueError as exc:
            return JSONResponse({"detail": str(exc)}, 400)
        if data is None:
            return JSONResponse({"detail": "not found"}, 404)
        headers = {"Cache-Control": "no-store"}
        try:
            return JSONResponse(data, headers=headers)
        except (ValueError, RecursionError, OverflowError, TypeError) as exc:
            # a stored value JSON cannot carry (e.g. infinity): show the rest, never fail
            logger.warning(
                "viewer response repaired for JSON (%s: %s)", type(exc).__name__, printable(exc)
            )
            return JSONResponse(await run_in_threadpool(viewer.json_safe, data), headers=headers)

    def _filters(self, request: Request) -> dict[str, Any]:
        q = request.query_params
        return {
            "window": q.get("window") or None,
            "name": q.get("name") or None,
            "status": q.get("status") or None,
            "min_duration_ms": self._float_param(request, "min_duration"),
        }

    async def ui_summary(self, request: Request) -> Response:
        try:
            filters = self._filters(request)
        except _Reject as exc:
            return JSONResponse({"detail": exc.message}, exc.status)
        return await self._json(viewer.summary, self.store, **filters)

    async def ui_transactions(self, request: Request) -> Response:
        try:
            filters = self._filters(request)
            limit = self._float_param(request, "limit")
        except _Reject as exc:
            return JSONResponse({"detail": exc.message}, exc.status)
        return await self._json(
            viewer.transaction_list,
            self.store,
            exact_name=request.query_params.get("exact_name"),
            limit=int(limit or 100),
            **filters,
        )

    async def ui_transaction(self, request: Request) -> Response:
        return await self._json(viewer.transaction_view, self.store, request.path_params["uid"])

    async def ui_trace(self, request: Request) -> Response:
        return await self._json(viewer.trace_view, self.store, request.path_params["trace_id"])

    async def ui_traces(self, request: Request) -> Response:
        try:
            limit = self._float_param(request, "limit")
        except _Reject as exc:
            return JSONResponse({"detail": exc.message}, exc.status)
        n = max(1, min(int(limit if limit is not None else 20), 500))
        return await self._json(lambda: {"rows": self.store.recent_traces(n)})

    async def ui_error(self, request: Request) -> Response:
        return await self._json(self.store.error, request.path_params["event_id"])

    async def ui_stats(self, request: Request) -> Response:
        def stats() -> dict[str, Any]:
            return {
                "counts": self.store.counts(),
                "client_reports": self.store.client_report_totals(),
                "rate_limits": [r.header() for r in self.rate_limits],
                "responses": {str(k): v for k, v in sorted(self.responses.items())},
                "max_envelopes": self.store.max_envelopes,
                "pruned_envelopes": self.store.pruned_envelopes,
            }

        return await self._json(stats)


def create_app(
    store: Store,
    key: str = "public",
    rate_limits: Sequence[RateLimit] = (),
    *,
    loopback_only: bool = False,
    allowed_hosts: Sequence[str] = (),
) -> Starlette:
    """The collector's ASGI application; with ``loopback_only`` the viewer and its API
    answer requests for loopback host names and ``allowed_hosts`` only (ingestion answers
    any)."""
    app = _App(store, key, rate_limits)
    routes = [
        Route("/", app.index, methods=["GET"]),
        Route("/healthz", app.health, methods=["GET"]),
        Route("/api/{project_id}/envelope/", app.envelope, methods=["POST"]),
        Route("/api/{project_id}/envelope", app.envelope, methods=["POST"]),
        Route("/api/{project_id}/envelope/", app.preflight, methods=["OPTIONS"]),
        Route("/api/ui/summary", app.ui_summary, methods=["GET"]),
        Route("/api/ui/transactions", app.ui_transactions, methods=["GET"]),
        Route("/api/ui/transaction/{uid}", app.ui_transaction, methods=["GET"]),
        Route("/api/ui/trace/{trace_id}", app.ui_trace, methods=["GET"]),
        Route("/api/ui/traces", app.ui_traces, methods=["GET"]),
        Route("/api/ui/error/{event_id}", app.ui_error, methods=["GET"]),
        Route("/api/ui/stats", app.ui_stats, methods=["GET"]),
        Mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static"),
    ]
    middleware = [Middleware(_LoopbackHostOnly, allowed=allowed_hosts)] if loopback_only else []
    starlette = Starlette(routes=routes, middleware=middleware)
    starlette.state.collector = app
    return starlette


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family = infos[0][0]
    sock = socket.create_server((host, port), family=family, reuse_port=False)
    sock.set_inheritable(True)
    return sock


class _Terminated(BaseException):
    """SIGTERM arrived (raised by its handler while the collector serves)."""


def _terminated(signum: int, frame: Any) -> None:
    raise _Terminated


class Collector:
    """A collector: store + app + uvicorn on ``host:port`` (``port=0`` picks a free one).

    The store keeps the newest ``max_envelopes`` envelopes' data (None: everything).

    ``start()`` serves on a background thread (tests, demos); ``serve_forever()`` serves on
    the calling thread until Ctrl-C.
    """

    def __init__(
        self,
        db: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 8969,
        key: str = "public",
        rate_limits: Sequence[RateLimit] = (),
        allowed_hosts: Sequence[str] = (),
        max_envelopes: int | None = DEFAULT_MAX_ENVELOPES,
    ) -> None:
        self._sock = _bind(host, port)  # first: a port in use leaves no database file behind
        try:
            self.store = Store(str(db), max_envelopes=max_envelopes)
        except BaseException:
            self._sock.close()
            raise
        self.key = key
        self.app = create_app(
            self.store,
            key,
            rate_limits,
            loopback_only=is_loopback(host),
            allowed_hosts=allowed_hosts,
        )
        self.host = host
        self.port = int(self._sock.getsockname()[1])
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL (also the trace viewer's address)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def responses(self) -> dict[int, int]:
        """Envelope responses by HTTP status since start."""
        counts: dict[int, int] = self.app.state.collector.responses
        return counts

    def dsn(self, project_id: int | str = 1) -> str:
        """The DSN apps should use to send here."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{self.key}@{host}:{self.port}/{project_id}"

    def _make_server(self) -> Any:
        import uvicorn

        config = uvicorn.Config(
            self.app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=3,
            limit_concurrency=1000,
            http=_head_timeout_protocol(),
        )
        return uvicorn.Server(config)

    def start(self, timeout: float = 10.0) -> Collector:
        """Serve on a daemon thread; return once accepting connections."""
        self._server = server = self._make_server()
        sock = self._sock

        def run() -> None:
            asyncio.run(server.serve(sockets=[sock]))

        self._thread = threading.Thread(target=run, name="stm-collector", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.stop()
                raise RuntimeError("the collector did not start")
            time.sleep(0.01)
        return self

    def serve_forever(self) -> None:
        """Serve on this thread until SIGINT (``KeyboardInterrupt``) or SIGTERM (returns);
        the store is closed either way. uvicorn shuts down gracefully, then raises the
        signal again: SIGTERM's default action would end the process before the close, so
        while it is the default, it is replaced here (a program's own handler is kept)."""
        self._server = server = self._make_server()
        ours = (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        )
        if ours:
            signal.signal(signal.SIGTERM, _terminated)
        try:
            server.run(sockets=[self._sock])
        except _Terminated:
            pass
        finally:
            if ours and signal.getsignal(signal.SIGTERM) is _terminated:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (background mode) and close the store."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.close()

    def close(self) -> None:
        """Release the socket and the database."""
        try:
            self._sock.close()
        except OSError:
            pass
        self.store.close()

    def __enter__(self) -> Collector:
        return self.start() if self._thread is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
