"""A real local "Sentry" for transport tests: threaded HTTP on 127.0.0.1 in the background.

It decodes envelopes with the package's own parser and can answer 200, any status with
headers, hang, reset the connection, act as an HTTP forward proxy (records absolute-URI
requests) or go down (closed port) and come back on the same port. With an
``ssl.SSLContext`` it serves HTTPS (``https://`` URL and DSN) and counts failed handshakes.

The ``sentry_server`` fixture's teardown fails the test when a received body did not parse
as an envelope (a transport bug Sentry would answer with 400), unless the test declared
exactly how many with :meth:`SentryServer.expect_malformed`; and, unless the test set
``validate = False``, every parsed body must pass our checks, sentry-relay's normalizer
and the shared validator (:func:`~tests.payload_checks.check_all`).
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import sentry_tracing_mw as stm
from sentry_tracing_mw._envelope import Envelope, EnvelopeError, decode_body, parse_envelope

from .payload_checks import check_all

MAX_BODY = 200 * 1024 * 1024
HANG_LIMIT = 30.0
HANDSHAKE_TIMEOUT = 5.0


@dataclass
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: bytes | None = None
    envelope: Envelope | None = None
    error: str | None = None
    status: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, False)

    def do_GET(self) -> None:
        self._reply(200, b"ok", {})

    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        rec = Received(
            method="POST",
            path=self.path,
            headers={k: v for k, v in self.headers.items()},
            raw=raw,
            extra={"client": self.client_address},
        )
        try:
            rec.body = decode_body(raw, self.headers.get("Content-Encoding"), MAX_BODY)
            rec.envelope = parse_envelope(rec.body)
        except EnvelopeError as exc:
            rec.error = str(exc)
        mode = owner.mode
        if mode == "hang":
            owner._hang_started.set()
            owner._release.wait(HANG_LIMIT)
            mode = "ok"
        if mode == "reset":
            rec.status = -1
            owner._record(rec)
            self.wfile.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"id":')
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        status = 200 if rec.error is None and mode == "ok" else owner.status
        if rec.error is not None:
            status = 400
        rec.status = status
        owner._record(rec)
        headers = dict(owner.response_headers) if status != 200 or owner.headers_on_ok else {}
        self._reply(status, b'{"id":"x"}' if status == 200 else b"{}", headers)

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    owner: SentryServer

    def finish_request(self, request: Any, client_address: Any) -> None:
        """TLS: the handshake runs on the connection's own thread (a failing client never
        stalls the accept loop); a failed handshake is counted, not raised."""
        context = self.owner.ssl_context
        if context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.owner._tls_failed(exc)
            return
        try:
            tls.settimeout(None)
            super().finish_request(tls, client_address)
        finally:
            tls.close()


class SentryServer:
    """Controllable fake Sentry; see the module docstring."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.tls_failures: list[str] = []  # failed TLS handshakes (their errors)
        self._malformed_expected = 0
        self.mode = "ok"  # ok | status | hang | reset
        self.status = 200
        self.response_headers: dict[str, str] = {}
        self.headers_on_ok = False
        self.validate = True
        self.received: list[Received] = []
        self._cond = threading.Condition()
        self._conns: set[socket.socket] = set()
        self._release = threading.Event()
        self._hang_started = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.start()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Listen (again) on 127.0.0.1, reusing the previous port if there was one."""
        httpd = _Server(("127.0.0.1", self.port), _Handler)
        httpd.owner = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def go_down(self) -> None:
        """Stop listening and cut open connections: the port is closed."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        with self._cond:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def come_back(self) -> None:
        """Listen again on the same port."""
        if self._httpd is None:
            self.start()

    def stop(self) -> None:
        """Release hung requests and shut down."""
        self._release.set()
        self.go_down()

    # -- behaviour --------------------------------------------------------------------------

    def respond(self, status: int, headers: dict[str, str] | None = None) -> None:
        """Answer every request with ``status`` (200 resets to normal) and ``headers``."""
        self.mode = "ok" if status == 200 else "status"
        self.status = status
        self.response_headers = dict(headers or {})
        self.headers_on_ok = status == 200 and bool(headers)

    def hang(self) -> None:
        """Hold every request until :meth:`release` (at most 30 s)."""
        self._release.clear()
        self._hang_started.clear()
        self.mode = "hang"

    def wait_hanging(self, timeout: float = 5.0) -> bool:
        """Wait until a request is being held."""
        return self._hang_started.wait(timeout)

    def release(self) -> None:
        """Let hung requests finish (answered 200) and stop hanging."""
        self.mode = "ok"
        self._release.set()

    def reset(self) -> None:
        """Reset the connection mid-response (SO_LINGER 0)."""
        self.mode = "reset"

    def fault(self, mode: str) -> None:
        """Break in one of the named ways: ``down``, ``hang``, ``reset``, ``429`` or any 5xx
        status as text (``healthy`` changes nothing)."""
        if mode == "down":
            self.go_down()
        elif mode == "hang":
            self.hang()
        elif mode == "reset":
            self.reset()
        elif mode == "429":
            self.respond(429, {"Retry-After": "1"})
        elif mode != "healthy":
            self.respond(int(mode))

    def heal(self, mode: str) -> None:
        """Undo ``fault(mode)``: back up, hung requests released, answering 200."""
        if mode == "down":
            self.come_back()
        elif mode == "hang":
            self.release()
        else:
            self.respond(200)

    # -- inspection -------------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "http" if self.ssl_context is None else "https"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def dsn(self) -> str:
        return f"{self.scheme}://public@127.0.0.1:{self.port}/1"

    def _tls_failed(self, exc: BaseException) -> None:
        with self._cond:
            self.tls_failures.append(f"{type(exc).__name__}: {exc}")
            self._cond.notify_all()

    def wait_tls_failures(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until ``n`` TLS handshakes failed."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.tls_failures) >= n, timeout)

    def _record(self, rec: Received) -> None:
        with self._cond:
            self.received.append(rec)
            self._cond.notify_all()

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._cond:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def wait_for(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until ``n`` envelopes were accepted (answered 200)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.accepted()) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def wait_requests(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until ``n`` requests arrived, whatever the answer."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.received) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def accepted(self) -> list[Received]:
        return [r for r in self.received if r.status == 200 and r.envelope is not None]

    def envelopes(self) -> list[Envelope]:
        return [r.envelope for r in self.accepted() if r.envelope is not None]

    def _payloads(self, item_type: str) -> list[dict[str, Any]]:
        return [it.json() for env in self.envelopes() for it in env.items_of(item_type)]

    def transactions(self) -> list[dict[str, Any]]:
        return self._payloads("transaction")

    def events(self) -> list[dict[str, Any]]:
        return self._payloads("event")

    def client_reports(self) -> dict[tuple[str, str], int]:
        """Discarded-event counts merged over every accepted client report."""
        merged: dict[tuple[str, str], int] = {}
        for report in self._payloads("client_report"):
            for entry in report["discarded_events"]:
                key = (entry["reason"], entry["category"])
                merged[key] = merged.get(key, 0) + entry["quantity"]
        return merged

    def clear(self) -> None:
        with self._cond:
            self.received.clear()

    def expect_malformed(self, n: int) -> None:
        """Declare that exactly ``n`` received bodies are meant not to parse (a test posting
        garbage on purpose); any other count fails :meth:`check_parsed`."""
        self._malformed_expected = n

    def malformed(self) -> list[Received]:
        """Received bodies that did not parse as envelopes (answered 400)."""
        with self._cond:
            return [r for r in self.received if r.envelope is None]

    def check_parsed(self) -> None:
        """Assert every received body parsed, but for the count of :meth:`expect_malformed`."""
        bad = self.malformed()
        assert len(bad) == self._malformed_expected, (
            f"{len(bad)} received bodies did not parse as envelopes "
            f"(expected {self._malformed_expected}): "
            + "; ".join(f"{r.path}: {r.error} (first bytes {r.raw[:40]!r})" for r in bad[:5])
        )

    def validate_all(self) -> None:
        """Every body received must parse (:meth:`check_parsed`), and every parsed one pass
        our checks, sentry-relay's normalizer and the shared validator (one batched run)."""
        self.check_parsed()
        with self._cond:
            # gzip/deflate/identity as sent (the checks decode them, so our compression is
            # checked too); a peer SDK's br body (sentry-sdk with brotli installed) decoded
            bodies = [
                r.body if _encoding(r) == "br" and r.body is not None else r.raw
                for r in self.received
                if r.envelope is not None
            ]
        check_all(bodies)


def _encoding(rec: Received) -> str:
    for name, value in rec.headers.items():
        if name.lower() == "content-encoding":
            return value.strip().lower()
    return ""


def init_traced(server: SentryServer, **options: Any) -> None:
    """``stm.init`` at ``server``: every transaction sampled unless the options say otherwise,
    HTTP clients not instrumented."""
    options.setdefault("traces_sample_rate", 1.0)
    stm.init(dsn=server.dsn, instrument_http_clients=False, **options)


def flushed_transactions(server: SentryServer, n: int) -> list[dict[str, Any]]:
    """Flush the client, wait for ``n`` envelopes and assert exactly ``n`` transactions came."""
    assert stm.flush(5)
    assert server.wait_for(n, timeout=5)
    txs = server.transactions()
    assert len(txs) == n, [t["transaction"] for t in txs]
    return txs


def transactions_by_name(server: SentryServer, n: int) -> dict[str, dict[str, Any]]:
    """:func:`flushed_transactions`, keyed by transaction name."""
    return {t["transaction"]: t for t in flushed_transactions(server, n)}


def serve_and_validate(server: SentryServer) -> Iterator[SentryServer]:
    """Fixture body: yield ``server``, stop it, then check what it received (every body
    parsed; unless ``server.validate`` is False, every envelope fully validated)."""
    try:
        yield server
    finally:
        server.stop()
    if server.validate:
        server.validate_all()
    else:
        server.check_parsed()


@pytest.fixture
def sentry_server() -> Iterator[SentryServer]:
    """A running :class:`SentryServer`; teardown validates everything it received."""
    yield from serve_and_validate(SentryServer())
