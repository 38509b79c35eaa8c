"""Django's ASGI handler, watched: the lifespan scope answered (a server's shutdown flushes
the client), a request the server cancels or a send that fails ends its transaction, and
before Django 5.0 a client leaving mid-stream is seen."""

from __future__ import annotations

import asyncio
import functools
import logging
from contextvars import ContextVar
from typing import Any

from asgiref.sync import iscoroutinefunction

from ..asgi import serves_requests
from ._state import STATE_ATTR, Closer, RequestState

logger = logging.getLogger("sentry_tracing_mw")


class _AsgiCall:
    """What our ``ASGIHandler.__call__`` keeps of an HTTP request, in ``_ASGI_CALL`` (the
    tasks Django starts for the request see it too): the state our middleware gives the
    request, and, where Django never reads the connection again after the request body
    (before 5.0: no ``ASGIHandler.listen_for_disconnect``), its ``receive`` for the
    sending watch to see a client leave (see ``watch_asgi_sends``)."""

    __slots__ = ("receive", "state")

    def __init__(self, receive: Any) -> None:
        self.receive = receive
        self.state: RequestState | None = None


_ASGI_CALL: ContextVar[_AsgiCall | None] = ContextVar("sentry_tracing_mw.django", default=None)


def note_asgi_state(state: RequestState) -> None:
    """Give our ``ASGIHandler`` wrappers the request's state (see ``_AsgiCall``)."""
    call = _ASGI_CALL.get()
    if call is not None:
        call.state = state


def wrap_asgi_handler() -> None:
    """Wrap Django's ASGI handler: ``__call__`` answers the lifespan scope (Django refuses
    it), so a server's shutdown flushes the client (uvicorn re-raises SIGTERM after its
    graceful shutdown, and atexit handlers never run there), and gives every other call an
    ``_AsgiCall``; ``handle`` ends the request's transaction when the server cancels it."""
    from django.core.handlers.asgi import ASGIHandler

    from ..asgi import Receive, Scope, Send, answer_lifespan

    original = ASGIHandler.__call__
    # Django 5.0+ listens for the disconnect itself (and cancels the response); before,
    # nothing reads the connection once the request body is in.
    keep_receive = not hasattr(ASGIHandler, "listen_for_disconnect")

    @functools.wraps(original)
    async def __call__(self: ASGIHandler, scope: Scope, receive: Receive, send: Send) -> Any:
        if scope.get("type") == "lifespan":
            await answer_lifespan(scope, receive, send)
            return None
        token = _ASGI_CALL.set(_AsgiCall(receive if keep_receive else None))
        try:
            return await original(self, scope, receive, send)
        finally:
            _ASGI_CALL.reset(token)

    ASGIHandler.__call__ = __call__
    original_handle = ASGIHandler.handle

    @serves_requests(lambda names: getattr(getattr(names.get("call"), "state", None), "tx", None))
    @functools.wraps(original_handle)
    async def handle(self: ASGIHandler, scope: Scope, receive: Receive, send: Send) -> Any:
        call = _ASGI_CALL.get()
        try:
            return await original_handle(self, scope, receive, send)
        except BaseException as exc:
            # Django 5.0+ serves the request in a task of its own and closes the response
            # (ending the transaction) here: a server that cancels this call (uvicorn's
            # graceful-shutdown timeout, daphne after a disconnect) leaves it unclosed. It
            # ends here, as the cancellation arrives (the call's exit then waits for a
            # synchronous view's thread).
            state = None if call is None else call.state
            if state is not None and state.owned:
                if state.sent:  # cancelled while closing a response sent whole
                    state.finish()
                else:
                    if state.tx._end is None:
                        _send_failed(state, exc)
                    # (also when it ended already: an unsampled one ends at the response)
                    state.cancelled = not isinstance(exc, Exception)
            raise

    ASGIHandler.handle = handle


def watch_asgi_sends() -> None:
    """Watch Django's ASGI handler sending a traced response. Django reads a synchronous
    streamed body (a ``FileResponse`` too) whole before sending it, and skips the
    response's ``close()`` when sending raises: a client that leaves mid-send would be
    ``ok``, and a failing send (a body on a 204 refused by the server) would lose the
    transaction and its error. They are ``cancelled`` / ``internal_error`` here."""
    from django.core.handlers.asgi import ASGIHandler

    original = ASGIHandler.__dict__.get("send_response")
    if original is None or getattr(original, "_stm_watching", False):
        return
    if not iscoroutinefunction(original):
        logger.debug("ASGIHandler.send_response is not a coroutine function: not watched")
        return

    @serves_requests(lambda names: getattr(getattr(names.get("closer"), "state", None), "tx", None))
    @functools.wraps(original)
    async def send_response(self: Any, response: Any, send: Any) -> Any:
        closer = getattr(response, "__dict__", {}).get(STATE_ATTR)
        if type(closer) is not Closer:
            return await original(self, response, send)
        watcher = None
        call = _ASGI_CALL.get()
        receive = None if call is None else call.receive
        if receive is not None and closer.state.tx._recording and response.streaming:
            send, watcher = _watch_disconnect(closer.state, receive, send)
        try:
            result = await original(self, response, send)
        except BaseException as exc:
            _send_failed(closer.state, exc)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
        closer.state.sent = True
        return result

    send_response._stm_watching = True  # type: ignore[attr-defined]
    ASGIHandler.send_response = send_response


def _watch_disconnect(state: RequestState, receive: Any, send: Any) -> tuple[Any, Any]:
    """For Django before 5.0, which streams on to a client that left (the server drops
    the sends silently): read the connection while a sampled streamed response is sent,
    and mark the transaction ``cancelled`` if the client leaves before the last body
    message. Returns the ``send`` to use and the reading task (cancel it when done)."""
    sent_all = False

    async def watching_send(message: Any) -> None:
        nonlocal sent_all
        if message.get("type") == "http.response.body" and not message.get("more_body"):
            sent_all = True  # a disconnect from here on is the server's end of the request
        await send(message)

    async def watch() -> None:
        message = await receive()
        if message.get("type") == "http.disconnect" and not sent_all:
            tx = state.tx
            if tx._end is None and tx._status in (None, "ok"):
                tx._status = "cancelled"

    return watching_send, asyncio.get_running_loop().create_task(watch())


def _send_failed(state: RequestState, exc: BaseException) -> None:
    """Sending a traced response under ASGI raised: the client left (``CancelledError``:
    ``cancelled``) or the server refused it (an error event, ``internal_error``); the
    transaction ends now, as Django will not close the response after a failed send."""
    try:
        tx = state.tx
        if tx._end is not None and (not isinstance(exc, Exception) or state.cancelled):
            # Already ended (unsampled, or the body was sent): nothing more to say; or the
            # server cancelled the request: a send Django makes after that (uvicorn refuses
            # it) is no error of the app's.
            return
        if isinstance(exc, Exception):
            state.fail(exc)
        elif tx._status in (None, "ok"):
            tx._status = "cancelled"
        if tx._end is None:
            tx.finish()
    except Exception:
        logger.exception("sentry_tracing_mw: recording a failed ASGI send failed")
