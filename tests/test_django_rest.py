"""Django REST framework and Django Ninja: exceptions their own handlers answer.

Both answer a view's exception inside the view, so Django never sees it: one answered with a
5xx is still captured once (handled when it was raised on purpose with its status), one
answered with a 4xx is not, and one they re-raise is Django's 500, captured once as before.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

import pytest

if not (importlib.util.find_spec("rest_framework") and importlib.util.find_spec("ninja")):
    pytest.skip("Django REST framework or Django Ninja missing", allow_module_level=True)

from .django_project import setup

setup()

from django.test import AsyncClient, Client  # noqa: E402

import sentry_tracing_mw as stm  # noqa: E402

from .sentry_server import SentryServer, init_traced  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_outgoing_headers")

# path, status, transaction name and status, the event's exception (type, handled) or None
CASES = [
    ("/rest/wrapped/", 500, "/rest/wrapped/", "internal_error", ("RuntimeError", False)),
    ("/rest/items/api-error/", 500, "/rest/items/api-error/", "internal_error", ("APIException", True)),
    ("/rest/unavailable/", 503, "/rest/unavailable/", "unavailable", ("APIException", True)),
    ("/rest/items/invalid/", 400, "/rest/items/invalid/", "invalid_argument", None),
    ("/rest/items/crash/", 500, "/rest/items/crash/", "internal_error", ("RuntimeError", False)),
    ("/ninja/down", 503, "/ninja/down", "unavailable", ("HttpError", True)),
    ("/ninja/teapot", 500, "/ninja/teapot", "internal_error", ("Teapot", False)),
    ("/ninja/gone", 404, "/ninja/gone", "not_found", None),
    ("/ninja/crash", 500, "/ninja/crash", "internal_error", ("RuntimeError", False)),
]  # fmt: skip


def _get(mode: str, path: str) -> int:
    if mode == "sync":
        return Client(raise_request_exception=False).get(path).status_code  # type: ignore[no-any-return]

    async def go() -> int:
        response = await AsyncClient(raise_request_exception=False).get(path)
        return response.status_code  # type: ignore[no-any-return]

    return asyncio.run(go())


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("path", "code", "name", "status", "error"), CASES)
def test_exceptions_answered_by_the_api_framework(
    sentry_server: SentryServer,
    mode: str,
    path: str,
    code: int,
    name: str,
    status: str,
    error: tuple[str, bool] | None,
) -> None:
    init_traced(sentry_server)
    assert _get(mode, path) == code
    assert stm.flush(5)
    assert sentry_server.wait_for(1 if error is None else 2, 5)
    stm.flush(0.3)  # (a second event would have come by now)
    (tx,) = sentry_server.transactions()
    trace = tx["contexts"]["trace"]
    assert (tx["transaction"], trace["status"]) == (name, status)
    assert trace["data"]["http.response.status_code"] == code
    events = sentry_server.events()
    if error is None:
        assert events == []
        return
    (event,) = events
    exc = event["exception"]["values"][-1]
    assert (exc["type"], exc["mechanism"]) == (error[0], {"type": "django", "handled": error[1]})
    assert event["transaction"] == name
    assert event["contexts"]["trace"]["trace_id"] == trace["trace_id"]
    assert event["contexts"]["trace"]["span_id"] == trace["span_id"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_unsampled_requests_still_report_them(sentry_server: SentryServer, mode: str) -> None:
    init_traced(sentry_server, traces_sample_rate=0.0)
    codes = [_get(mode, path) for path in ("/rest/wrapped/", "/ninja/down", "/ninja/gone")]
    assert codes == [500, 503, 404]
    assert stm.flush(5) and sentry_server.wait_for(2, 5)
    stm.flush(0.3)
    assert sentry_server.transactions() == []
    events: list[dict[str, Any]] = sentry_server.events()
    assert sorted((e["transaction"], e["exception"]["values"][-1]["type"]) for e in events) == [
        ("/ninja/down", "HttpError"),
        ("/rest/wrapped/", "RuntimeError"),
    ]
