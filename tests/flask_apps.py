"""Flask test apps, shared by our tests, the sentry-sdk parity/interop scripts and gunicorn.

``create_app()`` builds the plain app (no tracing); callers add ``FlaskTracing`` or
``sentry-sdk``. ``gunicorn_app`` is the traced app gunicorn imports
(``tests.flask_apps:gunicorn_app``), configured from ``SENTRY_*`` environment variables.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    jsonify,
    render_template_string,
    request,
    send_file,
    stream_with_context,
)

import sentry_tracing_mw as stm

STREAM_SECONDS = 0.3

#: Routes every framework names the same way: path -> (url-style name, endpoint-style name).
NAMED_ROUTES: dict[str, tuple[str, str]] = {
    "/": ("/", "index"),
    "/users/42": ("/users/<int:user_id>", "get_user"),
    "/api/v1/items/abc": ("/api/v1/items/<slug>", "api.get_item"),
    "/api/v1/admin/users/7/roles": ("/api/v1/admin/users/<int:uid>/roles", "api.admin.roles"),
    "/files/a/b/c.txt": ("/files/<path:name>", "get_file"),
}


def create_app() -> Flask:
    """A Flask app with plain, blueprint, nested-blueprint, streaming and error routes."""
    app = Flask(__name__)

    @app.route("/")
    def index() -> str:
        return "index"

    @app.route("/users/<int:user_id>")
    def get_user(user_id: int) -> Any:
        return jsonify(user_id=user_id)

    @app.route("/files/<path:name>")
    def get_file(name: str) -> str:
        return name

    @app.route("/submit", methods=["POST"])
    def submit() -> str:
        return "ok"

    @app.route("/boom")
    def boom() -> str:
        raise ValueError("boom from flask")

    @app.route("/forbidden")
    def forbidden() -> str:
        abort(403)

    @app.route("/trace")
    def trace_info() -> Any:
        span = stm.get_current_span()
        tx = span.containing_transaction if span is not None else None
        return jsonify(
            headers=stm.get_trace_headers(),
            received={
                k: v
                for k, v in request.headers.items()
                if k.lower() in ("sentry-trace", "baggage", "traceparent")
            },
            name=tx.name if tx is not None else None,
            source=tx.source if tx is not None else None,
            trace_id=span.trace_id if span is not None else None,
        )

    @app.route("/slow/<int:n>")
    def slow(n: int) -> Any:
        time.sleep(0.05)
        span = stm.get_current_span()
        return jsonify(n=n, trace_id=span.trace_id if span is not None else None)

    @app.route("/stream")
    def stream() -> Response:
        def body() -> Iterator[bytes]:
            for _ in range(3):
                time.sleep(STREAM_SECONDS / 3)
                yield b"chunk\n"

        return Response(stream_with_context(body()), mimetype="text/plain")

    @app.route("/endless")
    def endless() -> Response:
        def body() -> Iterator[bytes]:
            for _ in range(200):
                yield b"x" * 65536
                time.sleep(0.02)

        return Response(body(), mimetype="application/octet-stream")

    @app.route("/download")
    def download() -> Response:
        return send_file(__file__, mimetype="text/plain")

    @app.route("/meta")
    def meta() -> str:
        return render_template_string("A:{{ sentry_trace_meta }}\nB:{{ sentry_trace_meta() }}\n")

    @app.route("/custom")
    def custom() -> str:
        stm.set_transaction_name("custom-name")
        return "custom"

    @app.route("/health")
    def health() -> str:
        span = stm.get_current_span()
        return "traced" if span is not None else "untraced"

    api = Blueprint("api", __name__, url_prefix="/api/v1")

    @api.route("/items/<slug>")
    def get_item(slug: str) -> str:
        return slug

    admin = Blueprint("admin", __name__, url_prefix="/admin")

    @admin.route("/users/<int:uid>/roles")
    def roles(uid: int) -> str:
        return str(uid)

    api.register_blueprint(admin)
    app.register_blueprint(api)
    return app


def _gunicorn_app() -> Flask:
    from sentry_tracing_mw.integrations.flask import FlaskTracing

    app = create_app()
    app.config["SENTRY_TRACES_SAMPLE_RATE"] = float(os.environ.get("STM_TEST_RATE", "1.0"))
    app.config["SENTRY_INSTRUMENT_HTTP_CLIENTS"] = False

    @app.route("/bigfile")
    def bigfile() -> Response:  # a file larger than the socket buffers (sendfile)
        return send_file(os.environ["STM_TEST_BIG_FILE"], mimetype="application/octet-stream")

    FlaskTracing(app)  # SENTRY_DSN comes from the environment
    return app


def __getattr__(name: str) -> Any:
    # Built lazily so importing this module never initializes anything.
    if name == "gunicorn_app":
        return _gunicorn_app()
    raise AttributeError(name)
