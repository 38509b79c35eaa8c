"""FastAPI: the Starlette integration (FastAPI apps are Starlette apps).

``app.add_middleware(TracingMiddleware, **options)``; spans get origin ``auto.http.fastapi``.
"""

from __future__ import annotations

from .starlette import TracingMiddleware

__all__ = ["TracingMiddleware"]
