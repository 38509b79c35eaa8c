"""Django integration: one transaction per request, named after the matched route.

Setup (``settings.py``)::

    MIDDLEWARE = ["sentry_tracing_mw.integrations.django.TracingMiddleware", ...]  # first
    SENTRY_DSN = "https://key@o1.ingest.sentry.io/1"
    SENTRY_TRACES_SAMPLE_RATE = 0.25   # any init() option as SENTRY_<OPTION_UPPERCASE>
    SENTRY_TRANSACTION_STYLE = "route"  # or "endpoint"; SENTRY_IGNORE_PATHS,
                                        # SENTRY_HTTP_METHODS_TO_CAPTURE

Settings are read once, when Django instantiates the middleware. If ``init()`` was already
called, ``SENTRY_*`` init options are ignored with a warning; without them and without
``init()``, the ``SENTRY_*`` environment variables apply. Callable options
(``SENTRY_TRACES_SAMPLER``, ``SENTRY_BEFORE_SEND``, ``SENTRY_BEFORE_SEND_TRANSACTION``) may
be given as dotted import paths.

The middleware is sync and async capable: under ASGI it runs as a coroutine (no thread hop,
its ``process_view`` hook is async too). Behaviour:

* Names come from ``request.resolver_match`` (set by Django's own URL resolution; no second
  walk of the URLconf): ``path("users/<int:pk>/")`` -> ``/users/{pk}/``, regex groups ->
  ``{name}``, ``include()`` and ``i18n_patterns`` prefixes included (the active language's
  prefix, as Django matched it), source ``route``. ``SENTRY_TRANSACTION_STYLE = "endpoint"``
  gives the view's dotted name (``view_class`` for class-based views), source ``component``.
  The name is set before the view runs (``process_view``) and again with the response.
  Requests that never matched a route are named ``"<METHOD> <status>"`` (``"GET 404"``);
  when a middleware answered before URL resolution (a login redirect, say) the path is
  resolved once at response time to name it after its route.
* ``traces_sampler`` gets ``wsgi_environ`` / ``asgi_scope`` and ``route``: the middleware runs
  before Django resolves the URL, so when (and only when) a sampler is configured the path is
  resolved once up front against the default URLconf and the active language (``None`` when
  that fails, e.g. for ``request.urlconf`` set by a later middleware).
* The transaction ends when Django closes the response, i.e. after the server sent the whole
  body (streamed bodies and ``FileResponse`` included); a streamed body the server stopped
  reading gives status ``cancelled``. Exceptions Django turns into 500 responses are captured
  once (mechanism ``django``, unhandled) and linked to the transaction; so are those a
  middleware's ``process_exception``, Django REST framework's or Django Ninja's exception
  handler answers with a 5xx (DRF's ``APIException`` and Ninja's ``HttpError``, raised on
  purpose with their status, as handled).
* Child spans: every ORM query (op ``db``, the SQL with placeholders, ``db.system``,
  ``db.name``), through a ``connection.execute_wrapper`` installed on every connection, and
  every Django template render (op ``template.render``). Jinja2 templates are not covered.
  Both cost one ContextVar read when no sampled transaction is current.
* Templates: ``{% load sentry_tracing_mw %}{% sentry_trace_meta %}`` renders the
  ``sentry-trace`` / ``baggage`` meta tags. The tag library is registered in every
  ``DjangoTemplates`` engine when the middleware starts, so adding
  ``"sentry_tracing_mw.integrations.django"`` to ``INSTALLED_APPS`` is optional (it also
  works, and installs the hooks at startup). ``context_processor`` adds
  ``{{ sentry_trace_meta }}`` (``sentry-sdk``'s habit), computed only when rendered.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections import ChainMap
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar, Token
from typing import Any

try:
    import django  # noqa: F401  (asgiref alone is not Django)
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
except ModuleNotFoundError as _exc:
    from .._common import missing_framework

    raise missing_framework(_exc, "django", "django") from _exc

from ..._api import trace_meta_tags
from ..._client import Client, get_client
from ..._context import CURRENT_SPAN, PROPAGATION_CONTEXT
from ..._errors import ConfigurationError
from ..._options import _OPTION_NAMES
from ..._propagation import WSGI_GETTER
from ..._tracing import PropagationContext, Transaction
from .._common import (
    OTHER_TOOLS_KEYS,
    active_request_transaction,
    capture_untraced,
    ensure_client,
    settings_error,
    split_options,
    start_request,
    wsgi_error,
)
from ..asgi import serves_requests
from ..wsgi import defer_request_info, environ_request_info, file_stopped_early
from ._naming import endpoint_name, route_name
from ._rest import hooks as rest_hooks

__all__ = ["TracingMiddleware", "context_processor"]

logger = logging.getLogger("sentry_tracing_mw")

#: The request attribute holding the per-request state.
_STATE_ATTR = "_sentry_tracing_mw"
#: The trace of a request whose method ours does not trace (a request ours saw).
_UNTRACED_ATTR = "_sentry_tracing_mw_untraced"
#: Such a request's exception answered with a 5xx, and whether it is handled.
_ANSWERED_ATTR = "_sentry_tracing_mw_answered"
#: Key of an outer WSGI/ASGI middleware's transaction in the environ / scope.
_OUTER_KEY = "sentry_tracing_mw.transaction"
_MIDDLEWARE_SETTINGS = ("transaction_style", "ignore_paths", "http_methods_to_capture")
_CALLABLE_OPTIONS = frozenset({"traces_sampler", "before_send", "before_send_transaction"})
_ORIGIN = "auto.http.django"


def _settings_options() -> dict[str, Any]:
    """``SENTRY_*`` Django settings as option kwargs."""
    from django.conf import settings
    from django.utils.module_loading import import_string

    known = _OPTION_NAMES | frozenset(_MIDDLEWARE_SETTINGS)
    options: dict[str, Any] = {}
    for attr in dir(settings):
        if not attr.startswith("SENTRY_"):
            continue
        name = attr[7:].lower()
        if name not in known:
            if attr not in OTHER_TOOLS_KEYS:
                logger.warning("ignoring unknown Django setting %s", attr)
            continue
        value = getattr(settings, attr)
        if name in _CALLABLE_OPTIONS and isinstance(value, str):
            try:
                value = import_string(value)
            except ImportError as exc:
                raise ConfigurationError(
                    f"invalid setting {attr}={value!r}: cannot import it ({exc})"
                ) from None
        options[name] = value
    return options


class _State:
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
        self.body: _SyncBody | _AsyncBody | None = None
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
                    _defer_request(tx, request, self.client.options.send_default_pii)
                if tx._end is None:  # (an ended one keeps the status it was sent with)
                    tx._status = "internal_error"
                self.client.capture_exception(exc, span=tx, mechanism="django", handled=handled)
            elif tx._status in (None, "ok"):
                tx._status = "cancelled"  # CancelledError, GeneratorExit, KeyboardInterrupt
        except Exception:
            logger.exception("sentry_tracing_mw: recording an exception failed")


class _Closer:
    """What a response holds of ours: its closer (``state.finish``), and under ASGI the
    state for ``send_response``. Pickled (``UpdateCacheMiddleware`` placed before ours
    caches the response) it is nothing: a cached copy must not hold the request's
    transaction, client and locks (they cannot be pickled: the request failed with 500)."""

    __slots__ = ("state",)

    def __init__(self, state: _State) -> None:
        self.state = state

    def __call__(self) -> None:
        self.state.finish()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # ``functools.partial(int)``: a callable that does nothing, importable wherever
        # the cache is read (a release without this class, a process without the package)
        return functools.partial, (int,)


#: Whether a ``TracingMiddleware`` was built in this process: only then is a request with
#: no state of ours one that a middleware placed before ours failed on.
_middleware_built = False
#: The ``ignore_paths`` of every middleware built (by pattern: settings overridden in a
#: test suite build several): a path one of them ignores reports nothing from before ours.
_ignored_by_any: dict[str, Any] = {}


def _capture_before_ours(exc: BaseException, request: Any) -> None:
    """Report an exception a middleware placed before ours raised on a request ours never
    saw (Django answers it with a 500), in a trace of its own, as sentry-sdk reports it.
    The request is marked seen: Django sends the signal again at every middleware the
    exception crosses (``DEBUG_PROPAGATE_EXCEPTIONS``)."""
    request.__dict__[_STATE_ATTR] = None
    path = getattr(request, "path_info", None)
    if isinstance(path, str) and any(m.match(path) for m in list(_ignored_by_any.values())):
        return
    token = PROPAGATION_CONTEXT.set(get_client().continue_trace(None))
    try:
        _capture_untraced(exc, request)
    finally:
        PROPAGATION_CONTEXT.reset(token)


def _meta(request: Any) -> Any:
    """A Django request's ``META`` as a WSGI environ (an ASGI request's has no scheme)."""
    meta = request.META
    scope = request.__dict__.get("scope")  # ASGIRequest: META has no wsgi.url_scheme
    if scope is not None:
        meta = ChainMap({"wsgi.url_scheme": scope.get("scheme") or "http"}, meta)
    return meta


def _defer_request(tx: Transaction, request: Any, pii: bool) -> None:
    """Give ``tx`` the event's request interface of a Django request (WSGI or ASGI)."""
    defer_request_info(tx, _meta(request), pii)


def _capture_untraced(exc: BaseException, request: Any, handled: bool = False) -> None:
    """``capture_untraced`` for a Django request (its request data built if sent)."""
    info = None if request is None else functools.partial(_info, request)
    capture_untraced(exc, "django", info, handled)


def _info(request: Any, pii: bool) -> dict[str, Any]:
    return environ_request_info(_meta(request), pii)


class _SyncBody:
    """Streamed body wrapper: the transaction is current while producing each chunk."""

    __slots__ = ("_it", "_state", "done")

    def __init__(self, content: Any, state: _State) -> None:
        self._it: Iterator[bytes] = iter(content)
        self._state = state
        self.done = False

    def __iter__(self) -> _SyncBody:
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


class _AsyncBody:
    """Async streamed body wrapper (ASGI)."""

    __slots__ = ("_it", "_state", "done")

    def __init__(self, content: Any, state: _State) -> None:
        self._it = aiter(content)
        self._state = state
        self.done = False

    def __aiter__(self) -> _AsyncBody:
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
            _capture_untraced(exc, self._request)
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
            _capture_untraced(exc, self._request)
            raise
        finally:
            PROPAGATION_CONTEXT.reset(token)


def _untraced_response(response: Any, request: Any) -> None:
    """The response of a method that is not traced: an exception answered with a 5xx
    (``_note_answered``) is reported if the response is still a 5xx, as for a traced one;
    the current trace context (the request's) is kept for a streamed body's app code. An
    ignored path (no context) is left as it is."""
    try:
        answered = request.__dict__.pop(_ANSWERED_ATTR, None)
        if answered is not None and response.status_code >= 500:
            _capture_untraced(answered[0], request, answered[1])
    except Exception:
        logger.debug("reporting an answered exception failed", exc_info=True)
    try:
        ctx = PROPAGATION_CONTEXT.get()
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


def _failed(state: _State | None, exc: BaseException, request: Any) -> None:
    """An exception left the view chain: the owned transaction fails; an untraced
    method's ``SystemExit`` / ``KeyboardInterrupt`` under WSGI is still reported (Django
    turns an ``Exception`` into a 500 itself)."""
    if state is not None and state.owned:
        state.fail(exc, request)
        state.tx.finish()
    elif (
        state is None
        and not isinstance(exc, Exception)
        and PROPAGATION_CONTEXT.get() is not None
        and "scope" not in request.__dict__
        and wsgi_error(exc)
    ):
        _capture_untraced(exc, request)


class TracingMiddleware:
    """Django middleware tracing every request; put it first in ``MIDDLEWARE``."""

    sync_capable = True
    async_capable = True
    origin = _ORIGIN

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)
            # Django adapts a sync process_view with sync_to_async (a thread hop): avoid it.
            self.process_view = self._process_view_async  # type: ignore[method-assign,assignment]
        options = _settings_options()
        try:
            self.config, init_options = split_options(options)
            ensure_client(init_options, "django TracingMiddleware")
        except ConfigurationError as exc:
            raise settings_error(exc, "Django setting", options) from None
        self._endpoint = self.config.transaction_style == "endpoint"
        global _middleware_built
        _middleware_built = True
        ignore = self.config.ignore_paths
        if ignore is not None and len(_ignored_by_any) < 64:
            _ignored_by_any.setdefault(ignore.pattern, ignore)
        _install_hooks()
        _API_LAYERS.look()

    # -- entry points -----------------------------------------------------------------
    def __call__(self, request: Any) -> Any:
        if self._async:
            return self._acall(request)
        state, token, ptoken = self._begin(request)
        try:
            response = self.get_response(request)
            if state is None and ptoken is not None:
                _untraced_response(response, request)
        except BaseException as exc:
            _failed(state, exc, request)
            raise
        finally:
            if token is not None:
                CURRENT_SPAN.reset(token)
            if ptoken is not None:
                PROPAGATION_CONTEXT.reset(ptoken)
        if state is not None:
            self._respond(request, state, response)
        return response

    @serves_requests(lambda names: getattr(names.get("state"), "tx", None))
    async def _acall(self, request: Any) -> Any:
        state, token, ptoken = self._begin(request)
        try:
            response = await self.get_response(request)
            if state is None and ptoken is not None:
                _untraced_response(response, request)
        except BaseException as exc:
            _failed(state, exc, request)
            raise
        finally:
            if token is not None:
                CURRENT_SPAN.reset(token)
            if ptoken is not None:
                PROPAGATION_CONTEXT.reset(ptoken)
        if state is not None:
            self._respond(request, state, response)
        return response

    def process_view(self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any) -> None:
        """Name the transaction before the view runs."""
        seen = _API_LAYERS.seen  # (inline: no call per request)
        if seen >= 0 and len(sys.modules) != seen:
            _API_LAYERS.look()
        state = request.__dict__.get(_STATE_ATTR)
        if state is not None:
            self._name(request, state)

    async def _process_view_async(
        self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> None:
        seen = _API_LAYERS.seen  # (inline: no call per request)
        if seen >= 0 and len(sys.modules) != seen:
            _API_LAYERS.look()
        state = request.__dict__.get(_STATE_ATTR)
        if state is not None:
            self._name(request, state)

    def process_exception(self, request: Any, exception: Exception) -> None:
        """Remember the view's exception; it is captured if Django answers with a 500."""
        state = request.__dict__.get(_STATE_ATTR)
        if state is not None:
            state.exc = exception

    # -- request start ------------------------------------------------------------------
    def _begin(
        self, request: Any
    ) -> tuple[
        _State | None,
        Token[Any] | None,
        Token[PropagationContext | None] | None,
    ]:
        """Start tracing ``request``; returns its state and the context tokens to reset."""
        try:
            meta = request.META
            scope = request.__dict__.get("scope")  # ASGIRequest only (no AttributeError cost)
            if scope is None:  # WSGI: also a WSGI app mounted in a traced ASGI app
                outer = active_request_transaction() or meta.get(_OUTER_KEY)
            else:
                # ASGI: the scope only. The current span may be an earlier request's on
                # this connection (uvicorn starts a request inside the previous one's last
                # send, and resumes reading inside an app's receive(), copying its context).
                outer = scope.get(_OUTER_KEY)
            if outer is not None:  # an outer WSGI/ASGI middleware owns the transaction
                state = _State(
                    outer, get_client(), request.method or "GET", False, self, scope is None
                )
                request.__dict__[_STATE_ATTR] = state
                return state, None, None
            ignore = self.config.ignore_paths
            if ignore is not None and ignore.match(request.path_info):
                request.__dict__[_STATE_ATTR] = None  # seen, and ignored
                return None, None, PROPAGATION_CONTEXT.set(None)
            client = get_client()
            method = (request.method or "GET").upper()
            if scope is None:
                carrier_request, key = request.environ, "wsgi_environ"
            else:
                carrier_request, key = scope, "asgi_scope"
            tx, ctx = start_request(
                client,
                method,
                request.path,
                # no trace header at all (the common case at a trace's head): skip parsing
                meta if "HTTP_SENTRY_TRACE" in meta or "HTTP_TRACEPARENT" in meta else None,
                WSGI_GETTER,
                meta.get("REMOTE_ADDR"),
                carrier_request,
                key,
                method in self.config.methods,
                _ORIGIN,
                "http.server",
                (
                    (lambda: self.resolve_route(request))
                    if client.options.traces_sampler is not None
                    else None
                ),
            )
            if tx is None:  # a method that is not traced: its trace, for errors on the way out
                request.__dict__[_UNTRACED_ATTR] = ctx
                return None, None, PROPAGATION_CONTEXT.set(ctx)
            if tx._recording:
                _defer_request(tx, request, client.options.send_default_pii)
            state = _State(tx, client, method, True, self, scope is None)
            request.__dict__[_STATE_ATTR] = state
            if scope is not None:
                _note_asgi_state(state)
            return state, CURRENT_SPAN.set(tx), None
        except Exception:
            logger.exception("sentry_tracing_mw: starting the request transaction failed")
            return None, None, None

    def resolve_route(self, request: Any) -> str | None:
        """The route template before the view runs (one URLconf walk; for
        ``traces_sampler``), whatever the transaction style."""
        urlconf = getattr(request, "urlconf", None)
        match = _resolve(request, urlconf)
        route = getattr(match, "route", None)
        return route_name(route, urlconf) if isinstance(route, str) else None

    # -- naming -------------------------------------------------------------------------
    def _match_name(self, match: Any, urlconf: Any = None) -> tuple[str | None, str]:
        if not self._endpoint:
            route = match.route
            if isinstance(route, str):
                return route_name(route, urlconf), "route"
        return endpoint_name(match.func), "component"

    def _name(self, request: Any, state: _State) -> bool:
        """Name the transaction from ``request.resolver_match``; False when there is none."""
        match = request.resolver_match
        if match is None:
            return False
        if match is state.match:
            return True  # named from this very match already
        state.match = match
        try:
            name, source = self._match_name(match, getattr(request, "urlconf", None))
            if name is not None:
                state.tx.set_name(name, source)
        except Exception:
            logger.debug("naming the transaction failed", exc_info=True)
        return True

    # -- response -----------------------------------------------------------------------
    def _respond(self, request: Any, state: _State, response: Any) -> None:
        try:
            tx = state.tx
            status = response.status_code
            recording = tx._recording
            # An unsampled request sends nothing but errors: no name or status work for it.
            if (recording or not state.owned) and (
                not self._name(request, state) and tx._source == "url"
            ):
                self._name_unmatched(request, tx, state.method, status)
            if status >= 500 and state.answered is not None:
                # captured once, whatever the sampling or who owns the transaction (the
                # status is the response's)
                state.fail(state.answered, request, state.answered_handled)
            if not state.owned:
                return
            if recording:
                tx.set_http_status(status)
                if state.client.options.send_default_pii:
                    tx._user = user_info(request)
            streaming = response.streaming
            if streaming and getattr(response, "file_to_stream", None) is None:
                if not recording:  # for an error of the body's: its event's request
                    state.request = request
                content = response.streaming_content  # runs app code: keep the trace current
                if response.is_async:
                    state.body = _AsyncBody(content, state)
                else:
                    state.body = _SyncBody(content, state)
                response.streaming_content = state.body
            closers = getattr(response, "_resource_closers", None)
            if isinstance(closers, list) and (recording or streaming):
                start = None
                if recording and streaming and state.body is None:
                    # A FileResponse: its file tells how far the server sent it, read
                    # before the response's own closer closes the file.
                    try:
                        start = response.file_to_stream.tell()
                    except Exception:  # a pipe, a reader without tell(): not told
                        start = None
                if start is not None:
                    state.file = response.file_to_stream
                    state.file_start = start
                    closers.insert(0, _Closer(state))
                else:
                    closers.append(_Closer(state))  # ends when the body has been sent
                state.responded = True
            else:  # unsampled and built, or no closers: nothing to wait for
                state.finish()
            if not state.wsgi:  # ASGI: sending it may fail or be cut (_watch_asgi_sends)
                if not recording:
                    state.request = request  # for the event of a failed send
                response.__dict__[_STATE_ATTR] = _Closer(state)
        except Exception:
            logger.exception("sentry_tracing_mw: finishing the request transaction failed")
            state.tx.finish()

    def _name_for_error(self, request: Any, state: _State) -> None:
        """Name a request that raised before Django resolved its URL (as its response will)."""
        try:
            if not self._name(request, state) and state.tx._source == "url":
                self._name_unmatched(request, state.tx, state.method, 500)
        except Exception:
            logger.debug("naming a failed request failed", exc_info=True)

    def _name_unmatched(self, request: Any, tx: Transaction, method: str, status: int) -> None:
        if status != 404:
            # A middleware answered before URL resolution: name it after its route.
            try:
                match = _resolve(request, getattr(request, "urlconf", None))
                if match is not None:
                    name, source = self._match_name(match)
                    if name is not None:
                        tx.set_name(name, source)
                        return
            except Exception:
                logger.debug("resolving an unmatched request failed", exc_info=True)
        tx.set_name(f"{method} {status}", "route")


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


def _resolve(request: Any, urlconf: Any) -> Any:
    """``request.path_info`` resolved as Django will resolve it (None: no route), in the
    language its path names (``i18n_patterns``: ``LocaleMiddleware`` has not run yet)."""
    from django.conf import settings
    from django.urls import Resolver404, get_resolver
    from django.utils import translation

    path = request.path_info
    resolver = get_resolver(urlconf)
    language = translation.get_language_from_path(path) if settings.USE_I18N else None
    try:
        if language and language != translation.get_language():
            with translation.override(language):
                return resolver.resolve(path)
        return resolver.resolve(path)
    except Resolver404:
        return None


def _on_request_exception(sender: Any, request: Any = None, **kwargs: Any) -> None:
    """``got_request_exception`` receiver: Django is turning an exception into a 500."""
    try:
        state = None if request is None else request.__dict__.get(_STATE_ATTR)
        tx = state.tx if state is not None else active_request_transaction()
        if tx is None:
            # A method that is not traced still reports its errors (its trace context is
            # current); an ignored path (no context) reports nothing; a request ours never
            # saw (a middleware before ours failed on it) reports in a trace of its own.
            exc = sys.exc_info()[1]
            if not isinstance(exc, Exception):
                return
            seen = {} if request is None else request.__dict__
            seen.pop(_ANSWERED_ATTR, None)  # an earlier exception answered inside the view
            untraced = seen.get(_UNTRACED_ATTR)
            if untraced is not None:
                # the request's own trace, whatever the thread holds: ours may have handed
                # the response back (a middleware before ours failed on it)
                token = PROPAGATION_CONTEXT.set(untraced)
                try:
                    _capture_untraced(exc, request)
                finally:
                    PROPAGATION_CONTEXT.reset(token)
            elif PROPAGATION_CONTEXT.get() is not None:
                _capture_untraced(exc, request)
            elif _middleware_built and request is not None and _STATE_ATTR not in seen:
                _capture_before_ours(exc, request)
            return
        exc = sys.exc_info()[1]
        if exc is None and state is not None:
            exc = state.exc
        if exc is None:
            exc = _exception_from_frames()
        if exc is None:
            tx._status = "internal_error"
            return
        if state is not None:
            state.exc = exc
            state.fail(exc, request)
            if state.owned and state.responded and state.tx._end is None:
                # A middleware before ours raised after we answered: Django sends a 500 of
                # its own and never closes our response, whose closer ends the transaction.
                tx = state.tx
                if tx._recording:
                    tx.set_http_status(500)
                tx.finish()
        else:
            tx._status = "internal_error"
            tx._client.capture_exception(exc, span=tx, mechanism="django", handled=False)
    except Exception:
        logger.exception("sentry_tracing_mw: capturing a request exception failed")


def _exception_from_frames() -> BaseException | None:
    """The exception handed to ``response_for_exception`` (async handlers run it in a thread
    where ``sys.exc_info()`` is empty)."""
    frame = sys._getframe(1)
    depth = 0
    while frame is not None and depth < 16:
        if frame.f_code.co_name == "response_for_exception":
            exc = frame.f_locals.get("exc")
            return exc if isinstance(exc, BaseException) else None
        frame = frame.f_back  # type: ignore[assignment]
        depth += 1
    return None


_hooks_installed = False


class _AsgiCall:
    """What our ``ASGIHandler.__call__`` keeps of an HTTP request, in ``_ASGI_CALL`` (the
    tasks Django starts for the request see it too): the state our middleware gives the
    request, and, where Django never reads the connection again after the request body
    (before 5.0: no ``ASGIHandler.listen_for_disconnect``), its ``receive`` for the
    sending watch to see a client leave (see ``_watch_asgi_sends``)."""

    __slots__ = ("receive", "state")

    def __init__(self, receive: Any) -> None:
        self.receive = receive
        self.state: _State | None = None


_ASGI_CALL: ContextVar[_AsgiCall | None] = ContextVar("sentry_tracing_mw.django", default=None)


def _note_asgi_state(state: _State) -> None:
    """Give our ``ASGIHandler`` wrappers the request's state (see ``_AsgiCall``)."""
    call = _ASGI_CALL.get()
    if call is not None:
        call.state = state


def _wrap_asgi_handler() -> None:
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


def _watch_asgi_sends() -> None:
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
        closer = getattr(response, "__dict__", {}).get(_STATE_ATTR)
        if type(closer) is not _Closer:
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


def _watch_disconnect(state: _State, receive: Any, send: Any) -> tuple[Any, Any]:
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


def _send_failed(state: _State, exc: BaseException) -> None:
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


def _note_answered(request: Any, exc: BaseException, response: Any, handled: bool) -> None:
    """Note the view's exception ``exc`` answered with ``response`` (by a middleware's
    ``process_exception``, DRF's or Ninja's handler): captured when that response, a 5xx,
    comes back through ours (never raises)."""
    try:
        if response is not None and response.status_code >= 500:
            fields = request.__dict__
            state = fields.get(_STATE_ATTR)
            if state is not None:
                state.answered = exc
                state.answered_handled = handled
                return
            if _UNTRACED_ATTR in fields:  # a method that is not traced: decided the same way
                fields[_ANSWERED_ATTR] = (exc, handled)  # (by _untraced_response)
    except Exception:
        logger.debug("noting a view's exception failed", exc_info=True)


#: Django REST framework and Django Ninja, hooked once imported (a per-request
#: ``request.urlconf`` or a view may import them after the first request).
_API_LAYERS = rest_hooks(_note_answered)


def _note_handled_exceptions() -> None:
    """Note a view's exception that a middleware's ``process_exception`` answered with a
    5xx.

    Django calls those innermost first and stops at the first that returns a response,
    so ours (outermost) never runs when an inner one answers; a 5xx answer is still an
    error (captured when the response comes back through ours), as in Flask and Starlette.
    """
    from django.core.handlers.base import BaseHandler

    original = BaseHandler.__dict__["process_exception_by_middleware"]
    if getattr(original, "_stm_noting", False):
        return

    def process_exception_by_middleware(self: Any, exception: Exception, request: Any) -> Any:
        response = original(self, exception, request)  # None: raised on, to the signal
        _note_answered(request, exception, response, False)
        return response

    process_exception_by_middleware._stm_noting = True  # type: ignore[attr-defined]
    process_exception_by_middleware.__wrapped__ = original  # type: ignore[attr-defined]
    BaseHandler.process_exception_by_middleware = process_exception_by_middleware


def _install_hooks(tag_library: bool = True) -> None:
    """Connect the exception signal, the ORM and template hooks (once per process) and
    register the tag library (on every middleware start: engines may be new)."""
    global _hooks_installed
    if not _hooks_installed:
        _hooks_installed = True
        try:
            from django.core.signals import got_request_exception

            got_request_exception.connect(
                _on_request_exception, dispatch_uid="sentry_tracing_mw.exceptions"
            )
        except Exception:
            logger.exception("sentry_tracing_mw: connecting got_request_exception failed")
        try:
            _note_handled_exceptions()
        except Exception:
            logger.exception("sentry_tracing_mw: instrumenting process_exception failed")
        try:
            from ._orm import install_orm

            install_orm()
        except Exception:
            logger.exception("sentry_tracing_mw: instrumenting the ORM failed")
        try:
            from ._templates import install_templates

            install_templates()
        except Exception:
            logger.exception("sentry_tracing_mw: instrumenting templates failed")
        try:
            _wrap_asgi_handler()
        except Exception:
            logger.exception("sentry_tracing_mw: wrapping Django's ASGI handler failed")
        try:
            _watch_asgi_sends()
        except Exception:
            logger.exception("sentry_tracing_mw: watching Django's ASGI sends failed")
    if not tag_library:
        return
    try:
        from ._templates import register_tag_library

        register_tag_library()
    except Exception:
        logger.debug("registering the template tag library failed", exc_info=True)


class _TraceMeta:
    """Renders the trace meta tags when (and only when) a template prints it."""

    __slots__ = ()

    def __str__(self) -> str:
        from django.utils.safestring import mark_safe

        return mark_safe(trace_meta_tags())  # type: ignore[no-any-return]

    def __html__(self) -> str:
        return trace_meta_tags()

    def __bool__(self) -> bool:
        return True


_TRACE_META = _TraceMeta()


def context_processor(request: Any) -> Mapping[str, Any]:
    """Django context processor adding ``sentry_trace_meta`` (``sentry-sdk``'s name)."""
    return {"sentry_trace_meta": _TRACE_META}
