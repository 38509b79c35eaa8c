"""HTTPS to a real TLS "Sentry" on 127.0.0.1 (certificates made in-process by trustme).

With the default trust store a self-signed Sentry is refused (certificate verification
fails, the event is counted as ``network_error`` and nothing is delivered); with
``init(ca_certs=<the CA's PEM>)`` the same Sentry is trusted and gets a valid envelope; the
host name is still checked against the certificate.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

import sentry_tracing_mw as stm

from .sentry_server import SentryServer, serve_and_validate

StartServer = Callable[..., SentryServer]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_pem(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "sentry-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def start_tls_sentry(ca: trustme.CA) -> Iterator[StartServer]:
    """Start a fake Sentry serving HTTPS with a certificate for ``names`` from ``ca``;
    teardown validates what it received like the ``sentry_server`` fixture."""
    running: list[Iterator[SentryServer]] = []

    def start(*names: str) -> SentryServer:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(*(names or ("127.0.0.1", "localhost"))).configure_cert(context)
        steps = serve_and_validate(SentryServer(ssl_context=context))
        running.append(steps)
        return next(steps)

    yield start
    for steps in running:
        with pytest.raises(StopIteration):
            next(steps)


def send_one(dsn: str, **options: object) -> stm.Client:
    client = stm.init(dsn=dsn, traces_sample_rate=1.0, instrument_http_clients=False, **options)
    with stm.start_transaction("tls", op="task") as tx:
        with tx.start_child("db.query", "SELECT 1"):
            pass
    assert stm.flush(5)  # handled: sent, or dropped and counted
    return client


def assert_refused(
    server: SentryServer, client: stm.Client, caplog: pytest.LogCaptureFixture
) -> None:
    assert server.wait_tls_failures(1)  # the client gave up during the handshake
    assert server.received == []
    assert client.reports.snapshot() == {
        ("network_error", "transaction"): 1,
        ("network_error", "span"): 2,
    }
    warnings = [r.getMessage() for r in caplog.records if r.name == "sentry_tracing_mw"]
    assert any("CERTIFICATE_VERIFY_FAILED" in m for m in warnings), warnings


def test_default_trust_store_refuses_an_unknown_ca(
    start_tls_sentry: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_tls_sentry()
    assert server.dsn.startswith("https://public@127.0.0.1:")
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        client = send_one(server.dsn)
    assert_refused(server, client, caplog)


def test_ca_certs_option_trusts_the_sentry(start_tls_sentry: StartServer, ca_pem: str) -> None:
    server = start_tls_sentry()
    client = send_one(server.dsn, ca_certs=ca_pem)
    stm.capture_exception(RuntimeError("over TLS"))
    assert stm.flush(5)
    assert server.wait_for(2)
    assert server.tls_failures == []
    assert client.reports.snapshot() == {}
    assert len(server.transactions()) == 1 and len(server.events()) == 1
    assert {rec.path for rec in server.received} == {"/api/1/envelope/"}
    assert len({rec.extra["client"] for rec in server.received}) == 1  # kept alive over TLS
    # the envelopes are validated (relay normalizer, shared validator) at teardown


def test_ca_certs_still_checks_the_host_name(
    start_tls_sentry: StartServer, ca_pem: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_tls_sentry("sentry.example")  # trusted CA, another host's certificate
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        client = send_one(server.dsn, ca_certs=ca_pem)
    assert_refused(server, client, caplog)


def test_ca_certs_must_be_a_usable_pem_file(tmp_path: Path) -> None:
    garbage = tmp_path / "not-a-ca.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(stm.ConfigurationError, match=r"ca_certs.*not a usable PEM"):
        stm.init(dsn="https://public@127.0.0.1:9/1", ca_certs=str(garbage))
    with pytest.raises(stm.ConfigurationError, match=r"ca_certs.*no such file"):
        stm.init(dsn="https://public@127.0.0.1:9/1", ca_certs=str(tmp_path / "missing.pem"))


_EMPTY_STORE_PROBE = """
import logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
if sys.argv[1] == "blocked":
    sys.modules["certifi"] = None  # not installed
from sentry_tracing_mw._http import HTTPConnection
conn = HTTPConnection("https", "sentry.example", None, "/api/1/envelope/", {},
                      connect_timeout=1, read_timeout=1)
import sentry_tracing_mw as stm
client = stm.init(dsn="https://public@127.0.0.1:9/1", https_proxy="http://127.0.0.1:9")
pool = client.transport._make_pool()
print("POOL", "ssl_context" in pool.connection_pool_kw)
client = stm.init(dsn="https://public@127.0.0.1:9/1", https_proxy="https://127.0.0.1:9")
print("TLSPROXY", client.transport._make_pool().proxy_ssl_context is not None)
print("CA", conn._context.cert_store_stats()["x509_ca"])
"""


def _trust_store_probe(tmp_path: Path, cert_dir: Path, certifi_state: str) -> tuple[int, str]:
    """The CA certificates of our TLS context in a process whose OpenSSL default store
    is an empty file and ``cert_dir``; and what it logged."""
    import os
    import subprocess
    import sys

    empty = tmp_path / "empty.pem"
    empty.write_text("")
    env = dict(os.environ, SSL_CERT_FILE=str(empty), SSL_CERT_DIR=str(cert_dir))
    out = subprocess.run(
        [sys.executable, "-c", _EMPTY_STORE_PROBE, certifi_state],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return int(out.rpartition("CA ")[2]), out


@pytest.mark.parametrize("link", ["file", "dangling"])
def test_a_hashed_ca_directory_is_a_trust_store(tmp_path: Path, ca: trustme.CA, link: str) -> None:
    # OpenSSL loads a CA directory's certificates lazily: the store counts none, yet it
    # verifies: no certifi added, no warning that verification will fail. Hashed names
    # whose links point nowhere (a copied /etc/ssl/certs without its targets) are none.
    certs = tmp_path / "certs"
    certs.mkdir()
    if link == "file":
        ca.cert_pem.write_to_path(str(certs / "1a2b3c4d.0"))
    else:
        (certs / "1a2b3c4d.0").symlink_to(tmp_path / "gone.pem")
    count, out = _trust_store_probe(tmp_path, certs, "installed")
    if link == "file":
        assert count == 0, out  # certifi not added: the directory verifies
    else:
        assert count > 50, out  # certifi's bundle: the directory holds nothing


@pytest.mark.parametrize("certifi_state", ["installed", "blocked"])
def test_an_empty_system_trust_store_falls_back_to_certifi(
    tmp_path: Path, certifi_state: str
) -> None:
    # A slim container image with no CA package: the system store is empty (here: the
    # OpenSSL default locations pointed at an empty file and directory). sentry-sdk works
    # there (it always uses certifi's bundle); so must we, when certifi is installed.
    no_certs = tmp_path / "certs"
    no_certs.mkdir()
    (no_certs / "README").write_text("not a certificate")
    count, out = _trust_store_probe(tmp_path, no_certs, certifi_state)
    if certifi_state == "installed":
        assert count > 50, out
        assert "no CA certificates" not in out
        assert "POOL True" in out  # the proxy pool verifies with certifi's bundle too
        assert "TLSPROXY True" in out  # and a TLS proxy (urllib3 1.26 and 2 read this)
    else:
        assert count == 0, out
        assert "no CA certificates in the system trust store" in out


def test_https_proxy_signed_by_the_ca_certs_ca(
    start_tls_sentry: StartServer, ca: trustme.CA, ca_pem: str
) -> None:
    # A TLS proxy (https_proxy="https://...") whose certificate the private CA of
    # ca_certs signed: urllib3 verifies the proxy with the pool's ca_certs (sentry-sdk
    # passes it too), so the envelope goes through the tunnel to the HTTPS Sentry.
    import select
    import socket
    import threading

    server = start_tls_sentry()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    listener = socket.create_server(("127.0.0.1", 0))
    connects: list[str] = []

    def tunnel(raw: socket.socket) -> None:
        try:
            with context.wrap_socket(raw, server_side=True) as conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                line = head.split(b"\r\n")[0].decode()
                connects.append(line)
                host, _, port = line.split()[1].rpartition(":")
                with socket.create_connection((host, int(port)), timeout=5) as up:
                    conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    while True:
                        ready, _, _ = select.select([conn, up], [], [], 5)
                        if not ready:
                            return
                        for sock in ready:
                            data = sock.recv(65536)
                            if not data:
                                return
                            (up if sock is conn else conn).sendall(data)
        except OSError:
            pass

    def accept() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=tunnel, args=(raw,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        proxy = f"https://127.0.0.1:{listener.getsockname()[1]}"
        client = send_one(server.dsn, ca_certs=ca_pem, https_proxy=proxy)
        assert server.wait_for(1)
    finally:
        listener.close()
    assert connects and connects[0].startswith("CONNECT 127.0.0.1:")
    assert client.reports.snapshot() == {}
    assert len(server.transactions()) == 1


def test_a_tls_proxy_is_verified_with_ca_certs_whatever_the_dsn_scheme(ca_pem: str) -> None:
    # A TLS proxy (https_proxy="https://...") must trust the ca_certs CA for an http DSN
    # too (as sentry-sdk does): urllib3 1.26 verifies the proxy with the pool's ca_certs,
    # 2.x a proxy it forwards plain HTTP through with proxy_ssl_context.
    def subjects(context: ssl.SSLContext) -> set[str]:
        return {repr(cert["subject"]) for cert in context.get_ca_certs()}

    expected = subjects(ssl.create_default_context(cafile=ca_pem))
    for scheme in ("http", "https"):
        client = stm.init(
            dsn=f"{scheme}://public@127.0.0.1:9/1",
            https_proxy="https://127.0.0.1:9",
            http_proxy="https://127.0.0.1:9",
            ca_certs=ca_pem,
        )
        assert client.transport is not None
        pool = client.transport._make_pool()
        assert pool.connection_pool_kw["ca_certs"] == ca_pem, scheme
        context = pool.proxy_ssl_context  # type: ignore[attr-defined]
        if scheme == "http":
            assert context is not None and expected and expected <= subjects(context)
        else:  # a CONNECT tunnel: the pool's ca_certs verify the proxy (1.26 and 2.x)
            assert context is None


def test_the_proxy_pool_keeps_urllib3s_defaults_with_a_system_store() -> None:
    # No ca_certs and a system store with certificates: urllib3 verifies with its own
    # default context (an own context with check_hostname failed urllib3 1.26 on an IP).
    client = stm.init(dsn="https://public@127.0.0.1:9/1", https_proxy="http://127.0.0.1:9")
    assert client.transport is not None
    pool = client.transport._make_pool()
    assert "ssl_context" not in pool.connection_pool_kw
    assert pool.connection_pool_kw["cert_reqs"] == "CERT_REQUIRED"
