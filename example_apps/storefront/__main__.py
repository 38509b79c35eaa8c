"""``python -m example_apps.storefront [--port 8000]``: serve the storefront with gunicorn."""

from __future__ import annotations

from example_apps._serving import parse_args, serve_wsgi

if __name__ == "__main__":
    serve_wsgi("example_apps.storefront.app:app", parse_args("storefront", 8000, None))
