"""init() side effects: HTTP-client instrumentation, the uWSGI warning, debug logging."""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Iterator

import pytest

import sentry_tracing_mw as stm
from sentry_tracing_mw.integrations import http_clients


@pytest.fixture
def restore_instrumentation() -> Iterator[None]:
    was = http_clients.is_instrumented()
    yield
    if was:
        http_clients.instrument()
    else:
        http_clients.uninstrument()


@pytest.mark.usefixtures("restore_instrumentation")
def test_init_installs_http_client_instrumentation_by_default() -> None:
    http_clients.uninstrument()
    stm.init(instrument_http_clients=False)
    assert not http_clients.is_instrumented()
    stm.init()
    assert http_clients.is_instrumented()


@pytest.mark.parametrize(
    ("opt", "warned"),
    [
        ({}, True),
        ({"enable-threads": True}, False),
        ({"threads": b"4"}, False),
        ({"enable-threads": b"0"}, True),
    ],
)
def test_uwsgi_without_threads_logs_a_clear_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, opt: dict[str, object],
    warned: bool,
) -> None:
    fake = types.ModuleType("uwsgi")
    fake.opt = opt  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgi", fake)
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        stm.init(dsn="http://key@127.0.0.1:9/1", instrument_http_clients=False)
    messages = [r.getMessage() for r in caplog.records if r.name == "sentry_tracing_mw"]
    assert any("--enable-threads" in m for m in messages) is warned


def test_no_uwsgi_warning_without_a_dsn(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = types.ModuleType("uwsgi")
    fake.opt = {}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgi", fake)
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        stm.init(instrument_http_clients=False)
    assert not [r for r in caplog.records if "--enable-threads" in r.getMessage()]


def test_debug_option_logs_to_the_package_logger(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("sentry_tracing_mw")
    level = logger.level
    try:
        with caplog.at_level(logging.DEBUG, logger="sentry_tracing_mw"):
            stm.init(
                dsn="http://public:very-secret@127.0.0.1:9/1", debug=True,
                instrument_http_clients=False,
            )
            assert logger.level == logging.DEBUG
        assert any("initialized" in r.getMessage() for r in caplog.records)
        assert not any("very-secret" in r.getMessage() for r in caplog.records)
    finally:
        logger.setLevel(level)
