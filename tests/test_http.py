"""The transport's minimal HTTP/1.1 client against scripted raw-socket servers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from sentry_tracing_mw._http import HTTPConnection, ProtocolError, StaleConnectionError

HEADERS = {"X-Sentry-Auth": "Sentry sentry_key=k", "Content-Type": "application/x-sentry-envelope"}


@contextmanager
def scripted(
    handler: Callable[[socket.socket, list[bytes]], None],
) -> Iterator[tuple[int, list[bytes]]]:
    """A one-thread server on 127.0.0.1: ``handler(conn, requests)`` per connection."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.05)  # close() does not wake a blocking accept(): poll a flag
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    handler(conn, received)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], received
    finally:
        stop.set()
        thread.join(5)
        server.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(rest) < length:
        rest += conn.recv(65536)
    return head + b"\r\n\r\n" + rest


def connection(port: int) -> HTTPConnection:
    return HTTPConnection(
        "http", "127.0.0.1", port, "/api/1/envelope/", HEADERS, connect_timeout=2, read_timeout=2
    )


def test_request_shape_and_keep_alive() -> None:
    def handler(conn: socket.socket, received: list[bytes]) -> None:
        for _ in range(3):
            received.append(read_request(conn))
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Sentry-Rate-Limits: 60:transaction:key\r\n\r\n{}"
            )

    with scripted(handler) as (port, received):
        conn = connection(port)
        for i in range(3):
            status, headers = conn.post(b"body-%d" % i)
            assert status == 200 and headers["x-sentry-rate-limits"] == "60:transaction:key"
        conn.close()
    assert len(received) == 3  # one connection, three requests
    head = received[0].split(b"\r\n")
    assert head[0] == b"POST /api/1/envelope/ HTTP/1.1"
    assert f"Host: 127.0.0.1:{port}".encode() in head
    assert b"X-Sentry-Auth: Sentry sentry_key=k" in head and b"Content-Length: 6" in head
    assert received[2].endswith(b"\r\n\r\nbody-2")


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_response_framings_keep_the_connection(response: bytes) -> None:
    def handler(conn: socket.socket, received: list[bytes]) -> None:
        for _ in range(2):
            received.append(read_request(conn))
            conn.sendall(response)

    with scripted(handler) as (port, received):
        conn = connection(port)
        first = conn.post(b"a")
        second = conn.post(b"b")
    assert first == second
    assert len(received) == 2


def test_read_to_close_and_http10_close_the_connection() -> None:
    def handler(conn: socket.socket, received: list[bytes]) -> None:
        received.append(read_request(conn))
        conn.sendall(b"HTTP/1.0 500 Oops\r\n\r\nsome body")

    with scripted(handler) as (port, received):
        conn = connection(port)
        status, headers = conn.post(b"a")
        assert status == 500 and headers["connection"] == "close"
        assert conn.post(b"b")[0] == 500  # reconnects by itself
    assert len(received) == 2


def test_idle_connection_closed_or_reset_by_the_server_is_replaced_before_sending() -> None:
    # A keep-alive connection the server (or a load balancer) closed (FIN) or reset (RST)
    # while idle is seen before the next request is written: that one goes out on a new
    # connection, nothing is sent twice and nothing fails.
    import struct
    import time

    def handler(conn: socket.socket, received: list[bytes]) -> None:
        received.append(read_request(conn))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        if len(received) == 2:  # the second connection is reset rather than closed
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    with scripted(handler) as (port, received):
        conn = connection(port)
        for body in (b"a", b"b", b"c"):
            assert conn.post(body)[0] == 200
            time.sleep(0.2)  # the server has dropped the idle connection
    assert [r.rsplit(b"\r\n\r\n", 1)[1] for r in received] == [b"a", b"b", b"c"]


@pytest.mark.parametrize("how", ["close", "reset", "reset-mid-response"])
def test_reused_connection_failing_before_the_response_is_retryable(how: str) -> None:
    # The server drops the connection right after reading the next request (the close
    # raced the send): retryable while no response byte came; a reset in the middle of a
    # response is not (the request was processed: sending it again would duplicate it).
    import struct

    def handler(conn: socket.socket, received: list[bytes]) -> None:
        received.append(read_request(conn))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        received.append(read_request(conn))
        if how == "reset-mid-response":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Le")
        if how != "close":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    with scripted(handler) as (port, received):
        conn = connection(port)
        assert conn.post(b"a")[0] == 200
        expected = ConnectionResetError if how == "reset-mid-response" else StaleConnectionError
        with pytest.raises(expected):
            conn.post(b"b")
    assert len(received) == 2


def test_transport_retries_once_on_a_reset_idle_connection() -> None:
    import struct
    import time

    import sentry_tracing_mw as stm

    def handler(conn: socket.socket, received: list[bytes]) -> None:
        received.append(read_request(conn))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        time.sleep(0.05)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    with scripted(handler) as (port, received):
        client = stm.init(
            dsn=f"http://k@127.0.0.1:{port}/1",
            traces_sample_rate=1.0,
            instrument_http_clients=False,
            send_client_reports=False,
        )
        for i in range(4):
            with stm.start_transaction(f"t{i}"):
                pass
            assert stm.flush(5)
            time.sleep(0.3)  # each send finds the previous connection reset
        assert client.reports.snapshot() == {}
        assert len(received) == 4
        stm.close()


@pytest.mark.parametrize(
    "response",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 200 + b"\r\n",
        b"",
    ],
)
def test_malformed_responses_raise_oserror_and_close(response: bytes) -> None:
    def handler(conn: socket.socket, received: list[bytes]) -> None:
        received.append(read_request(conn))
        conn.sendall(response)
        conn.shutdown(socket.SHUT_WR)

    with scripted(handler) as (port, _):
        conn = connection(port)
        with pytest.raises(OSError):
            conn.post(b"a")
        assert conn._sock is None
    assert issubclass(ProtocolError, OSError)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2097152\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n200000\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",  # read to close
    ],
)
def test_a_body_over_the_limit_is_left_unread_and_the_status_counts(head: bytes) -> None:
    """The status is what the transport needs: a delivered envelope whose answer has a
    huge body (a proxy's error page, a misconfigured server) is delivered; the connection
    is closed rather than read to its end."""

    def handler(conn: socket.socket, received: list[bytes]) -> None:
        received.append(read_request(conn))
        conn.sendall(head + b"x" * (2 << 20))

    with scripted(handler) as (port, received):
        conn = connection(port)
        status, headers = conn.post(b"a")
        assert status == 200 and headers["connection"] == "close"
        assert conn._sock is None
        assert conn.post(b"b")[0] == 200  # a new connection
    assert len(received) == 2


def test_refused_and_timeout_raise_oserror() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError):
        connection(port).post(b"a")

    def silent(conn: socket.socket, received: list[bytes]) -> None:
        received.append(read_request(conn))
        import time

        time.sleep(3)

    with scripted(silent) as (port, _):
        conn = HTTPConnection(
            "http", "127.0.0.1", port, "/", HEADERS, connect_timeout=1, read_timeout=0.3
        )
        with pytest.raises(OSError):
            conn.post(b"a")


def test_idle_check_works_for_descriptors_above_select_limit() -> None:
    # A busy server process has thousands of open descriptors: the idle-connection check
    # must not take every high-numbered keep-alive socket for a dropped one (select()
    # refuses descriptors >= 1024), which would reconnect for every envelope.
    import os
    import resource

    from sentry_tracing_mw._http import _dropped

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= 1600:
        if hard != resource.RLIM_INFINITY and hard <= 1600:
            pytest.skip(f"descriptor limit {hard} is below the 1500 this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1601, hard))
    a, b = socket.socketpair()
    high = os.dup2(a.fileno(), 1500)
    sock = socket.socket(fileno=high)
    try:
        assert not _dropped(sock)  # idle and open
        b.close()
        assert _dropped(sock)  # the other side went away
    finally:
        sock.close()
        a.close()
