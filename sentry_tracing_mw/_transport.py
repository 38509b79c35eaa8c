"""Background transport: a bounded queue drained by one worker thread that POSTs envelopes.

The request thread only pays for :meth:`Transport.submit` (a lock and a deque append);
building the payload, JSON, gzip and HTTP all happen on the worker (protocol §2, §14, §15).

Backoff: after ``_BACKOFF_AFTER`` consecutive failed sends (network errors, 5xx) events are
dropped for a window (1 s, doubling per further failure, at most 60 s) without being built,
serialized or sent, and counted in client reports with the reason of the failure
(``network_error`` or ``send_error``). The first event after the window is a probe; a
delivery or any answer below 500 ends the backoff. Client-report envelopes are always tried
(at most one per ``flush()`` or per report interval), so a flush after an outage delivers
the counts at once.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit
from urllib.request import getproxies, proxy_bypass

import urllib3

from ._client_reports import FLUSH_INTERVAL, ClientReports
from ._context import ON_SENDER, SUPPRESS_INSTRUMENTATION
from ._dsn import USER_AGENT, Dsn
from ._envelope import gzip_compress, serialize_envelope, serialize_item
from ._errors import ConfigurationError
from ._event import MAX_ITEM_BYTES, shrink_event
from ._fork import renew_in_child, uwsgi_module
from ._http import HTTPConnection, StaleConnectionError, certifi_context, tls_context
from ._options import _proxy, explicit_proxy, redacted_url
from ._ratelimits import RateLimits, header_get
from ._serialize import dumps

__all__ = ["WORKER_NAME", "Pending", "Transport", "uwsgi_threads_disabled"]

logger = logging.getLogger("sentry_tracing_mw")

WORKER_NAME = "sentry_tracing_mw.transport"
#: urllib3 2 verifies a TLS proxy it forwards plain HTTP through with proxy_ssl_context
#: only (1.26 with the pool's options)
_URLLIB3_2 = int(str(getattr(urllib3, "__version__", "2")).split(".")[0]) >= 2

_NEVER = float("inf")
#: The real monotonic clock for flush() and close() deadlines, kept where a test's clock
#: mock does not reach (freezegun replaces module attributes that are the time functions):
#: a frozen clock must not turn a bounded wait into one without end.
_clock = functools.partial(time.monotonic)


#: Consecutive failed sends (network errors, 5xx) before events are dropped unsent.
_BACKOFF_AFTER = 3
#: First backoff window in seconds; doubles with every further failure up to the cap.
_BACKOFF_BASE = 1.0
_BACKOFF_MAX = 60.0


@dataclass(slots=True)
class Pending:
    """A finished event waiting for the worker; ``prepare`` builds it there.

    ``prepare`` returns ``(payload, dsc_or_None)`` or None when a user hook dropped it.
    """

    category: str
    prepare: Callable[[], tuple[dict[str, Any], dict[str, str] | None] | None]
    span_count: int = 0
    size_hint: int = 1024


class _Control:
    """Queue marker: send pending client reports in an envelope of their own."""

    __slots__ = ()
    size_hint = 0


_SEND_REPORTS = _Control()


_second_cache: tuple[int, str] = (-1, "")


def _sent_at() -> str:
    """RFC 3339 UTC timestamp with microseconds and ``Z`` (formatting cached per second)."""
    global _second_cache
    now = time.time()
    sec = int(now)
    cached = _second_cache
    if cached[0] != sec:
        cached = _second_cache = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    micros = min(999_999, int((now - sec) * 1_000_000))
    return f"{cached[1]}.{micros:06d}Z"


_ITEM_HEADER = {
    "transaction": b'{"type":"transaction","length":',
    "event": b'{"type":"event","length":',
}


#: The longest wait flush() and close() make (a year, or the platform's lock limit).
#: Redirects followed for an envelope POST (urllib3's, as sentry-sdk sends through it):
#: the body is sent again; 303 (which turns a POST into a GET) is not followed.
_REDIRECTS = frozenset({301, 302, 307, 308})
_MAX_REDIRECTS = 3
#: Characters kept as they are in a redirect's path (the rest is percent-encoded).
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_MAX_WAIT = min(365 * 24 * 3600.0, threading.TIMEOUT_MAX)


def _wait_time(timeout: float | None) -> float | None:
    """``timeout`` as seconds to wait: None (no limit), else within 0 and ``_MAX_WAIT``
    (``inf`` and huge values wait the longest, NaN and negatives not at all)."""
    if timeout is None:
        return None
    try:
        seconds = float(timeout)
    except OverflowError:  # an int too large for a float
        return _MAX_WAIT if timeout > 0 else 0.0
    if not seconds > 0.0:
        return 0.0
    return min(seconds, _MAX_WAIT)


def _record(reports: ClientReports, reason: str, category: str, span_count: int) -> None:
    if category == "transaction":
        reports.record_transaction(reason, span_count)
    else:
        reports.record(reason, category)


def _warn_dropped(dropped: tuple[int, int, int], in_flight: bool) -> None:
    transactions, spans, events = dropped
    if transactions or events:
        logger.warning(
            "sentry_tracing_mw: closed with %d transaction(s) (%d span(s)) and %d error "
            "event(s) still queued after shutdown_timeout; they are dropped%s",
            transactions,
            spans,
            events,
            " (one more envelope was still being sent)" if in_flight else "",
        )
    elif in_flight:
        logger.warning(
            "sentry_tracing_mw: closed while an envelope was still being sent after "
            "shutdown_timeout; it is lost if the process exits before it is"
        )


def _select_proxy(dsn: Dsn, http_proxy: str | None, https_proxy: str | None) -> str | None:
    """Explicit options first, then the ``*_PROXY`` environment honoring ``NO_PROXY``."""
    explicit = explicit_proxy(dsn, http_proxy, https_proxy)[1]
    if explicit is not None:
        return _with_scheme(explicit) or None
    try:
        proxies = getproxies()
        scheme = dsn.scheme
        proxy = proxies.get(scheme)
        if not proxy and scheme == "https":
            scheme, proxy = "http", proxies.get("http")
        if proxy and _bypassed(dsn):
            return None
    except Exception:  # pragma: no cover - broken platform proxy configuration
        logger.debug("could not read proxy settings", exc_info=True)
        return None
    if proxy:
        _check_environment_proxy(scheme, proxy)
    return _with_scheme(proxy) or None


def _check_environment_proxy(scheme: str, proxy: str) -> None:
    """Warn (once, at init) about a malformed ``*_PROXY`` that applies to the DSN: every
    send through it would fail. Still used: going around a proxy the network may require
    is not for us to decide. Credentials are never shown."""
    name = next(
        (n for n in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY") if os.environ.get(n) == proxy),
        f"{scheme}_proxy",  # the platform's proxy settings (macOS, Windows), not a variable
    )
    try:
        _proxy(name, proxy)
    except ConfigurationError as exc:
        logger.warning(
            "environment proxy %s; sending to Sentry through it will fail: fix or unset it, "
            "or pass http_proxy / https_proxy to init() ('' for no proxy)",
            str(exc).removeprefix("invalid option "),
        )


def _with_scheme(proxy: str | None) -> str | None:
    """``host:port`` (as curl and requests take it) is an HTTP proxy."""
    if proxy and "://" not in proxy:
        return "http://" + proxy
    return proxy


def _bypassed(dsn: Dsn) -> bool:
    """``NO_PROXY`` names the DSN's host, alone or with its port (``127.0.0.1:9000``)."""
    if proxy_bypass(dsn.host):
        return True
    host = f"[{dsn.host}]" if ":" in dsn.host else dsn.host
    port = dsn.port or (443 if dsn.scheme == "https" else 80)
    return bool(proxy_bypass(f"{host}:{port}"))


def uwsgi_threads_disabled() -> bool:
    """True under uWSGI started without ``--enable-threads`` (uWSGI does not promise that
    an app's threads, the sender among them, run then), unless it says its Python threads
    run all the same (``uwsgi.has_threads``: uWSGI 2.0.31 enables them by default)."""
    module = uwsgi_module()
    has_threads = getattr(module, "has_threads", None)
    if type(has_threads) in (bool, int) and has_threads:
        return False
    opt = getattr(module, "opt", None)
    if not isinstance(opt, dict):
        return False

    def truthy(value: Any) -> bool:
        if isinstance(value, list):
            return any(truthy(v) for v in value)
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if isinstance(value, str):
            return value.strip().lower() not in ("", "0", "false", "no", "off")
        return bool(value)

    return not (truthy(opt.get("enable-threads")) or truthy(opt.get("threads")))


class Transport:
    """Sends events to one DSN from a lazily started daemon worker thread."""

    # Backoff tuning (module docstring); instance attributes may override them in tests.
    _backoff_after = _BACKOFF_AFTER
    _backoff_base = _BACKOFF_BASE
    _backoff_max = _BACKOFF_MAX

    def __init__(
        self,
        dsn: Dsn,
        *,
        reports: ClientReports,
        sdk_info: dict[str, Any],
        send_client_reports: bool = True,
        http_proxy: str | None = None,
        https_proxy: str | None = None,
        queue_size: int = 1000,
        queue_bytes: int = 32 * 1024 * 1024,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        ca_certs: str | None = None,
    ) -> None:
        self.dsn = dsn
        self.reports = reports
        self.rate_limits = RateLimits()
        self._sdk = {"name": sdk_info.get("name"), "version": sdk_info.get("version")}
        self._dsn_str = dsn.without_secret()  # the secret goes in X-Sentry-Auth only
        self._send_reports = send_client_reports
        self._proxy = _select_proxy(dsn, http_proxy, https_proxy)
        self._queue_size = max(1, queue_size)
        self._queue_bytes = max(1, queue_bytes)
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ca_certs = ca_certs
        self._path = urlsplit(dsn.envelope_url).path
        self._headers = {
            "X-Sentry-Auth": dsn.auth_header,
            "Content-Type": "application/x-sentry-envelope",
            "Content-Encoding": "gzip",
            "User-Agent": USER_AGENT,
        }
        self._failing = False
        self._redirected = False  # warned once that Sentry redirects the envelope URL
        self._init_state()
        renew_in_child(self)

    # -- state -----------------------------------------------------------------------------

    def _init_state(self) -> None:
        # Reentrant: a signal handler that calls flush(), close() or sends an event may
        # interrupt this thread while it holds the lock (see ``_interrupted``).
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[Pending | _Control] = deque()
        self._bytes = 0
        self._enqueued = 0  # items ever put in the queue (flush targets)
        self._done = 0  # items the worker finished with
        self._first_dropped = _NEVER  # number of the first item close() dropped unsent
        self._idle = False  # worker is waiting on the condition and nobody woke it yet
        self._wake_at = _NEVER  # smallest ``_done`` value a flush() caller waits for
        self._stop = False
        self._closed = False
        self._overflowing = False  # warned that the queue is full
        self._worker: threading.Thread | None = None
        self._pool: urllib3.PoolManager | None = None
        self._conn: HTTPConnection | None = None
        self._failures = 0  # consecutive failed sends (network errors, 5xx)
        self._backoff_until = 0.0  # monotonic time; events before it are dropped unsent
        self._backoff_reason = "network_error"  # client-report reason for those drops

    def _reset_after_fork(self) -> None:
        """Child side of ``fork()``: new lock, empty queue, no worker, no pooled sockets."""
        closed = self._closed
        self._init_state()
        self._closed = closed

    def _new_worker(self) -> threading.Thread | None:
        """The worker to start, or None; the caller holds ``self._cond`` and starts it
        after releasing it. Under gevent or eventlet a thread is a greenlet that
        ``start()`` switches to at once: it must not find the lock held (a lock made
        before monkey-patching, in a ``--preload`` master, blocks the whole process)."""
        if self._worker is None and not self._stop:
            self._fresh_condition()
            worker = threading.Thread(target=self._run, name=WORKER_NAME, daemon=True)
            self._worker = worker
            return worker
        return None

    def _fresh_condition(self) -> None:
        """Eventlet's monkey-patching (in a worker forked from a ``--preload`` master, or
        after ``init()``) swaps our lock for a green one, in the condition too, but leaves
        the condition's methods bound to the old lock: ``wait``/``notify`` then fail. Before
        a worker starts (no thread waits on it), a new condition on the lock we hold now."""
        bound = getattr(self._cond.acquire, "__self__", self._lock)
        if bound is not self._lock:
            self._cond = threading.Condition(self._lock)

    def _start(self, worker: threading.Thread) -> None:
        """Start ``worker`` (no lock held); if the thread cannot start (a process out of
        threads), the next submit, flush or close tries again, and the failure is logged."""
        try:
            worker.start()
        except Exception:
            with self._cond:
                if self._worker is worker:
                    self._worker = None
            logger.exception("sentry_tracing_mw: cannot start the transport's sender thread")

    # -- request-thread API ----------------------------------------------------------------

    def submit(self, pending: Pending) -> bool:
        """Queue ``pending`` without blocking; False (and a client report) when dropped."""
        now = time.monotonic()
        if self.rate_limits.is_limited(pending.category, now):
            _record(self.reports, "ratelimit_backoff", pending.category, pending.span_count)
            return False
        if now < self._backoff_until:
            _record(self.reports, self._backoff_reason, pending.category, pending.span_count)
            return False
        size = pending.size_hint
        start = None
        queued = False
        with self._lock:  # the condition's lock: a C-level context manager
            if self._closed:  # close() ran (init() replaced the client meanwhile)
                _record(self.reports, "queue_overflow", pending.category, pending.span_count)
                return False
            if len(self._queue) < self._queue_size and self._bytes + size <= self._queue_bytes:
                self._queue.append(pending)
                self._bytes += size
                self._enqueued += 1
                if self._worker is None:
                    start = self._new_worker()
                elif self._idle:
                    self._cond.notify()
                    # Woken: until it runs (it may wait for the GIL), later submits need
                    # not notify again; it re-checks the queue before it waits.
                    self._idle = False
                queued = True
                if self._stop:  # a signal handler closed it while this submit ran
                    self._drop_queued()  # (counted there)
                    return False
        if queued:
            if start is not None:
                self._start(start)
            return True
        _record(self.reports, "queue_overflow", pending.category, pending.span_count)
        if not self._overflowing:  # said once until the queue empties again
            self._overflowing = True
            logger.warning(
                "sentry_tracing_mw: the send queue is full (%d items or %d bytes): dropping "
                "events until the sender catches up (counted as queue_overflow)",
                self._queue_size,
                self._queue_bytes,
            )
        return False

    def send_reports_if_due(self) -> None:
        """Queue a client-report envelope when counts have waited ``FLUSH_INTERVAL``."""
        if not self._send_reports or not self.reports.due(time.monotonic()):
            return
        with self._cond:
            if self._closed or _SEND_REPORTS in self._queue:
                return
            self._queue.append(_SEND_REPORTS)
            self._enqueued += 1
            start = self._new_worker()
            if start is None and self._idle:
                self._cond.notify()
                self._idle = False
        if start is not None:
            self._start(start)

    def _interrupted(self) -> bool:
        """Whether this thread holds the lock already: a signal handler runs on a thread
        inside ``submit`` or ``flush``. Waiting there would wait for that thread itself."""
        return bool(self._lock._is_owned())  # type: ignore[attr-defined]

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is sent, then send client reports; False on
        timeout or when ``close()`` dropped some of it."""
        timeout = _wait_time(timeout)
        deadline = None if timeout is None else _clock() + timeout
        if threading.current_thread() is self._worker or self._interrupted():
            return False  # a hook on the worker must not wait for itself; nor a handler
        with self._cond:
            if self._closed:
                return not self._queue
            # Items still queued may record drops while they are processed (user hooks,
            # send errors): send the reports after them whenever anything is in flight.
            if self._send_reports and (self.reports.pending() or self._done < self._enqueued):
                self._queue.append(_SEND_REPORTS)
                self._enqueued += 1
            target = self._enqueued
            if self._done >= target:
                return self._first_dropped > target
            start = self._new_worker()
        if start is not None:
            self._start(start)
        with self._cond:
            if self._idle:
                self._cond.notify()
                self._idle = False
            while self._done < target:
                self._wake_at = min(self._wake_at, target)
                if deadline is None:
                    self._cond.wait()
                else:
                    remaining = deadline - _clock()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            return self._first_dropped > target

    def close(self, timeout: float | None = None) -> None:
        """Flush within ``timeout``, then stop the worker; never blocks past ``timeout``."""
        timeout = _wait_time(timeout)
        deadline = None if timeout is None else _clock() + timeout
        interrupted = self._interrupted()  # the worker cannot finish while we hold the lock
        if not self._closed and not interrupted:
            self.flush(timeout)
        with self._cond:
            self._closed = True
            self._stop = True
            worker = self._worker
            self._cond.notify_all()
            if interrupted:
                sending = self._sending()
                dropped = self._drop_queued()
        if interrupted:
            _warn_dropped(dropped, sending and worker is not None and worker.is_alive())
        elif worker is not None and worker is not threading.current_thread():
            try:
                if deadline is None:
                    worker.join()
                else:
                    worker.join(max(0.0, deadline - _clock()))
            except RuntimeError:  # not started yet: its starter is about to; it sees _stop
                pass
            alive = worker.is_alive()
            if not alive:
                self._clear_pool()
            # Still sending, never ran (it could not start), or died: what waits is dropped
            # now, and said so (a worker that stopped normally left nothing queued).
            with self._cond:
                sending = alive and self._sending()  # (an idle worker may not have left yet)
                dropped = self._drop_queued()
            _warn_dropped(dropped, sending)
        elif worker is None:  # never started (nothing queued, or it could not start)
            with self._cond:
                dropped = self._drop_queued()
            _warn_dropped(dropped, False)

    def unsent(self) -> tuple[tuple[int, int, int], bool]:
        """The transactions, spans and error events waiting in the queue, and whether one
        more item (an envelope or client reports) is being sent."""
        with self._lock:
            return self._queued_counts(), self._sending()

    def _sending(self) -> bool:
        """Whether the worker is sending an item now (call with the lock held)."""
        return self._enqueued - self._done > len(self._queue)

    def _queued_counts(self) -> tuple[int, int, int]:
        transactions = spans = events = 0
        for item in self._queue:
            if isinstance(item, Pending):
                if item.category == "transaction":
                    transactions += 1
                    spans += item.span_count + 1
                else:
                    events += 1
        return transactions, spans, events

    def _drop_queued(self) -> tuple[int, int, int]:
        """Empty the queue on close (lock held); returns the transactions, spans and error
        events it held, for a warning. They are counted as ``queue_overflow`` too: a
        client that ``init()`` replaces hands its counts to the new one."""
        counts = self._queued_counts()
        if self._queue:
            self._first_dropped = min(self._first_dropped, self._enqueued - len(self._queue) + 1)
        for item in self._queue:
            if isinstance(item, Pending):
                _record(self.reports, "queue_overflow", item.category, item.span_count)
        self._queue.clear()
        self._bytes = 0
        self._done = self._enqueued
        return counts

    def queued(self) -> int:
        """Items waiting in the queue (for tests and debugging)."""
        return len(self._queue)

    # -- worker ----------------------------------------------------------------------------

    def _run(self) -> None:
        SUPPRESS_INSTRUMENTATION.set(True)
        ON_SENDER.set(True)
        cond = self._cond  # a fork replaces it; this thread then no longer exists anyway
        dropped = (0, 0, 0)
        while True:
            with cond:
                while not self._queue and not self._stop:
                    self._idle = True
                    self._overflowing = False
                    # idle for a while: counts may be waiting (e.g. unsampled traffic)
                    if (
                        not cond.wait(FLUSH_INTERVAL)
                        and self._send_reports
                        and self.reports.due(time.monotonic())
                    ):
                        self._queue.append(_SEND_REPORTS)
                        self._enqueued += 1
                self._idle = False
                if self._stop:
                    dropped = self._drop_queued()
                    cond.notify_all()
                    break
                item = self._queue.popleft()
                self._bytes -= item.size_hint
            try:
                if item is _SEND_REPORTS:
                    self._send_client_reports()
                elif isinstance(item, Pending):
                    self._process(item)
            except BaseException:
                # _process counts its own failures (where app code runs: hooks, reprs);
                # this is the last guard, for the worker's life: it is the only one.
                try:
                    logger.exception("sentry_tracing_mw: unexpected error in the transport worker")
                except BaseException:
                    pass
            with cond:
                self._done += 1
                if self._done >= self._wake_at:
                    self._wake_at = _NEVER
                    cond.notify_all()
        _warn_dropped(dropped, False)  # logging, with no lock held (a handler may block)
        self._clear_pool()

    def _get_pool(self) -> urllib3.PoolManager:
        pool = self._pool
        if pool is None:
            pool = self._pool = self._make_pool()
        return pool

    def _make_pool(self) -> urllib3.PoolManager:
        options: dict[str, Any] = {
            "num_pools": 2,
            "maxsize": 2,
            "timeout": self._timeout,
            "retries": False,
            "block": False,
        }
        proxy = self._proxy
        parts = urlsplit(proxy if "://" in proxy else "http://" + proxy) if proxy else None
        tls_proxy = parts is not None and parts.scheme == "https"
        fallback = None
        if self.dsn.scheme == "https" or tls_proxy:
            # (urllib3 drops these for a plain-HTTP pool; urllib3 1.26 verifies a TLS proxy
            # with them, and 2.x a tunnel's proxy too)
            options["cert_reqs"] = "CERT_REQUIRED"
            if self._ca_certs:
                options["ca_certs"] = self._ca_certs
            else:  # urllib3's defaults; certifi's bundle when the system store is empty
                fallback = certifi_context()
                if fallback is not None:
                    options["ssl_context"] = fallback
        if proxy and parts is not None:
            if parts.scheme.startswith("socks"):
                try:
                    from urllib3.contrib.socks import SOCKSProxyManager

                    return SOCKSProxyManager(proxy, **options)
                except ImportError:
                    logger.warning(
                        "SOCKS proxy %s needs PySocks; sending directly", redacted_url(proxy)
                    )
                    return urllib3.PoolManager(**options)
            proxy_headers = None
            if parts.username is not None:
                auth = unquote(parts.username) + ":" + unquote(parts.password or "")
                proxy_headers = urllib3.make_headers(proxy_basic_auth=auth)
                netloc = parts.netloc.rpartition("@")[2]
                proxy = f"{parts.scheme}://{netloc}"
            if tls_proxy and fallback is not None:
                # urllib3 verifies a TLS proxy with proxy_ssl_context, else with a context
                # of the pool's ca_certs (None here: the empty system store)
                options["proxy_ssl_context"] = fallback
            elif tls_proxy and _URLLIB3_2 and self._ca_certs and self.dsn.scheme == "http":
                # urllib3 2 verifies a proxy it forwards plain HTTP through with it only
                options["proxy_ssl_context"] = tls_context(self._ca_certs)
            return urllib3.ProxyManager(proxy, proxy_headers=proxy_headers, **options)
        return urllib3.PoolManager(**options)

    def _clear_pool(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pragma: no cover
                pass
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                pool.clear()
            except Exception:  # pragma: no cover
                pass

    def _post_direct(self, body: bytes) -> tuple[int, Mapping[str, str]]:
        """One keep-alive connection (the worker is its only user), verified TLS."""
        conn = self._conn
        if conn is None:
            dsn = self.dsn
            conn = self._conn = self._connection(dsn.scheme, dsn.host, dsn.port, self._path)
        try:
            return conn.post(body)
        except StaleConnectionError:
            # the server closed an idle keep-alive connection: one retry on a new one
            return conn.post(body)

    def _process(self, pending: Pending) -> None:
        category = pending.category
        now = time.monotonic()
        if self.rate_limits.is_limited(category, now):
            _record(self.reports, "ratelimit_backoff", category, pending.span_count)
            return
        if now < self._backoff_until:  # queued before the window opened: drop it unbuilt
            _record(self.reports, self._backoff_reason, category, pending.span_count)
            return
        try:
            prepared = pending.prepare()
        except BaseException:  # (app code raising SystemExit, say: the worker lives on)
            _record(self.reports, "internal_sdk_error", category, pending.span_count)
            logger.exception("sentry_tracing_mw: building the %s event failed", category)
            return
        if prepared is None:
            return
        report: dict[str, Any] | None = None
        span_count = pending.span_count  # replaced by the built event's own count below
        try:
            payload, dsc = prepared
            if category == "transaction":
                # The spans the event holds: those prepare() or a hook left out are
                # counted already (a drop from here on counts the rest, not them again).
                spans = payload.get("spans")
                span_count = len(spans) if isinstance(spans, (list, tuple)) else 0
            event_id = payload.get("event_id")
            if not isinstance(event_id, str) or not event_id:
                event_id = uuid.uuid4().hex
                payload["event_id"] = event_id
            headers: dict[str, Any] = {
                "event_id": event_id,
                "sent_at": _sent_at(),
                "dsn": self._dsn_str,
                "sdk": self._sdk,
            }
            if dsc is not None:
                headers["trace"] = dsc
            item_type = "transaction" if category == "transaction" else "event"
            data = dumps(payload)
            if len(data) > MAX_ITEM_BYTES:  # Sentry would reject the whole item (413)
                data, dropped = shrink_event(payload, dumps)
                if dropped:
                    self.reports.record("buffer_overflow", "span", dropped)
                    span_count = max(0, span_count - dropped)
                    logger.debug("left %d spans out of an oversized %s", dropped, category)
                if len(data) > MAX_ITEM_BYTES:
                    _record(self.reports, "send_error", category, span_count)
                    logger.warning("sentry_tracing_mw: dropping a %s over 1 MiB", category)
                    return
            # the same bytes serialize_envelope() gives, without its generic overhead
            parts = [dumps(headers), b"\n", _ITEM_HEADER[item_type], b"%d}\n" % len(data), data]
            parts.append(b"\n")
            if self._send_reports and self.reports.due(time.monotonic()):
                report = self._take_report()
                if report is not None:
                    parts.append(serialize_item({"type": "client_report"}, dumps(report)))
            body = gzip_compress(b"".join(parts))
        except BaseException:
            _record(self.reports, "internal_sdk_error", category, span_count)
            if report is not None:
                self.reports.restore(report)
            logger.exception("sentry_tracing_mw: serializing the %s event failed", category)
            return
        outcome = self._post(body)
        if outcome != "ok":
            if report is not None:
                self.reports.restore(report)
            if outcome != "ratelimited":
                _record(self.reports, outcome, category, span_count)

    def _note_failure(self, reason: str) -> None:
        """Count a failed send; from ``_backoff_after`` in a row on, open a backoff window."""
        self._failures += 1
        excess = self._failures - self._backoff_after
        if excess < 0:
            return
        delay = min(self._backoff_max, self._backoff_base * 2.0 ** min(excess, 30))
        self._backoff_reason = reason
        self._backoff_until = time.monotonic() + delay
        logger.debug(
            "sentry_tracing_mw: %d failed sends in a row; dropping events for %.1f s",
            self._failures,
            delay,
        )

    def _take_report(self) -> dict[str, Any] | None:
        if self.rate_limits.is_limited("internal", time.monotonic()):
            return None
        return self.reports.take()

    def _send_client_reports(self) -> None:
        if not self._send_reports:
            return
        report = self._take_report()
        if report is None:
            return
        try:
            item = ({"type": "client_report"}, dumps(report))
            # sent_at is recommended on every envelope (§4); no event, so no DSC
            body = gzip_compress(serialize_envelope({"sent_at": _sent_at()}, [item]))
        except Exception:  # pragma: no cover - plain dict of str/int
            logger.exception("sentry_tracing_mw: serializing a client report failed")
            return
        if self._post(body) != "ok":
            self.reports.restore(report)

    def _post_proxied(self, url: str, body: bytes) -> tuple[int, Mapping[str, str]]:
        response = self._get_pool().request(
            "POST",
            url,
            body=body,
            headers=self._headers,
            timeout=self._timeout,
            retries=False,
            redirect=False,
            preload_content=True,
        )
        return response.status, response.headers

    def _post_elsewhere(self, url: str, body: bytes) -> tuple[int, Mapping[str, str]]:
        """POST to a URL Sentry redirected to, on a connection of its own."""
        if self._proxy:
            return self._post_proxied(url, body)
        parts = urlsplit(url)
        path = quote(parts.path or "/", safe=_PATH_SAFE)
        target = f"{path}?{parts.query}" if parts.query else path
        conn = self._connection(parts.scheme, parts.hostname or "", parts.port, target)
        try:
            return conn.post(body)
        finally:
            conn.close()

    def _connection(self, scheme: str, host: str, port: int | None, path: str) -> HTTPConnection:
        """A direct connection posting envelopes to ``path`` with this transport's headers,
        timeouts and CA bundle."""
        return HTTPConnection(
            scheme,
            host,
            port,
            path,
            self._headers,
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            ca_certs=self._ca_certs,
        )

    def _send(self, body: bytes) -> tuple[int, Mapping[str, str]]:
        """POST to the envelope URL, following redirects as sentry-sdk does (the body is
        sent again; up to three; never from https to http)."""
        url = self.dsn.envelope_url
        if self._proxy:
            status, headers = self._post_proxied(url, body)
        else:
            status, headers = self._post_direct(body)
        for _ in range(_MAX_REDIRECTS):
            if status not in _REDIRECTS:
                break
            location = header_get(headers, "location")
            if not location:
                break
            target = urljoin(url, location.strip())
            parts = urlsplit(target)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                break
            if parts.scheme == "http" and urlsplit(url).scheme == "https":
                logger.warning(
                    "sentry_tracing_mw: Sentry redirects %s to plain http (%s): not followed",
                    url,
                    redacted_url(target),
                )
                break
            if not self._redirected:
                self._redirected = True
                logger.warning(
                    "sentry_tracing_mw: Sentry redirects %s to %s (HTTP %d): following; "
                    "set the DSN to the new address",
                    url,
                    redacted_url(target),
                    status,
                )
            url = target
            status, headers = self._post_elsewhere(url, body)
        return status, headers

    def _post(self, body: bytes) -> str:
        """POST one envelope: "ok", "ratelimited" (429), "send_error" or "network_error"."""
        try:
            status, headers = self._send(body)
        except Exception as exc:
            if not self._failing:
                logger.warning("sentry_tracing_mw: sending to Sentry failed: %s", exc)
                self._failing = True
            else:
                logger.debug("sentry_tracing_mw: sending to Sentry failed: %s", exc)
            # a connection that failed mid-way must not be reused
            self._clear_pool()
            self._note_failure("network_error")
            return "network_error"
        try:
            self.rate_limits.update_from_response(status, headers, time.monotonic())
        except Exception:  # pragma: no cover - parser is total
            logger.debug("sentry_tracing_mw: bad rate-limit headers", exc_info=True)
        if status >= 500:
            self._note_failure("send_error")
        elif self._failures:
            # Sentry answered: it is reachable again (429 and 4xx keep their own handling)
            self._failures = 0
            self._backoff_until = 0.0
        if 200 <= status < 300:
            self._failing = False
            logger.debug(
                "sentry_tracing_mw: sent %d bytes to %s: HTTP %d",
                len(body),
                self.dsn.envelope_url,
                status,
            )
            return "ok"
        if status == 429:
            logger.info("sentry_tracing_mw: rate limited by Sentry (429)")
            return "ratelimited"
        if status == 413:
            logger.error("sentry_tracing_mw: envelope rejected by Sentry as too large (413)")
        elif status == 407 and self._proxy:
            log = logger.debug if self._failing else logger.warning
            log(
                "sentry_tracing_mw: the proxy %s answered HTTP 407 (Proxy Authentication "
                "Required); envelope dropped",
                redacted_url(self._proxy),
            )
            self._failing = True
        else:
            # one warning per outage, not one per envelope (a 5xx storm would flood the logs)
            log = logger.debug if self._failing else logger.warning
            log("sentry_tracing_mw: Sentry answered HTTP %d; envelope dropped", status)
            self._failing = True
        return "send_error"
