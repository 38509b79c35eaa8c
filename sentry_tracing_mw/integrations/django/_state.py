"""A Django request's state in our middleware: how its transaction ends (the response's
closer, the streamed-body wrappers), how its exceptions are reported, and the user it
carries with ``send_default_pii``."""

from __future__ import annotations

import functools
import logging
from collections import ChainMap
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..._client import Client
from ..._context import CURRENT_SPAN, PROPAGATION_CONTEXT, request_context
from ..._tracing import PropagationContext, Transaction
from .._common import capture_untraced, wsgi_error
from ..wsgi import defer_request_info, environ_request_info, file_stopped_early

if TYPE_CHECKING:
    from . import TracingMiddleware

logger = logging.getLogger("sentry_tracing_mw")

#: The request attribute holding the per-request state.
STATE_ATTR = "_sentry_tracing_mw"
#: The trace of a request whose method ours does not trace (a request ours saw).
UNTRACED_ATTR = "_sentry_tracing_mw_untraced"
#: Such a request's exception answered with a 5xx, and whether it is handled.
ANSWERED_ATTR = "_sentry_tracing_mw_answered"


class RequestState:
    """Per-request state, stored on the request object."""

    __slots__ = (
        "answered",
        "answered_handled",
        "body",
        "cancelled",
        "client",
        "exc",
        "file",
        "file_start",
        "match",
        "method",
        "mw",
        "owned",
        "request",
        "responded",
        "sent",
        "status_named",
        "tx",
        "wsgi",
    )

    def __init__(
        self,
        tx: Transaction,
        client: Client,
        method: str,
        owned: bool,
        mw: TracingMiddleware,
        wsgi: bool,
    ) -> None:
        self.tx = tx
        self.client = client
        self.method = method
        self.owned = owned
        self.mw = mw
        self.wsgi = wsgi  # a WSGI request: a SystemExit(1) or KeyboardInterrupt is an error
        self.exc: BaseException | None = None  # the view's, as our process_exception saw it
        self.answered: BaseException | None = None  # one a middleware answered with a 5xx
        self.answered_handled = False  # ...raised on purpose with its status (DRF, Ninja)
        self.match: Any = None  # the ResolverMatch the name came from
        self.status_named = False  # unmatched: named after our response's status
        self.body: SyncBody | AsyncBody | None = None
        self.responded = False  # our middleware handed its response back
        self.sent = False  # Django's ASGI handler sent the whole response
        self.cancelled = False  # the server cancelled Django's handling (ASGI)
        self.request: Any = None  # an unsampled streamed response's request
        self.file: Any = None  # a FileResponse's file, and where sending it started
        self.file_start = 0

    def finish(self) -> None:
        """Response closer: the body has been sent (or the server gave up)."""
        tx = self.tx
        if tx._end is not None:  # ended where sending it failed (_send_failed)
            return
        body = self.body
        if tx._status in (None, "ok"):
            if body is not None:
                if not body.done:
                    tx._status = "cancelled"
            elif self.file is not None and file_stopped_early(self.file, self.file_start):
                tx._status = "cancelled"  # the server stopped reading the file: gone
        tx.finish()

    def fail(self, exc: BaseException, request: Any = None, handled: bool = False) -> None:
        """Record an exception that escaped the view or the body (never raises).

        A request not named yet (a middleware after ours raised before URL resolution) is
        named first, so the error event carries the route name its transaction will have.
        """
        try:
            tx = self.tx
            if request is None:
                request = self.request
            self.answered = None  # an earlier exception answered inside the view: not sent
            if isinstance(exc, Exception) or (self.wsgi and wsgi_error(exc)):
                if request is not None and tx._source == "url":
                    self.mw._name_for_error(request, self)
                if request is not None and self.client.options.send_default_pii:
                    tx._user = user_info(request) or tx._user
                if request is not None and tx._request is None:  # unsampled: for the event
                    defer_request(tx, request, self.client.options.send_default_pii)
                if tx._end is None:  # (an ended one keeps the status it was sent with)
                    tx._status = "internal_error"
                self.client.capture_exception(exc, span=tx, mechanism="django", handled=handled)
            elif tx._status in (None, "ok"):
                tx._status = "cancelled"  # CancelledError, GeneratorExit, KeyboardInterrupt
        except Exception:
            logger.exception("sentry_tracing_mw: recording an exception failed")


class Closer:
    """What a response holds of ours: its closer (``state.finish``), and under ASGI the
    state for ``send_response``. Pickled (``UpdateCacheMiddleware`` placed before ours
    caches the response) it is nothing: a cached copy must not hold the request's
    transaction, client and locks (they cannot be pickled: the request failed with 500)."""

    __slots__ = ("state",)

    def __init__(self, state: RequestState) -> None:
        self.state = state

    def __call__(self) -> None:
        self.state.finish()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # ``functools.partial(int)``: a callable that does nothing, importable wherever
        # the cache is read (a release without this class, a process without the package)
        return functools.partial, (int,)


def _meta(request: Any) -> Any:
    """A Django request's ``META`` as a WSGI environ (an ASGI request's has no scheme)."""
    meta = request.META
    scope = request.__dict__.get("scope")  # ASGIRequest: META has no wsgi.url_scheme
    if scope is not None:
        meta = ChainMap({"wsgi.url_scheme": scope.get("scheme") or "http"}, meta)
    return meta


def defer_request(tx: Transaction, request: Any, pii: bool) -> None:
    """Give ``tx`` the event's request interface of a Django request (WSGI or ASGI)."""
    defer_request_info(tx, _meta(request), pii)


def capture_untraced_request(exc: BaseException, request: Any, handled: bool = False) -> None:
    """``capture_untraced`` for a Django request (its request data built if sent)."""
    info = None if request is None else functools.partial(_info, request)
    capture_untraced(exc, "django", info, handled)


def _info(request: Any, pii: bool) -> dict[str, Any]:
    return environ_request_info(_meta(request), pii)


class SyncBody:
    """Streamed body wrapper: the transaction is current while producing each chunk."""

    __slots__ = ("_it", "_state", "done")

    def __init__(self, content: Any, state: RequestState) -> None:
        self._it: Iterator[bytes] = iter(content)
        self._state = state
        self.done = False

    def __iter__(self) -> SyncBody:
        return self

    def __next__(self) -> bytes:
        token = CURRENT_SPAN.set(self._state.tx)
        try:
            return next(self._it)
        except StopIteration:
            self.done = True
            raise
        except BaseException as exc:
            self.done = True
            self._state.fail(exc)
            # The response ends here: Django's ASGI handler re-raises without closing it,
            # so no closer would end the transaction (a later close() is a no-op).
            self._state.tx.finish()
            raise
        finally:
            CURRENT_SPAN.reset(token)


class AsyncBody:
    """Async streamed body wrapper (ASGI)."""

    __slots__ = ("_it", "_state", "done")

    def __init__(self, content: Any, state: RequestState) -> None:
        self._it = aiter(content)
        self._state = state
        self.done = False

    def __aiter__(self) -> AsyncBody:
        return self

    async def __anext__(self) -> bytes:
        token = CURRENT_SPAN.set(self._state.tx)
        try:
            return await anext(self._it)
        except StopAsyncIteration:
            self.done = True
            raise
        except BaseException as exc:
            self.done = True
            self._state.fail(exc)
            # The response ends here: Django's ASGI handler re-raises without closing it,
            # so no closer would end the transaction (a later close() is a no-op).
            self._state.tx.finish()
            raise
        finally:
            CURRENT_SPAN.reset(token)


class _UntracedSyncBody:
    """The streamed body of a request whose method is not traced: produced in the
    request's trace context, its errors reported."""

    __slots__ = ("_ctx", "_it", "_request")

    def __init__(self, content: Any, ctx: PropagationContext, request: Any) -> None:
        self._it: Iterator[bytes] = iter(content)
        self._ctx = ctx
        self._request = request

    def __iter__(self) -> _UntracedSyncBody:
        return self

    def __next__(self) -> bytes:
        token = PROPAGATION_CONTEXT.set(self._ctx)
        try:
            return next(self._it)
        except StopIteration:
            raise
        except Exception as exc:
            capture_untraced_request(exc, self._request)
            raise
        finally:
            PROPAGATION_CONTEXT.reset(token)


class _UntracedAsyncBody:
    """``_UntracedSyncBody`` for an async streamed body."""

    __slots__ = ("_ctx", "_it", "_request")

    def __init__(self, content: Any, ctx: PropagationContext, request: Any) -> None:
        self._it = aiter(content)
        self._ctx = ctx
        self._request = request

    def __aiter__(self) -> _UntracedAsyncBody:
        return self

    async def __anext__(self) -> bytes:
        token = PROPAGATION_CONTEXT.set(self._ctx)
        try:
            return await anext(self._it)
        except StopAsyncIteration:
            raise
        except Exception as exc:
            capture_untraced_request(exc, self._request)
            raise
        finally:
            PROPAGATION_CONTEXT.reset(token)


def untraced_response(response: Any, request: Any) -> None:
    """The response of a method that is not traced: an exception answered with a 5xx
    (``_note_answered``) is reported if the response is still a 5xx, as for a traced one;
    the current trace context (the request's) is kept for a streamed body's app code. An
    ignored path (no context) is left as it is."""
    try:
        answered = request.__dict__.pop(ANSWERED_ATTR, None)
        if answered is not None and response.status_code >= 500:
            capture_untraced_request(answered[0], request, answered[1])
    except Exception:
        logger.debug("reporting an answered exception failed", exc_info=True)
    try:
        ctx = request_context()
        if (
            ctx is not None
            and response.streaming
            and getattr(response, "file_to_stream", None) is None
        ):
            content = response.streaming_content
            if response.is_async:
                response.streaming_content = _UntracedAsyncBody(content, ctx, request)
            else:
                response.streaming_content = _UntracedSyncBody(content, ctx, request)
    except Exception:
        logger.debug("wrapping an untraced streamed body failed", exc_info=True)


def view_failed(state: RequestState | None, exc: BaseException, request: Any) -> None:
    """An exception left the view chain: the owned transaction fails; an untraced
    method's ``SystemExit`` / ``KeyboardInterrupt`` under WSGI is still reported (Django
    turns an ``Exception`` into a 500 itself)."""
    if state is not None and state.owned:
        state.fail(exc, request)
        state.tx.finish()
    elif (
        state is None
        and not isinstance(exc, Exception)
        and request_context() is not None
        and "scope" not in request.__dict__
        and wsgi_error(exc)
    ):
        capture_untraced_request(exc, request)


def user_info(request: Any) -> dict[str, str] | None:
    """The logged-in user of ``request`` for the event's ``user`` (id, username, email), as
    sentry-sdk sends it with ``send_default_pii``; None when nobody is logged in, or when
    the app never loaded the user: reading a lazy ``request.user`` (or a deferred field of
    the user) would cost a session and database query, which an async view may not even
    make."""
    from django.utils.functional import LazyObject, empty

    try:
        found = request.__dict__
        user = found.get("user", empty)
        if isinstance(user, LazyObject):  # (LazyObject's own class: nothing evaluated)
            user = user.__dict__.get("_wrapped", empty)
        if user is empty:  # not loaded through request.user: maybe through auser()
            user = found.get("_acached_user", found.get("_cached_user"))
        if user is None or user is empty:
            return None
        if getattr(user, "is_authenticated", False) is not True:
            return None
    except Exception:
        return None
    model = "_state" in getattr(user, "__dict__", ())  # a Django model instance
    fields = user.__dict__ if model else None
    info: dict[str, str] = {}
    for key in ("id", "username", "email"):
        try:
            if key == "id":
                value = user.pk  # never deferred
            else:
                name = (
                    getattr(type(user), "USERNAME_FIELD", "username") if key == "username" else key
                )
                if fields is not None:  # a model's field only as loaded: a deferred one
                    value = fields.get(name)  # would cost a query
                elif key == "username" and callable(getattr(user, "get_username", None)):
                    value = user.get_username()
                else:
                    value = getattr(user, name, None)
        except Exception:
            continue
        if value is not None and value != "":
            info[key] = str(value)[:200]
    return info or None
