"""A real HTTP/1.1 server on 127.0.0.1 that records the raw request header bytes.

Hand-rolled on ``socketserver`` so that the bytes a client put on the wire are seen
exactly (duplicate header lines included). Keep-alive, Content-Length and chunked request
bodies are supported. Paths:

* ``/echo...`` (and anything unknown): 200, the body is the raw request header block;
* ``/redirect/N``: 302 to ``/redirect/N-1``, ``/redirect/1`` to ``/echo`` (N+1 requests);
  ``/redirect-to?url=...``: 302 to that URL;
* ``/stream?chunks=N&delay=S``: a chunked body of N chunks, S seconds apart;
* ``/status/CODE``: that status with a short body;
* ``/slow?delay=S``: waits S seconds before answering (client timeouts);
* ``/drop``: closes the connection without answering.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

__all__ = ["RecordedRequest", "RecordingServer", "header_values", "running"]

_MAX_HEAD = 256 * 1024


def header_values(raw: bytes, name: str) -> list[str]:
    """Every value of header ``name`` (case-insensitive) in a raw header block, in order."""
    wanted = name.lower().encode("latin-1")
    found = []
    for line in raw.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == wanted:
            found.append(value.strip(b" \t").decode("latin-1"))
    return found


@dataclass
class RecordedRequest:
    """One request as it arrived."""

    method: str
    target: str
    raw: bytes  # request line and headers, up to and including the blank line
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    def values(self, name: str) -> list[str]:
        """All values of one header, as sent."""
        return header_values(self.raw, name)

    def header(self, name: str) -> str | None:
        """The single value of a header; fails the test if it was sent more than once."""
        values = self.values(name)
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
        return values[0] if values else None


class _Handler(socketserver.BaseRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(10)
        buffer = b""
        owner = self.server.owner
        try:
            while not owner.stopping:
                while b"\r\n\r\n" not in buffer:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                    if len(buffer) > _MAX_HEAD:
                        return
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                raw = head + b"\r\n\r\n"
                lines = head.split(b"\r\n")
                method, target, _version = lines[0].decode("latin-1").split(" ", 2)
                length = header_values(raw, "content-length")
                chunked = "chunked" in ",".join(header_values(raw, "transfer-encoding")).lower()
                body, buffer = self._read_body(
                    sock, buffer, int(length[0]) if length else 0, chunked
                )
                rec = RecordedRequest(method, target, raw, body)
                owner._record(rec)
                if not self._respond(sock, rec, raw):
                    return
                if b"connection: close" in raw.lower():
                    return
        except (OSError, ValueError):
            return

    def _read_body(
        self, sock: socket.socket, buffer: bytes, length: int, chunked: bool
    ) -> tuple[bytes, bytes]:
        if chunked:
            body = b""
            while True:
                while b"\r\n" not in buffer:
                    buffer += sock.recv(65536)
                size_line, _, buffer = buffer.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                while len(buffer) < size + 2:
                    buffer += sock.recv(65536)
                body += buffer[:size]
                buffer = buffer[size + 2 :]
                if size == 0:
                    return body, buffer
        while len(buffer) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
        return buffer[:length], buffer[length:]

    def _respond(self, sock: socket.socket, rec: RecordedRequest, raw: bytes) -> bool:
        parts = urlsplit(rec.target)
        path = parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if path == "/drop":
            return False
        if path.startswith("/redirect/"):
            n = int(path.rsplit("/", 1)[1])
            location = f"/redirect/{n - 1}" if n > 1 else "/echo"
            self._send(sock, 302, b"moved", {"Location": location})
            return True
        if path == "/redirect-to":
            self._send(sock, 302, b"moved", {"Location": query["url"]})
            return True
        if path.startswith("/status/"):
            self._send(sock, int(path.rsplit("/", 1)[1]), b"status", {})
            return True
        if path == "/slow":
            time.sleep(float(query.get("delay", "1")))
            self._send(sock, 200, raw, {})
            return True
        if path == "/truncated":  # half of the announced body, then close or stall
            if query.get("chunked"):  # one chunk, then: close, stall or a garbage size
                sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                sock.sendall(b"5\r\n12345\r\n")
                if query.get("then") == "garbage":
                    sock.sendall(b"zz\r\n12345\r\n0\r\n\r\n")
            else:
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
            if query.get("then") == "stall":
                time.sleep(float(query.get("delay", "1.5")))
            return False
        if path == "/stream":
            n = int(query.get("chunks", "3"))
            delay = float(query.get("delay", "0.1"))
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            for i in range(n):
                time.sleep(delay)
                data = f"chunk {i}\n".encode()
                sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
            sock.sendall(b"0\r\n\r\n")
            return True
        self._send(sock, 200, raw, {})
        return True

    @staticmethod
    def _send(sock: socket.socket, status: int, body: bytes, headers: dict[str, str]) -> None:
        lines = [
            f"HTTP/1.1 {status} X",
            f"Content-Length: {len(body)}",
            "Content-Type: application/octet-stream",
        ]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: RecordingServer


class RecordingServer:
    """The server plus what it received (``requests``), thread-safe."""

    def __init__(self) -> None:
        self._server = _TCPServer(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[RecordedRequest] = []
        self.stopping = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _record(self, rec: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(rec)

    def received(self, path_prefix: str = "") -> list[RecordedRequest]:
        """Requests so far whose path starts with ``path_prefix``."""
        with self._lock:
            return [r for r in self.requests if r.path.startswith(path_prefix)]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def stop(self) -> None:
        self.stopping = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@contextmanager
def running() -> Iterator[RecordingServer]:
    """A RecordingServer for the duration of the block."""
    server = RecordingServer()
    try:
        yield server
    finally:
        server.stop()
