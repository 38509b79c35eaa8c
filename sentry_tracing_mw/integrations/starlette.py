"""Starlette and FastAPI: ``app.add_middleware(TracingMiddleware, **options)``.

A pure ASGI middleware built on the generic ASGI lifecycle (:mod:`.asgi`). What it adds:

* Route names with every mount prefix. In an app that mounts nothing, the route routing
  leaves in the scope (``scope["route"]``, FastAPI's effective route context) is the
  whole template: the request is named from it when its name is first read or the
  response starts, and the app gets the scope itself. Otherwise (mounts, a Starlette
  that does not record the route) the app gets a copy of the scope that writes every
  change through to the original and watches routing: Starlette and FastAPI record the
  matched route and the mount's child scope in the scope (``scope["route"] = ...``,
  ``scope.update(...)``) at each level, so following those writes gives the full
  template before the view runs, without a second walk over the routes and without
  patching the router.
* Unmatched requests are named ``"GET 404"`` / ``"POST 405"`` (one name per method and
  status), never the raw path.
* Exceptions that an app's exception handler turns into a 5xx response are captured
  (the scope gets live views of the app's handler tables, which wrap each handler when
  Starlette looks it up).
* Each ``BackgroundTask`` run while a request transaction is open becomes a child span
  (op ``function``); the transaction ends when they finish, after the response was sent.
"""

from __future__ import annotations

import builtins
import copy
import functools
import importlib
import inspect
import logging
import sys
import threading
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

try:
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.exceptions import HTTPException
    from starlette.middleware.exceptions import ExceptionMiddleware
    from starlette.requests import ClientDisconnect
    from starlette.routing import Host, Match, Mount
    from starlette.websockets import WebSocketDisconnect
except ModuleNotFoundError as _exc:
    from ._common import missing_framework

    raise missing_framework(_exc, "starlette", "starlette") from _exc

try:
    from starlette._utils import is_async_callable as _starlette_is_async
except ImportError:  # pragma: no cover - older Starlette
    _starlette_is_async = None  # type: ignore[assignment]

from .._api import is_coroutine_callable
from .._client import get_client
from .._context import CURRENT_SPAN, request_context
from .._tracing import Span, Transaction
from . import asgi
from .asgi import SCOPE_KEY, ASGIApp, Message, Receive, Scope, Send

__all__ = ["TracingMiddleware"]

logger = logging.getLogger("sentry_tracing_mw")

_ORIGIN_STARLETTE = "auto.http.starlette"
_ORIGIN_FASTAPI = "auto.http.fastapi"
_HANDLERS_KEY = "starlette.exception_handlers"
_MAX_DEPTH = 32
_WATCHED_KEYS = frozenset({_HANDLERS_KEY, "route"})
_MAX_HANDLER_TABLES = 64
_MAX_WRAPPERS = 64  # per handler table view
#: (exception table, status table, the live capturing views of both).
_HandlerTables = tuple[Any, Any, tuple["_CapturingTable", "_CapturingTable"]]
_dict_setitem = dict.__setitem__
_MISSING = object()


def _router_sets_route() -> bool:
    """Whether Starlette's router records the route it matched in ``scope["route"]``."""
    try:
        from starlette.routing import Router

        return "route" in Router.app.__code__.co_consts
    except Exception:  # pragma: no cover - a Starlette of another shape
        return False


_ROUTER_SETS_ROUTE = _router_sets_route()


def dotted_name(obj: Any) -> str | None:
    """``module.qualname`` of a function or class (``partial(<function m.f>)`` for partials).

    The shape of ``sentry-sdk``'s endpoint / function_name transaction style.
    """
    prefix = suffix = ""
    if isinstance(obj, functools.partial):
        prefix, suffix = "partial(<function ", ">)"
        obj = obj.func
    else:
        pm = getattr(obj, "_partialmethod", None) or getattr(obj, "__partialmethod__", None)
        if isinstance(pm, functools.partialmethod):
            prefix, suffix = "partialmethod(<function ", ">)"
            obj = pm.func
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if not isinstance(name, str):
        return None
    module = getattr(obj, "__module__", None)
    if isinstance(module, str):
        name = f"{module}.{name}"
    return f"{prefix}{name}{suffix}"


def _is_async(fn: Any) -> bool:
    """Whether Starlette awaits ``fn`` (its own check where it has one: the two must agree,
    or a handler would be run in a thread and its coroutine returned as the response)."""
    if _starlette_is_async is not None:
        return bool(_starlette_is_async(fn))
    return is_coroutine_callable(fn)  # pragma: no cover - Starlette without its own check


def _effective_context(scope: Mapping[str, Any], route: Any) -> Any:
    """FastAPI >= 0.137 keeps an included route's prefixed path in scope["fastapi"]."""
    fastapi_scope = dict.get(scope, "fastapi") if isinstance(scope, dict) else None
    if not isinstance(fastapi_scope, dict):
        return None
    ctx = fastapi_scope.get("effective_route_context")
    if ctx is None or (route is not None and getattr(ctx, "original_route", None) is not route):
        return None
    return ctx


class _RoutingScope(dict[str, Any]):
    """The scope handed to the app: every change is written through to the server's
    scope, and routing writes name the request's transaction."""

    __slots__ = ("_base", "_mw", "_named", "_prefix", "_routes", "_tx")

    def __init__(self, base: Scope, mw: TracingMiddleware, tx: Transaction) -> None:
        dict.__init__(self, base)
        self._base = base
        self._mw = mw
        self._tx = tx
        self._prefix = ""
        self._routes: Any = None  # routes of the router being matched; None = the app's
        self._named = False

    # -- write-through mutations ---------------------------------------------------------
    def __setitem__(self, key: str, value: Any) -> None:
        if key in _WATCHED_KEYS:  # most writes are not: one set lookup
            self._set_watched(key, value)
            return
        _dict_setitem(self, key, value)
        self._base[key] = value

    def _set_watched(self, key: str, value: Any) -> None:
        if key == _HANDLERS_KEY:
            value = self._mw._wrapped_handlers(value)
        _dict_setitem(self, key, value)
        self._base[key] = value
        if key == "route":
            self._on_route(value)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        if type(other) is not dict and not isinstance(other, Mapping):
            other = dict(other)
        dict.update(self, other, **kwargs)
        self._base.update(other, **kwargs)
        if other:
            self._on_child(other)

    def __ior__(self, other: Any) -> _RoutingScope:  # type: ignore[override,misc]
        self.update(other)
        return self

    def setdefault(self, key: str, default: Any = None) -> Any:
        value = dict.setdefault(self, key, default)
        if key not in self._base:
            self._base[key] = value
        return value

    def __delitem__(self, key: str) -> None:
        dict.__delitem__(self, key)
        self._base.pop(key, None)

    def pop(self, key: str, *default: Any) -> Any:
        value = dict.pop(self, key, *default)
        self._base.pop(key, None)
        return value

    def popitem(self) -> tuple[str, Any]:
        key, value = dict.popitem(self)
        self._base.pop(key, None)
        return key, value

    def clear(self) -> None:
        dict.clear(self)
        self._base.clear()

    # -- copies are plain dicts (as ``scope.copy()``): they must not write through --------
    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        memo[id(self)] = out  # a scope that holds itself: the copy holds the copy
        for key, value in dict.items(self):
            out[copy.deepcopy(key, memo)] = copy.deepcopy(value, memo)
        return out

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (dict, (), None, None, iter(dict.items(self)))

    # -- routing -------------------------------------------------------------------------
    def _name(self, name: str, source: str) -> None:
        self._tx.set_name(name, source)
        self._named = True

    def _on_route(self, route: Any) -> None:
        try:
            if not isinstance(route, (Mount, Host)):
                self._leaf(route)
        except Exception:
            logger.debug("naming the transaction from the route failed", exc_info=True)

    def _on_child(self, child: Mapping[str, Any]) -> None:
        try:
            if "root_path" in child and "endpoint" in child:
                self._mount(child["endpoint"], child["root_path"])
                return
            route = child.get("route")
            if route is not None:
                self._on_route(route)
                return
            endpoint = child.get("endpoint")
            if endpoint is None:
                return
            current = dict.get(self, "route")
            if isinstance(current, Host):
                if current.app is endpoint:
                    self._routes = current.routes
                return
            if current is not None and getattr(current, "endpoint", None) is endpoint:
                return  # named when scope["route"] was set
            for cand in self._current_routes():  # Starlette versions without scope["route"]
                if isinstance(cand, Host) and cand.app is endpoint:
                    self._routes = cand.routes
                    return
                # The route of this endpoint that matches the request (an endpoint may
                # serve several routes; a route whose method does not match is a 405).
                if (
                    getattr(cand, "endpoint", None) is endpoint
                    and cand.matches(self)[0] is Match.FULL
                ):
                    self._leaf(cand)
                    return
        except Exception:
            logger.debug("naming the transaction from the route failed", exc_info=True)

    def _current_routes(self) -> Iterable[Any]:
        routes = self._routes
        if routes is None:
            routes = getattr(dict.get(self, "app"), "routes", None) or getattr(
                self._mw.app, "routes", None
            )
        return routes or ()

    def _method_allowed(self, methods: Any) -> bool:
        """Whether the route serves the request's method as routing sees it (a method
        override middleware may have changed it since the request started)."""
        if not methods or dict.get(self, "type") != "http":
            return True
        method = dict.get(self, "method")
        return method in methods or str(method or "GET").upper() in methods

    def _mount(self, app: Any, root_path: Any) -> None:
        mount = dict.get(self, "route")
        if not (isinstance(mount, Mount) and mount.app is app):
            mount = None
            for cand in self._current_routes():
                if isinstance(cand, Mount) and cand.app is app:
                    mount = cand
                    break
        if mount is None:
            # Not found (e.g. a mount inside a FastAPI included router): FastAPI may know it.
            ctx = _effective_context(self, None)
            path = getattr(ctx, "path", None) if ctx is not None else None
            if not isinstance(path, str):
                return
            self._prefix += path
            self._routes = getattr(app, "routes", None) or ()
            return
        self._prefix += mount.path
        self._routes = mount.routes or _wrapped_routes(mount.app) or ()
        leaf = _leaf_app(mount)
        if leaf is not None and not self._named:
            # A leaf app (static files, a mounted WSGI app): named after the mount, as
            # sentry-sdk names it; an inner integration (Flask, Django) may rename it with
            # its own route. An empty router is no leaf: its requests are "GET 404".
            if self._mw._endpoint_style:
                target = leaf if inspect.isroutine(leaf) or isinstance(leaf, type) else type(leaf)
                name = self._mw._endpoint_name(target) or self._prefix or "/"
                self._tx.set_name(name, "component")
            else:
                self._tx.set_name(self._prefix or "/", "route")

    def _leaf(self, route: Any) -> None:
        ctx = _effective_context(self, route)
        src = ctx if ctx is not None else route
        if not self._method_allowed(getattr(src, "methods", None)):
            return  # a partial match: "POST 405" once the status is known
        if self._mw._endpoint_style:
            # (a FastAPI context of a plain Starlette route has no endpoint: its route has)
            endpoint = getattr(src, "endpoint", None) or getattr(route, "endpoint", None)
            name = self._mw._endpoint_name(endpoint) if endpoint is not None else None
            if name:
                self._name(name, "component")
            return
        path = getattr(src, "path", None)
        if not path and ctx is not None:
            # A FastAPI context of a plain Starlette route has no path: its prefixed route
            # has (as ``_match`` reads it).
            path = getattr(getattr(ctx, "starlette_route", None), "path", None)
        if isinstance(path, str) and path:
            self._name(self._prefix + path, "route")

    def _late_name(self) -> bool:
        """At response start: an included route FastAPI resolved without scope["route"]."""
        ctx = _effective_context(self, None)
        if ctx is None:
            return False
        self._leaf(ctx.original_route)
        return self._named


#: The scope keys ``_late_name`` reads (routing's ``matches()`` included).
_NAMING_KEYS = (
    "route",
    "fastapi",
    "type",
    "method",
    "headers",
    "path",
    "root_path",
    "app_root_path",
    "router",
    "endpoint",
    "scheme",
    "server",
    "query_string",
    "http_version",
)


def _naming_view(scope: Scope) -> dict[str, Any]:
    """What ``_late_name`` needs of a finished request's scope (not its state, app
    objects or bodies)."""
    return {key: scope[key] for key in _NAMING_KEYS if key in scope}


class _RefProbe:
    def end(self, scope: Any, tx: Any) -> int:
        return sys.getrefcount(tx)


def _request_refs() -> int:
    """References to a request's transaction inside ``unsampled_end`` when nothing else
    holds it: the request's local, the parameter, ``getrefcount``'s argument (measured,
    as interpreters count differently)."""
    tx = object()
    return _RefProbe().end(None, tx)


_REQUEST_REFS = _request_refs()


class _Matched:
    """A matched FastAPI route context's path (see ``_match``)."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


def _leaf_app(mount: Any) -> Any:
    """The app a ``Mount`` serves when it does no routing of its own (static files, a
    mounted WSGI app, a plain ASGI function), else None (a router, even an empty one)."""
    app = getattr(mount, "_base_app", None) or mount.app  # inside Mount(middleware=...)
    return None if hasattr(app, "routes") or _wrapped_routes(app) else app


_CLIENT_GONE = (WebSocketDisconnect, ClientDisconnect)
_GROUP: Any = getattr(builtins, "BaseExceptionGroup", None)
if _GROUP is None:  # pragma: no cover - Python 3.10: anyio's backport
    try:
        _GROUP = importlib.import_module("exceptiongroup").BaseExceptionGroup
    except (ImportError, AttributeError):
        pass


class TracingMiddleware(asgi.TracingMiddleware):
    """Trace a Starlette or FastAPI app: ``app.add_middleware(TracingMiddleware, **options)``.

    Options: any ``init()`` option (used only when ``init()`` was not called) plus
    ``transaction_style`` (``"route"``/``"url"`` or ``"endpoint"``/``"function_name"``),
    ``ignore_paths`` and ``http_methods_to_capture``.
    """

    origin = _ORIGIN_STARLETTE
    mechanism = "starlette"  # as sentry-sdk's, for FastAPI too
    name_unmatched = True

    def __init__(self, app: ASGIApp | None = None, /, **options: Any) -> None:
        # ``app`` positional-only: matches Starlette's middleware factory protocol, so
        # ``app.add_middleware(TracingMiddleware, ...)`` type-checks under mypy --strict.
        # Starlette < 0.41.3 builds middleware as ``cls(app=app, **options)``: accept that too.
        if app is None:
            app = options.pop("app", None)
            if app is None:
                raise TypeError("TracingMiddleware() missing the ASGI app to wrap")
        super().__init__(app, **options)
        self._endpoint_style = self.config.transaction_style == "endpoint"
        self._origins: dict[type, str] = {}
        self._last_kind: type | None = None
        self._last_origin = _ORIGIN_STARLETTE
        self._names: dict[Any, str | None] = {}
        #: (id, id) of an exception and a status handler table -> (the tables, their
        #: capturing views).
        self._handlers: dict[tuple[int, int], _HandlerTables] = {}
        self._last_handlers: _HandlerTables | None = None
        #: ids of the handler tables whose layer hands out capturing views.
        self._known_tables: set[int] = set()
        self._watch_unsampled = True
        self._always_watch = False  # a table the walk cannot find, a path rewritten
        #: (the app's route list, its length, whether it mounts nothing, its routes' ids):
        #: see _top_routes
        self._top: tuple[Any, int, bool, frozenset[int]] | None = None
        #: A sampled request was routed where ``scope["route"]`` could not name it: the
        #: app's sampled requests are watched from then on (see _route_name).
        self._watch_sampled = False
        try:
            self._find_tables()
        except Exception:
            logger.debug("finding the exception handler tables failed", exc_info=True)
        _instrument_background_tasks()

    # -- hooks ---------------------------------------------------------------------------
    def request_origin(self, scope: Scope) -> str:
        """``auto.http.fastapi`` for FastAPI apps, else ``auto.http.starlette``."""
        kind = type(scope.get("app"))
        if kind is self._last_kind:
            return self._last_origin
        origin = self._origins.get(kind)
        if origin is None:
            fastapi = any(
                (getattr(c, "__module__", "") or "").split(".", 1)[0] == "fastapi"
                for c in kind.__mro__
            )
            origin = self._origins[kind] = _ORIGIN_FASTAPI if fastapi else _ORIGIN_STARLETTE
        self._last_kind, self._last_origin = kind, origin
        return origin

    def app_scope(self, scope: Scope, tx: Transaction, method: str) -> Scope:
        """The scope itself, the request named from the route routing leaves in it
        (``_route_name``), when the router records it (``scope["route"]``), the app mounts
        no app and its handler tables capture on their own; else a watching copy of the
        scope that names the transaction while routing."""
        if isinstance(scope, _RoutingScope):
            return scope  # an outer Starlette integration is already watching
        app = scope.get("app")
        if (
            _ROUTER_SETS_ROUTE
            and not (self._watch_unsampled or self._watch_sampled)
            and app is not None
            and (known := self._top_routes(app)) is not None
            and known[2]  # the app mounts nothing: the route in the scope has no prefix
        ):
            tx._namer = (self._route_name, scope, app, scope.get("root_path"))
            return scope
        return _RoutingScope(scope, self, tx)

    def _top_routes(self, app: Any) -> tuple[Any, int, bool, frozenset[int]] | None:
        """(the app's route list, its length, whether it mounts nothing, the ids of its
        routes), cached while the list stays the same length; None for an app without
        a route list."""
        routes = getattr(app, "routes", None)
        if type(routes) is not list:
            return None
        known = self._top
        if known is None or known[0] is not routes or known[1] != len(routes):
            unmounted = not any(isinstance(route, Mount) for route in routes)
            known = self._top = (routes, len(routes), unmounted, frozenset(map(id, routes)))
        return known

    def _route_name(self, tx: Transaction, scope: Scope, app: Any, root_path: Any) -> None:
        """Name ``tx`` after the route routing left in the scope: one of the app's own
        routes, or FastAPI's context of an included one, whose endpoint routing chose.
        Else as ``_late_name`` does; and when routing chose an endpoint all the same (a
        route below a ``Host``, a router that does not record its route), the app's
        sampled requests are watched from then on."""
        if tx._source != "url":
            return
        route = scope.get("route")
        if route is not None:
            ctx = _effective_context(scope, route)
            known = self._top_routes(app) if ctx is None else None
            if ctx is not None or (known is not None and id(route) in known[3]):
                src = ctx if ctx is not None else route
                endpoint = getattr(src, "endpoint", None)
                path = getattr(src, "path", None)
                if (
                    endpoint is not None
                    and endpoint is scope.get("endpoint")
                    and isinstance(path, str)
                    and path
                ):
                    methods = getattr(src, "methods", None)
                    if methods and scope.get("type") == "http":
                        method = scope.get("method")
                        if method not in methods and str(method or "GET").upper() not in methods:
                            return  # a partial match: "POST 405" once the status is known
                    if not self._endpoint_style:
                        tx._name, tx._source = path, "route"
                    elif name := self._endpoint_name(endpoint):
                        tx._name, tx._source = name, "component"
                    return
        if scope.get("endpoint") is not None:
            self._watch_sampled = True
        self._late_name(tx, scope, app, root_path)

    def name_on_response(self, tx: Transaction, scope: Scope, method: str, code: int) -> None:
        """Nothing named the request by the time it responds: ``"GET 404"`` style."""
        if isinstance(scope, _RoutingScope) and code not in (404, 405) and scope._late_name():
            return
        tx.set_name(f"{method} {code}", "route")

    def client_went_away(self, exc: BaseException) -> bool:
        """Starlette raises these in the app when the client has gone (a websocket closed
        by the client, a request body whose upload stopped), also from inside a task
        group (an exception group whose every exception is one of them)."""
        if isinstance(exc, _CLIENT_GONE):
            return True
        if _GROUP is not None and isinstance(exc, _GROUP):
            return exc.split(_CLIENT_GONE)[1] is None
        return False

    def routed(self, scope: Scope) -> bool:
        """Starlette's router marks the scope (``scope["router"]``) when it starts."""
        return "router" in scope

    def unhandled_status(self, scope: Scope) -> int | None:
        """500, as Starlette's ``ServerErrorMiddleware`` answers, unless the app has its own
        500 / ``Exception`` handler (its response is sent outside this middleware)."""
        handlers = getattr(scope.get("app"), "exception_handlers", None)
        if isinstance(handlers, Mapping) and (500 in handlers or Exception in handlers):
            return None
        return 500

    def resolve_route(self, scope: Scope) -> str | None:
        """The route template for ``traces_sampler``: walks the routes with ``matches()``."""
        found = self._match(scope, scope.get("app"))
        if found is None:
            return None
        prefix, leaf, _, _ = found
        if leaf is None:
            return prefix or "/"
        path = getattr(leaf, "path", None)
        return prefix + path if isinstance(path, str) else None

    def _match(self, scope: Scope, app: Any) -> tuple[str, Any, Any, tuple[Any, ...]] | None:
        """What the router will serve for the request ``scope`` describes, found with the
        routes' own ``matches()`` (on a copy): ``(mount prefix, route, endpoint, what
        routing puts in scope["endpoint"] for it)``, where route is the matched route (for
        FastAPI's included routers, the matched route context) or None for a leaf mount
        (static files, a mounted WSGI app), whose app is the endpoint. None when nothing
        matches fully."""
        routes = getattr(app, "routes", None) or getattr(self.app, "routes", None)
        if not routes:
            return None
        probe = dict(scope)
        prefix = ""
        for _ in range(_MAX_DEPTH):
            found: Any = None
            child: Any = None
            for route in routes:
                match, child = route.matches(probe)
                if match is Match.FULL:
                    found = route
                    break
            if found is None:
                return None
            probe.update(child)
            if isinstance(found, (Mount, Host)):
                if isinstance(found, Mount):
                    prefix += found.path
                routes = found.routes or _wrapped_routes(found.app)
                if not routes:
                    leaf = _leaf_app(found) if isinstance(found, Mount) else None
                    if leaf is None:
                        return None
                    return prefix, None, leaf, (leaf, found.app, child.get("endpoint"))
                continue
            path = getattr(found, "path", None)
            endpoint = getattr(found, "endpoint", None)
            if isinstance(path, str):
                return prefix, found, endpoint, (endpoint, child.get("endpoint"))
            sub = getattr(found, "effective_route_contexts", None)  # FastAPI included router
            if sub is not None:
                for ctx in sub():
                    if ctx.matches(probe)[0] is Match.FULL:
                        # a websocket route's context has no path (its route has the
                        # whole), nor an endpoint (its route has it)
                        inner = getattr(ctx, "original_route", None) or getattr(
                            ctx, "starlette_route", None
                        )
                        path = ctx.path or getattr(ctx.starlette_route, "path", None)
                        if not (isinstance(path, str) and path):
                            return None
                        leaf = getattr(ctx, "endpoint", None) or getattr(inner, "endpoint", None)
                        live = (leaf, endpoint, child.get("endpoint"))
                        return prefix, _Matched(path), leaf, live
            return None
        return None

    # -- unsampled requests: routing is not watched ------------------------------------
    def unsampled_scope(self, scope: Scope, tx: Transaction, method: str) -> Scope:
        """The app gets the scope itself, and the request is named only if its name is
        read. Routing is watched as for a sampled request when the app is not known yet
        (the middleware wraps a Starlette app from outside), or while some exception
        handler tables cannot capture on their own (``_find_tables``)."""
        app = scope.get("app")
        if self._watch_unsampled or app is None:
            return self.app_scope(scope, tx, method)
        tx._namer = (self._route_name, scope, app, scope.get("root_path"))
        return scope

    def _late_name(self, tx: Transaction, scope: Scope, app: Any, root_path: Any) -> None:
        """Name ``tx`` as routing names it (``unsampled_scope``): the routes matched against
        the request as it came in, checked against what the router chose."""
        if tx._source != "url":
            return
        if not self.routed(scope):
            # Not routed (yet): unnamed as a watched request is (an error now is "GET
            # 500"); named if read again once the router ran.
            tx._namer = (self._route_name, scope, app, root_path)
            return
        probe = dict(scope)
        probe["path"] = tx._name  # the path it started with
        probe["root_path"] = root_path if root_path is not None else ""
        probe.pop("path_params", None)
        probe["app"] = app
        found = self._match(probe, app)
        chosen = scope.get("endpoint")
        if chosen is not None and (found is None or not any(e is chosen for e in found[3])):
            # The router chose another endpoint (or matched partially: a 405). If the path
            # it routed matches it, something rewrote the path before routing: named after
            # that, and routing is watched from now on (this app does that).
            first = found
            probe["path"] = scope.get("path")
            found = self._match(probe, app)
            if found is None or not any(e is chosen for e in found[3]):
                if first is not None:
                    # Routing went where the routes cannot show (an app mounted behind a
                    # wrapper of an unknown shape): unnamed; watched from now on.
                    self._always_watch = self._watch_unsampled = True
                return
            self._always_watch = self._watch_unsampled = True
        if found is None:
            return
        prefix, route, endpoint, _ = found
        if self._endpoint_style:
            if route is None:  # a leaf mount: named after its app, as when watched
                if not (inspect.isroutine(endpoint) or isinstance(endpoint, type)):
                    endpoint = type(endpoint)
                name = self._endpoint_name(endpoint) or prefix or "/"
            elif endpoint is None or not (name := self._endpoint_name(endpoint) or ""):
                return
            source = "component"
        elif route is None:
            name, source = prefix or "/", "route"
        else:
            path = getattr(route, "path", None)
            if not isinstance(path, str):
                return
            name, source = prefix + path, "route"
        # Directly: the name may be read after the transaction finished (a late error).
        tx._name, tx._source = name, source

    def unsampled_end(self, scope: Scope, tx: Transaction) -> None:
        """The request ended: its transaction no longer holds its scope (only what naming
        reads, when something outlives the request with the transaction: a task it started
        may capture an error later), and a handler table it used that is unknown (a
        mounted app's, built on its first request) is looked for, for the next requests."""
        namer = tx._namer
        if namer is not None:
            if sys.getrefcount(tx) > _REQUEST_REFS:
                tx._namer = (namer[0], _naming_view(scope), *namer[2:])
            else:
                tx._namer = None
        try:
            tables = scope.get(_HANDLERS_KEY)
            if tables is None:
                return
            table = tables[0]
            if type(table) is _CapturingTable:
                table = table._table
            if id(table) not in self._known_tables:
                self._find_tables(table)
        except Exception:
            logger.debug("checking the exception handler tables failed", exc_info=True)

    def unsampled_5xx(self, scope: Scope, message: Message) -> None:
        """A 5xx response of an unsampled request whose handler tables were not capturing
        yet (an app mounted behind a wrapper the walk cannot see, or mounted at runtime):
        the exception its handler answered is the one being handled where the response is
        sent (Starlette sends it inside its ``except``)."""
        code = message.get("status")
        if not isinstance(code, int) or code < 500:
            return
        tables = scope.get(_HANDLERS_KEY)
        if tables is None or type(tables[0]) is _CapturingTable:
            return
        exc = sys.exc_info()[1]
        if isinstance(exc, Exception):
            _capture_handled(scope, exc, code)

    def _find_tables(self, seen: Any = None) -> None:
        """Walk the app below (middleware, routers, mounted apps) and make every
        exception-handling layer hand out capturing views of its tables, so that handled
        5xx are captured without watching the request's scope. Routing stays watched for
        unsampled requests while an app's layers are not built yet, or a table in use was
        not found."""
        with _FIND_LOCK:
            found, unbuilt = _install_capturing_tables(self.app)
            if len(self._known_tables) + len(found) > _MAX_HANDLER_TABLES:
                self._known_tables.clear()
            self._known_tables.update(found)
            missing = seen is not None and id(seen) not in found
            if missing:
                self._known_tables.add(id(seen))  # not looked for again
                self._always_watch = True
            self._watch_unsampled = unbuilt or self._always_watch

    async def name_only(
        self, scope: Scope, receive: Receive, send: Send, tx: Transaction | None
    ) -> None:
        """An outer middleware owns the transaction: name it from the route only (unless
        the owner names it when needed: an outer Starlette integration's unsampled one)."""
        if tx is None or tx._namer is not None or isinstance(scope, _RoutingScope):
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method") or "GET").upper()
        try:
            inner: Scope = _RoutingScope(scope, self, tx)
        except Exception:
            logger.exception("sentry_tracing_mw: preparing the request scope failed")
            await self.app(scope, receive, send)
            return

        accepted = False

        async def naming_send(message: Message) -> None:
            nonlocal accepted
            kind = message.get("type")
            if kind == "http.response.start" and tx._source == "url":
                try:
                    self.name_on_response(tx, inner, method, int(message["status"]))
                except Exception:
                    logger.debug("naming an unmatched request failed", exc_info=True)
            elif kind == "websocket.accept":
                accepted = True
            elif kind == "websocket.close" and not accepted and tx._source == "url":
                # Refused before accept, as the integration names it when it owns the
                # request: the router found no route (404), else a middleware refused (403).
                try:
                    code = 404 if self.routed(inner) else 403
                    self.name_on_response(tx, inner, method, code)
                    if tx._status is None:
                        tx.set_http_status(code)
                except Exception:
                    logger.debug("naming a refused websocket failed", exc_info=True)
            await send(message)

        try:
            await self.app(inner, receive, naming_send)
        except Exception:
            self._name_failed(tx, inner, method)  # before the owner captures the error
            raise

    # -- helpers -------------------------------------------------------------------------
    def _endpoint_name(self, endpoint: Any) -> str | None:
        try:
            return self._names[endpoint]
        except KeyError:
            name = self._names[endpoint] = dotted_name(endpoint)
            return name
        except TypeError:  # unhashable endpoint
            return dotted_name(endpoint)

    def _wrapped_handlers(self, value: Any) -> Any:
        """The exception/status handler tables as live views whose handlers capture 5xx
        responses (one pair of views per pair of tables: the check is two identities)."""
        try:
            exc_handlers, status_handlers = value
            if type(exc_handlers) is _CapturingTable and type(status_handlers) is _CapturingTable:
                return value  # the layer's own views (see _find_tables)
            last = self._last_handlers  # one app, one pair of tables: the usual case
            if last is None or last[0] is not exc_handlers or last[1] is not status_handlers:
                key = (id(exc_handlers), id(status_handlers))
                last = self._handlers.get(key)
                if last is None or last[0] is not exc_handlers or last[1] is not status_handlers:
                    views = (_CapturingTable(exc_handlers), _CapturingTable(status_handlers))
                    last = (exc_handlers, status_handlers, views)
                    if len(self._handlers) >= _MAX_HANDLER_TABLES:
                        self._handlers.clear()  # tables made per request: stay bounded
                    self._handlers[key] = last
                self._last_handlers = last
            return last[2]
        except Exception:
            logger.debug("wrapping the exception handlers failed", exc_info=True)
            return value


class _CapturingTable(MutableMapping[Any, Any]):
    """A live view of one of Starlette's handler tables: lookups read the table as it is
    now (a handler added or replaced later takes effect at once, as without us) and
    return the handler wrapped so that a 5xx response it returns is captured; writes go
    to the table (as they would without us)."""

    __slots__ = ("_table", "_wrapped")

    def __init__(self, table: MutableMapping[Any, Any]) -> None:
        self._table = table
        #: id(handler) -> (handler, its wrapper): the handler is held, so its id stays its.
        self._wrapped: dict[int, tuple[Any, Any]] = {}

    def __getitem__(self, key: Any) -> Any:
        return self._wrap(self._table[key])

    def get(self, key: Any, default: Any = None) -> Any:
        handler = self._table.get(key, _MISSING)  # (dict semantics: no __missing__)
        return default if handler is _MISSING else self._wrap(handler)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._table[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._table[key]

    def __contains__(self, key: object) -> bool:
        return key in self._table

    def __iter__(self) -> Iterator[Any]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._table!r})"

    def _wrap(self, handler: Any) -> Any:
        wrapped = self._wrapped
        entry = wrapped.get(id(handler))
        if entry is not None and entry[0] is handler:
            return entry[1]
        try:
            capturing = _capturing(handler)
        except Exception:  # (a lookup inside Starlette's error handling: never raise)
            logger.debug("wrapping an exception handler failed", exc_info=True)
            return handler
        if len(wrapped) >= _MAX_WRAPPERS:
            wrapped.clear()  # handlers replaced again and again: stay bounded
        wrapped[id(handler)] = (handler, capturing)
        return capturing


_FIND_LOCK = threading.Lock()
_MAX_WALK = 5000  # objects visited by one walk of an app


def _install_capturing_tables(root: Any) -> tuple[set[int], bool]:
    """Give every ``ExceptionMiddleware`` reachable from ``root`` capturing views of its
    handler tables (live: the layer's own writes go to its tables). Returns the ids of
    those tables and whether a reachable Starlette app has not built its middleware yet."""
    found: set[int] = set()
    unbuilt = False
    visited: set[int] = set()
    todo = [root]
    while todo and len(visited) < _MAX_WALK:
        node = todo.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        attrs = getattr(node, "__dict__", None)
        if not isinstance(attrs, dict):
            continue
        if isinstance(node, ExceptionMiddleware):
            for name in ("_exception_handlers", "_status_handlers"):
                table = attrs.get(name)
                if type(table) is dict:
                    setattr(node, name, _CapturingTable(table))
                elif type(table) is not _CapturingTable:
                    break  # an unknown shape: left as it is (watched instead)
                found.add(id(getattr(node, name)._table))
        if isinstance(node, Starlette) and attrs.get("middleware_stack") is None:
            unbuilt = True
        for name in ("app", "middleware_stack", "router", "_base_app"):
            child = attrs.get(name)
            if child is not None:
                todo.append(child)
                if isinstance(child, types.FunctionType) and child.__closure__:
                    # a closure-style middleware (``def wrap(app): async def wrapped...``):
                    # what it wraps is in its cells
                    todo.extend(_cell_contents(child.__closure__))
        routes = attrs.get("routes")
        if isinstance(routes, list):
            todo.extend(routes)
    if todo:
        unbuilt = True  # too big to walk whole: keep watching
    return found, unbuilt


def _wrapped_routes(app: Any) -> Any:
    """The routes of a router a mounted app wraps (middleware with ``.app``, closure-style
    middleware), if any."""
    for _ in range(_MAX_DEPTH):
        if isinstance(app, types.FunctionType) and app.__closure__:
            inner = [c for c in _cell_contents(app.__closure__) if callable(c)]
            if len(inner) != 1:
                return None
            app = inner[0]
        else:
            app = getattr(app, "app", None)
        if app is None:
            return None
        routes = getattr(app, "routes", None)
        if routes:
            return routes
    return None


def _cell_contents(cells: tuple[Any, ...]) -> list[Any]:
    out = []
    for cell in cells:
        try:
            out.append(cell.cell_contents)
        except ValueError:  # an empty cell
            pass
    return out


def _capture_handled(scope: Any, exc: BaseException, code: Any) -> None:
    """Capture ``exc`` when a handler answered it with a 5xx ``code`` (never raises)."""
    try:
        if not isinstance(code, int) or code < 500:
            return
        tx = scope.get(SCOPE_KEY) if isinstance(scope, Mapping) else None
        if tx is None and CURRENT_SPAN.get() is None and request_context() is None:
            return  # an ignored path: no error events (as for its unhandled errors)
        if tx is not None and tx._request is None:  # unsampled: for the event
            pii = get_client().options.send_default_pii
            asgi.defer_asgi_request_info(tx, scope, pii)
        span = CURRENT_SPAN.get() or tx
        # A 5xx HTTPException was raised on purpose: handled, as sentry-sdk reports it.
        get_client().capture_exception(
            exc, span=span, mechanism="starlette", handled=isinstance(exc, HTTPException)
        )
    except Exception:
        logger.debug("capturing a handled exception failed", exc_info=True)


def _capturing(handler: Any) -> Any:
    """Wrap an exception handler: a 5xx response it returns is captured as an error."""
    if getattr(handler, "_stm_capturing", False) or not callable(handler):
        return handler
    if _is_async(handler):

        async def async_handler(conn: Any, exc: Exception) -> Any:
            response = await handler(conn, exc)
            _capture_handled(
                getattr(conn, "scope", None), exc, getattr(response, "status_code", None)
            )
            return response

        functools.update_wrapper(async_handler, handler)  # (inspect.unwrap gives it)
        async_handler._stm_capturing = True  # type: ignore[attr-defined]
        return async_handler

    def sync_handler(conn: Any, exc: Exception) -> Any:
        response = handler(conn, exc)
        _capture_handled(getattr(conn, "scope", None), exc, getattr(response, "status_code", None))
        return response

    functools.update_wrapper(sync_handler, handler)
    sync_handler._stm_capturing = True  # type: ignore[attr-defined]
    return sync_handler


_ORIGINAL_TASK_CALL: Callable[..., Any] | None = None


def _task_span(task: BackgroundTask) -> Span | None:
    """A child span for ``task`` when it runs during a request's unfinished transaction."""
    parent = CURRENT_SPAN.get()
    tx = parent._tx if parent is not None else None
    if parent is None or tx is None or tx._end is not None:
        return None
    func = task.func
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    origin = tx._origin if tx._origin == _ORIGIN_FASTAPI else _ORIGIN_STARLETTE
    return parent.start_child("function", str(name), origin=origin)


def _instrument_background_tasks() -> None:
    """Make each ``BackgroundTask`` run during a request a child span (idempotent)."""
    global _ORIGINAL_TASK_CALL
    if _ORIGINAL_TASK_CALL is not None:
        return
    original = BackgroundTask.__call__
    if getattr(original, "_stm_traced", False):
        return
    _ORIGINAL_TASK_CALL = original

    async def traced_call(self: BackgroundTask) -> None:
        try:
            span = _task_span(self)
            if span is not None:
                span.__enter__()
        except Exception:
            logger.debug("starting a background task span failed", exc_info=True)
            span = None
        if span is None:
            await original(self)
            return
        failed: BaseException | None = None
        try:
            await original(self)
        except BaseException as exc:
            failed = exc
            raise
        finally:
            try:  # the task's own outcome stands whatever ending the span does
                span.__exit__(type(failed) if failed else None, failed, None)
            except Exception:
                logger.exception("sentry_tracing_mw: ending a background task span failed")

    traced_call._stm_traced = True  # type: ignore[attr-defined]
    BackgroundTask.__call__ = traced_call  # type: ignore[method-assign]
