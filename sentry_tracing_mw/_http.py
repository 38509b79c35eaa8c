"""A minimal keep-alive HTTP/1.1 client for the transport's direct POSTs to Sentry.

``http.client`` costs about seven times more CPU per request than the transport needs (it
builds headers call by call and parses responses with the ``email`` package); that CPU
competes with the host app for the GIL on every sent transaction. This connection sends a
precomputed request head plus the body in one write and reads only what the transport
uses: the status code and the headers (for rate limits), with Content-Length, chunked or
read-to-close bodies. TLS is verified with ``tls_context``. Proxies go through urllib3.
"""

from __future__ import annotations

import os
import re
import select
import socket
import ssl
from collections.abc import Mapping

from ._log import warn_once

__all__ = [
    "HTTPConnection",
    "ProtocolError",
    "StaleConnectionError",
    "certifi_context",
    "tls_context",
]

_MAX_LINE = 65536
_MAX_HEADERS = 100
_MAX_BODY = 1024 * 1024  # Sentry answers with a small JSON document


def tls_context(ca_certs: str | None) -> ssl.SSLContext:
    """The verifying TLS context for Sentry: ``ca_certs`` when given, else the system's
    trust store, plus certifi's bundle when that store holds no CA certificate (a slim
    container image without a CA package, where sentry-sdk still works: it uses certifi)."""
    context = ssl.create_default_context(cafile=ca_certs)
    if ca_certs is None and _empty_store(context):
        try:
            import certifi
        except ImportError:
            warn_once(
                "no-ca-certificates",
                "no CA certificates in the system trust store and certifi is not installed: "
                "HTTPS to Sentry will fail verification (install certifi or set ca_certs)",
            )
        else:
            context.load_verify_locations(certifi.where())
    return context


def certifi_context() -> ssl.SSLContext | None:
    """``tls_context(None)`` when the system's trust store is empty (certifi's bundle in
    it, or nothing to add), else None: a library's own default context verifies as well."""
    if not _empty_store(ssl.create_default_context()):
        return None
    return tls_context(None)


def _empty_store(context: ssl.SSLContext) -> bool:
    """Whether ``context`` (the system's defaults) has no CA certificate to verify with."""
    return not context.cert_store_stats().get("x509_ca") and not _hashed_ca_directory(
        ssl.get_default_verify_paths().capath
    )


_HASHED_NAME = re.compile(r"[0-9a-f]{8}\.[0-9]+")


def _hashed_ca_directory(path: str | None) -> bool:
    """Whether ``path`` is an OpenSSL CA directory holding certificates (``c_rehash``
    names): OpenSSL loads those only when a handshake needs one, so the store's counts
    say nothing about them."""
    if not path:
        return False
    try:
        with os.scandir(path) as entries:
            # (is_file() follows a link: one pointing nowhere is no certificate)
            return any(_HASHED_NAME.fullmatch(e.name) and e.is_file() for e in entries)
    except OSError:
        return False


class ProtocolError(OSError):
    """The server sent something that is not a valid HTTP/1.1 response."""


class StaleConnectionError(ProtocolError):
    """A reused connection was closed by the server before it answered (safe to retry)."""


class HTTPConnection:
    """One persistent connection to ``host:port`` (used by a single thread)."""

    __slots__ = (
        "_connect_timeout",
        "_context",
        "_head",
        "_host",
        "_port",
        "_read_timeout",
        "_reader",
        "_sock",
    )

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int | None,
        path: str,
        headers: Mapping[str, str],
        *,
        connect_timeout: float,
        read_timeout: float,
        ca_certs: str | None = None,
    ) -> None:
        https = scheme == "https"
        self._host = host
        self._port = port or (443 if https else 80)
        self._context = tls_context(ca_certs) if https else None
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        netloc = f"[{host}]" if ":" in host else host
        if port is not None and port != (443 if https else 80):
            netloc = f"{netloc}:{port}"
        lines = [f"POST {path} HTTP/1.1", f"Host: {netloc}"]
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        lines.append("Content-Length: ")
        self._head = "\r\n".join(lines).encode("latin-1")
        self._sock: socket.socket | None = None
        self._reader: socket.SocketIO | None = None

    def close(self) -> None:
        """Close the socket (a later ``post`` reconnects)."""
        sock, self._sock, self._reader = self._sock, None, None
        if sock is not None:
            try:
                sock.close()
            except OSError:  # pragma: no cover
                pass

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self._host, self._port), timeout=self._connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._context is not None:
                sock = self._context.wrap_socket(sock, server_hostname=self._host)
            sock.settimeout(self._read_timeout)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._reader = socket.SocketIO(sock, "rb")
        return sock

    def post(self, body: bytes) -> tuple[int, dict[str, str]]:
        """POST ``body``; the status and the response headers (names lowercased).

        Raises ``StaleConnectionError`` when a reused connection turned out to be closed
        before any response byte arrived, or reset, ``OSError`` for every other failure.
        The connection is closed after any failure.
        """
        sock = self._sock
        if sock is not None and _dropped(sock):
            self.close()  # closed or reset while idle (a proxy, a load balancer): reconnect
            sock = None
        reused = sock is not None
        if sock is None:
            sock = self._connect()
        try:
            try:
                sock.sendall(b"".join((self._head, b"%d\r\n\r\n" % len(body), body)))
            except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
                if reused:  # refused before the request was whole: safe to send again
                    raise StaleConnectionError(f"reused connection reset ({exc})") from exc
                raise
            status, headers = self._read_response(reused)
        except BaseException:
            self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers

    def _read_response(self, reused: bool) -> tuple[int, dict[str, str]]:
        reader = self._reader
        assert reader is not None
        buffer = _Buffer(reader)
        while True:
            try:
                line = buffer.line()
            except (ConnectionResetError, ConnectionAbortedError) as exc:
                if reused and not buffer.seen:  # reset before any response byte
                    raise StaleConnectionError(f"reused connection reset ({exc})") from exc
                raise
            if not line:
                if reused:
                    raise StaleConnectionError("connection closed before the response")
                raise ProtocolError("connection closed before the response")
            version, _, rest = line.partition(b" ")
            code = rest[:3]
            if not version.startswith(b"HTTP/1.") or not code.isdigit():
                raise ProtocolError(f"malformed status line {line[:80]!r}")
            status = int(code)
            headers = self._read_headers(buffer)
            if status >= 200 or status == 101:
                break
            # 1xx interim responses (100 Continue) are followed by the real one
        if version == b"HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
            headers["connection"] = "close"
        self._read_body(buffer, status, headers)
        return status, headers

    @staticmethod
    def _read_headers(buffer: _Buffer) -> dict[str, str]:
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS + 1):
            line = buffer.line()
            if line in (b"\r\n", b"\n"):
                return headers
            if not line:
                raise ProtocolError("connection closed inside the response headers")
            name, sep, value = line.partition(b":")
            if not sep:
                raise ProtocolError(f"malformed header line {line[:80]!r}")
            key = name.strip().decode("latin-1").lower()
            text = value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        raise ProtocolError("too many response headers")

    def _read_body(self, buffer: _Buffer, status: int, headers: dict[str, str]) -> None:
        if status in (204, 304) or 100 <= status < 200:
            return
        if "chunked" in headers.get("transfer-encoding", "").lower():
            total = 0
            while True:
                size_line = buffer.line().split(b";", 1)[0].strip()
                try:
                    size = int(size_line, 16)
                except ValueError:
                    raise ProtocolError(f"malformed chunk size {size_line[:20]!r}") from None
                if size == 0:
                    self._read_headers(buffer)  # trailers end with a blank line
                    return
                total += size
                if total > _MAX_BODY:
                    headers["connection"] = "close"  # the status is all we need: not read
                    return
                buffer.exactly(size)
                buffer.line()  # CRLF after the chunk
        length = headers.get("content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                raise ProtocolError(f"bad Content-Length {length[:20]!r}") from None
            if size < 0:
                raise ProtocolError(f"bad Content-Length {length[:20]!r}")
            if size > _MAX_BODY:  # the status is all we need: the rest is not read
                headers["connection"] = "close"
                return
            buffer.exactly(size)
            return
        buffer.until_close(_MAX_BODY)  # no length: the body ends when the server closes
        headers["connection"] = "close"


def _dropped(sock: socket.socket) -> bool:
    """Whether an idle keep-alive socket was closed or reset by the other side: it is
    readable (EOF or an error) while no response is due (urllib3 checks the same way)."""
    try:
        if hasattr(select, "poll"):  # select() cannot watch descriptors >= FD_SETSIZE (1024)
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class _Buffer:
    """Line and byte reads over a raw socket reader (one response at a time)."""

    __slots__ = ("_data", "_reader", "seen")

    def __init__(self, reader: socket.SocketIO) -> None:
        self._reader = reader
        self._data = b""
        self.seen = False  # any byte of the response arrived

    def _fill(self) -> bool:
        chunk = self._reader.read(65536)
        if not chunk:
            return False
        self.seen = True
        self._data += chunk
        return True

    def line(self) -> bytes:
        """The next line including its newline; b"" at end of stream."""
        while True:
            end = self._data.find(b"\n")
            if end >= 0:
                line, self._data = self._data[: end + 1], self._data[end + 1 :]
                return line
            if len(self._data) > _MAX_LINE:
                raise ProtocolError("response line too long")
            if not self._fill():
                line, self._data = self._data, b""
                return line

    def exactly(self, size: int) -> None:
        """Consume ``size`` body bytes."""
        while len(self._data) < size:
            if not self._fill():
                raise ProtocolError("connection closed inside the response body")
        self._data = self._data[size:]

    def until_close(self, limit: int) -> None:
        """Consume everything until the server closes the connection."""
        while len(self._data) <= limit and self._fill():
            pass  # (past the limit: the caller closes the connection, unread)
        self._data = b""
