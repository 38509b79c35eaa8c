"""Apps for the privacy tests: every integration serves the same three routes.

* ``POST /page``: reads the request body, adds span data with sensitive-looking keys;
* ``GET /boom``: raises with a secret in a local variable (an error event);
* ``GET /call``: outgoing HTTP calls (requests / http.client and httpx) to ``TARGET`` with
  secrets in the query string, the URL's userinfo and the headers.

Secrets are module constants so that the test can look for them in the raw envelopes.
"""

from __future__ import annotations

from typing import Any

import httpx
import requests
from starlette.requests import Request  # module level: FastAPI resolves annotations here

import sentry_tracing_mw as stm

from ..servers import answer_lifespan

SECRETS = {
    "cookie": "ck7SECRETcookie",
    "authorization": "az7SECRETauth",
    "x-api-key": "ak7SECRETapikey",
    "query-token": "tk7SECRETquerytoken",
    "query-password": "pw7SECRETquerypassword",
    "body": "bd7SECRETrequestbody",
    "forwarded-ip": "203.0.113.77",
    "real-ip": "198.51.100.23",
    "local": "lv7SECRETlocalvariable",
    "local-password": "lp7SECRETlocalpassword",
    "span-password": "sp7SECRETspanpassword",
    "span-api-key": "sp7SECRETspanapikey",
    "span-token": "sp7SECRETspantoken",
    "span-nested": "sp7SECRETspannested",
    "out-query": "oq7SECRETouttoken",
    "out-auth": "oa7SECRETouthdr",
    "out-userinfo": "ou7SECRETuserinfo",
    "csrf": "cs7SECRETcsrf",
}
S = SECRETS
TARGET: dict[str, str] = {"url": "http://127.0.0.1:9"}  # set by the test


def request_headers() -> dict[str, str]:
    """The planted incoming headers (cookies go separately)."""
    return {
        "Authorization": f"Bearer {S['authorization']}",
        "X-Api-Key": S["x-api-key"],
        "X-Forwarded-For": f"{S['forwarded-ip']}, 10.0.0.1",
        "X-Real-Ip": S["real-ip"],
        "X-CSRFToken": S["csrf"],
        "Cookie": f"sessionid={S['cookie']}; theme=dark",
    }


def page_query() -> str:
    return f"token={S['query-token']}&password={S['query-password']}&page=2"


def _span_data() -> None:
    span = stm.get_current_span()
    assert span is not None
    with stm.start_span("function", "sensitive data") as child:
        child.set_data("password", S["span-password"])
        child.set_data("api_key", S["span-api-key"])
        child.set_data("rows", 3)
        child.set_data("params", {"user": "alice", "nested": {"secret": S["span-nested"]}})
    span.set_data("auth_token", S["span-token"])


def _boom() -> None:
    held_value = S["local"]  # noqa: F841  (only in the frame's locals)
    db_password = S["local-password"]  # noqa: F841  (a secret's name: never sent)
    raise ValueError("boom without secrets in the message")


def _out_urls() -> tuple[str, str]:
    base = TARGET["url"]
    host = base.split("://", 1)[1]
    query = f"token={S['out-query']}&page=1"
    return f"{base}/out?{query}", f"http://user:{S['out-userinfo']}@{host}/out-httpx?{query}"


def _out_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {S['out-auth']}", "X-Api-Key": S["out-auth"]}


def call_sync() -> str:
    url, url_userinfo = _out_urls()
    requests.get(url, headers=_out_headers(), timeout=5)
    httpx.get(url_userinfo, headers=_out_headers(), timeout=5)
    return "called"


async def call_async() -> str:
    url, url_userinfo = _out_urls()
    async with httpx.AsyncClient() as client:
        await client.get(url, headers=_out_headers(), timeout=5)
        await client.get(url_userinfo, headers=_out_headers(), timeout=5)
    return "called"


# --------------------------------------------------------------------------- WSGI


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    path = environ.get("PATH_INFO")
    if path == "/page":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        environ["wsgi.input"].read(length)
        _span_data()
        body = b"ok"
    elif path == "/boom":
        _boom()
        body = b""
    elif path == "/call":
        body = call_sync().encode()
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"missing"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


def flask_app() -> Any:
    from flask import Flask, request

    app = Flask("privacy")

    @app.route("/page", methods=["POST"])
    def page() -> str:
        request.get_data()
        _span_data()
        return "ok"

    @app.route("/boom")
    def boom() -> str:
        _boom()
        return ""

    @app.route("/call")
    def call() -> str:
        return call_sync()

    return app


def django_page(request: Any) -> Any:
    from django.http import HttpResponse

    _ = request.body
    _span_data()
    return HttpResponse("ok")


def django_boom(request: Any) -> Any:
    _boom()


def django_call(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse(call_sync())


# --------------------------------------------------------------------------- ASGI


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    path = scope["path"]
    if path == "/page":
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        _span_data()
        body = b"ok"
    elif path == "/boom":
        _boom()
        body = b""
    else:
        body = (await call_async()).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def page(request: Request) -> PlainTextResponse:
        await request.body()
        _span_data()
        return PlainTextResponse("ok")

    async def boom(request: Request) -> PlainTextResponse:
        _boom()
        return PlainTextResponse("")

    async def call(request: Request) -> PlainTextResponse:
        return PlainTextResponse(await call_async())

    return Starlette(
        routes=[Route("/page", page, methods=["POST"]), Route("/boom", boom), Route("/call", call)]
    )


def fastapi_app() -> Any:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()

    @app.post("/page")
    async def page(request: Request) -> PlainTextResponse:
        await request.body()
        _span_data()
        return PlainTextResponse("ok")

    @app.get("/boom")
    async def boom() -> PlainTextResponse:
        _boom()
        return PlainTextResponse("")

    @app.get("/call")
    def call() -> PlainTextResponse:  # a sync endpoint (thread pool)
        return PlainTextResponse(call_sync())

    return app


def build(kind: str) -> Any:
    """The traced app of integration ``kind`` (``stm.init`` was called)."""
    from sentry_tracing_mw.integrations import asgi, wsgi
    from sentry_tracing_mw.integrations.flask import FlaskTracing
    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    if kind == "wsgi":
        return wsgi.TracingMiddleware(wsgi_app)
    if kind == "asgi":
        return asgi.TracingMiddleware(asgi_app)
    if kind == "flask":
        app = flask_app()
        FlaskTracing(app)
        return app
    if kind in ("starlette", "fastapi"):
        app = starlette_app() if kind == "starlette" else fastapi_app()
        app.add_middleware(TracingMiddleware)
        return app
    if kind == "django_wsgi":
        from django.core.handlers.wsgi import WSGIHandler

        return WSGIHandler()
    if kind == "django_asgi":
        from django.core.handlers.asgi import ASGIHandler

        return ASGIHandler()
    raise ValueError(kind)
