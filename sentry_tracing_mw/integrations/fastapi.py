"""FastAPI: the Starlette integration (FastAPI apps are Starlette apps).

``app.add_middleware(TracingMiddleware, **options)``; spans get origin ``auto.http.fastapi``.
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401  (Starlette alone is not FastAPI)

    from .starlette import TracingMiddleware
except ModuleNotFoundError as _exc:
    from ._common import missing_framework

    raise missing_framework(_exc, "fastapi", "fastapi") from _exc

__all__ = ["TracingMiddleware"]
