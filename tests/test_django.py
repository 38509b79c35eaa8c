"""Django integration through Django's test clients (sync and async) and the real local Sentry."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest

from .django_project import create_tables, setup

setup()

from django.conf import settings  # noqa: E402
from django.core.exceptions import PermissionDenied  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.test import AsyncClient, Client, override_settings  # noqa: E402

import sentry_tracing_mw as stm  # noqa: E402
from sentry_tracing_mw._context import PROPAGATION_CONTEXT  # noqa: E402
from sentry_tracing_mw.integrations.django import TracingMiddleware  # noqa: E402
from sentry_tracing_mw.integrations.django._naming import route_to_name  # noqa: E402

from .sdk_peer import run_sdk_script  # noqa: E402
from .sentry_server import SentryServer, flushed_transactions, init_traced  # noqa: E402

TRACE_ID = "771a43a4192642f0b136d5159a501700"
PARENT_ID = "b7ad6b7169203331"
ROOT = Path(__file__).resolve().parent.parent

# path -> expected route name (source "route")
NAME_TABLE = [
    ("/", "/"),
    ("/users/3/", "/users/{pk}/"),
    ("/users/3/posts/6ba7b810-9dad-11d1-80b4-00c04fd430c8/", "/users/{pk}/posts/{post}/"),
    ("/articles/2020/", "/articles/{year}/"),
    ("/articles/2020/02/", "/articles/{year}/{month}/"),
    ("/unnamed/12/", "/unnamed/{var}/"),
    ("/optional/", "/optional/page-{page}/"),
    ("/optional/page-3/", "/optional/page-{page}/"),
    ("/slash/", "/slash/"),
    ("/api/v1/items/abc/", "/api/v1/items/{slug}/"),
    ("/api/v1/legacy/ABC/", "/api/v1/legacy/{code}/"),
    ("/reapi/v1/items/abc/", "/reapi/{version}/items/{slug}/"),
    ("/reapi/v2/legacy/XYZ/", "/reapi/{version}/legacy/{code}/"),
    ("/outer/4/inner/leaf/5/", "/outer/{org}/inner/leaf/{leaf_id}/"),
    ("/cbv/3/", "/cbv/{pk}/"),
    ("/en/shop/socks/", "/en/shop/{slug}/"),
    ("/de/shop/socken/", "/de/shop/{slug}/"),
    ("/missing/7/", "/missing/{pk}/"),
    ("/c++/5/", "/c++/{pk}/"),
    ("/wiki/(main)/ab/", "/wiki/(main)/{s}/"),
    ("/price$/", "/price$/"),
    ("/opt[1]/", "/opt[1]/"),
    ("/star*/", "/star*/"),
    ("/mixed/12/a+b/3/", "/mixed/{v}/a+b/{n}/"),
    ("/twice/4/4/", "/twice/{a}/{var}/"),
    ("/hex/0badc0de/", "/hex/[a-f0-9]{8}/"),
    ("/doc/3/edit/", "/doc/{pk}/edit|view/"),
    # Django REST framework's router and Django Ninja (tests/django_project/api_views.py)
    ("/rest/", "/rest/"),
    ("/rest/items/", "/rest/items/"),
    ("/rest/items/7/", "/rest/items/{pk}/"),
    ("/rest/items/7.json", "/rest/items/{pk}.{format}/"),
    ("/ninja/things/5", "/ninja/things/{thing_id}"),
]
# Routes sentry-sdk names wrongly (so no parity is expected): it drops the trailing slash
# after an optional group, caches names per pattern object (an include() list used under two
# prefixes, or an i18n prefix, gets the first name it saw forever).
SDK_WRONG = {
    "/optional/",
    "/optional/page-3/",
    "/reapi/v1/items/abc/",
    "/reapi/v2/legacy/XYZ/",
    "/de/shop/socken/",
}


@pytest.fixture(scope="module", autouse=True)
def _tables() -> None:
    create_tables()


pytestmark = pytest.mark.usefixtures("no_outgoing_headers")  # the test thread's own calls


def _client() -> Client:
    return Client(raise_request_exception=False)


def _trace(tx: dict[str, Any]) -> dict[str, Any]:
    return tx["contexts"]["trace"]  # type: ignore[no-any-return]


def _duration(tx: dict[str, Any]) -> float:
    return float(tx["timestamp"]) - float(tx["start_timestamp"])


# -- naming -------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "expected"), NAME_TABLE)
def test_route_names(sentry_server: SentryServer, path: str, expected: str) -> None:
    init_traced(sentry_server)
    response = _client().get(path)
    assert response.status_code in (200, 404)
    (tx,) = flushed_transactions(sentry_server, 1)
    assert tx["transaction"] == expected
    assert tx["transaction_info"] == {"source": "route"}
    trace = _trace(tx)
    assert trace["op"] == "http.server"
    assert trace["origin"] == "auto.http.django"
    code = response.status_code
    assert trace["status"] == ("ok" if code == 200 else "not_found")
    assert trace["data"]["http.response.status_code"] == code
    assert tx["tags"]["http.status_code"] == str(code)


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ("", "/"),
        (r"^a/(?P<x>(?:foo|bar))/(?P<y>\d+)/$", "/a/{x}/{y}/"),
        (r"^a/(\d+)/(\w+)/$", "/a/{var}/{var}/"),
        (r"^a/(?:(?P<n>\d+)/)?$", "/a/{n}/"),
        # plain classes and alternations keep their text, as sentry-sdk keeps it
        (r"^a/(?:x|y)/b/$", "/a/x|y/b/"),
        (r"^a/(?:x\.y|z)?/$", "/a/x.y|z/"),
        (r"^a/[0-9]+/b\.json$", "/a/[0-9]+/b.json"),
        (r"^a/[a-f0-9]{32}/[0-9]?/$", "/a/[a-f0-9]{32}/[0-9]/"),
        # what sentry-sdk garbles ("d+", "[/]+", "[-w]+", "{var}{s}") is a variable part
        (r"^a/\d+/[^/]+/[-\w]+/$", "/a/{var}/{var}/{var}/"),
        (r"^a/(?:v\d+/)?(?!admin)(?P<s>\w+)/$", "/a/v{var}/{s}/"),
        (r"^a/(?:x|[0-9]+)/$", "/a/{var}/"),
        (r"^a/(?i:edit|view)/$", "/a/{var}/"),
        (r"^(?i)caps/(?=x)x/$", "/caps/x/"),
        (r"\Astrict/\Z", "/strict/"),
        ("en/items/<slug:slug>/<path:rest>", "/en/items/{slug}/{rest}"),
        (r"^v(?P<v>[12])/" + "things/<int:pk>/", "/v{v}/things/{pk}/"),
        ("a//b/", "/a/b/"),
        (r"^a/(?P<x>[^/)]+)/$", "/a/{x}/"),
    ],
)
def test_route_conversion(route: str, expected: str) -> None:
    assert route_to_name(route) == expected


def test_endpoint_style(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    with override_settings(SENTRY_TRANSACTION_STYLE="endpoint"):
        client = _client()
        client.get("/users/3/")
        client.get("/cbv/3/")
        client.get("/nope/")
    txs = flushed_transactions(sentry_server, 3)
    names = [(t["transaction"], t["transaction_info"]["source"]) for t in txs]
    assert names == [
        ("tests.django_project.views.ok", "component"),
        ("tests.django_project.views.UserView", "component"),
        ("GET 404", "route"),
    ]


def test_unmatched_requests_get_method_and_status(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    client = _client()
    assert client.get("/no/such/page").status_code == 404
    assert client.post("/no/such/page").status_code == 404
    assert client.post("/only-get/").status_code == 405  # matched route, view says 405
    assert client.get("/users/3").status_code == 301  # APPEND_SLASH redirect, no route
    txs = flushed_transactions(sentry_server, 4)
    got = [(t["transaction"], t["transaction_info"]["source"], _trace(t)["status"]) for t in txs]
    assert got == [
        ("GET 404", "route", "not_found"),
        ("POST 404", "route", "not_found"),
        ("/only-get/", "route", "invalid_argument"),
        ("GET 301", "route", "ok"),
    ]
    assert all("/no/such" not in t["transaction"] for t in txs)


def test_name_set_before_the_view_runs(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    seen: list[str] = []

    from django.urls import path

    def view(request: Any, pk: int) -> Any:
        from django.http import HttpResponse

        span = stm.get_current_span()
        assert span is not None and span.containing_transaction is not None
        seen.append(span.containing_transaction.name)
        return HttpResponse("ok")

    with override_settings(ROOT_URLCONF=(path("early/<int:pk>/", view),)):
        _client().get("/early/1/")
    assert seen == ["/early/{pk}/"]
    (tx,) = flushed_transactions(sentry_server, 1)
    assert tx["transaction"] == "/early/{pk}/"


# -- traces, sampling, methods ------------------------------------------------------------


def test_continues_incoming_trace(sentry_server: SentryServer) -> None:
    init_traced(sentry_server, traces_sample_rate=0.0)
    _client().get(
        "/users/1/",
        HTTP_SENTRY_TRACE=f"{TRACE_ID}-{PARENT_ID}-1",
        HTTP_BAGGAGE=f"sentry-trace_id={TRACE_ID},sentry-sample_rate=0.5,"
        "sentry-sample_rand=0.25,sentry-environment=upstream,sentry-sampled=true,"
        "sentry-public_key=public",
    )
    (tx,) = flushed_transactions(sentry_server, 1)
    trace = _trace(tx)
    assert trace["trace_id"] == TRACE_ID
    assert trace["parent_span_id"] == PARENT_ID
    env = sentry_server.envelopes()[0]
    assert env.headers["trace"]["environment"] == "upstream"  # frozen upstream DSC


def test_traceparent_fallback(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    # flags 00 means "deferred" (protocol §9): our own rate decides; the trace continues
    _client().get("/users/1/", HTTP_TRACEPARENT=f"00-{TRACE_ID}-{PARENT_ID}-00")
    _client().get("/users/2/", HTTP_TRACEPARENT=f"00-{TRACE_ID}-{PARENT_ID}-01")
    txs = flushed_transactions(sentry_server, 2)
    assert [_trace(t)["trace_id"] for t in txs] == [TRACE_ID, TRACE_ID]
    assert [_trace(t)["parent_span_id"] for t in txs] == [PARENT_ID, PARENT_ID]


def test_negative_upstream_decision_is_inherited(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    _client().get("/users/1/", HTTP_SENTRY_TRACE=f"{TRACE_ID}-{PARENT_ID}-0")
    assert stm.flush(5)
    assert sentry_server.transactions() == []


def test_untraced_methods_get_their_own_trace(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    client = _client()
    first = client.head("/trace-header/")["X-Sentry-Trace"]
    second = client.options("/trace-header/")["X-Sentry-Trace"]
    third = client.get("/trace-header/")["X-Sentry-Trace"]
    ids = {h.split("-")[0] for h in (first, second, third)}
    assert len(ids) == 3
    (tx,) = flushed_transactions(sentry_server, 1)
    assert _trace(tx)["trace_id"] == third.split("-")[0]
    continued = client.head("/trace-header/", HTTP_SENTRY_TRACE=f"{TRACE_ID}-{PARENT_ID}-1")
    assert continued["X-Sentry-Trace"].startswith(TRACE_ID + "-")


def test_http_methods_to_capture_and_ignore_paths(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    with override_settings(
        SENTRY_HTTP_METHODS_TO_CAPTURE=["POST"], SENTRY_IGNORE_PATHS=["/health/", "/api/*"]
    ):
        client = _client()
        client.get("/users/1/")
        client.post("/health/")
        client.post("/api/v1/items/x/")
        client.post("/users/2/")
    (tx,) = flushed_transactions(sentry_server, 1)
    assert tx["transaction"] == "/users/{pk}/"
    assert tx["request"]["method"] == "POST"


def test_an_ignored_path_that_reads_the_trace_still_reports_nothing(
    sentry_server: SentryServer,
) -> None:
    # The meta tags (or get_trace_headers()) on an ignored page start a trace of that
    # request only: its error is still no event (sync and async views and clients).
    init_traced(sentry_server)

    async def via_async_client() -> list[int]:
        client = AsyncClient(raise_request_exception=False)
        return [(await client.get(path)).status_code for path in ("/meta-error/", "/ameta-error/")]

    with override_settings(SENTRY_IGNORE_PATHS=["/meta-error/", "/ameta-error/"]):
        client = _client()
        assert client.get("/meta-error/").status_code == 500
        assert client.get("/ameta-error/").status_code == 500
        assert asyncio.run(via_async_client()) == [500, 500]
    assert stm.flush(5)
    time.sleep(0.2)
    assert sentry_server.events() == [] and sentry_server.transactions() == []


def test_traces_sampler_gets_environ_and_route(sentry_server: SentryServer) -> None:
    seen: list[tuple[Any, Any]] = []

    def sampler(ctx: Any) -> float:
        seen.append((ctx.get("route"), ctx["wsgi_environ"]["PATH_INFO"]))
        return 1.0 if ctx.get("route") == "/users/{pk}/" else 0.0

    init_traced(sentry_server, traces_sample_rate=None, traces_sampler=sampler)
    client = _client()
    client.get("/users/1/")
    client.get("/articles/2020/")
    client.get("/nope/")
    client.get("/de/shop/x/")  # another language than the active one: resolved in it
    (tx,) = flushed_transactions(sentry_server, 1)
    assert tx["transaction"] == "/users/{pk}/"
    assert seen == [
        ("/users/{pk}/", "/users/1/"),
        ("/articles/{year}/", "/articles/2020/"),
        (None, "/nope/"),
        ("/de/shop/{slug}/", "/de/shop/x/"),
    ]
    seen.clear()
    with override_settings(SENTRY_TRANSACTION_STYLE="endpoint"):
        _client().get("/users/1/")  # the route template, whatever the name style
    assert seen == [("/users/{pk}/", "/users/1/")]


class _RaisingMiddleware:
    """A middleware after ours that fails before Django resolves the URL."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        if request.path_info != "/nope/" and "boom" in request.GET:
            raise RuntimeError("middleware boom")
        if "boom" in request.GET:
            raise KeyError("unrouted boom")
        return self.get_response(request)


@pytest.mark.parametrize("rate", [1.0, 0.0])
def test_error_before_url_resolution_is_named_like_its_transaction(
    sentry_server: SentryServer, rate: float
) -> None:
    """The error event of a request a later middleware failed carries the route name (as
    sentry-sdk's does), not the raw path; an unrouted one gets "GET 500"."""
    init_traced(sentry_server, traces_sample_rate=rate)
    middleware = [*settings.MIDDLEWARE, f"{__name__}._RaisingMiddleware"]
    with override_settings(MIDDLEWARE=middleware):
        client = _client()
        assert client.get("/users/3/?boom=1").status_code == 500
        assert client.get("/nope/?boom=1").status_code == 500
    assert stm.flush(5)
    assert sentry_server.wait_for(4 if rate else 2, 5)
    errors = {e["exception"]["values"][-1]["type"]: e for e in sentry_server.events()}
    assert errors["RuntimeError"]["transaction"] == "/users/{pk}/"
    assert errors["RuntimeError"]["transaction_info"] == {"source": "route"}
    assert errors["KeyError"]["transaction"] == "GET 500"
    if rate:
        names = sorted(t["transaction"] for t in sentry_server.transactions())
        assert names == ["/users/{pk}/", "GET 500"]
        for envelope in sentry_server.envelopes():
            assert envelope.headers["trace"].get("transaction") in ("/users/{pk}/", "GET 500")


_CACHING = [
    "django.middleware.cache.UpdateCacheMiddleware",  # first, as Django's docs place it
    *settings.MIDDLEWARE,
    "django.middleware.cache.FetchFromCacheMiddleware",
]


@pytest.mark.parametrize("rate", [1.0, 0.0])
def test_a_cache_middleware_before_ours_can_cache_the_response(
    sentry_server: SentryServer, rate: float
) -> None:
    # UpdateCacheMiddleware pickles the response after ours handed it back: what ours
    # keeps on it (its closer) must pickle to nothing, not fail the request with a 500.
    from django.core.cache import cache

    cache.clear()  # (the process's LocMemCache: another test's entries are not this one's)
    init_traced(sentry_server, traces_sample_rate=rate)
    with override_settings(MIDDLEWARE=_CACHING, CACHE_MIDDLEWARE_SECONDS=30):
        client = _client()
        first = client.get("/users/7/")
        second = client.get("/users/7/")  # from the cache
    assert first.status_code == 200 and second.status_code == 200
    assert second.content == first.content
    assert second.has_header("Expires") and second.has_header("Cache-Control")
    # nothing of ours in what the cache holds: a release without this package (a
    # rollback, an uninstall) still reads it
    stored = list(cache._cache.values())  # type: ignore[attr-defined]  # LocMemCache
    assert stored and not any(b"sentry_tracing_mw" in value for value in stored)
    assert stm.flush(5)
    if rate:
        assert sentry_server.wait_for(2, 5)
        assert [t["transaction"] for t in sentry_server.transactions()] == ["/users/{pk}/"] * 2
    assert sentry_server.events() == []


class _RaisingOnTheWayOut:
    """A middleware placed before ours that fails on the response."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        response = self.get_response(request)
        if "out" in request.GET:
            raise RuntimeError("failed on the way out")
        return response


def test_a_middleware_before_ours_failing_on_the_response(sentry_server: SentryServer) -> None:
    """Django answers such a failure with a 500 of its own and never closes our response
    (whose closer ends the transaction): the transaction was lost. It ends with the 500."""
    init_traced(sentry_server)
    middleware = [f"{__name__}._RaisingOnTheWayOut", *settings.MIDDLEWARE]
    with override_settings(MIDDLEWARE=middleware):
        client = _client()
        assert client.get("/users/3/?out=1").status_code == 500
        assert client.get("/users/4/").status_code == 200
    assert stm.flush(5) and sentry_server.wait_for(3, 5)
    by_status = {_trace(t)["status"]: t for t in sentry_server.transactions()}
    assert sorted(by_status) == ["internal_error", "ok"]
    failed = by_status["internal_error"]
    assert failed["transaction"] == "/users/{pk}/"
    assert _trace(failed)["data"]["http.response.status_code"] == 500
    (error,) = sentry_server.events()
    assert error["contexts"]["trace"]["span_id"] == _trace(failed)["span_id"]


class _DenyingOnTheWayOut:
    """A middleware placed before ours that replaces the response: PermissionDenied on the
    way out (Django answers 403 at this layer)."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        response = self.get_response(request)
        if "deny" in request.GET:
            raise PermissionDenied
        return response


class _NamingShortCircuit:
    """A middleware after ours that names the transaction and answers before routing."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        if "custom" in request.GET:
            stm.set_transaction_name("checkout-step")
            return HttpResponse("short")
        return self.get_response(request)


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("rate", [1.0, 0.0])
def test_a_response_replaced_by_a_middleware_before_ours_ends_the_transaction(
    sentry_server: SentryServer, use_async: bool, rate: float
) -> None:
    """Our closer was on a response that a middleware before ours replaced (a 304 of
    ConditionalGetMiddleware, a 403 from an exception, a redirect) and nobody closed: the
    transaction was lost, uncounted. It ends with the response sent, with its status."""
    init_traced(sentry_server, traces_sample_rate=rate)
    middleware = [
        "django.middleware.http.ConditionalGetMiddleware",
        f"{__name__}._DenyingOnTheWayOut",
        *settings.MIDDLEWARE,
    ]
    paths = ["/users/3/", "/users/3/?deny=1", "/stream/?deny=1", "/nowhere/?deny=1"]

    async def fetch() -> list[int]:
        client = AsyncClient(raise_request_exception=False)
        first = await client.get("/users/3/")
        codes = [first.status_code]
        codes.append(
            (await client.get("/users/3/", headers={"if-none-match": first["ETag"]})).status_code
        )
        for path in paths[1:]:
            codes.append((await client.get(path)).status_code)
        return codes

    with override_settings(MIDDLEWARE=middleware):
        if use_async:
            codes = asyncio.run(fetch())
        else:
            client = _client()
            first = client.get("/users/3/")
            codes = [first.status_code]
            codes.append(
                client.get("/users/3/", headers={"if-none-match": first["ETag"]}).status_code
            )
            codes += [client.get(path).status_code for path in paths[1:]]
    assert codes == [200, 304, 403, 403, 403]
    assert stm.flush(5)
    if not rate:
        assert sentry_server.transactions() == []
        assert sentry_server.client_reports().get(("sample_rate", "transaction")) == 5
        return
    assert sentry_server.wait_for(5, 5)
    got = sorted(
        (_trace(t)["data"]["http.response.status_code"], t["transaction"], _trace(t)["status"])
        for t in sentry_server.transactions()
    )
    assert got == [
        (200, "/users/{pk}/", "ok"),
        (304, "/users/{pk}/", "ok"),
        (403, "/stream/", "permission_denied"),
        (403, "/users/{pk}/", "permission_denied"),
        (403, "GET 403", "permission_denied"),
    ]
    assert sentry_server.events() == []


def test_a_replaced_response_keeps_the_name_the_app_gave(sentry_server: SentryServer) -> None:
    """Only a name made from our response's status follows the response sent; one the
    app set (a middleware answering before routing) stays."""
    init_traced(sentry_server)
    middleware = [
        f"{__name__}._DenyingOnTheWayOut",
        *settings.MIDDLEWARE,
        f"{__name__}._NamingShortCircuit",
    ]
    with override_settings(MIDDLEWARE=middleware):
        assert _client().get("/users/3/?custom=1&deny=1").status_code == 403
    (tx,) = flushed_transactions(sentry_server, 1)
    assert tx["transaction"] == "checkout-step"
    assert _trace(tx)["data"]["http.response.status_code"] == 403


def test_a_middleware_before_ours_failing_on_an_untraced_methods_response(
    sentry_server: SentryServer,
) -> None:
    # HEAD is not traced: ours has reset the request's trace context when a middleware
    # before ours fails on the response; the error is still reported, in that trace.
    # A context left on the server's thread (get_trace_headers() outside a request keeps
    # one, as sentry-sdk does) must not take the request's place.
    init_traced(sentry_server)
    stale = PROPAGATION_CONTEXT.set(stm.get_client().continue_trace(None))
    middleware = [f"{__name__}._RaisingOnTheWayOut", *settings.MIDDLEWARE]
    trace_header = "771a43a4192642f0b136d5159a501700-b7ad6b7169203331"
    try:
        with override_settings(MIDDLEWARE=middleware):
            response = _client().head("/users/3/?out=1", HTTP_SENTRY_TRACE=trace_header)
            assert response.status_code == 500
        with override_settings(DEBUG_PROPAGATE_EXCEPTIONS=True):  # the view's, once
            with pytest.raises(ValueError, match="boom from a view"):
                Client().head("/error/", HTTP_SENTRY_TRACE=trace_header)
    finally:
        PROPAGATION_CONTEXT.reset(stale)
    assert stm.flush(5) and sentry_server.wait_for(2, 5)
    assert stm.flush(1)
    events = sentry_server.events()
    assert sorted(e["exception"]["values"][-1]["value"] for e in events) == [
        "boom from a view",
        "failed on the way out",
    ]
    for event in events:
        assert event["contexts"]["trace"]["trace_id"] == "771a43a4192642f0b136d5159a501700"
        assert event["request"]["method"] == "HEAD"
    assert PROPAGATION_CONTEXT.get() is None


class _RaisingOnTheWayIn:
    """A middleware placed before ours that fails on the request (ours never sees it)."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        if "in" in request.GET:
            raise RuntimeError(f"failed on the way in to {request.path}")
        return self.get_response(request)


def test_a_middleware_before_ours_failing_on_the_request(sentry_server: SentryServer) -> None:
    """Django answers it with a 500 and ours never runs: the error is still reported (as
    sentry-sdk reports it, through Django's got_request_exception), in a trace of its
    own and with the request data; not on a path ours ignores."""
    init_traced(sentry_server)
    middleware = [f"{__name__}._RaisingOnTheWayIn", *settings.MIDDLEWARE]
    with override_settings(MIDDLEWARE=middleware, SENTRY_IGNORE_PATHS=["/health/"]):
        client = _client()
        assert client.get("/users/3/?in=1", HTTP_COOKIE="s=secret").status_code == 500
        assert client.get("/users/4/?in=1").status_code == 500
        assert client.get("/health/?in=1").status_code == 500  # ignored: nothing
        assert client.get("/users/5/").status_code == 200
    assert stm.flush(5) and sentry_server.wait_for(3, 5)
    assert stm.flush(1)
    assert [t["transaction"] for t in sentry_server.transactions()] == ["/users/{pk}/"]
    events = sentry_server.events()
    assert sorted(e["exception"]["values"][-1]["value"] for e in events) == [
        "failed on the way in to /users/3/",
        "failed on the way in to /users/4/",
    ]
    for event in events:
        assert event["exception"]["values"][-1]["mechanism"] == {
            "type": "django",
            "handled": False,
        }
        assert event["request"]["method"] == "GET" and "Cookie" not in event["request"]["headers"]
    traces = {e["contexts"]["trace"]["trace_id"] for e in events}
    assert len(traces) == 2  # each its own trace
    assert PROPAGATION_CONTEXT.get() is None  # none left on the thread


def test_a_middleware_before_ours_failing_reports_once_when_propagated(
    sentry_server: SentryServer,
) -> None:
    # DEBUG_PROPAGATE_EXCEPTIONS: Django sends got_request_exception again at every
    # middleware the exception crosses: one exception, one event.
    init_traced(sentry_server)
    middleware = [
        "django.middleware.common.CommonMiddleware",
        "django.middleware.common.CommonMiddleware",
        f"{__name__}._RaisingOnTheWayIn",
        *settings.MIDDLEWARE,
    ]
    with override_settings(MIDDLEWARE=middleware, DEBUG_PROPAGATE_EXCEPTIONS=True):
        with pytest.raises(RuntimeError, match="on the way in"):
            Client().get("/users/3/?in=1")
    assert stm.flush(5) and sentry_server.wait_for(1, 5)
    assert stm.flush(1)
    assert len(sentry_server.events()) == 1


def test_a_file_response_over_a_stream_that_cannot_tell(
    sentry_server: SentryServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A FileResponse over a pipe: its position cannot be read; the transaction still ends
    when the body is sent, and nothing is logged as failed."""
    init_traced(sentry_server)
    with caplog.at_level(logging.ERROR, logger="sentry_tracing_mw"):
        response = _client().get("/no-tell-file/")
        assert b"".join(response.streaming_content) == b"y" * 100
        response.close()
    assert not [r for r in caplog.records if r.name == "sentry_tracing_mw"]
    (tx,) = flushed_transactions(sentry_server, 1)
    assert _trace(tx)["status"] == "ok"


def test_unsampled_requests_send_nothing(sentry_server: SentryServer) -> None:
    init_traced(sentry_server, traces_sample_rate=0.0)
    client = _client()
    assert client.get("/orm/").status_code == 200
    assert client.get("/template/").status_code == 200
    assert stm.flush(5)
    assert sentry_server.transactions() == []


@pytest.mark.parametrize("pii", [True, False])
def test_logged_in_user_is_on_events_with_pii_only(sentry_server: SentryServer, pii: bool) -> None:
    init_traced(sentry_server, send_default_pii=pii)
    middleware = [
        "sentry_tracing_mw.integrations.django.TracingMiddleware",
        "tests.django_project.views.LoggedInMiddleware",
    ]
    with override_settings(MIDDLEWARE=middleware):
        assert _client().get("/whoami/?read=1").content == b"alice"
        assert _client().get("/whoami/").content == b"user not read"
        assert _client().get("/whoami/?fail=1").status_code == 500
    assert stm.flush(5) and sentry_server.wait_for(4, 5)
    by_query = {t["request"].get("query_string", ""): t for t in sentry_server.transactions()}
    (event,) = sentry_server.events()
    alice = {"id": "7", "username": "alice", "email": "alice@example.com"}
    if pii:
        assert by_query["read=1"]["user"] == {**alice, "ip_address": "127.0.0.1"}
        assert event["user"] == {**alice, "ip_address": "127.0.0.1"}
        assert by_query["fail=1"]["user"] == {**alice, "ip_address": "127.0.0.1"}
        # never loaded by the app: not loaded for us either (no session query of ours)
        assert by_query[""]["user"] == {"ip_address": "127.0.0.1"}
    else:
        for received in (*sentry_server.transactions(), event):
            assert "user" not in received


def test_user_info_reads_the_current_user_and_never_queries() -> None:
    from django.utils.functional import SimpleLazyObject

    from sentry_tracing_mw.integrations.django import user_info

    from .django_project import views

    class Anonymous:
        is_authenticated = False

    class Deferred:
        """A model instance whose email was deferred (reading it would query)."""

        is_authenticated = True
        USERNAME_FIELD = "username"

        def __init__(self) -> None:
            self._state = object()
            self.pk = 3
            self.username = "bob"

        @property
        def email(self) -> str:
            raise AssertionError("a deferred field was read: that is a query")

    class Request:
        pass

    alice = views._User()
    request = Request()
    request._cached_user = Anonymous()  # type: ignore[attr-defined]  # auth middleware's cache
    request.user = alice  # type: ignore[attr-defined]  # then token auth set another user
    assert user_info(request) == {"id": "7", "username": "alice", "email": "alice@example.com"}
    request.user = SimpleLazyObject(lambda: 1 / 0)  # type: ignore[attr-defined]  # never loaded
    assert user_info(request) is None
    request._acached_user = alice  # type: ignore[attr-defined]  # await request.auser()
    assert user_info(request) == {"id": "7", "username": "alice", "email": "alice@example.com"}
    request.user = Deferred()  # type: ignore[attr-defined]
    assert user_info(request) == {"id": "3", "username": "bob"}


def test_unsampled_requests_still_capture_errors(sentry_server: SentryServer) -> None:
    """Error events do not depend on the sampling decision; nothing else is sent."""
    init_traced(sentry_server, traces_sample_rate=0.0)
    assert _client().get("/error/").status_code == 500
    response = _client().get("/stream-error/")
    with pytest.raises(RuntimeError, match="mid-stream"):
        b"".join(response.streaming_content)
    response.close()
    assert stm.flush(5)
    assert sentry_server.wait_for(2, 5)
    events = sorted(sentry_server.events(), key=lambda e: e["exception"]["values"][-1]["type"])
    assert [e["exception"]["values"][-1]["type"] for e in events] == ["RuntimeError", "ValueError"]
    # the request data is on the event whatever the sampling (as sentry-sdk sends it)
    urls = [e["request"]["url"] for e in events]
    assert urls == ["http://testserver/stream-error/", "http://testserver/error/"]
    assert sentry_server.transactions() == []


def test_unsampled_streamed_body_runs_in_the_requests_trace(sentry_server: SentryServer) -> None:
    init_traced(sentry_server, traces_sample_rate=0.0)
    trace_id = "771a43a4192642f0b136d5159a501700"
    response = _client().get("/stream-trace/", HTTP_SENTRY_TRACE=f"{trace_id}-b7ad6b7169203331-0")
    lines = b"".join(response.streaming_content).decode().split()
    response.close()
    assert len(lines) == 2
    assert all(line.startswith(trace_id) and line.endswith("-0") for line in lines), lines
    assert stm.get_current_span() is None


def test_an_untraced_methods_streamed_body_keeps_its_trace_and_reports_errors(
    sentry_server: SentryServer,
) -> None:
    """OPTIONS (not traced by default): the streamed body runs in the request's own trace
    (an incoming one continued), and its error is reported."""
    init_traced(sentry_server)
    trace_id = "771a43a4192642f0b136d5159a501700"
    client = _client()
    firsts = []
    for headers in ({}, {}, {"HTTP_SENTRY_TRACE": f"{trace_id}-b7ad6b7169203331-1"}):
        response = client.options("/stream-trace/", **headers)
        lines = b"".join(response.streaming_content).decode().split()
        response.close()
        assert len(lines) == 2 and lines[0] == lines[1] and lines[0] != "none", lines
        firsts.append(lines[0].split("-")[0])
    assert firsts[0] != firsts[1] and firsts[2] == trace_id, firsts
    response = client.options("/stream-error/")
    with pytest.raises(RuntimeError, match="boom mid-stream"):
        b"".join(response.streaming_content)
    response.close()
    assert stm.flush(5) and sentry_server.wait_for(1, 5)
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["mechanism"]["type"] == "django"
    assert event["request"]["method"] == "OPTIONS"
    assert event["request"]["url"].endswith("/stream-error/")
    assert sentry_server.transactions() == []
    assert stm.get_current_span() is None


# -- settings -----------------------------------------------------------------------------


def test_configured_from_settings(sentry_server: SentryServer) -> None:
    with override_settings(
        SENTRY_DSN=sentry_server.dsn,
        SENTRY_TRACES_SAMPLE_RATE=1.0,
        SENTRY_ENVIRONMENT="django-settings",
        SENTRY_INSTRUMENT_HTTP_CLIENTS=False,
        SENTRY_BEFORE_SEND_TRANSACTION="tests.test_django.tag_transaction",
    ):
        _client().get("/users/5/")
    assert stm.is_initialized()
    (tx,) = flushed_transactions(sentry_server, 1)
    assert tx["environment"] == "django-settings"
    assert tx["tags"]["from_settings"] == "yes"


def tag_transaction(event: dict[str, Any]) -> dict[str, Any]:
    event.setdefault("tags", {})["from_settings"] = "yes"
    return event


def test_settings_ignored_with_a_warning_after_init(
    sentry_server: SentryServer, caplog: pytest.LogCaptureFixture
) -> None:
    init_traced(sentry_server, environment="from-init")
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        with override_settings(SENTRY_DSN="http://other@127.0.0.1:1/2", SENTRY_RELEASE="x"):
            _client().get("/users/5/")
    assert any("release" in r.getMessage() and "dsn" in r.getMessage() for r in caplog.records)
    (tx,) = flushed_transactions(sentry_server, 1)
    assert tx["environment"] == "from-init"
    assert "release" not in tx


def test_handlers_built_from_the_same_settings_warn_nothing(
    sentry_server: SentryServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Each Django handler (a test Client, the WSGI app and an ASGI app in one process)
    # builds the middleware again from the same settings: nothing is ignored, no warning.
    settings = {"SENTRY_DSN": sentry_server.dsn, "SENTRY_TRACES_SAMPLE_RATE": 1.0}
    with override_settings(**settings), caplog.at_level(logging.WARNING, "sentry_tracing_mw"):
        for _ in range(3):
            assert _client().get("/users/5/").status_code == 200
    assert not [r for r in caplog.records if "already called" in r.getMessage()]
    with override_settings(**settings, SENTRY_RELEASE="other"):
        with caplog.at_level(logging.WARNING, "sentry_tracing_mw"):
            _client().get("/users/5/")
    assert any("ignoring options" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("SENTRY_TRANSACTION_STYLE", "bogus", r"transaction_style.*SENTRY_TRANSACTION_STYLE\)$"),
        ("SENTRY_TRACES_SAMPLE_RATE", "0.5", r"traces_sample_rate.*SENTRY_TRACES_SAMPLE_RATE\)$"),
        ("SENTRY_DSN", "not a dsn", r"^dsn 'not a dsn'.*\(the Django setting SENTRY_DSN\)$"),
        ("SENTRY_IGNORE_PATHS", 5, "ignore_paths"),
        ("SENTRY_IGNORE_PATHS", [5], "ignore_paths"),
        ("SENTRY_HTTP_METHODS_TO_CAPTURE", 5, "http_methods_to_capture"),
        ("SENTRY_HTTP_METHODS_TO_CAPTURE", {"GET": 1}, "http_methods_to_capture"),
        ("SENTRY_TRACES_SAMPLER", "no_such_module.sampler", "SENTRY_TRACES_SAMPLER"),
    ],
)
def test_invalid_setting_raises_configuration_error(setting: str, value: Any, named: str) -> None:
    with override_settings(**{setting: value}):
        with pytest.raises(stm.ConfigurationError, match=named):
            _client().get("/users/1/")


def test_bad_dsn_from_the_environment_is_not_blamed_on_a_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SENTRY_DSN", "not a dsn")
    with override_settings(SENTRY_DSN=None):  # left None: the environment's is used
        with pytest.raises(
            stm.ConfigurationError, match=r"^invalid option SENTRY_DSN='not a dsn'"
        ) as info:
            _client().get("/users/1/")
    assert "Django setting" not in str(info.value)


def test_ignore_paths_none_means_none_ignored(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    with override_settings(SENTRY_IGNORE_PATHS=None):
        assert _client().get("/health/").status_code == 200
    (tx,) = flushed_transactions(sentry_server, 1)
    assert tx["transaction"] == "/health/"


def test_untraced_method_still_reports_errors_ignored_path_does_not(
    sentry_server: SentryServer,
) -> None:
    init_traced(sentry_server)
    assert _client().head("/error/").status_code == 500  # HEAD: not traced, still an error
    assert _client().options("/error/").status_code == 500
    with override_settings(SENTRY_IGNORE_PATHS=["/error/"]):
        assert _client().get("/error/").status_code == 500  # ignored: nothing
    assert stm.flush(5) and sentry_server.wait_for(2)
    assert stm.flush(1) and sentry_server.transactions() == []
    events = sentry_server.events()
    assert len(events) == 2
    for event in events:
        assert event["exception"]["values"][-1]["value"] == "boom from a view"
        assert event["exception"]["values"][-1]["mechanism"]["type"] == "django"
        # its request data, as a traced request's events carry it
        assert event["request"]["url"].endswith("/error/")
    assert sorted(e["request"]["method"] for e in events) == ["HEAD", "OPTIONS"]


# -- request data -------------------------------------------------------------------------

_SECRET_HEADERS = {
    "HTTP_AUTHORIZATION": "Bearer abc",
    "HTTP_COOKIE": "sessionid=s3cr3t",
    "HTTP_X_FORWARDED_FOR": "10.1.2.3",
    "HTTP_X_REAL_IP": "10.1.2.4",
    "HTTP_X_API_KEY": "k",
    "HTTP_PROXY_AUTHORIZATION": "Basic x",
    "HTTP_X_CUSTOM": "visible",
}


def test_request_data_without_pii(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    _client().get("/users/1/?page=2&token=abc", **_SECRET_HEADERS)  # type: ignore[arg-type]
    (tx,) = flushed_transactions(sentry_server, 1)
    req = tx["request"]
    assert req["method"] == "GET"
    assert req["url"] == "http://testserver/users/1/"
    assert req["query_string"] == "page=2&token=[Filtered]"
    lowered = {k.lower(): v for k, v in req["headers"].items()}
    assert lowered["x-custom"] == "visible"
    for name in (
        "authorization",
        "cookie",
        "x-forwarded-for",
        "x-real-ip",
        "x-api-key",
        "proxy-authorization",
    ):
        assert name not in lowered
    assert "REMOTE_ADDR" not in req.get("env", {})
    assert "cookies" not in req
    assert "s3cr3t" not in json.dumps(tx)


def test_request_data_with_pii(sentry_server: SentryServer) -> None:
    init_traced(sentry_server, send_default_pii=True)
    _client().get("/users/1/", **_SECRET_HEADERS)  # type: ignore[arg-type]
    (tx,) = flushed_transactions(sentry_server, 1)
    req = tx["request"]
    lowered = {k.lower(): v for k, v in req["headers"].items()}
    assert lowered["authorization"] == "Bearer abc"
    assert lowered["x-forwarded-for"] == "10.1.2.3"
    assert req["env"]["REMOTE_ADDR"] == "127.0.0.1"
    assert req["cookies"] == "sessionid=s3cr3t"


# -- lifecycle ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/stream/", "/file/"])
def test_streamed_body_is_timed(sentry_server: SentryServer, path: str) -> None:
    init_traced(sentry_server)
    response = _client().get(path)
    assert response.streaming
    body = b"".join(response.streaming_content)
    assert body
    (tx,) = flushed_transactions(sentry_server, 1)
    assert tx["transaction"] == path
    assert _duration(tx) >= 0.3
    assert _trace(tx)["status"] == "ok"


def test_stream_abandoned_by_the_server_is_cancelled(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    response = _client().get("/stream/")
    next(iter(response.streaming_content))
    response.close()  # what a WSGI server does when the client goes away
    (tx,) = flushed_transactions(sentry_server, 1)
    assert _trace(tx)["status"] == "cancelled"


def test_error_in_a_streamed_body(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    response = _client().get("/stream-error/")
    with pytest.raises(RuntimeError, match="mid-stream"):
        b"".join(response.streaming_content)
    response.close()
    assert stm.flush(5)
    assert sentry_server.wait_for(2, 5)
    (tx,) = sentry_server.transactions()
    (event,) = sentry_server.events()
    assert _trace(tx)["status"] == "internal_error"
    assert event["contexts"]["trace"]["span_id"] == _trace(tx)["span_id"]


def test_view_exception_captured_once(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    response = _client().get("/error/")
    assert response.status_code == 500
    assert stm.flush(5)
    assert sentry_server.wait_for(2, 5)
    (tx,) = sentry_server.transactions()
    (event,) = sentry_server.events()
    assert tx["transaction"] == "/error/"
    assert _trace(tx)["status"] == "internal_error"
    (exc,) = event["exception"]["values"]
    assert exc["type"] == "ValueError"
    assert exc["mechanism"] == {"type": "django", "handled": False}
    assert event["contexts"]["trace"]["trace_id"] == _trace(tx)["trace_id"]
    assert event["contexts"]["trace"]["span_id"] == _trace(tx)["span_id"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_5xx_an_inner_middleware_answers_is_captured(
    sentry_server: SentryServer, mode: str
) -> None:
    """Django stops at the first ``process_exception`` that answers, innermost first, so
    ours never saw the exception: a 5xx answer is still an error, a 4xx one is not."""
    init_traced(sentry_server)
    middleware = [
        *settings.MIDDLEWARE,
        "tests.django_project.middleware.Maintenance",
        "tests.django_project.middleware.AnswersErrors",
    ]
    path = "/error/" if mode == "sync" else "/aerror/"
    # The last two: a 5xx, but not for the exception (answered, or a 404 of Django's).
    queries = ["", "?soft", "?soft&maint"]
    with override_settings(MIDDLEWARE=middleware):
        if mode == "sync":
            codes = [_client().get(path + q).status_code for q in queries]
        else:

            async def go() -> list[int]:
                client = AsyncClient(raise_request_exception=False)
                return [(await client.get(path + q)).status_code for q in queries]

            codes = asyncio.run(go())
        codes.append(_client().get("/missing/3/?maint").status_code)  # Http404, then 503
    assert codes == [500, 404, 503, 503]
    assert stm.flush(5) and sentry_server.wait_for(5, 5)
    stm.flush(0.5)
    statuses = {_trace(t)["span_id"]: _trace(t)["status"] for t in sentry_server.transactions()}
    assert sorted(statuses.values()) == [
        "internal_error",
        "not_found",
        "unavailable",
        "unavailable",
    ]
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["type"] == (
        "ValueError" if mode == "sync" else "KeyError"
    )
    assert event["exception"]["values"][-1]["mechanism"] == {"type": "django", "handled": False}
    assert statuses[event["contexts"]["trace"]["span_id"]] == "internal_error"
    assert event["transaction"] == path


def test_http404_is_not_an_error(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    assert _client().get("/missing/3/").status_code == 404
    assert stm.flush(5)
    assert sentry_server.wait_for(1, 5)
    assert sentry_server.events() == []


def test_async_view_exception_captured_once(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)

    async def go() -> int:
        response = await AsyncClient(raise_request_exception=False).get("/aerror/")
        return int(response.status_code)

    assert asyncio.run(go()) == 500
    assert stm.flush(5)
    assert sentry_server.wait_for(2, 5)
    (tx,) = sentry_server.transactions()
    (event,) = sentry_server.events()
    assert tx["transaction"] == "/aerror/"
    assert _trace(tx)["status"] == "internal_error"
    assert event["exception"]["values"][0]["type"] == "KeyError"
    assert event["exception"]["values"][0]["mechanism"]["type"] == "django"
    assert event["contexts"]["trace"]["span_id"] == _trace(tx)["span_id"]


def test_async_requests_run_without_thread_hop(sentry_server: SentryServer) -> None:
    from asgiref.sync import iscoroutinefunction
    from django.core.handlers.asgi import ASGIHandler

    init_traced(sentry_server)
    handler = ASGIHandler()
    ours = [
        m
        for m in handler._view_middleware
        if getattr(m, "__func__", None) is TracingMiddleware._process_view_async
    ]
    assert len(ours) == 1 and iscoroutinefunction(ours[0])

    async def go() -> list[int]:
        client = AsyncClient()
        codes = []
        for path in ("/async/4/", "/users/5/", "/astream/"):
            response = await client.get(path)
            if response.streaming:
                async for _ in response.streaming_content:
                    pass
            codes.append(response.status_code)
        return codes

    assert asyncio.run(go()) == [200, 200, 200]
    txs = flushed_transactions(sentry_server, 3)
    assert [t["transaction"] for t in txs] == ["/async/{pk}/", "/users/{pk}/", "/astream/"]
    assert _duration(txs[2]) >= 0.3
    assert all(t["request"]["url"].startswith("http://testserver/") for t in txs)


# -- child spans --------------------------------------------------------------------------


def _db_spans(tx: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in tx["spans"] if s.get("op") == "db"]


def test_orm_spans_sync(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    assert _client().get("/orm/").status_code == 200
    (tx,) = flushed_transactions(sentry_server, 1)
    spans = _db_spans(tx)
    descriptions = [s["description"] for s in spans]
    assert any(d.startswith("INSERT INTO") for d in descriptions), descriptions
    assert any("COUNT(*)" in d for d in descriptions), descriptions
    for span in spans:
        assert "%s" in span["description"] or "INSERT" not in span["description"]
        assert "'sync'" not in span["description"] and '"sync"' not in span["description"]
        assert span["data"]["db.system"] == "sqlite"
        assert span["data"]["db.name"].endswith("db.sqlite3")
        assert span["parent_span_id"] == _trace(tx)["span_id"]
        assert span["origin"] == "auto.db.django"
        assert span["trace_id"] == _trace(tx)["trace_id"]


def test_orm_spans_async(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)

    async def go() -> None:
        client = AsyncClient()
        r1 = await client.get("/aorm/")
        r2 = await client.get("/async/1/")
        assert r1.status_code == r2.status_code == 200

    asyncio.run(go())
    first, second = flushed_transactions(sentry_server, 2)
    assert first["transaction"] == "/aorm/"
    descriptions = [s["description"] for s in _db_spans(first)]
    assert any(d.startswith("INSERT INTO") for d in descriptions), descriptions
    assert all(s["parent_span_id"] == _trace(first)["span_id"] for s in _db_spans(first))
    assert _db_spans(second) == []


def test_orm_in_a_streamed_body_lands_in_the_transaction(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    response = _client().get("/stream-orm/")
    b"".join(response.streaming_content)
    (tx,) = flushed_transactions(sentry_server, 1)
    assert any("COUNT(*)" in s["description"] for s in _db_spans(tx))


def test_orm_outside_requests_makes_no_spans(sentry_server: SentryServer) -> None:
    from .django_project.models import Item

    init_traced(sentry_server)
    _client().get("/users/1/")  # installs the hooks
    Item.objects.create(name="outside")
    with stm.start_transaction("manual", op="task") as tx:
        assert Item.objects.filter(name="outside").count() >= 1
    (sent,) = flushed_transactions(sentry_server, 2)[1:]
    assert sent["transaction"] == "manual"
    assert len(_db_spans(sent)) == 1
    assert tx.name == "manual"


def test_db_span_description_is_the_query_text() -> None:
    # psycopg's sql.Composed (rendered for the connection) and bytes queries were sent as
    # their Python repr; sqlite cannot run either, so the description is checked directly.
    from sentry_tracing_mw.integrations.django._orm import _description

    class RawConnection:
        pass

    raw = RawConnection()

    class Composed:
        def as_string(self, context: Any) -> str:
            assert context is raw
            return 'SELECT "name" FROM "items" WHERE id = %s'

        def __repr__(self) -> str:
            return "Composed([SQL('SELECT '), Identifier('name')])"

    class Wrapper:  # Django's DatabaseWrapper: .connection is the DB-API connection
        connection = raw

    context = {"connection": Wrapper(), "cursor": None}
    assert _description(Composed(), context) == 'SELECT "name" FROM "items" WHERE id = %s'
    assert _description(b"SELECT 1 -- caf\xc3\xa9 \xff", context) == "SELECT 1 -- café \ufffd"
    assert _description("SELECT %s", context) == "SELECT %s"

    class Broken:
        def as_string(self, context: Any) -> str:
            raise RuntimeError("connection closed")

        def __str__(self) -> str:
            return "broken query"

    assert _description(Broken(), context) == "broken query"


def _connection(**overrides: Any) -> Any:
    """A second real SQLite connection on the test database, with settings changed."""
    from django.db import connection
    from django.db.backends.sqlite3.base import DatabaseWrapper

    from sentry_tracing_mw.integrations.django import _install_hooks

    _install_hooks()
    other = DatabaseWrapper({**connection.settings_dict, **overrides}, alias="other")
    other.ensure_connection()  # connection_created: the query wrapper is installed
    return other


def _queries(conn: Any, sql: str = "SELECT 1") -> dict[str, Any]:
    """The data of the one db span of a transaction running ``sql`` on ``conn``."""
    with stm.start_transaction("q", op="test") as tx, conn.cursor() as cursor:
        cursor.execute(sql)
    data = [s._data for s in tx._spans if s._op == "db"]
    assert len(data) == 1, data
    return data[0]  # type: ignore[no-any-return]


def test_db_name_is_read_when_the_query_runs(sentry_server: SentryServer) -> None:
    # db.name was frozen when the connection was instrumented (a test database's new name
    # was missed) and sent as "" for a PostgreSQL service file (NAME empty).
    init_traced(sentry_server)
    conn = _connection()
    try:
        assert _queries(conn)["db.name"].endswith("db.sqlite3")
        conn.settings_dict["NAME"] = "renamed.sqlite3"  # as create_test_db() does
        assert _queries(conn)["db.name"] == "renamed.sqlite3"
        conn.settings_dict["NAME"] = ""
        assert _queries(conn) == {"db.system": "sqlite"}
    finally:
        conn.close()


def test_db_spans_have_server_and_executemany(sentry_server: SentryServer) -> None:
    # sentry-sdk sends server.address / server.port and db.executemany; they were missing.
    from .django_project.models import Item

    table = Item._meta.db_table
    init_traced(sentry_server)
    network = _connection(HOST="db.internal", PORT=5433)
    socket = _connection(HOST="/var/run/postgresql", PORT="5432")
    try:
        data = _queries(network)
        assert data["server.address"] == "db.internal" and data["server.port"] == "5433"
        assert "db.executemany" not in data
        assert not {"server.address", "server.port"} & set(_queries(socket))
        with stm.start_transaction("q", op="test") as tx, network.cursor() as cursor:
            cursor.executemany(f"INSERT INTO {table} (name) VALUES (%s)", [("m1",), ("m2",)])
        (span,) = [s for s in tx._spans if s._op == "db"]
        assert span._data["db.executemany"] is True
        assert span._data["server.address"] == "db.internal"
    finally:
        network.close()
        socket.close()


def test_user_execute_wrapper_is_undisturbed(sentry_server: SentryServer) -> None:
    from django.db import connection

    from .django_project.models import Item

    init_traced(sentry_server)
    _client().get("/users/1/")
    seen: list[str] = []

    def mine(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    before = list(connection.execute_wrappers)
    with connection.execute_wrapper(mine):
        Item.objects.count()
    assert connection.execute_wrappers == before
    assert len(seen) == 1


def test_template_spans_and_context_processor(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    response = _client().get("/template/")
    html = response.content.decode()
    (tx,) = flushed_transactions(sentry_server, 1)
    spans = [s for s in tx["spans"] if s.get("op") == "template.render"]
    by_name = {s["description"]: s for s in spans}
    assert set(by_name) == {"page.html", "part.html"}
    assert by_name["page.html"]["parent_span_id"] == _trace(tx)["span_id"]
    assert by_name["part.html"]["parent_span_id"] == by_name["page.html"]["span_id"]
    meta = re.search(r'<meta name="sentry-trace" content="([^"]+)">', html)
    assert meta is not None, html
    assert meta.group(1).startswith(_trace(tx)["trace_id"] + "-")


def _template_spans(tx: dict[str, Any]) -> list[str]:
    return sorted(s["description"] for s in tx["spans"] if s.get("op") == "template.render")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # past max_spans: page.html is dropped by start_child, its include by the hook
        ({"max_spans": 0}, {("buffer_overflow", "span"): 2}),
        # unsampled: the transaction and its two template spans
        (
            {"traces_sample_rate": 0.0},
            {("sample_rate", "transaction"): 1, ("sample_rate", "span"): 3},
        ),
    ],
)
def test_template_spans_not_sent_are_counted(
    sentry_server: SentryServer, options: dict[str, Any], expected: dict[tuple[str, str], int]
) -> None:
    # Under a span that does not record, template renders made no span and were not
    # counted in client reports (queries were).
    init_traced(sentry_server, **options)
    assert _client().get("/template/").status_code == 200
    assert stm.flush(5)
    assert sentry_server.client_reports() == expected


def test_form_renderer_templates_get_no_spans(sentry_server: SentryServer) -> None:
    # Every widget, attrs, label and error list of a form is a template of the form
    # renderer's engine: a formset page sent hundreds of spans and pushed the view's own
    # queries past max_spans. The page and its include keep theirs.
    init_traced(sentry_server)
    response = _client().get("/forms/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="custom"' in html and 'name="form-4-age"' in html
    (tx,) = flushed_transactions(sentry_server, 1)
    assert _template_spans(tx) == ["forms_page.html", "part.html"]
    assert any("COUNT(*)" in s["description"] for s in _db_spans(tx))


def test_templates_setting_form_renderer_gets_no_spans(sentry_server: SentryServer) -> None:
    # TemplatesSetting renders Django's form templates with the project's own engine.
    import django.forms

    forms_dir = str(Path(django.forms.__file__).parent / "templates")
    templates = [{**settings.TEMPLATES[0], "DIRS": [*settings.TEMPLATES[0]["DIRS"], forms_dir]}]
    init_traced(sentry_server)
    with override_settings(
        TEMPLATES=templates, FORM_RENDERER="django.forms.renderers.TemplatesSetting"
    ):
        assert _client().get("/forms/").status_code == 200
    (tx,) = flushed_transactions(sentry_server, 1)
    assert _template_spans(tx) == ["form_custom.html", "forms_page.html", "part.html"]


def test_django6_template_partials_get_spans(sentry_server: SentryServer) -> None:
    # render(request, "page.html#card") renders a PartialTemplate, which has its own render()
    from django.template import base
    from django.template.loader import render_to_string

    from sentry_tracing_mw.integrations.django import _install_hooks

    if not hasattr(base, "PartialTemplate"):
        pytest.skip("template partials are new in Django 6")
    init_traced(sentry_server)
    _install_hooks()
    with stm.start_transaction("t", op="test"):
        assert render_to_string("partials.html#card", {"n": 2}) == "<b>2</b>"
        # a {% partial %} inside its own template (often in a loop) is part of its span
        assert render_to_string("partials.html", {"n": 3}) == "<main><b>3</b></main>"
    (tx,) = flushed_transactions(sentry_server, 1)
    spans = [s["description"] for s in tx["spans"] if s.get("op") == "template.render"]
    assert sorted(spans) == ["partials.html", "partials.html#card"]


def test_template_tag_renders_trace_meta(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    html = _client().get("/meta/").content.decode()
    (tx,) = flushed_transactions(sentry_server, 1)
    trace = re.search(r'<meta name="sentry-trace" content="([^"]+)">', html)
    baggage = re.search(r'<meta name="baggage" content="([^"]+)">', html)
    assert trace is not None and baggage is not None, html
    assert re.fullmatch(r"[0-9a-f]{32}-[0-9a-f]{16}-1", trace.group(1))
    trace_id, span_id, _ = trace.group(1).split("-")
    assert trace_id == _trace(tx)["trace_id"]
    # the span current while rendering: the template span, a child of the transaction
    assert span_id in {s["span_id"] for s in tx["spans"]}
    assert f"sentry-trace_id={trace_id}" in baggage.group(1).replace("&#x27;", "'")


_TAGS = "sentry_tracing_mw.integrations.django.templatetags.sentry_tracing_mw"


@pytest.mark.parametrize(
    "way",
    [
        {"INSTALLED_APPS": [*settings.INSTALLED_APPS, "sentry_tracing_mw.integrations.django"]},
        {
            "TEMPLATES": [
                {**settings.TEMPLATES[0], "OPTIONS": {"libraries": {"sentry_tracing_mw": _TAGS}}}
            ]
        },
    ],
    ids=["installed-app", "libraries-option"],
)
def test_template_tag_outside_requests(sentry_server: SentryServer, way: dict[str, Any]) -> None:
    # A management command or a task renders before any middleware was built: the tag
    # library is found the two ways the README documents (fresh template engines here).
    from django.template.loader import render_to_string

    init_traced(sentry_server)
    templates = way.get("TEMPLATES", [dict(settings.TEMPLATES[0])])
    with override_settings(**{**way, "TEMPLATES": templates}):
        with stm.start_transaction("emails", op="task"):
            html = render_to_string("meta.html")
    (tx,) = flushed_transactions(sentry_server, 1)
    assert f'content="{_trace(tx)["trace_id"]}-' in html, html


# -- interop: name parity with sentry-sdk -------------------------------------------------

_SDK_SCRIPT = r"""
import json, os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.django_project.settings"
import django
from django.conf import settings
import sentry_sdk
from sentry_sdk.integrations.django import DjangoIntegration

style = sys.argv[1]
sentry_sdk.init(dsn="http://k@127.0.0.1:9/1", transport=Capture, traces_sample_rate=1.0,
                integrations=[DjangoIntegration(transaction_style=style)],
                default_integrations=False, auto_enabling_integrations=False)
settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if "sentry_tracing_mw" not in m]
django.setup()
from django.core.wsgi import get_wsgi_application
from werkzeug.test import Client
client = Client(get_wsgi_application())
for path in sys.argv[2:]:
    client.get(path).close()
print(json.dumps([[t["transaction"], t["transaction_info"]["source"]] for t in transactions]))
"""


def _sdk_names(style: str, paths: list[str]) -> list[list[str]]:
    return run_sdk_script(_SDK_SCRIPT, style, *paths)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("style", "sdk_style"), [("route", "url"), ("endpoint", "function_name")])
def test_name_parity_with_sentry_sdk(
    sentry_server: SentryServer, style: str, sdk_style: str
) -> None:
    paths = [p for p, _ in NAME_TABLE if p not in SDK_WRONG]
    theirs = _sdk_names(sdk_style, paths)
    init_traced(sentry_server)
    with override_settings(SENTRY_TRANSACTION_STYLE=style):
        client = _client()
        for path in paths:
            client.get(path)
    ours = [
        [t["transaction"], t["transaction_info"]["source"]]
        for t in flushed_transactions(sentry_server, len(paths))
    ]
    assert [n for n, _ in ours] == [n for n, _ in theirs]
    expected_source = "route" if style == "route" else "component"
    assert {s for _, s in ours} == {expected_source}
    assert {s for _, s in theirs} == {expected_source}


def test_a_failing_child_span_end_never_fails_the_view(
    sentry_server: SentryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: ending an ORM or template span raises; the view's response stands.
    from sentry_tracing_mw._tracing import Span

    init_traced(sentry_server)

    def broken_finish(self: Span, end_timestamp: float | None = None) -> None:
        raise RuntimeError("instrumentation bug")

    monkeypatch.setattr(Span, "finish", broken_finish)
    assert _client().get("/orm/").status_code == 200
    response = _client().get("/template/")
    assert response.status_code == 200 and "<meta" in response.content.decode()


@pytest.mark.parametrize(
    ("code", "error"),
    [("1", "SystemExit"), ("kbd", "KeyboardInterrupt"), ("0", None), ("none", None)],
)
def test_a_wsgi_requests_system_exit_or_ctrl_c_is_an_error(
    sentry_server: SentryServer, code: str, error: str | None
) -> None:
    """As sentry-sdk's WSGI middleware: gunicorn's sync worker raises SystemExit(1) in a
    request it times out; only a SystemExit with code 0 or None is not an error. The
    exception reaches the server unchanged; an untraced method (HEAD) reports it too."""
    init_traced(sentry_server)
    for method in ("get", "head"):
        with pytest.raises((SystemExit, KeyboardInterrupt)):
            getattr(_client(), method)(f"/exit/?code={code}")
    assert stm.flush(5)
    assert sentry_server.wait_for(3 if error else 1, 5)
    (tx,) = sentry_server.transactions()
    events = sentry_server.events()
    if error is None:
        assert events == []
        return
    assert len(events) == 2
    for event in events:
        (exc,) = event["exception"]["values"]
        assert exc["type"] == error
        assert exc["mechanism"] == {"type": "django", "handled": False}
    traced = next(e for e in events if e.get("transaction"))
    assert traced["transaction"] == "/exit/"
    assert traced["contexts"]["trace"]["span_id"] == _trace(tx)["span_id"]
    assert _trace(tx)["status"] == "internal_error"


def test_a_project_engine_listing_the_form_templates_is_no_form_engine() -> None:
    """Django documents ``DIRS: [django/forms/templates]`` (with ``APP_DIRS``) for
    ``TemplatesSetting``: that project engine renders the app's pages, which keep their
    spans; only a form renderer's private engine is skipped."""
    import django.forms
    from django.forms.renderers import DjangoTemplates as FormRenderer
    from django.template import engines

    from sentry_tracing_mw.integrations.django._templates import _is_form_engine

    forms_dir = str(Path(django.forms.__file__).parent / "templates")
    templates = [
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "DIRS": [forms_dir],
            "APP_DIRS": True,
        }
    ]
    with override_settings(TEMPLATES=templates):
        project = engines.all()[0].engine
        assert [str(d) for d in project.dirs] == [forms_dir] and project.app_dirs
        assert not _is_form_engine(project)
        assert _is_form_engine(FormRenderer().engine)
