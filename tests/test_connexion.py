"""Connexion 3 (a Flask app behind Connexion's own ASGI middleware): the setup the Flask
integration's docs recommend names every request after its route or its status, never
after a raw path. Runs where Connexion is installed (``tox -e connexion``)."""

from __future__ import annotations

from typing import Any

import pytest

connexion = pytest.importorskip("connexion")
pytest.importorskip("a2wsgi")  # connexion's Flask extra

from starlette.testclient import TestClient  # noqa: E402

import sentry_tracing_mw as stm  # noqa: E402
from sentry_tracing_mw.integrations.flask import FlaskTracing  # noqa: E402
from sentry_tracing_mw.integrations.starlette import TracingMiddleware  # noqa: E402

from .sentry_server import SentryServer  # noqa: E402
from .test_wsgi import wait_transactions  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_outgoing_headers")

SPEC: dict[str, Any] = {
    "openapi": "3.0.0",
    "info": {"title": "pets", "version": "1"},
    "servers": [{"url": "/api/v1"}],
    "paths": {
        "/pets/{pet_id}": {
            "get": {
                "operationId": "get_pet",
                "parameters": [
                    {
                        "name": "pet_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer"},
                    }
                ],
                "responses": {"200": {"description": "ok"}},
            }
        },
        "/search/{kind}": {
            "get": {
                "operationId": "search",
                "parameters": [
                    {"name": "kind", "in": "path", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "integer"},
                    },
                ],
                "responses": {"200": {"description": "ok"}},
            }
        },
    },
}


def get_pet(pet_id: int) -> dict[str, Any]:
    if pet_id == 13:
        raise RuntimeError("unlucky pet")
    return {"id": pet_id}


def search(kind: str, limit: int) -> dict[str, Any]:
    return {"kind": kind, "limit": limit}


VIEWS = {"get_pet": get_pet, "search": search}


def test_recommended_setup_names_requests_connexion_answers_itself(
    sentry_server: SentryServer,
) -> None:
    from connexion.resolver import Resolver

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    cx = connexion.FlaskApp(__name__)
    FlaskTracing(cx.app)
    cx.add_api(SPEC, resolver=Resolver(function_resolver=VIEWS.__getitem__), swagger_ui=False)
    client = TestClient(TracingMiddleware(cx), raise_server_exceptions=False)
    expected = [
        ("GET", "/api/v1/pets/3", 200, "/api/v1/pets/<int:pet_id>", "ok"),  # Flask routed
        ("GET", "/api/v1/pets/13", 500, "/api/v1/pets/<int:pet_id>", "internal_error"),
        # answered by Connexion before Flask sees them: named after their status
        ("POST", "/api/v1/pets/3", 405, "POST 405", "invalid_argument"),
        ("GET", "/api/v1/search/cats?limit=x", 400, "GET 400", "invalid_argument"),
        ("GET", "/api/v1/search/dogs", 400, "GET 400", "invalid_argument"),
        ("GET", "/api/v1/nope/7", 404, "GET 404", "not_found"),
    ]
    for method, url, status, _, _ in expected:
        assert client.request(method, url).status_code == status, (method, url)
    assert stm.flush(5)
    txs = wait_transactions(sentry_server, len(expected), events=1)
    assert len(txs) == len(expected)  # one transaction per request, outer and inner together
    got = sorted((t["transaction"], t["contexts"]["trace"]["status"]) for t in txs)
    assert got == sorted((name, status) for *_, name, status in expected)
    for tx in txs:
        assert tx["transaction_info"]["source"] == "route"
        name = tx["transaction"]
        assert not any(raw in name for raw in ("/3", "/13", "/7", "cats", "dogs", "nope")), name
    (error,) = sentry_server.events()
    assert error["exception"]["values"][-1]["value"] == "unlucky pet"
    assert error["transaction"] == "/api/v1/pets/<int:pet_id>"
