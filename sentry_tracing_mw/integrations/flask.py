"""Flask integration: ``FlaskTracing(app)`` or ``FlaskTracing().init_app(app)``.

It wraps ``app.wsgi_app`` (so servers and wrappers that call ``app.wsgi_app`` are traced
too) with the WSGI lifecycle middleware and names each transaction
after its URL rule as soon as routing has happened, before the view runs:
``/users/<int:user_id>``, ``/api/v1/items/<slug>`` (blueprint prefixes and any
``SCRIPT_NAME`` mount prefix included), or ``"GET 404"`` when nothing matched.

Options come from keyword arguments, then ``app.config["SENTRY_*"]`` (any ``init()``
option as ``SENTRY_<OPTION_UPPER>``, plus ``SENTRY_TRANSACTION_STYLE``,
``SENTRY_IGNORE_PATHS`` and ``SENTRY_HTTP_METHODS_TO_CAPTURE``); other ``SENTRY_*`` keys are
warned about (a typo is never ignored silently).

Connexion 3 serves the Flask app behind its own ASGI middleware, which answers some
requests itself (validation 400s, 405s, its Swagger UI): wrap the Connexion app in the
Starlette integration's ``TracingMiddleware`` (Connexion routes with Starlette's router)
and call ``FlaskTracing(connexion_app.app)`` too. Flask names the requests it routes;
the others are named after their status (``"GET 400"``, ``"POST 405"``) or Connexion's
mount (``/api/v1/ui``), never after their raw path.

Exceptions Flask turns into a 500 are captured, and so are those an error handler answers
with a 5xx (``@app.errorhandler``, ``abort(503)``, Flask-RESTX's and Flask-RESTful's
``Api`` handlers); an ``abort(5xx)`` raised on purpose is reported handled.

Templates get a ``sentry_trace_meta`` global that works both as ``{{ sentry_trace_meta }}``
and ``{{ sentry_trace_meta() }}``, also in every ``render_template`` context (with
``sentry_trace``, ``sentry-sdk``'s older name), where ``sentry-sdk``'s own would go.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import sys
from collections.abc import Callable
from types import FunctionType
from typing import Any

try:
    from flask import Flask, got_request_exception, request
    from markupsafe import Markup
    from werkzeug.exceptions import HTTPException
    from werkzeug.wsgi import ClosingIterator
except ModuleNotFoundError as _exc:
    from ._common import missing_framework

    raise missing_framework(_exc, "flask", "flask") from _exc

try:  # the request context's context variable: one lookup instead of the proxy's walk
    from flask.globals import _cv_request
except ImportError:  # pragma: no cover - a Flask without it: the proxy
    _cv_request = None  # type: ignore[assignment]

from .._api import trace_meta_tags
from .._client import get_client
from .._context import request_context
from .._errors import ConfigurationError
from .._options import _OPTION_NAMES
from .._tracing import Transaction
from ._common import (
    _MIDDLEWARE_OPTIONS,
    OTHER_TOOLS_KEYS,
    ImportHooks,
    active_request_transaction,
    capture_untraced,
    settings_error,
    split_options,
)
from .wsgi import (
    COMPLETE_BODY_KEY,
    ENVIRON_KEY,
    TracingMiddleware,
    WSGIApp,
    defer_request_info,
    environ_request_info,
    wsgi_str,
)

__all__ = ["FlaskTracing", "FlaskTracingMiddleware", "TraceMeta"]

logger = logging.getLogger("sentry_tracing_mw")

EXTENSION_KEY = "sentry_tracing_mw"
#: On the request: the exception an app's error handler answered (until process_response).
_HANDLED_ATTR = "_stm_handled_exception"
_API_ERROR_ATTR = "_stm_api_error"  # the error an API extension's handle_error is answering
_CLIENT_ERROR_ATTR = "_stm_client_error"  # a 4xx exception signalled: an error if it ends 5xx
_REPORTING_ATTR = "_stm_reports"  # on a wrapped call_on_close function: the app's own
_CONFIG_KEYS = tuple(
    (f"SENTRY_{name.upper()}", name) for name in sorted(_OPTION_NAMES | _MIDDLEWARE_OPTIONS)
)


_KNOWN_KEYS = frozenset(key for key, _ in _CONFIG_KEYS)


def _warn_unknown_keys(config: Any) -> None:
    """Warn about ``SENTRY_*`` keys of ``app.config`` that are no option (a typo would
    otherwise be ignored silently), as the Django integration does for its settings."""
    unknown = sorted(
        key
        for key in config
        if isinstance(key, str)
        and key.startswith("SENTRY_")
        and key not in _KNOWN_KEYS
        and key not in OTHER_TOOLS_KEYS
    )
    if not unknown:
        return
    shown = []
    for key in unknown:
        # (compared without the prefix all share: else anything "resembles" something)
        close = difflib.get_close_matches(key[7:], [k[7:] for k in _KNOWN_KEYS], 1, 0.8)
        shown.append(f"{key} (did you mean SENTRY_{close[0]}?)" if close else key)
    logger.warning("FlaskTracing: ignoring unknown app.config keys %s", ", ".join(shown))


def _prefix(environ: dict[str, Any]) -> str:
    """The mount prefix (``SCRIPT_NAME``) without a trailing slash."""
    script = environ.get("SCRIPT_NAME")
    if not script:
        return ""
    return wsgi_str(str(script)).rstrip("/")


class TraceMeta:
    """The ``sentry_trace_meta`` Jinja global: the current trace's ``<meta>`` tags.

    Renders as is (``{{ sentry_trace_meta }}``, the ``sentry-sdk`` habit) and when called
    (``{{ sentry_trace_meta() }}``); the result is ``Markup`` so autoescaping keeps it.
    """

    __slots__ = ()

    def __call__(self) -> Markup:
        try:
            return Markup(trace_meta_tags())
        except Exception:
            logger.exception("sentry_tracing_mw: rendering trace meta tags failed")
            return Markup("")

    def __html__(self) -> str:
        return str(self())

    def __str__(self) -> str:
        return str(self())

    def __repr__(self) -> str:
        return "<sentry_trace_meta>"


class FlaskTracingMiddleware(TracingMiddleware):
    """The WSGI lifecycle middleware installed as ``app.wsgi_app`` by :class:`FlaskTracing`."""

    origin = "auto.http.flask"
    name_unmatched = True
    #: Marked by the app's process_response (see ``_finishing_process_response``).
    complete_body_key: str | None = COMPLETE_BODY_KEY

    def __init__(self, app: WSGIApp, flask_app: Flask, **options: Any) -> None:
        super().__init__(app, **options)
        self.flask_app = flask_app
        self._endpoint_style = self.config.transaction_style == "endpoint"
        if getattr(app, "__self__", None) is not flask_app:
            # app.wsgi_app was already wrapped (a WSGI middleware between us and Flask
            # may run code of its own over the body): end with the body, as for any app.
            self.complete_body_key = None

    def resolve_route(self, environ: dict[str, Any]) -> str | None:
        """The URL rule (with mount prefix) this request will match, for ``traces_sampler``."""
        rule = self._match_rule(environ)
        return None if rule is None else _prefix(environ) + rule.rule

    def _match_rule(self, environ: dict[str, Any]) -> Any:
        """The URL rule this request matches (None: unmatched), outside Flask's routing."""
        app = self.flask_app
        try:
            adapter = app.create_url_adapter(app.request_class(environ, populate_request=False))
            if adapter is None:
                return None
            rule, _ = adapter.match(return_rule=True)
        except Exception:  # unmatched (NotFound, MethodNotAllowed, redirects) or broken
            return None
        return rule

    # -- hooks (registered on this middleware's Flask app) --------------------------------
    def on_request_started(self, *_: Any, **__: Any) -> None:
        """Name the transaction from the matched URL rule, before the view runs.

        Called first thing in the app's ``preprocess_request`` (see ``FlaskTracing``):
        right after ``request_started``, for matched and unmatched requests alike, before
        the app's ``url_value_preprocessor`` and ``before_request`` functions. A signal
        receiver would cost a receiver lookup and coroutine checks per request, a
        ``url_value_preprocessor`` two ``request`` proxy lookups in Flask's own loop.
        """
        try:
            try:
                req = _cv_request.get().request
            except (AttributeError, LookupError):
                req = request._get_current_object()  # type: ignore[attr-defined]
            environ = req.environ
            tx = environ.get(ENVIRON_KEY) or active_request_transaction()
            if tx is None:
                return
            rule = req.url_rule
            if rule is None:
                code = getattr(req.routing_exception, "code", None)
                if isinstance(code, int):
                    tx.set_name(f"{req.method} {code}", "route")
                return
            self._name_rule(tx, rule, environ)
        except Exception:
            logger.exception("sentry_tracing_mw: naming the Flask transaction failed")

    def _name_rule(self, tx: Transaction, rule: Any, environ: dict[str, Any]) -> None:
        if self._endpoint_style:
            tx.set_name(rule.endpoint, "component")
        elif environ.get("SCRIPT_NAME"):
            tx.set_name(_prefix(environ) + rule.rule, "route")
        else:
            tx.set_name(rule.rule, "route")

    def on_exception(
        self,
        sender: Any,
        exception: BaseException,
        *,
        handled: bool = False,
        answered_5xx: bool = False,
        **_: Any,
    ) -> None:
        """Capture an exception Flask turns into a 500 response (once).

        A request that failed before ``preprocess_request`` named it (a ``request_started``
        receiver, the session interface before URL matching) is named first: after its
        route when it has one, else ``"GET 500"`` as its response will name it.
        """
        try:
            if not answered_5xx and _client_error(exception):
                # A 4xx sent through the signal (Flask-RESTful sends every error), or one an
                # error handler raised, which Flask answers with a 500: decided on the
                # response (``_finishing_process_response``).
                with contextlib.suppress(Exception):  # (no request: nothing to decide)
                    _request().__dict__.setdefault(_CLIENT_ERROR_ATTR, exception)
                return
            req = request._get_current_object()  # type: ignore[attr-defined]
            tx = req.environ.get(ENVIRON_KEY) or active_request_transaction()
            if tx is None and request_context() is None:
                return  # an ignored path: no tracing, no error events (as every integration)
            if tx is not None and tx._source == "url":
                rule = req.url_rule
                if rule is None and req.routing_exception is None:
                    rule = self._match_rule(req.environ)  # failed before URL matching
                if rule is not None:
                    self._name_rule(tx, rule, req.environ)
                else:
                    tx.set_name(f"{req.method} 500", "route")
            client = get_client()
            pii = client.options.send_default_pii
            if tx is None:  # a method that is not traced: its event has the request too
                info = functools.partial(environ_request_info, req.environ)
                capture_untraced(exception, "flask", info, handled)
                return
            if tx._request is None:  # unsampled: for the event
                defer_request_info(tx, req.environ, pii)
            client.capture_exception(exception, span=tx, mechanism="flask", handled=handled)
        except Exception:
            logger.exception("sentry_tracing_mw: capturing a Flask exception failed")


def _on_exception(sender: Any, exception: BaseException, **kwargs: Any) -> None:
    """``got_request_exception`` receiver of every traced app."""
    extensions = getattr(sender, "extensions", None)
    middleware = extensions.get(EXTENSION_KEY) if isinstance(extensions, dict) else None
    if isinstance(middleware, FlaskTracingMiddleware):
        if isinstance(exception, HTTPException) and "handled" not in kwargs:
            # an abort(5xx) an API extension answers (and signals): handled
            with contextlib.suppress(Exception):
                if _request().__dict__.get(_API_ERROR_ATTR) is exception:
                    kwargs["handled"] = True
        middleware.on_exception(sender, exception, **kwargs)


_TRACE_META = TraceMeta()


def _trace_meta_context() -> dict[str, TraceMeta]:
    """The context processor that puts ``sentry_trace_meta`` (and ``sentry_trace``, its
    older ``sentry-sdk`` name) in every ``render_template`` context. A template context
    wins over the Jinja globals, and ``sentry-sdk``'s Flask integration (``sentry_sdk.init``
    in the same process) fills it with its own trace's tags, a string (so
    ``{{ sentry_trace_meta() }}`` failed): it leaves a context that has ``sentry_trace``."""
    return {"sentry_trace": _TRACE_META, "sentry_trace_meta": _TRACE_META}


def _add_template_global(app: Flask) -> None:
    """``sentry_trace_meta`` in the app's Jinja globals, without creating ``app.jinja_env``
    early (settings made after ``FlaskTracing(app)``, ``jinja_options`` and
    ``TEMPLATES_AUTO_RELOAD``, would be ignored): added when Flask creates it; and in
    the context of every ``render_template`` (``_trace_meta_context``)."""
    processors = app.template_context_processors.setdefault(None, [])
    if _trace_meta_context not in processors:
        processors.insert(0, _trace_meta_context)  # first: the app's own processors win
    if "jinja_env" in app.__dict__:  # (a cached property: created already)
        app.jinja_env.globals["sentry_trace_meta"] = _TRACE_META
        return
    create = app.create_jinja_environment

    def create_jinja_environment() -> Any:
        env = create()
        env.globals["sentry_trace_meta"] = _TRACE_META
        return env

    app.create_jinja_environment = create_jinja_environment  # type: ignore[method-assign]


def _client_error(exc: BaseException) -> bool:
    """An HTTP exception that stands for a 4xx response: werkzeug's (its own code, or the
    status of the response it carries: ``abort(make_response(..., 400))``), or Starlette's
    (raised out of Flask by Connexion 3's error handler, which its middleware answers with
    the 4xx)."""
    if isinstance(exc, HTTPException):
        code = exc.code
        if code is None:
            code = getattr(exc.response, "status_code", None)
        return type(code) is int and code < 500
    code = getattr(exc, "status_code", None)
    return (
        type(code) is int
        and code < 500
        and any(cls.__name__ == "HTTPException" for cls in type(exc).__mro__)
    )


def _naming_preprocess(original: Callable[[], Any], name: Callable[[], None]) -> Callable[[], Any]:
    """``app.preprocess_request`` that names the transaction first (an instance attribute:
    Flask's ``full_dispatch_request`` calls ``self.preprocess_request()`` per request)."""

    def preprocess_request() -> Any:
        seen = _API_EXTENSIONS.seen  # (inline: no call per request)
        if seen >= 0 and len(sys.modules) != seen:
            _API_EXTENSIONS.look()
        name()
        return original()

    return preprocess_request


def _hook_api(class_name: str, module: Any) -> bool:
    """Note the errors an API extension's ``Api.handle_error`` answers, as
    ``_noting_handle_user_exception`` notes Flask's (a 5xx answer is captured by
    ``process_response``; one they also signal is captured once: the client deduplicates).
    False while the module is still being imported (by another thread)."""
    cls = getattr(module, class_name, None)
    if cls is None:
        return False
    original = cls.__dict__["handle_error"]
    if not getattr(original, "_stm_noting", False):  # (another thread's, just now)
        cls.handle_error = _noting_handle_error(original)
    return True


#: Flask-RESTX and Flask-RESTful answer their resources' errors themselves, in
#: ``Api.handle_error``, instead of Flask's ``handle_user_exception``: hooked once imported
#: (looked for when an app is traced, and before a request when modules were imported since).
_API_EXTENSIONS = ImportHooks(
    {
        "flask_restx.api": functools.partial(_hook_api, "Api"),
        "flask_restful": functools.partial(_hook_api, "Api"),
    }
)


def _noting_handle_error(original: Callable[..., Any]) -> Callable[..., Any]:
    """An API extension's ``Api.handle_error`` noting the error it answers; an
    ``HTTPException`` it signals (``got_request_exception``) meanwhile was raised on
    purpose in a resource (``abort(503)``): handled, as in a plain view."""

    @functools.wraps(original)
    def handle_error(self: Any, e: Exception) -> Any:
        try:
            _request().__dict__[_API_ERROR_ATTR] = e
        except Exception:
            logger.debug("noting an API extension's error failed", exc_info=True)
        response = original(self, e)  # re-raised: Flask's handling, its signal
        _note_handled(e)
        return response

    handle_error._stm_noting = True  # type: ignore[attr-defined]
    return handle_error


def _note_handled(e: Exception) -> None:
    """Note on the current request that ``e`` was answered by a handler (never raises)."""
    try:
        _request().__dict__[_HANDLED_ATTR] = e  # this app's request: not a nested app's
    except Exception:
        logger.debug("noting a handled Flask exception failed", exc_info=True)


def _noting_handle_user_exception(
    original: Callable[[Exception], Any],
) -> Callable[[Exception], Any]:
    """``app.handle_user_exception`` that notes an exception an error handler of the app
    answered (``@app.errorhandler(Exception)``, ``abort(503)``): Flask sends no
    ``got_request_exception`` for it, so ``process_response`` captures it when the
    response is a 5xx, as the Starlette integration does for its exception handlers."""

    def handle_user_exception(e: Exception) -> Any:
        result = original(e)  # no handler: re-raised, and Flask's signal captures it
        _note_handled(e)
        return result

    return handle_user_exception


def _request() -> Any:
    """The current Flask request."""
    if _cv_request is not None:
        return _cv_request.get().request
    return request._get_current_object()  # pragma: no cover


def _http_exception_body(response: Any) -> bool:
    """A 404/405/abort()/routing-redirect response: Flask turns the HTTPException (a WSGI
    app) into a response through ``force_type``, whose body is a ``ClosingIterator`` over
    the exception's rendered page; it looks streamed but is complete."""
    return type(response.response) is ClosingIterator and response.status_code >= 300


def _reporting(function: Callable[[], Any], tx: Transaction) -> Callable[[], Any]:
    """A ``call_on_close`` function whose failure is captured, linked to ``tx`` (which
    ended when ``wsgi_app`` returned: the body was complete)."""
    # Ours, for an earlier request? Only a plain function's own attributes are read: a
    # Mock answers any attribute.
    if type(function) is FunctionType:
        function = function.__dict__.get(_REPORTING_ATTR, function)

    def on_close() -> Any:
        try:
            return function()
        except Exception as exc:
            try:
                tx._client.capture_exception(exc, span=tx, mechanism="flask", handled=False)
            except Exception:
                logger.exception("sentry_tracing_mw: capturing a Flask exception failed")
            raise

    # A response returned again (a module-level one) is wrapped once: for its latest request.
    setattr(on_close, _REPORTING_ATTR, function)
    return on_close


def _finishing_process_response(
    original: Callable[[Any], Any], middleware: FlaskTracingMiddleware, app: Flask
) -> Callable[[Any], Any]:
    """``app.process_response`` (an instance attribute, like ``preprocess_request``) that
    captures an exception an error handler answered with a 5xx (see
    ``_noting_handle_user_exception``) and marks a response that is not streamed: the
    transaction then ends when ``wsgi_app`` returns, as nothing of the app runs while the
    body is sent, and a response nobody reads (a test client's) is still sent to Sentry."""
    mark = middleware.complete_body_key is not None

    def process_response(response: Any) -> Any:
        try:
            req = _request()
            handled = req.__dict__.pop(_HANDLED_ATTR, None)  # gone even if original() raises
            client_error = req.__dict__.pop(_CLIENT_ERROR_ATTR, None)
        except Exception:
            logger.debug("reading the Flask request failed", exc_info=True)
            return original(response)
        try:
            given = response
            response = original(response)
        except BaseException:
            # An after_request function failed. Handling an error already (Flask's 500 is
            # given), Flask sends that 500 as it is: a 4xx signalled is its error, and the
            # body is complete. Else Flask handles this failure and calls this again.
            code = getattr(given, "status_code", None)
            if isinstance(code, int) and code >= 500:
                with contextlib.suppress(Exception):
                    if client_error is not None:
                        middleware.on_exception(app, client_error, answered_5xx=True)
                    if mark and (
                        getattr(given, "is_streamed", True) is False or _http_exception_body(given)
                    ):
                        req.environ[COMPLETE_BODY_KEY] = True
            raise
        try:
            if handled is not None or client_error is not None:
                code = getattr(response, "status_code", None)
                if isinstance(code, int) and code >= 500:
                    if handled is not None:
                        # A 5xx HTTPException was raised on purpose: handled (as sentry-sdk
                        # reports one in Starlette).
                        middleware.on_exception(
                            app, handled, handled=isinstance(handled, HTTPException)
                        )
                    else:  # a 4xx an error handler raised: Flask answered 500
                        middleware.on_exception(app, client_error, answered_5xx=True)
            # A direct-passthrough body (send_file's wsgi.file_wrapper) is sent by the server
            # even when it has a length (waitress's): it ends on close, as a streamed one.
            if mark and (
                (
                    getattr(response, "is_streamed", True) is False
                    and not getattr(response, "direct_passthrough", False)
                )
                or _http_exception_body(response)
            ):
                environ = req.environ
                environ[COMPLETE_BODY_KEY] = True
                on_close = getattr(response, "_on_close", None)
                if on_close and type(on_close) is list:  # app code the server's close() runs
                    tx = environ.get(ENVIRON_KEY)
                    if tx is not None:
                        response._on_close = [_reporting(fn, tx) for fn in on_close]
        except Exception:
            logger.debug("finishing a Flask response failed", exc_info=True)
        return response

    return process_response


class FlaskTracing:
    """Trace a Flask app: ``FlaskTracing(app, **options)`` or ``FlaskTracing().init_app(app)``.

    ``options`` are ``init()`` options (used only when ``init()`` was not called yet) and
    the middleware options ``transaction_style``, ``ignore_paths``,
    ``http_methods_to_capture``; they win over ``app.config["SENTRY_*"]``.
    """

    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        split_options(options)  # validate early: a typo fails at construction
        self.options = options
        if app is not None:
            self.init_app(app)

    def options_for(self, app: Flask) -> dict[str, Any]:
        """The effective options for ``app``: its ``SENTRY_*`` config, then the kwargs."""
        config = app.config
        _warn_unknown_keys(config)
        merged = {name: config[key] for key, name in _CONFIG_KEYS if key in config}
        merged.update(self.options)
        return merged

    def init_app(self, app: Flask) -> None:
        """Install tracing on ``app`` (idempotent per app)."""
        installed = app.extensions.get(EXTENSION_KEY)
        if installed is not None:
            current = app.wsgi_app
            if getattr(current, "__self__", None) is app and getattr(
                current, "__func__", None
            ) is getattr(type(app), "wsgi_app", None):
                # Something put back the app's own wsgi_app, which it saw before ours
                # (OpenTelemetry's uninstrument_app, when it instrumented first): ours wraps
                # it again; its other hooks on the app are still in place.
                logger.info(
                    "FlaskTracing: app %r lost its tracing middleware; wrapping it again",
                    app.name,
                )
                installed.app = current
                app.wsgi_app = installed
                return
            logger.warning("FlaskTracing: app %r is already traced; ignoring", app.name)
            return
        options = self.options_for(app)
        try:
            middleware = FlaskTracingMiddleware(app.wsgi_app, app, **options)
        except ConfigurationError as exc:
            from_config = {k: v for k, v in options.items() if k not in self.options}
            raise settings_error(exc, "app.config key", from_config) from None
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.preprocess_request = _naming_preprocess(  # type: ignore[method-assign]
            app.preprocess_request, middleware.on_request_started
        )
        app.handle_user_exception = _noting_handle_user_exception(  # type: ignore[method-assign, assignment]
            app.handle_user_exception
        )
        app.process_response = _finishing_process_response(  # type: ignore[method-assign, assignment]
            app.process_response, middleware, app
        )
        # A module-level receiver: a bound method held by the signal would keep the
        # middleware, and through it the app, alive for ever (one per app a factory made).
        got_request_exception.connect(_on_exception, app, weak=False)
        _API_EXTENSIONS.look()
        _add_template_global(app)
        app.extensions[EXTENSION_KEY] = middleware
