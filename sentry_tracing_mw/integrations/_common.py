"""What every incoming-request integration shares: options, client setup, request start.

The lifecycle itself (status, streaming end, exceptions) lives in ``wsgi.py`` and
``asgi.py``; framework integrations only add route names and settings.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

from .._client import Client, get_client, init, is_initialized
from .._context import CURRENT_SPAN
from .._errors import ConfigurationError
from .._fork import new_lock_in_child
from .._log import warn_once
from .._propagation import IncomingTrace
from .._request import compile_ignore_paths, origin_form
from .._tracing import PropagationContext, Transaction

__all__ = [
    "DEFAULT_METHODS",
    "OTHER_TOOLS_KEYS",
    "REQUEST_TX_KEY",
    "ImportHooks",
    "MiddlewareConfig",
    "active_request_transaction",
    "capture_untraced",
    "ensure_client",
    "finish_request",
    "missing_framework",
    "split_options",
    "start_request",
    "wsgi_error",
]

logger = logging.getLogger("sentry_tracing_mw")

#: The WSGI environ / ASGI scope key where the owner middleware keeps the request's
#: transaction, for inner integrations that only name it.
REQUEST_TX_KEY = "sentry_tracing_mw.transaction"


#: The IANA HTTP Method Registry, and PURGE (HTTP caches): the methods there are.
HTTP_METHODS = frozenset(
    {
        "ACL", "BASELINE-CONTROL", "BIND", "CHECKIN", "CHECKOUT", "CONNECT", "COPY",
        "DELETE", "GET", "HEAD", "LABEL", "LINK", "LOCK", "MERGE", "MKACTIVITY",
        "MKCALENDAR", "MKCOL", "MKREDIRECTREF", "MKWORKSPACE", "MOVE", "OPTIONS",
        "ORDERPATCH", "PATCH", "POST", "PRI", "PROPFIND", "PROPPATCH", "PURGE", "PUT",
        "QUERY", "REBIND", "REPORT", "SEARCH", "TRACE", "UNBIND", "UNCHECKOUT", "UNLINK",
        "UNLOCK", "UPDATE", "UPDATEREDIRECTREF", "VERSION-CONTROL",
    }
)  # fmt: skip
#: ``http_methods_to_capture``'s default: every method but HEAD and OPTIONS (WebDAV's,
#: QUERY and PURGE included). A made-up method (a scanner's) is not traced: each would
#: make transaction names of its own ("ZQ81 404"); name it to trace it.
DEFAULT_METHODS = HTTP_METHODS - {"HEAD", "OPTIONS"}
_MIDDLEWARE_OPTIONS = frozenset({"transaction_style", "ignore_paths", "http_methods_to_capture"})
_STYLES = {"route": "route", "url": "route", "endpoint": "endpoint", "function_name": "endpoint"}
_SERVER_OPS = frozenset({"http.server", "websocket.server"})
_init_lock = threading.Lock()
new_lock_in_child(globals(), "_init_lock", threading.Lock)
_auto_init: tuple[Client, dict[str, Any]] | None = None  # the client ensure_client made


class MiddlewareConfig:
    """Middleware options, validated once."""

    __slots__ = ("ignore_paths", "methods", "transaction_style")

    def __init__(
        self,
        transaction_style: str = "route",
        ignore_paths: Iterable[str] | None = (),
        http_methods_to_capture: Iterable[str] | None = None,
    ) -> None:
        style = _STYLES.get(transaction_style) if isinstance(transaction_style, str) else None
        if style is None:
            raise ConfigurationError(
                f"invalid option transaction_style={transaction_style!r}: expected 'route' "
                "(alias 'url') or 'endpoint' (alias 'function_name')"
            )
        self.transaction_style = style
        if ignore_paths is None:  # same as the default: no path is ignored
            ignore_paths = ()
        elif isinstance(ignore_paths, str):  # "/health", or "/health,/metrics" from env
            ignore_paths = ignore_paths.replace(",", " ").split()
        elif not _iterable(ignore_paths):
            raise ConfigurationError(
                f"invalid option ignore_paths={ignore_paths!r}: expected a list of globs"
            )
        else:
            ignore_paths = list(ignore_paths)
        self.ignore_paths = compile_ignore_paths(ignore_paths)
        for glob in ignore_paths:
            if glob[:1] not in _GLOB_STARTS:  # (once: FlaskTracing validates its kwargs too)
                warn_once(
                    ("ignore_paths", glob),
                    "ignore_paths glob %r never matches: request paths start with '/' "
                    "(did you mean %r?)",
                    glob,
                    "/" + glob,
                )
        if http_methods_to_capture is None:
            self.methods = DEFAULT_METHODS
        else:
            if isinstance(http_methods_to_capture, str):  # "GET", or "GET,POST" from env
                http_methods_to_capture = http_methods_to_capture.replace(",", " ").split()
            elif not _iterable(http_methods_to_capture):
                raise ConfigurationError(
                    f"invalid option http_methods_to_capture={http_methods_to_capture!r}: "
                    "expected a list of HTTP method names"
                )
            methods = []
            for method in http_methods_to_capture:
                if not isinstance(method, str) or not method.strip() or "," in method:
                    raise ConfigurationError(
                        f"invalid option http_methods_to_capture={http_methods_to_capture!r}: "
                        "expected HTTP method names"
                    )
                methods.append(method.strip().upper())
            self.methods = frozenset(methods)


#: What a glob that can match a path (it starts with "/") may start with.
_GLOB_STARTS = frozenset("/*?[")


_OPTION_IN_MESSAGE = re.compile(r"invalid option ([a-z_]+)=|(dsn)[ :]")


def settings_error(
    exc: ConfigurationError, where: str, options: Mapping[str, Any]
) -> ConfigurationError:
    """``exc`` naming the ``SENTRY_*`` setting its option came from (``where``: "Django
    setting"), when the option is one of ``options`` (those read from settings) and set
    there (a setting left None defers to the environment variable)."""
    found = _OPTION_IN_MESSAGE.match(str(exc))
    option = found and (found.group(1) or found.group(2))
    if not option or options.get(option) is None:
        return exc
    return ConfigurationError(f"{exc} (the {where} SENTRY_{option.upper()})")


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return not isinstance(value, (bytes, Mapping))


def missing_framework(
    exc: ModuleNotFoundError, integration: str, extra: str
) -> ModuleNotFoundError:
    """The error for an integration imported without its framework: what is missing and
    the extra that installs it (raised ``from`` the original). A framework too old for a
    name we import raises a plain ``ImportError``, left as it is."""
    return ModuleNotFoundError(
        f"sentry_tracing_mw.integrations.{integration} needs {extra}, and "
        f"{exc.name or str(exc)!r} cannot be imported: pip install 'sentry-tracing-mw[{extra}]'",
        name=exc.name,
    )


def split_options(options: Mapping[str, Any]) -> tuple[MiddlewareConfig, dict[str, Any]]:
    """Separate middleware options from ``init()`` options."""
    mw = {k: v for k, v in options.items() if k in _MIDDLEWARE_OPTIONS}
    rest = {k: v for k, v in options.items() if k not in _MIDDLEWARE_OPTIONS}
    return MiddlewareConfig(**mw), rest


def ensure_client(init_options: Mapping[str, Any], where: str) -> None:
    """Call ``init()`` with these options unless it was called already (then warn if any,
    unless they are the very options that client was made with: a second middleware or
    Django handler built from the same settings ignores nothing)."""
    global _auto_init
    with _init_lock:
        if is_initialized():
            if init_options and not (
                _auto_init is not None
                and _auto_init[0] is get_client()
                and _same_options(_auto_init[1], init_options)
            ):
                logger.warning(
                    "%s: init() was already called; ignoring options %s",
                    where,
                    ", ".join(sorted(init_options)),
                )
            return
        client = init(**init_options)
        if init_options:  # an explicit init() replacing it warns they no longer apply
            client._made_by = (where, dict(init_options))
        _auto_init = (client, dict(init_options))


def _same_options(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    try:
        return a.keys() == b.keys() and all(a[k] is b[k] or a[k] == b[k] for k in a)
    except Exception:  # values that refuse comparison
        return False


def active_request_transaction() -> Transaction | None:
    """The unfinished request transaction of the current context, if any."""
    span = CURRENT_SPAN.get()
    if span is None:
        return None
    tx = span._tx
    if tx is None or tx._end is not None or tx._op not in _SERVER_OPS:
        return None
    return tx


def finish_request(tx: Transaction, carrier: MutableMapping[str, Any]) -> None:
    """Finish the request transaction and take it out of the environ / scope: a caller
    that keeps those after the response (a test client's response, a server's request
    log, a benchmark's batch) does not keep the transaction alive."""
    try:
        if carrier.get(REQUEST_TX_KEY) is tx:
            del carrier[REQUEST_TX_KEY]
    except Exception:  # a carrier that refuses: the transaction lives as long as it
        pass
    tx.finish()


#: ``SENTRY_*`` names other Sentry tools read (sentry-cli, release tooling): not options
#: of ours, and no typo of one either.
OTHER_TOOLS_KEYS = frozenset(
    f"SENTRY_{name}"
    for name in (
        "AUTH_TOKEN",
        "ORG",
        "PROJECT",
        "URL",
        "LOG_LEVEL",
        "PROPERTIES",
        "LOAD_DOTENV",
        "NO_PROGRESS_BAR",
        "ALLOW_FAILURE",
        "DISABLE_UPDATE_CHECK",
        "HTTP_MAX_RETRIES",
        "VCS_REMOTE",
    )
)


def start_request(
    client: Client,
    method: str,
    path: str,
    incoming: IncomingTrace | None,
    peer: str | None,
    request: Any,
    request_key: str,
    capture: bool,
    origin: str,
    op: str = "http.server",
    route: Callable[[], str | None] | None = None,
) -> tuple[Transaction | None, PropagationContext]:
    """Continue the ``incoming`` trace (``extract(..., lazy=True)``'s) and, when
    ``capture``, start the request transaction.

    Called once per request: integrations pass the arguments by position (cheaper than
    keywords).
    """
    if incoming is not None and client._trust is not True and not client.trusts(peer, request):
        incoming = None
    ctx = client.continue_trace(incoming)
    if not capture:
        return None, ctx
    extra: dict[str, Any] | None = None
    if client.options.traces_sampler is not None:  # the sampling context is only for it
        extra = {request_key: request}
        if route is not None:
            try:
                extra["route"] = route()
            except Exception:
                logger.debug("resolving the route for traces_sampler failed", exc_info=True)
    if path[:1] != "/" or "@" in path:  # "", an absolute-form target, URL credentials
        path = origin_form(path) if path else "/"
    tx = client._start_transaction(path, op, "url", origin, ctx, None, extra)
    return tx, ctx


def wsgi_error(exc: BaseException) -> bool:
    """Whether an exception escaping a WSGI request is an error to report: any but
    ``GeneratorExit`` and a ``SystemExit`` with code 0 or None, as sentry-sdk's WSGI
    middleware decides (gunicorn's sync worker raises ``SystemExit(1)`` in a request it
    times out). ASGI reports ``Exception`` only."""
    if isinstance(exc, Exception):
        return True
    if isinstance(exc, SystemExit):
        code = exc.code
        return not (code is None or (type(code) in (int, bool) and code == 0))
    return not isinstance(exc, GeneratorExit)


def capture_untraced(
    exc: BaseException,
    mechanism: str,
    request_info: Callable[[bool], dict[str, Any]] | None = None,
    handled: bool = False,
) -> None:
    """Report an unhandled exception of a request with no transaction (its method is not
    traced): still an error, linked to the request's trace context, with the request data
    ``request_info(send_default_pii)`` builds, as a traced request's events (never raises)."""
    try:
        client = get_client()
        request = None
        if request_info is not None and client.transport is not None:
            try:
                request = request_info(client.options.send_default_pii)
            except Exception:
                logger.exception("sentry_tracing_mw: building the request data failed")
        client.capture_exception(exc, mechanism=mechanism, handled=handled, request=request)
    except Exception:
        logger.exception("sentry_tracing_mw: capturing an exception failed")


def current_client() -> Client:
    """The process client (``init()``'s, else the send-nothing default)."""
    return get_client()


class ImportHooks:
    """Hooks on optional libraries an app may use (API frameworks), each installed once per
    process once its module has been imported; the library is never imported by us.

    ``look()`` runs when an integration starts and, on the request path, whenever modules
    were imported since the last look (``len(sys.modules) != seen``, checked inline: a
    URLconf loaded at the first request, a view importing a library lazily): one length
    compare per request until every hook is in, none after (``seen`` -1). A hook returns
    False for a module another thread is still importing (in ``sys.modules`` without its
    classes yet): looked at again.
    """

    __slots__ = ("_done", "_hooks", "seen")

    def __init__(self, hooks: Mapping[str, Callable[[Any], bool]]) -> None:
        self._hooks = dict(hooks)  # module name -> hook(module)
        self._done: set[str] = set()
        #: ``len(sys.modules)`` at the last look; 0: look again; -1: all hooked.
        self.seen = 0

    def look(self) -> None:
        """Install the hooks whose modules are imported by now (never raises)."""
        self.seen = len(sys.modules)
        unready = False
        for name, hook in self._hooks.items():
            if name in self._done:
                continue
            module = sys.modules.get(name)
            if module is None:
                continue
            try:
                if not hook(module):
                    unready = True
                    continue
            except Exception:  # a version whose shape we do not know: left as it is
                logger.debug("hooking %s failed", name, exc_info=True)
            self._done.add(name)
        if unready:
            self.seen = 0
        elif len(self._done) == len(self._hooks):
            self.seen = -1
