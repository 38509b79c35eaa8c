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


#: module that must be imported -> its hook (False: the module is not fully imported yet).
_LAYERS: dict[str, Callable[[Any, Note], bool]] = {
    "rest_framework.views": _hook_drf,
    "ninja.main": _hook_ninja,
}
_done: set[str] = set()


def pending() -> bool:
    """Whether some layer is not hooked yet (False once all are: nothing left to look for)."""
    return len(_done) < len(_LAYERS)


def install(note: Note) -> bool:
    """Hook the layers imported by now (each once per process; never raises). True when
    one is still being imported (another thread's import): to be looked at again."""
    unready = False
    for name, hook in _LAYERS.items():
        if name in _done:
            continue
        module = sys.modules.get(name)
        if module is None:
            continue
        try:
            if not hook(module, note):
                unready = True
                continue
        except Exception:  # a version whose shape we do not know: left as it is
            logger.debug("hooking %s's exception handling failed", name, exc_info=True)
        _done.add(name)
    return unready
