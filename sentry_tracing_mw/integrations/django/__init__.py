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

import functools
import logging
import sys
from collections.abc import Callable, Mapping
from contextvars import Token
from typing import Any

try:
    import django  # noqa: F401  (asgiref alone is not Django)
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
except ModuleNotFoundError as _exc:
    from .._common import missing_framework

    raise missing_framework(_exc, "django", "django") from _exc

from ..._api import trace_meta_tags
from ..._client import get_client
from ..._context import CURRENT_SPAN, PROPAGATION_CONTEXT, request_context
from ..._errors import ConfigurationError
from ..._options import _OPTION_NAMES
from ..._propagation import extract_environ
from ..._tracing import PropagationContext, Transaction
from .._common import (
    OTHER_TOOLS_KEYS,
    active_request_transaction,
    ensure_client,
    settings_error,
    split_options,
    start_request,
)
from ..asgi import serves_requests
from ._asgi import note_asgi_state, watch_asgi_sends, wrap_asgi_handler
from ._naming import endpoint_name, route_name
from ._rest import hooks as rest_hooks
from ._state import (
    ANSWERED_ATTR,
    STATE_ATTR,
    UNTRACED_ATTR,
    AsyncBody,
    Closer,
    RequestState,
    SyncBody,
    capture_untraced_request,
    defer_request,
    untraced_response,
    user_info,
    view_failed,
)

__all__ = ["TracingMiddleware", "context_processor"]

logger = logging.getLogger("sentry_tracing_mw")

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
    request.__dict__[STATE_ATTR] = None
    path = getattr(request, "path_info", None)
    if isinstance(path, str) and any(m.match(path) for m in list(_ignored_by_any.values())):
        return
    token = PROPAGATION_CONTEXT.set(get_client().continue_trace(None))
    try:
        capture_untraced_request(exc, request)
    finally:
        PROPAGATION_CONTEXT.reset(token)


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
                untraced_response(response, request)
        except BaseException as exc:
            view_failed(state, exc, request)
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
                untraced_response(response, request)
        except BaseException as exc:
            view_failed(state, exc, request)
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
        state = request.__dict__.get(STATE_ATTR)
        if state is not None:
            self._name(request, state)

    async def _process_view_async(
        self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> None:
        seen = _API_LAYERS.seen  # (inline: no call per request)
        if seen >= 0 and len(sys.modules) != seen:
            _API_LAYERS.look()
        state = request.__dict__.get(STATE_ATTR)
        if state is not None:
            self._name(request, state)

    def process_exception(self, request: Any, exception: Exception) -> None:
        """Remember the view's exception; it is captured if Django answers with a 500."""
        state = request.__dict__.get(STATE_ATTR)
        if state is not None:
            state.exc = exception

    # -- request start ------------------------------------------------------------------
    def _begin(
        self, request: Any
    ) -> tuple[
        RequestState | None,
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
                state = RequestState(
                    outer, get_client(), request.method or "GET", False, self, scope is None
                )
                request.__dict__[STATE_ATTR] = state
                return state, None, None
            ignore = self.config.ignore_paths
            if ignore is not None and ignore.match(request.path_info):
                request.__dict__[STATE_ATTR] = None  # seen, and ignored
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
                extract_environ(meta),
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
                request.__dict__[UNTRACED_ATTR] = ctx
                return None, None, PROPAGATION_CONTEXT.set(ctx)
            if tx._recording:
                defer_request(tx, request, client.options.send_default_pii)
            state = RequestState(tx, client, method, True, self, scope is None)
            request.__dict__[STATE_ATTR] = state
            if scope is not None:
                note_asgi_state(state)
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

    def _name(self, request: Any, state: RequestState) -> bool:
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
    def _respond(self, request: Any, state: RequestState, response: Any) -> None:
        try:
            tx = state.tx
            status = response.status_code
            recording = tx._recording
            # An unsampled request sends nothing but errors: no name or status work for it.
            if (recording or not state.owned) and (
                not self._name(request, state) and tx._source == "url"
            ):
                self._name_unmatched(request, tx, state.method, status)
                state.status_named = True
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
                    state.body = AsyncBody(content, state)
                else:
                    state.body = SyncBody(content, state)
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
                    closers.insert(0, Closer(state))
                else:
                    closers.append(Closer(state))  # ends when the body has been sent
                state.responded = True
            else:  # unsampled and built, or no closers: nothing to wait for
                state.finish()
            if not state.wsgi:  # ASGI: sending it may fail or be cut (watch_asgi_sends)
                if not recording:
                    state.request = request  # for the event of a failed send
                response.__dict__[STATE_ATTR] = Closer(state)
        except Exception:
            logger.exception("sentry_tracing_mw: finishing the request transaction failed")
            state.tx.finish()

    def _name_for_error(self, request: Any, state: RequestState) -> None:
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
        state = None if request is None else request.__dict__.get(STATE_ATTR)
        tx = state.tx if state is not None else active_request_transaction()
        if tx is None:
            # A method that is not traced still reports its errors (its trace context is
            # current); an ignored path (no context) reports nothing; a request ours never
            # saw (a middleware before ours failed on it) reports in a trace of its own.
            exc = sys.exc_info()[1]
            if not isinstance(exc, Exception):
                return
            seen = {} if request is None else request.__dict__
            seen.pop(ANSWERED_ATTR, None)  # an earlier exception answered inside the view
            untraced = seen.get(UNTRACED_ATTR)
            if untraced is not None:
                # the request's own trace, whatever the thread holds: ours may have handed
                # the response back (a middleware before ours failed on it)
                token = PROPAGATION_CONTEXT.set(untraced)
                try:
                    capture_untraced_request(exc, request)
                finally:
                    PROPAGATION_CONTEXT.reset(token)
            elif request_context() is not None:
                capture_untraced_request(exc, request)
            elif _middleware_built and request is not None and STATE_ATTR not in seen:
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


def _note_answered(request: Any, exc: BaseException, response: Any, handled: bool) -> None:
    """Note the view's exception ``exc`` answered with ``response`` (by a middleware's
    ``process_exception``, DRF's or Ninja's handler): captured when that response, a 5xx,
    comes back through ours (never raises)."""
    try:
        if response is not None and response.status_code >= 500:
            fields = request.__dict__
            state = fields.get(STATE_ATTR)
            if state is not None:
                state.answered = exc
                state.answered_handled = handled
                return
            if UNTRACED_ATTR in fields:  # a method that is not traced: decided the same way
                fields[ANSWERED_ATTR] = (exc, handled)  # (by untraced_response)
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


def _adopt(request: Any, response: Any) -> None:
    """The response Django's handler sends for ``request``: when a middleware placed before
    ours replaced ours (``ConditionalGetMiddleware``'s 304, ``LocaleMiddleware``'s
    redirect, an exception it raised turned into a 403), our closer was on a response
    nobody closes. The transaction ends with the one sent instead, with its status
    (never raises)."""
    try:
        state = request.__dict__.get(STATE_ATTR)
        if state is None or not state.owned or state.tx._end is not None:
            return
        closers = getattr(response, "_resource_closers", None)
        if not isinstance(closers, list) or any(
            type(c) is Closer and c.state is state for c in closers
        ):
            return  # ours is the one sent (or one that cannot end it)
        tx = state.tx
        state.body = state.file = None  # the replaced response's: never sent
        if tx._recording:
            status = response.status_code
            if state.status_named:  # after the status: the one the client gets
                state.mw._name_unmatched(request, tx, state.method, status)
            tx.set_http_status(status)
        closers.append(Closer(state))
        if not state.wsgi:
            response.__dict__[STATE_ATTR] = Closer(state)
    except Exception:
        logger.debug("adopting the response sent failed", exc_info=True)


def _adopt_sent_responses() -> None:
    """Make ``BaseHandler.get_response`` (and its async twin) hand the response it
    returns, the one the server sends, to ``_adopt``."""
    from django.core.handlers.base import BaseHandler

    original = BaseHandler.__dict__["get_response"]
    original_async = BaseHandler.__dict__["get_response_async"]
    if getattr(original, "_stm_adopting", False):
        return

    @functools.wraps(original)
    def get_response(self: Any, request: Any) -> Any:
        response = original(self, request)
        _adopt(request, response)
        return response

    @functools.wraps(original_async)
    async def get_response_async(self: Any, request: Any) -> Any:
        response = await original_async(self, request)
        _adopt(request, response)
        return response

    get_response._stm_adopting = True  # type: ignore[attr-defined]
    BaseHandler.get_response = get_response
    BaseHandler.get_response_async = get_response_async


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
            _adopt_sent_responses()
        except Exception:
            logger.exception("sentry_tracing_mw: watching Django's responses failed")
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
            wrap_asgi_handler()
        except Exception:
            logger.exception("sentry_tracing_mw: wrapping Django's ASGI handler failed")
        try:
            watch_asgi_sends()
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
