"""WSGI middleware: the request lifecycle for any WSGI app (and for Flask and Django).

Wrap any WSGI app with :class:`TracingMiddleware`. The transaction is named from the raw
path with source ``url`` (the honest source); apps can rename it with
``sentry_tracing_mw.set_transaction_name``. It ends when no app code can run for the request
any more: when the app returns a body that is already complete (a list or tuple, or a
response its framework integration knows is not streamed, as Flask's), else when the body
iterable is exhausted or closed (streamed bodies; ``wsgi.file_wrapper`` keeps its fast path,
uWSGI's sendfile() included).
A complete body thus needs no reader: a test client's unread response is still sent.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

from .._client import Client, get_client
from .._context import CURRENT_SPAN, PROPAGATION_CONTEXT
from .._propagation import extract_environ
from .._request import MAX_HEADERS, request_info
from .._tracing import PropagationContext, Transaction
from ._common import (
    REQUEST_TX_KEY,
    active_request_transaction,
    capture_untraced,
    ensure_client,
    finish_request,
    split_options,
    start_request,
    wsgi_error,
)

__all__ = [
    "ENVIRON_KEY",
    "TracingMiddleware",
    "defer_request_info",
    "environ_request_info",
    "wsgi_str",
]

logger = logging.getLogger("sentry_tracing_mw")

#: The request's transaction, for inner integrations that only name it.
ENVIRON_KEY = REQUEST_TX_KEY
#: Set to True in the environ by a framework hook when the response body is complete (not
#: streamed): iterating it runs no app code (see ``TracingMiddleware.complete_body_key``).
COMPLETE_BODY_KEY = "sentry_tracing_mw.complete_body"

_CONTENT_KEYS = frozenset({"CONTENT_TYPE", "CONTENT_LENGTH"})

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def wsgi_str(value: str) -> str:
    """A PEP 3333 "bytes as latin-1" string decoded as UTF-8 (lossless for ASCII)."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return value


_CACHE_LIMIT = 1024
#: environ key -> header name (``HTTP_X_API_KEY`` -> ``X-Api-Key``); bounded.
_HEADER_NAMES: dict[str, str] = {"CONTENT_TYPE": "Content-Type", "CONTENT_LENGTH": "Content-Length"}


def _header_name(key: str) -> str:
    name = _HEADER_NAMES.get(key)
    if name is None:
        name = key[5:].replace("_", "-").title()
        if len(_HEADER_NAMES) < _CACHE_LIMIT:
            _HEADER_NAMES[key] = name
    return name


def environ_request_info(environ: dict[str, Any], pii: bool) -> dict[str, Any]:
    """The event `request` interface from a WSGI environ (or Django `request.META`)."""
    headers: list[tuple[str, str]] = []
    for key, value in environ.items():
        if len(headers) >= MAX_HEADERS:
            break
        if (key[:5] == "HTTP_" or key in _CONTENT_KEYS) and type(value) is str:
            if key[0] == "C" and not value:
                continue
            headers.append((_header_name(key), value if value.isascii() else wsgi_str(value)))
    scheme = environ.get("wsgi.url_scheme") or "http"
    host = environ.get("HTTP_HOST")
    port = str(environ.get("SERVER_PORT") or "")
    if not host:
        host = str(environ.get("SERVER_NAME") or "localhost")
        if port and port != ("443" if scheme == "https" else "80"):
            host = f"{host}:{port}"
    path = wsgi_str(str(environ.get("SCRIPT_NAME") or "") + str(environ.get("PATH_INFO") or ""))
    return request_info(
        method=str(environ.get("REQUEST_METHOD") or "GET"),
        scheme=str(scheme),
        host=wsgi_str(str(host)),
        path=path,
        query=wsgi_str(str(environ.get("QUERY_STRING") or "")),
        headers=headers,
        send_default_pii=pii,
        server_name=str(environ.get("SERVER_NAME") or "") or None,
        server_port=port or None,
        peer=environ.get("REMOTE_ADDR"),
    )


#: Environ entries a deferred request snapshot leaves out: streams (a request body must not
#: stay alive in the transport queue) and server objects.
_UNSENT_KEYS = ("wsgi.input", "wsgi.errors", "wsgi.file_wrapper")


def defer_request_info(tx: Transaction, environ: Mapping[str, Any], pii: bool) -> None:
    """Give ``tx`` the request interface of ``environ``, built later from a snapshot.

    The request thread only copies the environ (a C-level dict copy) and counts its text
    against the transport queue's byte bound; the transport worker builds the event's
    request interface (``environ_request_info``) when it builds the event.
    """
    snapshot = dict(environ)
    for key in _UNSENT_KEYS:
        snapshot.pop(key, None)
    size = 0
    for value in snapshot.values():
        if type(value) is str:
            size += len(value)
    tx._extra_bytes += size
    tx._request = functools.partial(environ_request_info, snapshot, pii)


def _fail(
    client: Client, tx: Transaction, exc: BaseException, environ: Mapping[str, Any] | None
) -> None:
    """Record an unhandled exception on the transaction (never raises)."""
    try:
        if isinstance(exc, GeneratorExit):
            return
        if tx._end is None:  # (a body's close() may fail after the transaction ended)
            tx._status = "internal_error"
        if wsgi_error(exc):
            if tx._request is None and environ is not None:  # unsampled: for the event
                defer_request_info(tx, environ, client.options.send_default_pii)
            client.capture_exception(exc, span=tx, mechanism="wsgi", handled=False)
    except Exception:
        logger.exception("sentry_tracing_mw: recording an exception failed")


class _Body:
    """Wraps the response iterable: the transaction ends when it is exhausted or closed.

    Iteration is a generator (no Python-level ``__next__`` per chunk, no StopIteration
    object at the end); the transaction is current while the app's iterable produces a
    chunk and not while the server writes it.
    """

    __slots__ = ("_client", "_done", "_environ", "_iterating", "_result", "_tx", "_written")

    def __init__(
        self,
        result: Iterable[bytes],
        tx: Transaction,
        client: Client,
        environ: dict[str, Any],
        written: list[bool] | None = None,
    ) -> None:
        self._result = result
        self._written = written  # set once the app sent bytes with write()
        self._tx = tx
        self._client = client
        self._environ = environ
        self._done = False
        #: Iterations under way: a server may iterate a sized body once more inside its
        #: own iteration (gevent sums a one-chunk body's length); the outermost one ends it.
        self._iterating = 0

    def __iter__(self) -> Iterator[bytes]:
        tx = self._tx
        current = CURRENT_SPAN
        self._iterating += 1
        token = current.set(tx)
        held = True  # the transaction is current (set by us, not yet reset)
        started = False  # a non-empty chunk went out: the server has sent the headers
        try:
            # iter() here, not when the app returned: if it raises, the server has the
            # body and calls its close(), as it would the app's.
            for chunk in self._result:
                current.reset(token)
                held = False
                if chunk:
                    started = True
                yield chunk
                token = current.set(tx)
                held = True
        except BaseException as exc:
            self._iterating -= 1
            if held:  # raised by the app's iterable (not GeneratorExit at our yield)
                current.reset(token)
                held = False
                self._done = True
                written = self._written
                if (
                    not started
                    and not (written and written[0])
                    and tx._recording
                    and isinstance(exc, Exception)
                ):
                    tx.set_http_status(500)  # nothing sent yet: the server answers 500
                _fail(self._client, tx, exc, self._environ)
                finish_request(tx, self._environ)
            raise  # a close() mid-body ends the transaction in close()
        current.reset(token)
        self._iterating -= 1
        if self._iterating:
            return
        self._done = True
        finish_request(tx, self._environ)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        except BaseException as exc:  # the app's cleanup failed: an error of the request's
            self._done = True
            _fail(self._client, self._tx, exc, self._environ)
            raise
        finally:
            tx = self._tx
            if not self._done and tx._end is None and tx._status in (None, "ok"):
                tx._status = "cancelled"  # the server stopped sending: client went away
            finish_request(tx, self._environ)


class _SizedBody(_Body):
    """A body whose app iterable has a length: servers use it (wsgiref sends a
    ``Content-Length`` for a one-chunk body)."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self._result)  # type: ignore[arg-type]


class _UntracedBody:
    """The body of a request whose method is not traced: the app code producing it runs
    in the request's trace context, not in whatever the server's thread holds, and its
    errors are reported."""

    __slots__ = ("_ctx", "_environ", "_result")

    def __init__(
        self, result: Iterable[bytes], ctx: PropagationContext, environ: dict[str, Any]
    ) -> None:
        self._result = result
        self._ctx = ctx
        self._environ = environ

    def __iter__(self) -> Iterator[bytes]:
        ctx = self._ctx
        span_token = CURRENT_SPAN.set(None)
        token = PROPAGATION_CONTEXT.set(ctx)
        held = True
        try:
            for chunk in self._result:
                PROPAGATION_CONTEXT.reset(token)
                CURRENT_SPAN.reset(span_token)
                held = False
                yield chunk
                span_token = CURRENT_SPAN.set(None)
                token = PROPAGATION_CONTEXT.set(ctx)
                held = True
        except BaseException as exc:
            if held and wsgi_error(exc):  # the app's iterable raised: still an error
                capture_untraced(
                    exc, "wsgi", functools.partial(environ_request_info, self._environ)
                )
            raise
        finally:
            if held:
                PROPAGATION_CONTEXT.reset(token)
                CURRENT_SPAN.reset(span_token)

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        if close is None:
            return
        token = PROPAGATION_CONTEXT.set(self._ctx)
        try:
            close()
        except BaseException as exc:
            if wsgi_error(exc):
                capture_untraced(
                    exc, "wsgi", functools.partial(environ_request_info, self._environ)
                )
            raise
        finally:
            PROPAGATION_CONTEXT.reset(token)


class _SendfileFile:
    """A file the app hands to a ``wsgi.file_wrapper`` that is a function giving back the
    object it was given (uWSGI's: it sends the file with ``sendfile()`` only when the app
    returns that very object). Ours is given instead, and comes back: the middleware tells
    a file body by it, returns it untouched (the fast path) and ends the transaction at its
    ``close()``, which the server calls after sending."""

    def __init__(self, filelike: Any) -> None:
        self.filelike = filelike

    def __getattr__(self, name: str) -> Any:  # fileno, read, seek, tell ...
        if name == "filelike" or name.startswith("__"):  # (copy, pickle: not set yet)
            raise AttributeError(name)
        return getattr(self.filelike, name)

    def __iter__(self) -> Any:  # (a server without sendfile for it iterates it)
        return iter(self.filelike)

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


def _passing_files(original: Any) -> Callable[..., Any]:
    """``wsgi.file_wrapper`` giving ``original`` our ``_SendfileFile`` of the file."""

    def file_wrapper(filelike: Any, *args: Any, **kwargs: Any) -> Any:
        return original(_SendfileFile(filelike), *args, **kwargs)

    return file_wrapper


def _is_file_body(result: Any, environ: dict[str, Any]) -> bool:
    """A body the server sends as a file: its ``wsgi.file_wrapper``'s, or our stand-in."""
    if type(result) is _SendfileFile:
        return True
    wrapper = environ.get("wsgi.file_wrapper")
    return isinstance(wrapper, type) and isinstance(result, wrapper)


def _file_of(result: Any) -> Any:
    """The file a ``wsgi.file_wrapper`` body sends: ``filelike`` (wsgiref, werkzeug,
    gunicorn), ``file`` (waitress)."""
    filelike = getattr(result, "filelike", None)
    return filelike if filelike is not None else result.file


def _position(result: Any) -> int | None:
    """The position of a file body's file (None: not a file that tells one)."""
    try:
        return int(_file_of(result).tell())
    except Exception:
        return None


def _stopped_early(result: Any, start: int) -> bool:
    """A file body closed part-way: the server stopped sending (the client went away).

    Servers send a ``wsgi.file_wrapper`` by reading blocks (werkzeug, wsgiref: a complete
    body leaves the file at its end) or with ``socket.sendfile()`` (gunicorn seeks back to
    the start after a complete send); a failed send leaves the file where it stopped.
    waitress counts what is left to send.
    """
    try:
        remain = getattr(result, "remain", None)
        if type(remain) is int:  # waitress: the bytes still to send (0 once all are sent)
            return remain > 0
        return file_stopped_early(_file_of(result), start)
    except Exception:
        return False


def file_stopped_early(filelike: Any, start: int) -> bool:
    """Whether a file sent from position ``start`` was left part-way (between its start
    and its end); False when that cannot be told (a pipe, a closed file)."""
    try:
        position = filelike.tell()
        try:
            size = os.fstat(filelike.fileno()).st_size
        except (AttributeError, OSError, ValueError):  # no descriptor (BytesIO): seek
            if not filelike.seekable():
                return False
            size = filelike.seek(0, os.SEEK_END)
            filelike.seek(position)
        return bool(start < position < size)
    except Exception:  # not a file that tells: unknown, so not cancelled
        return False


def _finish_on_close(result: Any, tx: Transaction, environ: dict[str, Any]) -> Any:
    """Keep a ``wsgi.file_wrapper`` object (sendfile fast path) and end on its close()."""
    original = getattr(result, "close", None)
    has_body = environ.get("REQUEST_METHOD") != "HEAD"
    start = _position(result) if has_body and tx._recording else None

    def close() -> None:
        try:
            if (
                start is not None
                and tx._response_status == 200  # a whole file (not 206, 304)
                and tx._status in (None, "ok")
                and tx._end is None
                and _stopped_early(result, start)
            ):
                tx._status = "cancelled"
        except Exception:
            logger.debug("checking a file body failed", exc_info=True)
        try:
            if original is not None:
                original()
        except BaseException as exc:
            _fail(get_client(), tx, exc, environ)
            raise
        finally:
            finish_request(tx, environ)

    try:
        result.close = close
    except (AttributeError, TypeError):
        return None
    return result


class TracingMiddleware:
    """Trace every request of a WSGI app (``app = TracingMiddleware(app, **options)``).

    Options: any ``init()`` option (used only when ``init()`` was not called) plus
    ``transaction_style``, ``ignore_paths`` and ``http_methods_to_capture``.
    """

    origin = "auto.http.wsgi"
    #: Framework integrations name unmatched requests "GET 404"; the generic one keeps the URL.
    name_unmatched = False
    #: Integrations whose framework marks complete bodies set this to ``COMPLETE_BODY_KEY``
    #: (only an integration that calls the framework directly: nothing in between may wrap
    #: the body in code of its own).
    complete_body_key: str | None = None

    def __init__(self, app: WSGIApp, **options: Any) -> None:
        self.app = app
        self.config, init_options = split_options(options)
        ensure_client(init_options, type(self).__name__)
        #: (the server's ``wsgi.file_wrapper`` function, ours around it): see _SendfileFile
        self._file_wrappers: tuple[Any, Any] = (None, None)

    def _file_wrapper(self, environ: dict[str, Any], wrapper: Any) -> None:
        """Under a server whose ``wsgi.file_wrapper`` is a function, not a class (uWSGI),
        give the app ours around it (``_SendfileFile``)."""
        known, ours = self._file_wrappers
        if wrapper is not known:
            if not callable(wrapper) or getattr(wrapper, "_stm_passing", False):
                return  # (ours already: an outer middleware of ours set it)
            ours = _passing_files(wrapper)
            ours._stm_passing = True  # type: ignore[attr-defined]
            self._file_wrappers = (wrapper, ours)
        environ["wsgi.file_wrapper"] = ours

    def resolve_route(self, environ: dict[str, Any]) -> str | None:
        """The route template before the app runs (for ``traces_sampler``); None here."""
        return None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get(ENVIRON_KEY) is not None or (
            CURRENT_SPAN.get() is not None and active_request_transaction() is not None
        ):
            return self.app(environ, start_response)  # an outer middleware owns the request
        path_info = environ.get("PATH_INFO") or ""
        ignore = self.config.ignore_paths
        if ignore is not None and ignore.match(wsgi_str(str(path_info))):
            return self._untraced(environ, start_response, None)
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None and not isinstance(wrapper, type):  # (a class: most servers)
            self._file_wrapper(environ, wrapper)
        script = environ.get("SCRIPT_NAME")
        path = f"{script}{path_info}" if script else path_info
        if type(path) is not str or not path.isascii():
            path = wsgi_str(str(path))
        client = get_client()
        method = environ.get("REQUEST_METHOD") or "GET"
        if type(method) is not str or not method.isupper():
            method = str(method).upper()
        try:
            tx, ctx = start_request(
                client,
                method,
                path,
                extract_environ(environ),
                environ.get("REMOTE_ADDR"),
                environ,
                "wsgi_environ",
                method in self.config.methods,
                self.origin,
                "http.server",
                (lambda: self.resolve_route(environ))
                if client.options.traces_sampler is not None
                else None,
            )
            if tx is not None:
                environ[ENVIRON_KEY] = tx
                if tx._recording:
                    defer_request_info(tx, environ, client.options.send_default_pii)
        except Exception:
            logger.exception("sentry_tracing_mw: starting the request transaction failed")
            return self.app(environ, start_response)
        if tx is None:
            return self._untraced(environ, start_response, ctx)
        return self._traced(environ, start_response, tx, client, method)

    def _untraced(
        self, environ: dict[str, Any], start_response: StartResponse, ctx: Any
    ) -> Iterable[bytes]:
        token = PROPAGATION_CONTEXT.set(ctx)
        try:
            result = self.app(environ, start_response)
        except BaseException as exc:
            if ctx is not None and wsgi_error(exc):  # an untraced method, not an ignored path
                capture_untraced(exc, "wsgi", functools.partial(environ_request_info, environ))
            raise
        finally:
            PROPAGATION_CONTEXT.reset(token)
        if ctx is None or type(result) is list or type(result) is tuple:
            return result  # an ignored path (no work for it), or a body that runs no code
        if _is_file_body(result, environ):
            return result  # a file: the server sends it (sendfile), no app code
        try:
            if hasattr(result, "__len__"):
                return result  # a server may count its chunks: left as it is
        except Exception:
            return result
        return _UntracedBody(result, ctx, environ)

    def _traced(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        tx: Transaction,
        client: Client,
        method: str,
    ) -> Iterable[bytes]:
        if not tx._recording:
            # Unsampled: the trace is current, but nothing is timed or sent, so no status
            # wrapper.
            return self._run(environ, start_response, tx, client)
        name_unmatched = self.name_unmatched
        written = [False]  # the app sent body bytes through write(): the status went out

        def traced_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            # The server's call first: a status it refuses (a second call without
            # exc_info, an exc_info call once the body has started) was never sent.
            if exc_info is None:
                write = start_response(status, headers)
            else:
                write = start_response(status, headers, exc_info)
            try:
                code = int(status[:3])
                tx.set_http_status(code)
                if name_unmatched and tx._source == "url":
                    tx.set_name(f"{method} {code}", "route")
            except Exception:
                logger.debug("unparseable WSGI status %r", status)

            def traced_write(data: bytes) -> object:
                if data:
                    written[0] = True
                return write(data)

            return traced_write

        return self._run(environ, traced_start_response, tx, client, written)

    def _run(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        tx: Transaction,
        client: Client,
        written: list[bool] | None = None,
    ) -> Iterable[bytes]:
        """Call the app with ``tx`` current; the transaction ends with the body."""
        token = CURRENT_SPAN.set(tx)
        try:
            result = self.app(environ, start_response)
            key = self.complete_body_key
            if (
                type(result) is list
                or type(result) is tuple
                or (key is not None and environ.get(key) is True)
            ):
                finish_request(tx, environ)  # a complete body: iterating it runs no app code
                return result
            if _is_file_body(result, environ):
                patched = _finish_on_close(result, tx, environ)
                if patched is not None:
                    return patched  # type: ignore[no-any-return]
        except BaseException as exc:
            if tx._recording and isinstance(exc, Exception) and not (written and written[0]):
                tx.set_http_status(500)  # nothing sent yet: the server answers 500
            _fail(client, tx, exc, environ)  # captured whatever the sampling decision
            finish_request(tx, environ)
            raise
        finally:
            CURRENT_SPAN.reset(token)
        try:
            sized = hasattr(result, "__len__")  # the server may count its chunks (PEP 3333)
        except Exception:  # a body whose __getattr__ raises
            sized = False
        if sized:
            return _SizedBody(result, tx, client, environ, written)
        return _Body(result, tx, client, environ, written)
