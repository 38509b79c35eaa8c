"""The Flask integration: route names, settings, errors, templates, servers, parity."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, abort, render_template_string, request
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.middleware.proxy_fix import ProxyFix

import sentry_tracing_mw as stm
from sentry_tracing_mw.integrations.flask import FlaskTracing
from sentry_tracing_mw.integrations.wsgi import TracingMiddleware

from .flask_apps import NAMED_ROUTES, STREAM_SECONDS, create_app
from .sdk_peer import run_sdk_script
from .sentry_server import SentryServer
from .servers import run_gunicorn, run_waitress, run_wsgi
from .test_wsgi import check_download_cut_short_is_cancelled, sparse_file, wait_transactions

ROOT = Path(__file__).resolve().parent.parent
TRACE_ID = "771a43a4192642f0b136d5159a501700"
PARENT_ID = "b7ad6b7169203331"
BIG_FILE_SIZE = 64 << 20


pytestmark = pytest.mark.usefixtures("no_outgoing_headers")  # the test thread's own calls


def traced_app(server: SentryServer | None = None, **options: Any) -> Flask:
    """The test app with FlaskTracing configured through app.config."""
    app = create_app()
    if server is not None:
        app.config["SENTRY_DSN"] = server.dsn
    app.config["SENTRY_TRACES_SAMPLE_RATE"] = 1.0
    app.config["SENTRY_INSTRUMENT_HTTP_CLIENTS"] = False
    FlaskTracing(app, **options)
    return app


def sent(server: SentryServer, n: int) -> list[dict[str, Any]]:
    assert stm.flush(5)
    txs = wait_transactions(server, n)
    assert len(txs) == n, [t["transaction"] for t in txs]
    return txs


def by_name(txs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t["transaction"]: t for t in txs}


# -- names ---------------------------------------------------------------------------------


def test_route_names_through_test_client(sentry_server: SentryServer) -> None:
    client = traced_app(sentry_server).test_client()
    for path in NAMED_ROUTES:
        assert client.get(path, buffered=True).status_code == 200
    assert client.get("/nope", buffered=True).status_code == 404
    assert client.get("/submit", buffered=True).status_code == 405
    assert client.post("/users/1", buffered=True).status_code == 405
    assert client.put("/nowhere/at/all", buffered=True).status_code == 404
    txs = by_name(sent(sentry_server, len(NAMED_ROUTES) + 4))
    for url_name, _ in NAMED_ROUTES.values():
        tx = txs[url_name]
        assert tx["transaction_info"] == {"source": "route"}
        assert tx["contexts"]["trace"]["origin"] == "auto.http.flask"
        assert tx["contexts"]["trace"]["op"] == "http.server"
        assert tx["contexts"]["trace"]["status"] == "ok"
    assert txs["GET 404"]["contexts"]["trace"]["status"] == "not_found"
    assert txs["GET 404"]["transaction_info"] == {"source": "route"}
    assert txs["PUT 404"]["request"]["url"].endswith("/nowhere/at/all")
    assert txs["GET 405"]["contexts"]["trace"]["status"] == "invalid_argument"
    assert txs["POST 405"]["tags"]["http.status_code"] == "405"


def test_endpoint_style(sentry_server: SentryServer) -> None:
    app = create_app()
    app.config.update(
        SENTRY_DSN=sentry_server.dsn,
        SENTRY_TRACES_SAMPLE_RATE=1.0,
        SENTRY_TRANSACTION_STYLE="endpoint",
        SENTRY_INSTRUMENT_HTTP_CLIENTS=False,
    )
    FlaskTracing(app)
    client = app.test_client()
    for path in NAMED_ROUTES:
        client.get(path, buffered=True)
    client.get("/nope", buffered=True)
    txs = by_name(sent(sentry_server, len(NAMED_ROUTES) + 1))
    for _, endpoint in NAMED_ROUTES.values():
        assert txs[endpoint]["transaction_info"] == {"source": "component"}
    assert txs["GET 404"]["transaction_info"] == {"source": "route"}


def test_named_before_the_view_runs(sentry_server: SentryServer) -> None:
    client = traced_app(sentry_server).test_client()
    out = client.get("/trace", buffered=True).get_json()
    assert out["name"] == "/trace" and out["source"] == "route"
    assert "sentry-transaction=%2Ftrace" in out["headers"]["baggage"]
    (tx,) = sent(sentry_server, 1)
    assert tx["transaction"] == "/trace"


def test_app_can_rename_with_set_transaction_name(sentry_server: SentryServer) -> None:
    traced_app(sentry_server).test_client().get("/custom", buffered=True)
    (tx,) = sent(sentry_server, 1)
    assert tx["transaction"] == "custom-name"
    assert tx["transaction_info"] == {"source": "custom"}


def test_script_name_mount_prefix_on_a_real_server(sentry_server: SentryServer) -> None:
    inner = traced_app(sentry_server)
    outer = DispatcherMiddleware(Flask("root"), {"/mount": inner})
    with run_wsgi(outer) as base:
        assert requests.get(f"{base}/mount/api/v1/items/x", timeout=5).text == "x"
        assert requests.get(f"{base}/mount/users/3", timeout=5).status_code == 200
    txs = by_name(sent(sentry_server, 2))
    assert set(txs) == {"/mount/api/v1/items/<slug>", "/mount/users/<int:user_id>"}


def test_traces_sampler_gets_the_route_before_the_view(sentry_server: SentryServer) -> None:
    seen: list[tuple[str, Any]] = []

    def sampler(ctx: Any) -> float:
        seen.append((ctx["wsgi_environ"]["PATH_INFO"], ctx["route"]))
        return 1.0 if ctx["route"] == "/users/<int:user_id>" else 0.0

    app = create_app()
    FlaskTracing(app, dsn=sentry_server.dsn, traces_sampler=sampler, instrument_http_clients=False)
    client = app.test_client()
    client.get("/users/5", buffered=True)
    client.get("/api/v1/items/q", buffered=True)
    client.get("/nope", buffered=True)
    (tx,) = sent(sentry_server, 1)
    assert tx["transaction"] == "/users/<int:user_id>"
    assert seen == [
        ("/users/5", "/users/<int:user_id>"),
        ("/api/v1/items/q", "/api/v1/items/<slug>"),
        ("/nope", None),
    ]


def test_head_untraced_with_distinct_traces(sentry_server: SentryServer) -> None:
    app = traced_app(sentry_server)
    seen: list[str] = []

    @app.route("/record", methods=["GET", "OPTIONS"])
    def record() -> str:
        seen.append(stm.get_trace_headers()["sentry-trace"][:32])
        return "ok"

    client = app.test_client()
    assert client.head("/record", buffered=True).status_code == 200
    assert client.head("/record", buffered=True).status_code == 200
    with run_wsgi(app) as base:
        for method in ("HEAD", "HEAD", "OPTIONS", "GET"):
            assert requests.request(method, f"{base}/record", timeout=5).status_code == 200
    assert len(seen) == 6 and len(set(seen)) == 6
    (tx,) = sent(sentry_server, 1)  # only the GET
    assert tx["contexts"]["trace"]["trace_id"] == seen[-1]
    assert tx["request"]["method"] == "GET"


# -- errors ---------------------------------------------------------------------------------


def test_exception_turned_into_500_is_captured_once(sentry_server: SentryServer) -> None:
    client = traced_app(sentry_server).test_client()
    assert client.get("/boom", buffered=True).status_code == 500
    assert stm.flush(5) and wait_transactions(sentry_server, 1, events=1)
    (tx,) = sentry_server.transactions()
    (event,) = sentry_server.events()
    assert tx["transaction"] == "/boom"
    assert tx["contexts"]["trace"]["status"] == "internal_error"
    assert event["contexts"]["trace"]["trace_id"] == tx["contexts"]["trace"]["trace_id"]
    assert event["contexts"]["trace"]["span_id"] == tx["contexts"]["trace"]["span_id"]
    exc = event["exception"]["values"][-1]
    assert exc["type"] == "ValueError" and exc["value"] == "boom from flask"
    assert exc["mechanism"] == {"type": "flask", "handled": False}
    assert event["transaction"] == "/boom"


def test_propagated_exception_is_reraised_and_captured_once(sentry_server: SentryServer) -> None:
    app = traced_app(sentry_server)
    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(ValueError, match="boom from flask"):
        app.test_client().get("/boom", buffered=True)
    assert stm.flush(5) and wait_transactions(sentry_server, 1, events=1)
    time.sleep(0.2)
    assert len(sentry_server.events()) == 1
    (tx,) = sentry_server.transactions()
    assert tx["contexts"]["trace"]["status"] == "internal_error"


def test_an_ignored_path_that_reads_the_trace_still_reports_nothing(
    sentry_server: SentryServer,
) -> None:
    # The meta tags (or get_trace_headers()) on an ignored page start a trace of that
    # request only: its error is still no event, and the next request has another trace.
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    app = Flask(__name__)
    app.config["SENTRY_IGNORE_PATHS"] = ["/internal/*"]
    seen: list[str] = []

    @app.route("/internal/<mode>")
    def page(mode: str) -> str:
        seen.append(stm.trace_meta_tags())
        if mode == "boom":
            raise RuntimeError("boom on an ignored path")
        return "ok"

    FlaskTracing(app)
    client = app.test_client()
    assert client.get("/internal/boom").status_code == 500
    assert client.get("/internal/fine").status_code == 200
    assert client.get("/internal/fine").status_code == 200
    traces = {re.search(r'sentry-trace" content="([0-9a-f]{32})', tag)[1] for tag in seen}  # type: ignore[index]
    assert len(traces) == 3
    assert stm.flush(5)
    time.sleep(0.2)
    assert sentry_server.events() == [] and sentry_server.transactions() == []


def test_untraced_method_still_reports_errors_ignored_path_does_not(
    sentry_server: SentryServer,
) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    app = create_app()
    app.config["SENTRY_IGNORE_PATHS"] = ["/boom"]
    FlaskTracing(app)
    other = create_app()
    FlaskTracing(other)
    assert app.test_client().get("/boom").status_code == 500  # ignored: nothing
    untraced = other.test_client().head("/boom?q=1", headers={"Cookie": "s=secret", "X-C": "v"})
    assert untraced.status_code == 500  # untraced: reported
    assert stm.flush(5) and sentry_server.wait_for(1)
    assert stm.flush(1) and sentry_server.transactions() == []
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["mechanism"] == {"type": "flask", "handled": False}
    # with its request data, as a traced request's events (privacy rules applied)
    request = event["request"]
    assert request["method"] == "HEAD" and request["url"].endswith("/boom")
    assert request["query_string"] == "q=1"
    headers = dict(request["headers"])
    assert headers.get("X-C") == "v" and "Cookie" not in headers


def test_abort_is_not_an_error_event(sentry_server: SentryServer) -> None:
    traced_app(sentry_server).test_client().get("/forbidden", buffered=True)
    (tx,) = sent(sentry_server, 1)
    assert tx["contexts"]["trace"]["status"] == "permission_denied"
    assert sentry_server.events() == []


def test_exceptions_the_apps_error_handlers_answer_with_a_5xx_are_captured(
    sentry_server: SentryServer,
) -> None:
    """``@app.errorhandler(...)`` answering an exception: Flask sends no
    ``got_request_exception``; a 5xx answer is still an error (as in Starlette), a 4xx or
    an ``abort(4xx)`` is not. ``abort(5xx)`` is raised on purpose: handled."""
    app = traced_app(sentry_server)

    @app.errorhandler(LookupError)
    def lookup_failed(exc: LookupError) -> tuple[str, int]:
        return "our error page", 500

    @app.errorhandler(TypeError)
    def bad_input(exc: TypeError) -> tuple[str, int]:
        return "bad input", 422

    @app.route("/items/<int:item_id>")
    def item(item_id: int) -> str:
        if item_id == 1:
            raise KeyError("no item 1")
        if item_id == 2:
            raise TypeError("not a number")
        abort(503)

    client = app.test_client()
    assert client.get("/items/1").status_code == 500
    assert client.get("/items/2").status_code == 422
    assert client.get("/items/3").status_code == 503
    assert stm.flush(5) and wait_transactions(sentry_server, 3, events=2)
    stm.flush(0.5)
    events = sentry_server.events()
    assert [e["exception"]["values"][-1]["type"] for e in events] == [
        "KeyError",
        "ServiceUnavailable",
    ]
    assert [e["exception"]["values"][-1]["mechanism"] for e in events] == [
        {"type": "flask", "handled": False},
        {"type": "flask", "handled": True},
    ]
    status = {t["contexts"]["trace"]["span_id"]: t["contexts"]["trace"]["status"] for t in
              sentry_server.transactions()}  # fmt: skip
    assert sorted(status.values()) == ["internal_error", "invalid_argument", "unavailable"]
    assert [status[e["contexts"]["trace"]["span_id"]] for e in events] == [
        "internal_error",
        "unavailable",
    ]
    assert all(e["transaction"] == "/items/<int:item_id>" for e in events)


def test_errors_flask_restx_answers(sentry_server: SentryServer) -> None:
    """Flask-RESTX answers its resources' errors itself and sends ``got_request_exception``
    for those it has no handler of its own for: ``abort(5xx)`` is still handled (as in a
    plain view), an exception its handler answers with a 500 is not, a 4xx no error."""
    restx = pytest.importorskip("flask_restx")
    app = traced_app(sentry_server)
    api = restx.Api(app, prefix="/api")

    @api.errorhandler(LookupError)
    def lookup_failed(exc: LookupError) -> tuple[dict[str, str], int]:
        return {"message": "our error"}, 500

    @api.route("/items/<int:item_id>")
    class Item(restx.Resource):  # type: ignore[misc]
        def get(self, item_id: int) -> dict[str, int]:
            if item_id == 1:
                raise KeyError("no item 1")
            if item_id == 2:
                restx.abort(400, "bad item")
            if item_id == 3:
                restx.abort(503, "down")
            raise RuntimeError("unhandled")

    client = app.test_client()
    assert [client.get(f"/api/items/{i}").status_code for i in (1, 2, 3, 4)] == [
        500,
        400,
        503,
        500,
    ]
    assert stm.flush(5) and wait_transactions(sentry_server, 4, events=3)
    stm.flush(0.5)
    events = sorted(sentry_server.events(), key=lambda e: e["exception"]["values"][-1]["type"])
    assert [
        (e["exception"]["values"][-1]["type"], e["exception"]["values"][-1]["mechanism"])
        for e in events
    ] == [
        ("KeyError", {"type": "flask", "handled": False}),
        ("RuntimeError", {"type": "flask", "handled": False}),
        ("ServiceUnavailable", {"type": "flask", "handled": True}),
    ]
    assert {e["transaction"] for e in events} == {"/api/items/<int:item_id>"}
    status = sorted(t["contexts"]["trace"]["status"] for t in sentry_server.transactions())
    assert status == ["internal_error", "internal_error", "invalid_argument", "unavailable"]


def test_an_abort_that_escapes_every_handler_is_unhandled(sentry_server: SentryServer) -> None:
    """``abort(503)`` raised by an error handler escapes it: Flask answers 500 and signals
    it; unlike an API extension's answered abort, it is not handled."""
    app = traced_app(sentry_server)

    class Broken(Exception):
        pass

    @app.errorhandler(Broken)
    def broken_handler(exc: Broken) -> str:
        abort(503)

    @app.route("/broken")
    def broken() -> str:
        raise Broken

    assert app.test_client().get("/broken").status_code == 500
    assert stm.flush(5) and wait_transactions(sentry_server, 1, events=1)
    stm.flush(0.3)
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["type"] == "ServiceUnavailable"
    assert event["exception"]["values"][-1]["mechanism"] == {"type": "flask", "handled": False}


def test_an_api_extension_imported_after_the_first_request_is_hooked(
    sentry_server: SentryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flask-RESTX imported late: looked for again before a request once modules were
    imported since the last look."""
    restx = pytest.importorskip("flask_restx")
    from sentry_tracing_mw.integrations import flask as flask_integration

    extensions = flask_integration._API_EXTENSIONS

    app = traced_app(sentry_server)
    api = restx.Api(app)

    @api.errorhandler(LookupError)
    def lookup_failed(exc: LookupError) -> tuple[dict[str, str], int]:
        return {"message": "our error"}, 500

    @api.route("/items/<int:item_id>")
    class Item(restx.Resource):  # type: ignore[misc]
        def get(self, item_id: int) -> None:
            raise KeyError(item_id)

    hooked = restx.Api.__dict__["handle_error"]
    monkeypatch.setattr(restx.Api, "handle_error", hooked.__wrapped__)  # as before the hook
    monkeypatch.setattr(extensions, "_done", set())
    monkeypatch.setattr(extensions, "seen", -1)  # not looked for
    client = app.test_client()
    assert client.get("/items/1").status_code == 500
    assert stm.flush(5) and wait_transactions(sentry_server, 1)
    stm.flush(0.3)
    assert sentry_server.events() == []
    monkeypatch.setattr(extensions, "seen", len(sys.modules) - 1)
    assert client.get("/items/2").status_code == 500
    assert stm.flush(5) and wait_transactions(sentry_server, 2, events=1)
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["type"] == "KeyError"
    assert restx.Api.__dict__["handle_error"].__wrapped__ is hooked.__wrapped__


def test_an_api_extension_half_imported_at_a_look_is_looked_at_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another thread importing Flask-RESTX when a request looks: its module is there
    without its class yet; it is looked at again, not given up."""
    import types

    restx = pytest.importorskip("flask_restx")
    from sentry_tracing_mw.integrations import flask as flask_integration

    extensions = flask_integration._API_EXTENSIONS

    hooked = restx.Api.__dict__["handle_error"]
    monkeypatch.setattr(restx.Api, "handle_error", hooked.__wrapped__)  # as before the hook
    monkeypatch.setattr(extensions, "_done", set())
    real = sys.modules["flask_restx.api"]
    monkeypatch.setitem(sys.modules, "flask_restx.api", types.ModuleType("flask_restx.api"))
    extensions.look()
    assert extensions.seen == 0  # to be looked at again
    assert "flask_restx.api" not in extensions._done
    monkeypatch.setitem(sys.modules, "flask_restx.api", real)  # its import finished
    extensions.look()
    assert restx.Api.__dict__["handle_error"].__wrapped__ is hooked.__wrapped__
    assert "flask_restx.api" in extensions._done


def test_unsampled_error_events_carry_the_request(sentry_server: SentryServer) -> None:
    """Error events do not depend on the sampling decision, their request data neither (as
    sentry-sdk sends it)."""
    app = traced_app(sentry_server)
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=0.0, instrument_http_clients=False)

    @app.route("/orders/<int:order>")
    def order(order: int) -> str:
        raise RuntimeError(f"order {order}")

    assert app.test_client().get("/orders/7?page=2").status_code == 500
    assert stm.flush(5) and sentry_server.wait_for(1)
    (event,) = sentry_server.events()
    assert event["request"]["url"] == "http://localhost/orders/7"
    assert event["request"]["query_string"] == "page=2"
    assert event["transaction"] == "/orders/<int:order>"
    assert sentry_server.transactions() == []


def test_a_failing_teardown_is_recorded_as_the_500_the_server_sends(
    sentry_server: SentryServer,
) -> None:
    """The app started a 200 response, then raised before sending anything: the server
    answers 500, and so says the transaction."""
    app = traced_app(sentry_server)

    @app.teardown_request
    def teardown(error: BaseException | None) -> None:
        if request.path == "/torn":
            raise RuntimeError("teardown failed")

    @app.route("/torn")
    def torn() -> str:
        return "fine"

    with run_wsgi(app) as base:
        assert requests.get(f"{base}/torn", timeout=5).status_code == 500
    (tx,) = sent(sentry_server, 1)
    assert tx["contexts"]["trace"]["status"] == "internal_error"
    assert tx["contexts"]["trace"]["data"]["http.response.status_code"] == 500


def test_traced_apps_made_by_a_factory_are_freed(sentry_server: SentryServer) -> None:
    """The exception signal held each traced app's middleware, and through it the app, for
    ever: a test suite making an app per test leaked them all."""
    import gc
    import weakref

    refs = []
    for _ in range(20):
        app = traced_app(sentry_server)
        assert app.test_client().get("/users/1").status_code == 200
        refs.append(weakref.ref(app))
        del app
    gc.collect()
    assert sum(ref() is not None for ref in refs) == 0


def test_jinja_settings_made_after_flask_tracing_still_apply(sentry_server: SentryServer) -> None:
    """``FlaskTracing(app)`` no longer creates ``app.jinja_env`` (it is made once, from the
    settings of that time): the template global is added when Flask creates it."""
    app = traced_app(sentry_server)
    assert "jinja_env" not in app.__dict__
    app.jinja_options = {**app.jinja_options, "line_statement_prefix": "#"}
    app.config["TEMPLATES_AUTO_RELOAD"] = True
    with app.test_request_context("/"):
        from flask import render_template_string

        out = render_template_string(
            "# for x in [1, 2]\n{{ x }}\n# endfor\n{{ sentry_trace_meta }}"
        )
    assert out.startswith("1\n2\n") and 'name="sentry-trace"' in out
    assert app.jinja_env.auto_reload is True


def test_http_methods_to_capture_from_an_environment_string(sentry_server: SentryServer) -> None:
    """``app.config.from_prefixed_env()`` gives ``"GET,POST"`` as one string: a list of
    methods, not one method named ``"GET,POST"`` (which traced nothing)."""
    app = create_app()
    app.config.update(
        SENTRY_DSN=sentry_server.dsn,
        SENTRY_TRACES_SAMPLE_RATE=1.0,
        SENTRY_INSTRUMENT_HTTP_CLIENTS=False,
        SENTRY_HTTP_METHODS_TO_CAPTURE="GET, post",
    )
    FlaskTracing(app)
    client = app.test_client()
    assert client.get("/users/1").status_code == 200
    assert client.delete("/users/1").status_code == 405  # not captured: DELETE
    (tx,) = sent(sentry_server, 1)
    assert tx["transaction"] == "/users/<int:user_id>"


def test_ignore_paths_from_a_prefixed_environment_string(
    sentry_server: SentryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``FLASK_SENTRY_IGNORE_PATHS=/users/*,/metrics`` is one string in app.config: a list."""
    monkeypatch.setenv("FLASK_SENTRY_IGNORE_PATHS", "/users/*,/metrics")
    app = create_app()
    app.config.from_prefixed_env()
    app.config.update(
        SENTRY_DSN=sentry_server.dsn,
        SENTRY_TRACES_SAMPLE_RATE=1.0,
        SENTRY_INSTRUMENT_HTTP_CLIENTS=False,
    )
    FlaskTracing(app)
    client = app.test_client()
    assert client.get("/users/1").status_code == 200  # ignored
    assert client.get("/").status_code in (200, 404)
    (tx,) = sent(sentry_server, 1)
    assert not tx["transaction"].startswith("/users")


def test_a_4xx_flask_answers_with_a_500_is_an_error(sentry_server: SentryServer) -> None:
    """``abort(4xx)`` where Flask cannot answer it (in an error handler, in an after_request
    function) ends in Flask's 500: an error, as every exception Flask turns into a 500;
    and the transaction of a failed after_request is sent though nobody reads the body."""
    app = traced_app(sentry_server)

    @app.errorhandler(KeyError)
    def on_key_error(error: KeyError) -> Any:
        abort(400, f"missing {error}")

    @app.route("/key")
    def key() -> str:
        raise KeyError("name")

    @app.after_request
    def check(response: Any) -> Any:
        if request.path == "/after":
            abort(403)
        return response

    @app.route("/after")
    def after() -> str:
        return "fine"

    client = app.test_client()
    assert [client.get("/key").status_code, client.get("/after").status_code] == [500, 500]
    txs = {t["transaction"]: t for t in sent(sentry_server, 2)}
    assert sorted(txs) == ["/after", "/key"]
    assert wait_transactions(sentry_server, 2, events=2)
    errors = {
        e["transaction"]: e["exception"]["values"][-1]["type"] for e in sentry_server.events()
    }
    assert errors == {"/key": "BadRequest", "/after": "Forbidden"}


def test_a_4xx_an_extension_signals_is_not_an_error(sentry_server: SentryServer) -> None:
    """Flask-RESTful sends ``got_request_exception`` for every error its API answers,
    ``abort(404)`` included: a 4xx is no error event."""
    from flask import got_request_exception, make_response
    from werkzeug.exceptions import HTTPException, InternalServerError, NotFound

    app = traced_app(sentry_server)

    @app.route("/api/<int:code>")
    def api(code: int) -> tuple[str, int]:
        if code == 400:  # abort(make_response(...)): an HTTPException with no code
            exc: Exception = HTTPException(response=make_response("bad", 400))
        else:
            exc = NotFound() if code == 404 else InternalServerError()
        got_request_exception.send(app, exception=exc)  # what Flask-RESTful's handler does
        return "answered", code

    client = app.test_client()
    codes = [client.get(f"/api/{code}").status_code for code in (404, 400, 500)]
    assert codes == [404, 400, 500]
    assert stm.flush(5) and wait_transactions(sentry_server, 3, events=1)
    stm.flush(0.5)
    assert [e["exception"]["values"][-1]["type"] for e in sentry_server.events()] == [
        "InternalServerError"
    ]


def test_a_starlette_4xx_raised_out_of_flask_is_not_an_error(sentry_server: SentryServer) -> None:
    """Connexion 3 answers Flask's 404s by raising Starlette's ``HTTPException`` out of a
    Flask error handler (``PROPAGATE_EXCEPTIONS`` on), and its middleware outside Flask
    turns it into the 404: no error event, as for werkzeug's; a 5xx one is an error."""
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from werkzeug.exceptions import HTTPException as WerkzeugHTTPException

    app = traced_app(sentry_server)
    app.config["PROPAGATE_EXCEPTIONS"] = True

    @app.errorhandler(WerkzeugHTTPException)
    def reraise(error: WerkzeugHTTPException) -> Any:
        raise StarletteHTTPException(error.code or 500, detail=error.description)

    @app.route("/down")
    def down() -> str:
        abort(503)

    def answering(environ: dict[str, Any], start_response: Any) -> Any:
        try:  # what Connexion's exception middleware does, outside the Flask app
            return app.wsgi_app(environ, start_response)
        except StarletteHTTPException as exc:
            start_response(f"{exc.status_code} X", [("Content-Type", "text/plain")])
            return [b"answered"]

    with run_wsgi(TracingMiddleware(answering)) as base:
        codes = [
            requests.get(f"{base}{path}", timeout=5).status_code for path in ("/nope/7", "/down")
        ]
    assert codes == [404, 503]
    txs = sent(sentry_server, 2)
    assert sorted(t["transaction"] for t in txs) == ["/down", "GET 404"]
    assert wait_transactions(sentry_server, 2, events=1) and stm.flush(0.5)
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["type"] == "HTTPException"
    assert event["transaction"] == "/down"


def test_a_failing_call_on_close_function_is_an_error(sentry_server: SentryServer) -> None:
    """``response.call_on_close(fn)`` runs app code when the server closes the body: its
    failure is the request's error (linked to its transaction)."""
    app = traced_app(sentry_server)

    @app.route("/report/<name>")
    def report(name: str) -> Any:
        from flask import make_response

        response = make_response("report " + name)

        @response.call_on_close
        def cleanup() -> None:
            raise OSError("cleanup failed")

        return response

    with run_wsgi(app) as base:
        assert requests.get(base + "/report/q3", timeout=5).text == "report q3"
    assert stm.flush(5) and wait_transactions(sentry_server, 1, events=1)
    (tx,) = sentry_server.transactions()
    (event,) = sentry_server.events()
    assert tx["transaction"] == "/report/<name>"
    assert app.test_client().get("/report/q4").status_code == 200  # never read nor closed
    assert stm.flush(5) and len(wait_transactions(sentry_server, 2)) == 2  # still sent
    # The body was read to its end first: the transaction had ended (ok) by close().
    assert tx["contexts"]["trace"]["status"] == "ok"
    assert event["exception"]["values"][-1]["type"] == "OSError"
    assert event["contexts"]["trace"]["span_id"] == tx["contexts"]["trace"]["span_id"]


def test_a_response_returned_again_keeps_one_close_wrapper(sentry_server: SentryServer) -> None:
    """A module-level response (with a ``call_on_close`` function) returned by every
    request: its function is wrapped once, for the latest request, not once more per
    request (which grew without end, then overflowed the stack at close)."""
    from unittest import mock

    from flask import Response

    calls: list[int] = []
    shared = Response("ok")
    shared.call_on_close(lambda: calls.append(1))
    callback = mock.MagicMock()  # a callback that answers any attribute (a test's Mock)
    own = Response("ok")
    own.call_on_close(callback)
    app = traced_app(sentry_server)
    app.add_url_rule("/shared", "shared", lambda: shared)
    app.add_url_rule("/mocked", "mocked", lambda: own)
    client = app.test_client()
    for _ in range(50):
        client.get("/shared").close()
    assert len(calls) == 50
    (wrapped,) = shared._on_close
    assert not hasattr(wrapped._stm_reports, "_stm_reports")
    client.get("/mocked").close()
    assert callback.call_count == 1  # the app's own, called (not a Mock attribute of it)


# -- configuration --------------------------------------------------------------------------


def test_config_and_kwargs(sentry_server: SentryServer) -> None:
    app = create_app()
    app.config.update(
        SENTRY_DSN=sentry_server.dsn,
        SENTRY_TRACES_SAMPLE_RATE=0.0,
        SENTRY_IGNORE_PATHS=["/health"],
        SENTRY_RELEASE="cfg@1",
        SENTRY_INSTRUMENT_HTTP_CLIENTS=False,
    )
    FlaskTracing(app, traces_sample_rate=1.0)  # kwargs win over app.config
    client = app.test_client()
    assert client.get("/health", buffered=True).data == b"untraced"
    client.get("/users/1", buffered=True)
    (tx,) = sent(sentry_server, 1)
    assert tx["transaction"] == "/users/<int:user_id>"
    assert tx["release"] == "cfg@1"


def test_init_options_ignored_with_a_warning_after_init(
    sentry_server: SentryServer, caplog: pytest.LogCaptureFixture
) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    app = create_app()
    app.config["SENTRY_RELEASE"] = "ignored@1"
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        FlaskTracing(app, transaction_style="endpoint")
    assert "ignoring options release" in caplog.text
    app.test_client().get("/users/1", buffered=True)
    (tx,) = sent(sentry_server, 1)
    assert tx["transaction"] == "get_user"  # middleware options still apply
    assert "release" not in tx


def test_unknown_sentry_config_keys_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app()
    app.config.update(
        SENTRY_TRACES_SAMPLE_RATES=1.0,  # typo: extra S
        SENTRY_TRACE_SAMPLE_RATE=1.0,  # typo: missing S
        SENTRY_DSN="",  # known: not warned about
        SENTRY_IGNORE_PATHS=["/health"],
        SENTRY_INSTRUMENT_HTTP_CLIENTS=False,
        # sentry-cli's and release tooling's: neither options nor typos of one
        SENTRY_AUTH_TOKEN="t",
        SENTRY_ORG="o",
        SENTRY_PROJECT="p",
        SENTRY_URL="https://sentry.example",
        SENTRY_RELEASES_BUCKET="b",  # unknown, and like nothing: no suggestion
    )
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        FlaskTracing(app)
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for tool_key in ("AUTH_TOKEN", "SENTRY_ORG", "SENTRY_PROJECT", "SENTRY_URL"):
        assert tool_key not in message
    assert "SENTRY_RELEASES_BUCKET," in message or message.endswith("SENTRY_RELEASES_BUCKET")
    assert "SENTRY_TRACES_SAMPLE_RATES (did you mean SENTRY_TRACES_SAMPLE_RATE?)" in message
    assert "SENTRY_TRACE_SAMPLE_RATE (did you mean SENTRY_TRACES_SAMPLE_RATE?)" in message
    assert "SENTRY_DSN" not in message and "IGNORE_PATHS" not in message
    assert "INSTRUMENT" not in message


def test_invalid_option_fails_at_construction() -> None:
    with pytest.raises(stm.ConfigurationError, match="transaction_style"):
        FlaskTracing(transaction_style="path")
    app = create_app()
    app.config["SENTRY_TRACES_SAMPLE_RATE"] = 2
    with pytest.raises(stm.ConfigurationError, match="traces_sample_rate") as info:
        FlaskTracing(app)
    assert str(info.value).endswith("(the app.config key SENTRY_TRACES_SAMPLE_RATE)")
    with pytest.raises(stm.ConfigurationError, match="traces_sample_rate") as info:
        FlaskTracing(create_app(), traces_sample_rate=2)  # given in code: no config key
    assert "SENTRY_" not in str(info.value)


def test_init_app_for_several_apps_and_idempotent(
    sentry_server: SentryServer, caplog: pytest.LogCaptureFixture
) -> None:
    tracing = FlaskTracing(
        dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False
    )
    first, second = create_app(), create_app()
    tracing.init_app(first)
    tracing.init_app(second)
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        tracing.init_app(first)
    assert "already traced" in caplog.text
    first.test_client().get("/users/1", buffered=True)
    second.test_client().get("/api/v1/items/z", buffered=True)
    assert set(by_name(sent(sentry_server, 2))) == {"/users/<int:user_id>", "/api/v1/items/<slug>"}


def test_init_app_after_the_app_served_requests_still_names_routes(
    sentry_server: SentryServer,
) -> None:
    # Flask closes its setup methods after the first request; naming must not need them.
    app = create_app()
    assert app.test_client().get("/users/1", buffered=True).status_code == 200
    FlaskTracing(app, dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    client = app.test_client()
    client.get("/users/2", buffered=True)
    client.get("/nope", buffered=True)
    assert set(by_name(sent(sentry_server, 2))) == {"/users/<int:user_id>", "GET 404"}


def test_app_url_value_preprocessors_still_run_and_see_the_values(
    sentry_server: SentryServer,
) -> None:
    seen: list[tuple[str | None, Any]] = []
    app = create_app()
    app.url_value_preprocessor(lambda endpoint, values: seen.append((endpoint, values)))
    FlaskTracing(app, dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    app.url_value_preprocessor(lambda endpoint, values: seen.append((endpoint, dict(values or {}))))
    assert app.test_client().get("/users/7", buffered=True).status_code == 200
    assert [values for _, values in seen] == [{"user_id": 7}, {"user_id": 7}]
    (tx,) = sent(sentry_server, 1)
    assert tx["transaction"] == "/users/<int:user_id>"


def test_before_request_functions_see_the_route_name(sentry_server: SentryServer) -> None:
    import sentry_tracing_mw as stm

    seen: list[tuple[str, str]] = []
    app = create_app()

    @app.before_request
    def before() -> None:
        span = stm.get_current_span()
        assert span is not None and span.containing_transaction is not None
        tx = span.containing_transaction
        seen.append((tx.name, tx.source))

    FlaskTracing(app, dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    client = app.test_client()
    client.get("/users/3", buffered=True)
    client.get("/nope", buffered=True)
    assert seen == [("/users/<int:user_id>", "route"), ("GET 404", "route")]
    sent(sentry_server, 2)


def test_wsgi_app_wrappers_and_direct_wsgi_app_serving(sentry_server: SentryServer) -> None:
    app = traced_app(sentry_server)
    app.wsgi_app = ProxyFix(app.wsgi_app)  # type: ignore[method-assign]
    app.test_client().get("/users/1", buffered=True)
    with run_wsgi(app.wsgi_app) as base:  # served like Connexion does
        requests.get(f"{base}/api/v1/items/y", timeout=5)
    assert set(by_name(sent(sentry_server, 2))) == {"/users/<int:user_id>", "/api/v1/items/<slug>"}


def test_generic_middleware_outside_flask_makes_one_transaction(
    sentry_server: SentryServer,
) -> None:
    app = traced_app(sentry_server)
    outer = TracingMiddleware(app)
    with run_wsgi(outer) as base:
        requests.get(f"{base}/users/9", timeout=5)
        requests.get(f"{base}/nope", timeout=5)
    txs = by_name(sent(sentry_server, 2))
    assert set(txs) == {"/users/<int:user_id>", "GET 404"}  # the inner one names it
    assert txs["/users/<int:user_id>"]["contexts"]["trace"]["origin"] == "auto.http.wsgi"


# -- templates ------------------------------------------------------------------------------


def test_sentry_trace_meta_jinja_global(sentry_server: SentryServer) -> None:
    text = (
        traced_app(sentry_server).test_client().get("/meta", buffered=True).get_data(as_text=True)
    )
    (tx,) = sent(sentry_server, 1)
    trace = tx["contexts"]["trace"]
    expected = f'<meta name="sentry-trace" content="{trace["trace_id"]}-{trace["span_id"]}-1">'
    a, b = text.split("\nB:")
    assert a.startswith("A:" + expected)
    assert b.startswith(expected)
    assert '<meta name="baggage" content="sentry-trace_id=' in b
    assert "&lt;" not in text


def test_unread_test_client_responses_are_sent_and_streams_wait_for_their_body(
    sentry_server: SentryServer,
) -> None:
    # The usual test-client habit: client.get(), check the status, flush. A complete
    # (not streamed) response ends its transaction when wsgi_app returns, so it is sent
    # although nobody read or closed the body; a streamed one still ends with its body.
    app = traced_app(sentry_server)
    client = app.test_client()
    resp = client.get("/users/7")
    assert resp.status_code == 200
    (tx,) = sent(sentry_server, 1)
    assert tx["transaction"] == "/users/<int:user_id>"
    assert tx["contexts"]["trace"]["data"]["http.response.status_code"] == 200
    sentry_server.clear()

    streamed = client.get("/stream")
    assert streamed.status_code == 200
    assert stm.flush(5)
    assert sentry_server.transactions() == []  # its body (app code) has not run yet
    assert streamed.data == b"chunk\n" * 3
    streamed.close()
    (tx,) = sent(sentry_server, 1)
    assert tx["transaction"] == "/stream"
    assert tx["timestamp"] - tx["start_timestamp"] >= STREAM_SECONDS
    sentry_server.clear()

    download = client.get("/download")  # send_file: a file body, ends when closed
    assert download.status_code == 200
    assert stm.flush(5)
    assert sentry_server.transactions() == []
    download.close()
    (tx,) = sent(sentry_server, 1)
    assert tx["transaction"] == "/download"
    sentry_server.clear()

    # 404, 405, abort() and routing redirects: Flask renders the HTTPException through
    # force_type (a ClosingIterator body that looks streamed), complete all the same
    for path, code in (("/nowhere", 404), ("/submit", 405), ("/forbidden", 403)):
        assert client.get(path).status_code == code
    names = by_name(sent(sentry_server, 3))
    assert set(names) == {"GET 404", "GET 405", "/forbidden"}
    assert names["/forbidden"]["contexts"]["trace"]["status"] == "permission_denied"


def test_a_wsgi_app_wrapped_before_us_keeps_the_body_lifecycle(
    sentry_server: SentryServer,
) -> None:
    # app.wsgi_app wrapped by a middleware whose body runs code of its own, then traced:
    # Flask marks its response complete, but the middleware's body is not, so the
    # transaction still ends with the body (its span and its error are in it).
    app = create_app()
    inner = app.wsgi_app

    def post_mw(environ: dict[str, Any], start_response: Any) -> Any:
        result = inner(environ, start_response)

        def body() -> Any:
            with stm.start_span("mw.post", "after the app"):
                yield from result
            raise RuntimeError("post-processing failed")

        return body()

    app.wsgi_app = post_mw  # type: ignore[method-assign]
    app.config.update(SENTRY_DSN=sentry_server.dsn, SENTRY_TRACES_SAMPLE_RATE=1.0)
    app.config["SENTRY_INSTRUMENT_HTTP_CLIENTS"] = False
    FlaskTracing(app)
    with pytest.raises(RuntimeError, match="post-processing"):
        app.test_client().get("/users/7").get_data()
    (tx,) = sent(sentry_server, 1)
    assert tx["contexts"]["trace"]["status"] == "internal_error"
    assert [s["op"] for s in tx["spans"]] == ["mw.post"]
    assert [e["exception"]["values"][-1]["type"] for e in sentry_server.events()] == [
        "RuntimeError"
    ]


def test_generic_middleware_sends_a_list_body_without_a_reader(
    sentry_server: SentryServer,
) -> None:
    from werkzeug.test import Client

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)

    def plain(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"made"]

    resp = Client(TracingMiddleware(plain)).get("/things")
    assert resp.status_code == 201
    (tx,) = sent(sentry_server, 1)
    assert tx["transaction"] == "/things"
    assert tx["contexts"]["trace"]["data"]["http.response.status_code"] == 201


# -- real servers ---------------------------------------------------------------------------


def test_streamed_response_on_werkzeug_server(sentry_server: SentryServer) -> None:
    app = traced_app(sentry_server)
    with run_wsgi(app) as base:
        resp = requests.get(
            f"{base}/stream", timeout=5, headers={"sentry-trace": f"{TRACE_ID}-{PARENT_ID}-1"}
        )
    assert resp.text == "chunk\n" * 3
    (tx,) = sent(sentry_server, 1)
    assert tx["transaction"] == "/stream"
    assert tx["timestamp"] - tx["start_timestamp"] >= STREAM_SECONDS
    assert tx["contexts"]["trace"]["trace_id"] == TRACE_ID
    assert tx["contexts"]["trace"]["parent_span_id"] == PARENT_ID


@pytest.fixture
def gunicorn(sentry_server: SentryServer, tmp_path: Path) -> Iterator[str]:
    """``tests.flask_apps:gunicorn_app`` under gunicorn (sync worker, 1 worker)."""
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(BIG_FILE_SIZE)  # sparse: instant, yet more than any socket buffer
    env = {
        **os.environ,
        "SENTRY_DSN": sentry_server.dsn,
        "PYTHONPATH": str(ROOT),
        "STM_TEST_BIG_FILE": str(big),
    }
    with run_gunicorn(
        "tests.flask_apps:gunicorn_app",
        cwd=ROOT,
        env=env,
        log_path=tmp_path / "gunicorn.log",
        ready_path="/health",
    ) as (base, _):
        assert sentry_server.wait_for(1, 15)  # the readiness probe's /health transaction
        sentry_server.clear()
        yield base


def test_gunicorn_end_to_end(sentry_server: SentryServer, gunicorn: str) -> None:
    resp = requests.get(
        f"{gunicorn}/users/7",
        timeout=5,
        headers={
            "sentry-trace": f"{TRACE_ID}-{PARENT_ID}-1",
            "baggage": f"sentry-trace_id={TRACE_ID},sentry-public_key=up,sentry-sample_rand=0.5,"
            "sentry-sampled=true",
        },
    )
    assert resp.json() == {"user_id": 7}
    assert requests.get(f"{gunicorn}/stream", timeout=5).text == "chunk\n" * 3
    download = requests.get(f"{gunicorn}/download", timeout=5)
    assert download.content == (ROOT / "tests" / "flask_apps.py").read_bytes()
    assert requests.get(f"{gunicorn}/boom", timeout=5).status_code == 500
    assert requests.get(f"{gunicorn}/nope", timeout=5).status_code == 404
    wait_transactions(sentry_server, 5, events=1, timeout=10)  # sent by the worker
    txs = by_name(sentry_server.transactions())
    assert set(txs) == {"/users/<int:user_id>", "/stream", "/download", "/boom", "GET 404"}
    users = txs["/users/<int:user_id>"]["contexts"]["trace"]
    assert (users["trace_id"], users["parent_span_id"]) == (TRACE_ID, PARENT_ID)
    stream = txs["/stream"]
    assert stream["timestamp"] - stream["start_timestamp"] >= STREAM_SECONDS
    assert txs["/download"]["contexts"]["trace"]["status"] == "ok"
    (event,) = sentry_server.events()
    assert event["contexts"]["trace"]["span_id"] == txs["/boom"]["contexts"]["trace"]["span_id"]
    assert txs["GET 404"]["contexts"]["trace"]["status"] == "not_found"


def test_gunicorn_sendfile_download_cut_short_is_cancelled(
    sentry_server: SentryServer, gunicorn: str
) -> None:
    # gunicorn sends a send_file() body with socket.sendfile(); a client that goes away
    # mid-file leaves the file's position short of its end: status cancelled, as a
    # streamed body gets. A whole download stays ok.
    host, port = gunicorn.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(b"GET /bigfile HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST: sendfile() fails in the worker
    wait_transactions(sentry_server, 1, timeout=10)
    (cut,) = sentry_server.transactions()
    assert cut["transaction"] == "/bigfile"
    assert cut["contexts"]["trace"]["status"] == "cancelled"
    sentry_server.clear()
    with requests.get(f"{gunicorn}/bigfile", timeout=10, stream=True) as whole:
        assert sum(len(c) for c in whole.iter_content(1 << 20)) == BIG_FILE_SIZE
    wait_transactions(sentry_server, 1, timeout=10)
    (full,) = sentry_server.transactions()
    assert full["contexts"]["trace"]["status"] == "ok"


def test_waitress_send_file_download_cut_short_is_cancelled(
    sentry_server: SentryServer, tmp_path: Path
) -> None:
    # waitress's file wrapper has a length, so werkzeug calls send_file's response not
    # streamed; it is still sent by the server after the view returns: it ends on close.
    from flask import send_file

    big = sparse_file(tmp_path)
    app = Flask(__name__)

    @app.route("/big")
    def download() -> Any:
        return send_file(big)

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    FlaskTracing(app)
    with run_waitress(app) as port:
        check_download_cut_short_is_cancelled(sentry_server, port)


# -- name parity with sentry-sdk ----------------------------------------------------------

_SDK_SCRIPT = r"""
import json, sys
from urllib.parse import urlsplit
import sentry_sdk
from sentry_sdk.integrations.flask import FlaskIntegration
from tests.flask_apps import create_app

paths = json.loads(sys.argv[1])
out = {}
for style in ("url", "endpoint"):
    transactions.clear()
    sentry_sdk.init(dsn="http://public@127.0.0.1:9/1", transport=Capture,
                    traces_sample_rate=1.0, default_integrations=False,
                    integrations=[FlaskIntegration(transaction_style=style)])
    client = create_app().test_client()
    for path in paths:
        client.get(path, buffered=True)
    sentry_sdk.flush()
    out[style] = {urlsplit(e["request"]["url"]).path: [e["transaction"],
                  e["transaction_info"]["source"]] for e in transactions}
print(json.dumps(out))
"""


_SDK_TEMPLATES_SCRIPT = r"""
import json
import sentry_sdk
import sentry_tracing_mw as stm
from flask import Flask, render_template_string
from sentry_tracing_mw.integrations.flask import FlaskTracing

# sentry-sdk kept for errors (its Flask integration on, by default) next to ours
sentry_sdk.init(dsn="http://public@127.0.0.1:9/1", transport=Capture)
stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
app = Flask("both")

@app.route("/page")
def page():
    body = render_template_string(
        "{{ sentry_trace_meta() }}|{{ sentry_trace_meta }}|{{ sentry_trace }}|{{ mine }}",
        mine="kept",
    )
    return {"body": body, "ours": stm.get_trace_headers()["sentry-trace"]}

FlaskTracing(app)
response = app.test_client().get("/page")
print(json.dumps([response.status_code, response.get_json()]))
"""


def test_the_apps_own_template_values_win_over_our_meta_tags() -> None:
    # An app's context processor registered before FlaskTracing(app) (the factory order),
    # and values passed to render_template, keep the app's own sentry_trace(_meta).
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    app = Flask(__name__)

    @app.context_processor
    def own_tags() -> dict[str, str]:
        return {"sentry_trace_meta": "app's own tags"}

    @app.route("/page")
    def page() -> str:
        return (
            render_template_string(
                "{{ sentry_trace_meta }}|{{ sentry_trace }}|{{ sentry_trace_meta }}",
            )
            + "|"
            + render_template_string("{{ sentry_trace }}", sentry_trace="passed")
        )

    FlaskTracing(app)
    body = app.test_client().get("/page").text
    own, ours, again, passed = body.split("|")
    assert own == again == "app&#39;s own tags"
    assert ours.startswith('<meta name="sentry-trace" content="')
    assert passed == "passed"


def test_flask_tracing_again_after_another_instrumentation_removed_ours(
    sentry_server: SentryServer, caplog: pytest.LogCaptureFixture
) -> None:
    # OpenTelemetry's FlaskInstrumentor, instrumented before ours, puts back the wsgi_app
    # it saw when uninstrumented: ours is gone, and FlaskTracing(app) again wraps anew.
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    app = create_app()
    saw = app.wsgi_app

    def other(environ: dict[str, Any], start_response: Any) -> Any:
        return saw(environ, start_response)

    app.wsgi_app = other  # type: ignore[method-assign]
    FlaskTracing(app)
    app.wsgi_app = ProxyFix(app.wsgi_app)  # type: ignore[method-assign]
    FlaskTracing(app)  # still reached through ProxyFix: nothing to do
    assert "already traced" in caplog.text

    class Hidden:  # a wrapper keeping ours where no walk would look (ProfilerMiddleware)
        def __init__(self, inner: Any) -> None:
            self._app = inner

        def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
            return self._app(environ, start_response)

    app.wsgi_app = Hidden(app.wsgi_app)  # type: ignore[method-assign]
    FlaskTracing(app)  # left as it is (not wrapped into a cycle)
    client = app.test_client()
    assert client.get("/users/1", buffered=True).status_code == 200
    app.wsgi_app = saw  # type: ignore[method-assign]  # the other's uninstrument
    assert client.get("/users/2", buffered=True).status_code == 200  # not traced: ours is gone
    FlaskTracing(app)
    assert client.get("/users/3", buffered=True).status_code == 200
    assert stm.flush(5) and sentry_server.wait_for(2, 5)
    time.sleep(0.2)
    urls = sorted(t["request"]["url"].rsplit("/", 1)[1] for t in sentry_server.transactions())
    assert urls == ["1", "3"]


def test_meta_tags_in_templates_with_sentry_sdk_in_the_same_process() -> None:
    # sentry-sdk's Flask integration puts its own trace's tags (a string) in every template
    # context: `{{ sentry_trace_meta() }}` failed the request, `{{ sentry_trace_meta }}`
    # showed a trace that is not the request's.
    status, result = run_sdk_script(_SDK_TEMPLATES_SCRIPT)
    assert status == 200, result
    parts = result["body"].split("|")
    assert parts[3] == "kept"
    for tags in parts[:3]:
        assert f'<meta name="sentry-trace" content="{result["ours"]}">' in tags


def test_name_parity_with_sentry_sdk(sentry_server: SentryServer) -> None:
    paths = [*NAMED_ROUTES, "/boom", "/stream", "/meta"]
    theirs = run_sdk_script(_SDK_SCRIPT, json.dumps(paths))
    for style in ("url", "endpoint"):
        sentry_server.clear()
        app = create_app()
        stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
        FlaskTracing(app, transaction_style=style)
        client = app.test_client()
        for path in paths:
            client.get(path, buffered=True)
        ours = {
            t["request"]["url"].split("localhost", 1)[1]: [
                t["transaction"],
                t["transaction_info"]["source"],
            ]
            for t in sent(sentry_server, len(paths))
        }
        assert set(theirs[style]) == set(paths)
        assert ours == theirs[style], style


def test_send_file_keeps_the_servers_file_wrapper(sentry_server: SentryServer) -> None:
    from gunicorn.http.wsgi import FileWrapper
    from werkzeug.test import EnvironBuilder

    app = traced_app(sentry_server)
    environ = EnvironBuilder(path="/download").get_environ()
    environ["wsgi.file_wrapper"] = FileWrapper
    result = app(environ, lambda s, h, e=None: None)
    assert isinstance(result, FileWrapper)  # gunicorn can use sendfile()
    tx = environ["sentry_tracing_mw.transaction"]
    assert tx.name == "/download" and tx.timestamp is None
    result.close()
    assert tx.timestamp is not None
    (sent_tx,) = sent(sentry_server, 1)
    assert sent_tx["contexts"]["trace"]["status"] == "ok"


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_finished_transactions_are_not_kept_alive_by_the_environ(
    sentry_server: SentryServer, rate: float
) -> None:
    """A caller that keeps the environ after the response (a test client's response, a
    server's request log, a benchmark's batch) does not keep the transaction alive: with
    complete, streamed and file bodies alike it leaves the environ when it ends."""
    import gc

    from werkzeug.test import EnvironBuilder

    from sentry_tracing_mw._client import get_client
    from sentry_tracing_mw._tracing import Transaction

    app = create_app()
    app.config["SENTRY_DSN"] = sentry_server.dsn
    app.config["SENTRY_TRACES_SAMPLE_RATE"] = rate
    app.config["SENTRY_INSTRUMENT_HTTP_CLIENTS"] = False
    FlaskTracing(app)
    kept: list[dict[str, Any]] = []

    def serve(path: str) -> None:
        environ = EnvironBuilder(path=path).get_environ()
        kept.append(environ)
        body = app(environ, lambda status, headers, exc_info=None: None)
        try:
            for _ in body:
                pass
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    for path in ["/users/1", "/stream", "/download", "/nope"]:
        serve(path)
    assert stm.flush(5)
    gc.collect()
    client = get_client()  # only this test's (an earlier test's server may hold its own)
    assert [o for o in gc.get_objects() if type(o) is Transaction and o._client is client] == []
    assert len(kept) == 4
    if rate:
        assert {t["transaction"] for t in wait_transactions(sentry_server, 4)} == {
            "/users/<int:user_id>",
            "/stream",
            "/download",
            "GET 404",
        }


@pytest.mark.parametrize("rate", [1.0, 0.0])
def test_errors_before_preprocess_request_are_named_after_the_route(
    sentry_server: SentryServer, rate: float
) -> None:
    """A ``request_started`` receiver or a session backend that fails (before Flask's
    ``preprocess_request``, where we name requests) still gives the route name to the
    transaction and its error event; an unmatched URL gets "GET 500"."""
    from flask import request, request_started
    from flask.sessions import SecureCookieSessionInterface

    class DownSessions(SecureCookieSessionInterface):
        def open_session(self, app: Any, request: Any) -> Any:
            if request.args.get("session"):
                raise ConnectionError("session store down")
            return super().open_session(app, request)

    app = create_app()
    app.session_interface = DownSessions()

    def receiver(sender: Any, **_: Any) -> None:
        if request.args.get("signal"):
            raise PermissionError("receiver failed")

    request_started.connect(receiver, app)
    app.config["SENTRY_DSN"] = sentry_server.dsn
    app.config["SENTRY_TRACES_SAMPLE_RATE"] = rate
    app.config["SENTRY_INSTRUMENT_HTTP_CLIENTS"] = False
    FlaskTracing(app)
    client = app.test_client()
    for query in ("/users/7?signal=1", "/users/7?session=1", "/nope?session=1"):
        response = client.get(query)
        assert response.status_code == 500
        response.close()
    assert stm.flush(5)
    assert sentry_server.wait_for(6 if rate else 3, 5)
    errors = {e["exception"]["values"][-1]["type"]: e for e in sentry_server.events()}
    assert errors["PermissionError"]["transaction"] == "/users/<int:user_id>"
    assert errors["ConnectionError"]["transaction_info"] == {"source": "route"}
    names = sorted(e["transaction"] for e in sentry_server.events())
    assert names == ["/users/<int:user_id>", "/users/<int:user_id>", "GET 500"]
    if rate:
        assert sorted(t["transaction"] for t in sentry_server.transactions()) == names
