"""Django REST framework and Django Ninja: exceptions their own handlers answer with a 5xx.

Both turn a view's exception into a response inside the view (DRF's
``APIView.handle_exception``, Ninja's ``NinjaAPI.on_exception``), so Django never sees it:
no ``process_exception``, no ``got_request_exception``. A 5xx answer is still an error, as
one from a Flask or Starlette error handler is: the exception is handed to ``note`` with the
response, and the middleware captures it when that response comes back through it. An
exception raised on purpose with its status (DRF's ``APIException``, Ninja's
``HttpError``) is reported handled, as an ``HTTPException`` is.

The hooks go on the classes once per process, once the modules are imported (the
middleware looks when it starts, and before a view runs when modules were imported since
it last looked); neither package is ever imported by us.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["install", "pending"]

logger = logging.getLogger("sentry_tracing_mw")

#: ``note(request, exception, response, handled)``: never raises.
Note = Callable[[Any, BaseException, Any, bool], None]

_MARK = "_stm_answers"


def _hook_drf(views: Any, note: Note) -> None:
    cls = views.APIView
    original = cls.__dict__["handle_exception"]
    if getattr(original, _MARK, False):
        return
    api_exception = sys.modules["rest_framework.exceptions"].APIException

    def handle_exception(self: Any, exc: Exception) -> Any:
        response = original(self, exc)  # raises what no handler answers (Django's 500)
        # DRF's Request wraps Django's, which holds our state.
        request = getattr(self, "request", None)
        note(getattr(request, "_request", request), exc, response, isinstance(exc, api_exception))
        return response

    _mark(handle_exception, original)
    cls.handle_exception = handle_exception


def _hook_ninja(main: Any, note: Note) -> None:
    cls = main.NinjaAPI
    original = cls.__dict__["on_exception"]
    if getattr(original, _MARK, False):
        return
    http_error = sys.modules["ninja.errors"].HttpError

    def on_exception(self: Any, request: Any, exc: Exception) -> Any:
        response = original(self, request, exc)
        note(request, exc, response, isinstance(exc, http_error))
        return response

    _mark(on_exception, original)
    cls.on_exception = on_exception


def _mark(wrapper: Any, original: Any) -> None:
    setattr(wrapper, _MARK, True)
    wrapper.__wrapped__ = original
    wrapper.__name__ = original.__name__
    wrapper.__qualname__ = original.__qualname__
    wrapper.__doc__ = original.__doc__


#: module that must be imported -> its hook; each is tried once it is imported.
_LAYERS: dict[str, Callable[[Any, Note], None]] = {
    "rest_framework.views": _hook_drf,
    "ninja.main": _hook_ninja,
}
_done: set[str] = set()


def pending() -> bool:
    """Whether some layer is not hooked yet (False once all are: nothing left to look for)."""
    return len(_done) < len(_LAYERS)


def install(note: Note) -> None:
    """Hook the layers imported by now (each once per process; never raises)."""
    for name, hook in _LAYERS.items():
        if name in _done:
            continue
        module = sys.modules.get(name)
        if module is None:
            continue
        _done.add(name)
        try:
            hook(module, note)
        except Exception:  # a version whose shape we do not know: left as it is
            logger.debug("hooking %s's exception handling failed", name, exc_info=True)
