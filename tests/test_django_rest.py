"""Django REST framework and Django Ninja: exceptions their own handlers answer.

Both answer a view's exception inside the view, so Django never sees it: one answered with a
5xx is still captured once (handled when it was raised on purpose with its status), one
answered with a 4xx is not, and one they re-raise is Django's 500, captured once as before.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from typing import Any

import pytest

if not (importlib.util.find_spec("rest_framework") and importlib.util.find_spec("ninja")):
    pytest.skip("Django REST framework or Django Ninja missing", allow_module_level=True)

from .django_project import setup

setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.test import AsyncClient, Client  # noqa: E402
from werkzeug.test import Client as WSGIClient  # noqa: E402

import sentry_tracing_mw as stm  # noqa: E402
from sentry_tracing_mw.integrations import django as django_integration  # noqa: E402
from sentry_tracing_mw.integrations import wsgi as generic_wsgi  # noqa: E402

from .sentry_server import SentryServer, init_traced  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_outgoing_headers")
layers = django_integration._API_LAYERS  # DRF and Ninja, hooked once imported

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


def _get(mode: str, path: str, method: str = "get") -> int:
    if mode == "sync":
        client = Client(raise_request_exception=False)
        return getattr(client, method)(path).status_code  # type: ignore[no-any-return]

    async def go() -> int:
        response = await getattr(AsyncClient(raise_request_exception=False), method)(path)
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


def _errors(server: SentryServer, n: int) -> list[tuple[str, bool]]:
    """The ``n`` error events' (exception type, handled), once nothing more comes."""
    assert stm.flush(5) and server.wait_for(n, 5)
    stm.flush(0.3)
    return sorted(
        (e["exception"]["values"][-1]["type"], e["exception"]["values"][-1]["mechanism"]["handled"])
        for e in server.events()
    )


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_method_that_is_not_traced_still_reports_them(
    sentry_server: SentryServer, mode: str
) -> None:
    init_traced(sentry_server)
    assert _get(mode, "/rest/wrapped/", "head") == 500
    assert _get(mode, "/rest/items/api-error/", "head") == 500
    assert _errors(sentry_server, 2) == [("APIException", True), ("RuntimeError", False)]
    assert sentry_server.transactions() == []


def test_under_an_outer_generic_middleware_they_are_reported(sentry_server: SentryServer) -> None:
    """The outer middleware owns the transaction; Django's only names it, and still
    reports what DRF answered."""
    init_traced(sentry_server)
    client = WSGIClient(generic_wsgi.TracingMiddleware(get_wsgi_application()))
    response = client.get("/rest/wrapped/")
    assert response.status_code == 500
    response.get_data()
    response.close()  # (the body sent: the transaction ends)
    assert _errors(sentry_server, 2) == [("RuntimeError", False)]
    (tx,) = sentry_server.transactions()
    assert tx["transaction"] == "/rest/wrapped/"
    assert tx["contexts"]["trace"]["status"] == "internal_error"
    (event,) = sentry_server.events()
    assert event["contexts"]["trace"]["span_id"] == tx["contexts"]["trace"]["span_id"]


@pytest.mark.parametrize("method", ["get", "head"])
def test_an_answered_exception_the_view_recovered_from_is_not_sent(
    sentry_server: SentryServer, method: str
) -> None:
    """The view called another that DRF answered with a 500, then failed itself: one
    event, the request's own error; or recovered (a 200): none. A method that is not
    traced (HEAD) decides the same way."""
    init_traced(sentry_server)
    assert _get("sync", "/rest/outer-raises/", method) == 500
    assert _get("sync", "/rest/outer-recovers/", method) == 200
    traced = method == "get"
    assert _errors(sentry_server, 3 if traced else 1) == [("RuntimeError", False)]
    assert len(sentry_server.transactions()) == (2 if traced else 0)


def test_a_framework_imported_after_the_first_request_is_hooked(
    sentry_server: SentryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DRF and Ninja imported late (a view importing them lazily, a per-request URLconf):
    the middleware looks again before a view runs once modules were imported since."""
    from rest_framework.views import APIView

    init_traced(sentry_server)
    client = Client(raise_request_exception=False)
    assert client.get("/rest/items/").status_code == 200  # the middleware is built
    hooked = APIView.__dict__["handle_exception"]
    monkeypatch.setattr(APIView, "handle_exception", hooked.__wrapped__)  # as before the hook
    monkeypatch.setattr(layers, "_done", set())
    # not looked for: the request is not reported (the hook is really gone)
    monkeypatch.setattr(layers, "seen", -1)
    assert client.get("/rest/wrapped/").status_code == 500
    assert stm.flush(5) and sentry_server.wait_for(2, 5)
    stm.flush(0.3)
    assert sentry_server.events() == []
    # a module imported since the last look: hooked before the view runs
    monkeypatch.setattr(layers, "seen", len(sys.modules) - 1)
    assert client.get("/rest/wrapped/").status_code == 500
    assert APIView.__dict__["handle_exception"].__wrapped__ is hooked.__wrapped__
    assert _errors(sentry_server, 4) == [("RuntimeError", False)]
    assert layers.seen == -1  # all hooked: no more looking


def test_a_framework_half_imported_at_a_look_is_looked_at_again(
    sentry_server: SentryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another thread importing Ninja when a request looks: its module is in sys.modules
    without its classes yet; the next view looks again (it is not given up)."""
    import types

    from ninja import NinjaAPI

    init_traced(sentry_server)
    client = Client(raise_request_exception=False)
    assert client.get("/rest/items/").status_code == 200  # the middleware is built
    hooked = NinjaAPI.__dict__["on_exception"]
    monkeypatch.setattr(NinjaAPI, "on_exception", hooked.__wrapped__)  # as before the hook
    monkeypatch.setattr(layers, "_done", {"rest_framework.views"})
    real = sys.modules["ninja.main"]
    monkeypatch.setitem(sys.modules, "ninja.main", types.ModuleType("ninja.main"))  # half
    layers.look()
    assert layers.seen == 0  # to be looked at again
    assert "ninja.main" not in layers._done
    monkeypatch.setitem(sys.modules, "ninja.main", real)  # its import finished
    assert client.get("/ninja/down").status_code == 503
    assert NinjaAPI.__dict__["on_exception"].__wrapped__ is hooked.__wrapped__
    assert _errors(sentry_server, 3) == [("HttpError", True)]
    assert layers.seen == -1
