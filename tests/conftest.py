"""Shared fixtures: every test starts with no initialized client and leaves none behind."""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

import sentry_tracing_mw._client as client_module
from sentry_tracing_mw._context import (
    CURRENT_SPAN,
    PROPAGATION_CONTEXT,
    SUPPRESS_INSTRUMENTATION,
)

from .sentry_server import sentry_server  # noqa: F401  (fixture re-export)

# -- the network fence: tests talk to 127.0.0.1 only -----------------------------------------
# A DSN of a real Sentry host (o42.ingest.sentry.io: its org id is what a test reads) must
# not make the transport look the name up on the network: this process resolves and
# connects to loopback only, and anything else fails at once, as on a machine with no
# network (the servers the tests start are on 127.0.0.1 by construction).

_LOOPBACK_NAMES = frozenset({"", "localhost", "localhost.", "ip6-localhost"})


def _on_loopback(host: Any) -> bool:
    if host is None:
        return True  # (a wildcard: getaddrinfo(None, port) for a bind)
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name.partition("%")[0])
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _fenced_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if not _on_loopback(host):
        raise socket.gaierror(socket.EAI_NONAME, f"{host!r}: the tests stay on 127.0.0.1")
    return _getaddrinfo(host, *args, **kwargs)


def _off_loopback(sock: socket.socket, address: Any) -> bool:
    return (
        sock.family in (socket.AF_INET, socket.AF_INET6)
        and isinstance(address, tuple)
        and not _on_loopback(address[0])
    )


def _fenced_connect(self: socket.socket, address: Any) -> None:
    if _off_loopback(self, address):
        raise OSError(errno.ENETUNREACH, f"{address[0]!r}: the tests stay on 127.0.0.1")
    _connect(self, address)


def _fenced_connect_ex(self: socket.socket, address: Any) -> int:
    if _off_loopback(self, address):
        return errno.ENETUNREACH
    return _connect_ex(self, address)


socket.getaddrinfo = _fenced_getaddrinfo
socket.socket.connect = _fenced_connect  # type: ignore[method-assign, assignment]
socket.socket.connect_ex = _fenced_connect_ex  # type: ignore[method-assign, assignment]


def reset_client() -> None:
    """Close the current client and forget it (as if ``init()`` was never called)."""
    client = client_module._client
    client_module._client = None
    client_module._initialized = False
    client_module._instrumented_by_init = False  # each test decides its own patching
    if client is not None:
        client.close(timeout=0.5)
    client_module._undo_debug_logging()  # what a test's debug=True set up


@pytest.fixture(autouse=True)
def _isolate_client() -> Iterator[None]:
    reset_client()
    yield
    reset_client()
    assert CURRENT_SPAN.get() is None, "a test left a span current"
    PROPAGATION_CONTEXT.set(None)


@pytest.fixture
def no_outgoing_headers() -> Iterator[None]:
    """The test thread's own HTTP calls carry no trace headers (another test may have
    instrumented http.client): use with ``pytest.mark.usefixtures("no_outgoing_headers")``."""
    token = SUPPRESS_INSTRUMENTATION.set(True)
    yield
    SUPPRESS_INSTRUMENTATION.reset(token)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tier (``@pytest.mark.slow``) runs only with ``SENTRY_TRACING_MW_SLOW=1``."""
    import os

    if os.environ.get("SENTRY_TRACING_MW_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow tier: set SENTRY_TRACING_MW_SLOW=1 (tox -e slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
