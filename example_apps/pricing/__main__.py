"""``python -m example_apps.pricing [--port 8001]``: serve the pricing app with uvicorn."""

from __future__ import annotations

from example_apps._serving import parse_args, serve_asgi

if __name__ == "__main__":
    serve_asgi("example_apps.pricing.app:app", parse_args("pricing", 8001, None))
