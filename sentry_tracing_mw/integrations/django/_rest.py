"""Django REST framework and Django Ninja: exceptions their own handlers answer with a 5xx.

Both turn a view's exception into a response inside the view (DRF's
``APIView.handle_exception``, Ninja's ``NinjaAPI.on_exception``), so Django never sees it:
no ``process_exception``, no ``got_request_exception``. A 5xx answer is still an error, as
one from a Flask or Starlette error handler is: the exception is handed to ``note`` with the
response, and the middleware captures it when that response comes back through it. An
exception raised on purpose with its status (DRF's ``APIException``, Ninja's
``HttpError``) is reported handled, as an ``HTTPException`` is.

The hooks go on the classes once per process, once the modules are imported (an
``ImportHooks``: the middleware looks when it starts, and before a view runs when modules
were imported since it last looked); neither package is ever imported by us.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from .._common import ImportHooks

__all__ = ["hooks"]

#: ``note(request, exception, response, handled)``: never raises.
Note = Callable[[Any, BaseException, Any, bool], None]

_MARK = "_stm_answers"


def _hook_drf(views: Any, note: Note) -> bool:
    cls = getattr(views, "APIView", None)
    exceptions = sys.modules.get("rest_framework.exceptions")
    api_exception = getattr(exceptions, "APIException", None)
    if cls is None or api_exception is None:
        return False  # being imported (by another thread): not yet
    original = cls.__dict__["handle_exception"]
    if getattr(original, _MARK, False):
        return True

    def handle_exception(self: Any, exc: Exception) -> Any:
        response = original(self, exc)  # raises what no handler answers (Django's 500)
        # DRF's Request wraps Django's, which holds our state.
        request = getattr(self, "request", None)
        note(getattr(request, "_request", request), exc, response, isinstance(exc, api_exception))
        return response

    _mark(handle_exception, original)
    cls.handle_exception = handle_exception
    return True


def _hook_ninja(main: Any, note: Note) -> bool:
    cls = getattr(main, "NinjaAPI", None)
    http_error = getattr(sys.modules.get("ninja.errors"), "HttpError", None)
    if cls is None or http_error is None:
        return False  # being imported (by another thread): not yet
    original = cls.__dict__["on_exception"]
    if getattr(original, _MARK, False):
        return True

    def on_exception(self: Any, request: Any, exc: Exception) -> Any:
        response = original(self, request, exc)
        note(request, exc, response, isinstance(exc, http_error))
        return response

    _mark(on_exception, original)
    cls.on_exception = on_exception
    return True


def _mark(wrapper: Any, original: Any) -> None:
    setattr(wrapper, _MARK, True)
    wrapper.__wrapped__ = original
    wrapper.__name__ = original.__name__
    wrapper.__qualname__ = original.__qualname__
    wrapper.__doc__ = original.__doc__


def hooks(note: Note) -> ImportHooks:
    """The hooks of both frameworks, calling ``note`` for what their handlers answer."""
    return ImportHooks(
        {
            "rest_framework.views": functools.partial(_hook_drf, note=note),
            "ninja.main": functools.partial(_hook_ninja, note=note),
        }
    )
