"""ORM query spans through ``connection.execute_wrappers`` on every database connection.

The wrapper is installed on connections that exist when the middleware starts and on every
new one (``connection_created``). It is inserted first in the list, so it times the whole
query and never disturbs ``with connection.execute_wrapper(...)`` blocks (they pop the
last entry). With no sampled span current it costs one ContextVar read per query.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..._context import CURRENT_SPAN
from ._unsent import count_unsent

__all__ = ["QueryWrapper", "install_orm", "instrument_connection"]

logger = logging.getLogger("sentry_tracing_mw")

_ORIGIN = "auto.db.django"


def _description(sql: Any, context: Any) -> str:
    """The query's text: a psycopg ``sql.Composed`` rendered for its connection (as
    psycopg sends it), bytes decoded, anything else as ``str()``."""
    if isinstance(sql, str):
        return sql
    if isinstance(sql, (bytes, bytearray, memoryview)):
        return bytes(sql).decode("utf-8", "replace")
    as_string = getattr(sql, "as_string", None)
    if callable(as_string):
        try:
            text = as_string(context["connection"].connection)
            return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        except Exception:
            logger.debug("rendering a composed query failed", exc_info=True)
    return str(sql)


def _server(settings: Any) -> dict[str, str]:
    """``server.address`` and ``server.port`` from ``HOST`` and ``PORT`` (as ``sentry-sdk``
    sends them); none for a Unix socket directory or no ``HOST``."""
    host = settings.get("HOST")
    if not host or not isinstance(host, str) or host.startswith("/"):
        return {}
    server = {"server.address": host}
    port = settings.get("PORT")
    if port:
        server["server.port"] = str(port)
    return server


def _live_name(context: Any) -> str | None:
    """The database the DB-API connection is on (psycopg's ``info.dbname``), for settings
    without ``NAME``."""
    try:
        return getattr(getattr(context["connection"].connection, "info", None), "dbname", None)
    except Exception:
        logger.debug("reading the database name failed", exc_info=True)
        return None


class QueryWrapper:
    """A Django execute wrapper recording each query as a ``db`` span."""

    __slots__ = ("_server", "_settings", "_vendor")

    def __init__(self, vendor: str, settings: Any) -> None:
        self._vendor = vendor
        self._settings = settings  # the connection's own dict: a test database renames it
        self._server = _server(settings)

    def _data(self, context: Any, many: bool) -> dict[str, Any]:
        data: dict[str, Any] = {"db.system": self._vendor}
        name = self._settings.get("NAME") or _live_name(context)
        if name:  # never "" (a PostgreSQL service file names the database)
            data["db.name"] = str(name)
        if self._server:
            data.update(self._server)
        if many:
            data["db.executemany"] = True
        return data

    def __call__(
        self,
        execute: Callable[..., Any],
        sql: Any,
        params: Any,
        many: bool,
        context: Any,
    ) -> Any:
        parent = CURRENT_SPAN.get()
        if parent is None:
            return execute(sql, params, many, context)
        if not parent._recording:
            count_unsent(parent)
            return execute(sql, params, many, context)
        try:
            span = parent.start_child("db", _description(sql, context), origin=_ORIGIN)
            span._data = self._data(context, many)
        except Exception:
            logger.debug("starting a db span failed", exc_info=True)
            return execute(sql, params, many, context)
        try:
            return execute(sql, params, many, context)
        except BaseException:
            span._status = "internal_error"
            raise
        finally:
            try:
                span.finish()
            except Exception:
                logger.exception("sentry_tracing_mw: ending a db span failed")


def instrument_connection(connection: Any) -> None:
    """Install the query wrapper on one ``DatabaseWrapper`` (idempotent)."""
    wrappers = getattr(connection, "execute_wrappers", None)
    if not isinstance(wrappers, list):
        return
    for wrapper in wrappers:
        if type(wrapper) is QueryWrapper:
            return
    wrappers.insert(0, QueryWrapper(str(connection.vendor), connection.settings_dict))


def _on_connection_created(sender: Any, connection: Any = None, **kwargs: Any) -> None:
    try:
        if connection is not None:
            instrument_connection(connection)
    except Exception:
        logger.exception("sentry_tracing_mw: instrumenting a database connection failed")


def install_orm() -> None:
    """Instrument existing connections (this thread's) and every future one."""
    from django.db import connections
    from django.db.backends.signals import connection_created

    connection_created.connect(_on_connection_created, dispatch_uid="sentry_tracing_mw.orm")
    for connection in connections.all(initialized_only=True):
        instrument_connection(connection)
