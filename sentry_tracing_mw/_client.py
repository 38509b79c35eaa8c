"""The client: options, trace continuation, sampling, hand-off to the transport.

One client is current per process (``init()`` replaces it). Framework integrations call
:meth:`Client.continue_trace` and :meth:`Client.start_transaction`; nothing here knows a
framework.
"""

from __future__ import annotations

import atexit
import functools
import ipaddress
import logging
import os
import random
import re
import sys
import threading
from types import TracebackType
from typing import Any, TypeAlias

from . import _fork
from ._client_reports import ClientReports
from ._context import CURRENT_SPAN, ON_SENDER, PROPAGATION_CONTEXT
from ._event import SDK_INFO, error_event, error_event_bytes, transaction_event
from ._fork import chain_uwsgi, in_forked_child, new_lock_in_child
from ._ids import new_trace_id, pop_trace_id
from ._log import raised_at, warn_once
from ._options import Options, build_options
from ._propagation import IncomingTrace, format_sample_rate, parse_incoming_baggage
from ._sampling import SamplingContext, TokenBucket, continued_sampling, sampler_decision
from ._serialize import limit_depth
from ._tracing import _CAPTURED_MARK, PropagationContext, Span, Transaction, capture_mark, names
from ._transport import Pending, Transport, uwsgi_threads_disabled
from .integrations import http_clients

#: What ``sys.exc_info()`` returns.
ExcInfo: TypeAlias = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]

__all__ = ["Client", "close", "get_client", "init", "is_initialized"]

logger = logging.getLogger("sentry_tracing_mw")


def carry_capture_mark(tx: Transaction, exc: BaseException) -> None:
    """``exc`` leaves ``tx`` (its ``with`` block): captured in it, it counts as captured
    in the context it now reaches too (a handler around the block that captures it again
    sends no second event, as ``sentry-sdk``'s dedupe). Never raises."""
    try:
        fields = object.__getattribute__(exc, "__dict__")
        if fields.get(_CAPTURED_MARK) != capture_mark(tx._ctx):
            return
        client = get_client()
        fields[_CAPTURED_MARK] = capture_mark(client._capture_context(CURRENT_SPAN.get()))
    except Exception:
        logger.debug("carrying an exception's capture mark failed", exc_info=True)


def _seen_in(exc: BaseException, ctx: PropagationContext) -> bool:
    """Whether ``exc`` was already captured in this unit of work (request, or the trace
    context outside one), and mark it so: an integration's inner and outer capture give
    one event, while the same object raised again in a later request is reported again.
    The mark names the context, so a pickled or copied exception is not skipped elsewhere;
    it follows the exception out of a transaction it leaves (``carry_capture_mark``).
    """
    mark = capture_mark(ctx)
    try:  # the instance dict: past a raising __getattr__ or a refusing __setattr__
        fields = object.__getattribute__(exc, "__dict__")
        if fields.get(_CAPTURED_MARK) == mark:
            return True
        fields[_CAPTURED_MARK] = mark
    except Exception:
        pass
    return False


class Client:
    """Holds validated options, the transport and the client-report counters."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.reports = ClientReports()
        self.transport: Transport | None = None
        if options.dsn is not None:
            self.transport = Transport(
                options.dsn,
                reports=self.reports,
                sdk_info={"name": SDK_INFO["name"], "version": SDK_INFO["version"]},
                send_client_reports=options.send_client_reports,
                http_proxy=options.http_proxy,
                https_proxy=options.https_proxy,
                ca_certs=options.ca_certs,
            )
        cap = options.max_inherited_sampled_per_second
        # The cap is on decisions inherited from upstream, for a service that traces: an
        # explicit ``sampled=``, a sampler's decision and a head decision are never capped.
        tracing = options.tracing_enabled
        self._inherited_cap = None if cap is None or not tracing else TokenBucket(cap)
        #: Unsampled transactions are client-reported (``sample_rate``) only when tracing
        #: is on: without it (tracing without performance) nothing was sampled away.
        self._report_unsampled = tracing
        # A str is a name, or a regex matching the whole name ("/health" never drops
        # "/api/healthcheck"); a compiled pattern is searched (anchored as its author wrote
        # it), as trace_propagation_targets are.
        exact: set[str] = set()
        whole: list[re.Pattern[str]] = []
        searched: list[re.Pattern[str]] = []
        for item in options.ignore_transactions:
            if isinstance(item, str):
                exact.add(item)
                try:
                    whole.append(re.compile(item))
                except re.error:
                    pass
            else:
                searched.append(item)
        self._ignore_exact = frozenset(exact)
        self._ignore_whole = tuple(whole)
        self._ignore_searched = tuple(searched)
        self._ignoring = bool(exact or searched)
        self._trust = options.trust_incoming_traces
        self._org_id = options.org_id
        # What may need an incoming baggage at the start of a request: a sampler (parent
        # rate) and strict continuation (their org id). Without them it is parsed lazily.
        self._may_defer_baggage = (
            options.traces_sampler is None and not options.strict_trace_continuation
        )
        self._closed = False
        #: A shutdown flush (lifespan) used up shutdown_timeout: close() does not wait again.
        self._shutdown_spent = False
        #: The middleware that made this client by calling ``init()``, and its options.
        self._made_by: tuple[str, dict[str, Any]] | None = None

    # -- incoming traces --------------------------------------------------------
    def trusts(self, peer: str | None, request: Any = None) -> bool:
        """Whether incoming trace headers from this peer/request may be continued."""
        trust = self._trust
        if trust is True:
            return True
        if trust is False:
            return False
        if callable(trust):
            try:
                return bool(trust(request))
            except Exception as exc:
                warn_once(
                    ("trust_incoming_traces", *raised_at(exc)),
                    "trust_incoming_traces callable raised %s; the request's trace headers "
                    "are not continued",
                    type(exc).__name__,
                    exc_info=True,
                )
                return False
        if not peer:
            return False
        try:
            addr = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if any(addr in net for net in trust if addr.version == net.version):
            return True
        # A dual-stack server sees IPv4 clients as ``::ffff:10.1.2.3``: matched against
        # the IPv4 networks too.
        mapped = getattr(addr, "ipv4_mapped", None)
        return mapped is not None and any(mapped in net for net in trust if net.version == 4)

    def _org_allows(self, incoming: IncomingTrace) -> bool:
        theirs = incoming.dsc.get("org_id") if incoming.dsc else None
        ours = self.options.org_id
        if theirs and ours and theirs != ours:
            return False
        return not (self.options.strict_trace_continuation and theirs != ours)

    def continue_trace(self, incoming: IncomingTrace | None) -> PropagationContext:
        """The propagation context for a unit of work: continued from ``incoming`` or new.

        An ``incoming`` with unparsed baggage (``extract(..., lazy=True)``) stays unparsed
        when nothing at the start of the request needs it: the parent made the decision,
        no ``traces_sampler`` wants the parent's rate and no org check applies.
        """
        if _fork.CHECK_PID:  # uWSGI: a worker forked without our hook knowing
            _fork.check()
        if incoming is not None and incoming.baggage is not None:
            if (
                incoming.parent_sampled is not None
                and self._may_defer_baggage
                and (self._org_id is None or "sentry-org_id" not in incoming.baggage)
            ):
                # Positional: this runs for every continued request.
                return PropagationContext(
                    self,
                    incoming.trace_id,
                    incoming.parent_span_id,
                    incoming.parent_sampled,
                    None,  # sample_rate, sample_rand, dsc, third_party: from the baggage
                    0.0,
                    None,
                    (),
                    incoming.tracestate,
                    incoming.random,
                    incoming,
                )
            incoming = parse_incoming_baggage(incoming)
        if incoming is not None and not self._org_allows(incoming):
            logger.debug("org_id mismatch: starting a new trace instead of continuing")
            incoming = None
        if incoming is None:
            ctx = PropagationContext.__new__(PropagationContext)
            ctx._client = self
            try:  # a drawn id without a Python call (see _ids)
                ctx.trace_id = pop_trace_id()
            except IndexError:
                ctx.trace_id = new_trace_id()
            ctx._span_id = None
            ctx.parent_span_id = None
            ctx.sampled = None
            ctx._sample_rate = None
            ctx._sample_rand = None  # drawn when first needed (see sample_rand)
            ctx._dsc = None
            ctx._baggage = None
            ctx._ours = None
            ctx._third_party = ()
            ctx.tracestate = None
            ctx.random = True
            ctx.transaction = None
            ctx._pending = None
            ctx._ambient = False
            return ctx
        rate, rand, dsc = continued_sampling(incoming, self.options.public_key)
        return PropagationContext(
            self,
            incoming.trace_id,
            parent_span_id=incoming.parent_span_id,
            sampled=incoming.parent_sampled,
            sample_rate=rate,
            sample_rand=rand,
            dsc=dsc,
            third_party=incoming.third_party,
            tracestate=incoming.tracestate,
            random=incoming.random,
        )

    def start_transaction(
        self,
        name: str,
        *,
        op: str | None = None,
        source: str = "custom",
        origin: str = "manual",
        ctx: PropagationContext | None = None,
        sampled: bool | None = None,
        sampling_extra: dict[str, Any] | None = None,
    ) -> Transaction:
        """Start a transaction in ``ctx`` (a new trace when None) and make the decision."""
        name, op, source = names(name, op, source)
        return self._start_transaction(name, op, source, origin, ctx, sampled, sampling_extra)

    def _start_transaction(
        self,
        name: str,
        op: str | None,
        source: str,
        origin: str,
        ctx: PropagationContext | None,
        sampled: bool | None,
        sampling_extra: dict[str, Any] | None,
    ) -> Transaction:
        """``start_transaction`` with positional arguments (the per-request hot path)."""
        if ctx is None:
            ctx = self.continue_trace(None)
        opts = self.options
        parent_sampled = ctx.sampled
        sampler = opts.traces_sampler
        decision: bool | None
        rate: float | None = None
        inherited = False  # the parent's rate is kept as is: reading it may parse the baggage
        if sampled is not None:
            decision, rate = sampled, (1.0 if sampled else 0.0)
        elif sampler is None:
            # Fast path (no sampler): inherit the parent's decision, else use the rate.
            if parent_sampled is not None:
                decision, inherited = parent_sampled, True
            elif (rate := opts.traces_sample_rate) is None:
                decision = None
            elif rate >= 1.0 or rate <= 0.0:  # any sample_rand gives this decision
                decision = rate >= 1.0
            else:
                decision = ctx.sample_rand < rate
        else:
            decision, rate = sampler_decision(
                sampler,
                ctx.sample_rand,
                # A partial, not a closure: a closure would make cells of these names on
                # every call, sampler or not.
                functools.partial(
                    _sampling_context, name, op, source, ctx, parent_sampled, sampling_extra
                ),
            )
        cap = self._inherited_cap
        if decision and inherited and cap is not None and not cap.take():
            logger.debug("max_inherited_sampled_per_second reached: not sampling")
            decision = False
        ctx.sampled = decision
        if not inherited:
            if ctx._pending is not None:
                ctx._resolve()
            ctx._sample_rate = rate
            dsc = ctx._dsc
            if (
                dsc is not None
                and rate is not None
                and "sample_rate" not in dsc
                and "sampled" not in dsc
            ):
                # Continued from a service that deferred (tracing without performance):
                # the upstream DSC has no rate, so it gets the one this decision used, as
                # sentry-sdk adds it (the server cannot extrapolate without one). A DSC
                # that records a decision is left as it is: the rate might contradict it.
                ctx._dsc = {**dsc, "sample_rate": format_sample_rate(rate)}
                ctx._baggage = ctx._ours = None
        recording = decision is True and (sampled is not None or opts.tracing_enabled)
        return Transaction(self, ctx, name, op, source, origin, recording)

    # -- transactions -------------------------------------------------------------
    def _finish_transaction(self, tx: Transaction) -> None:
        transport = self.transport
        if not tx._recording:
            ctx = tx._ctx
            if ctx.transaction is tx and ctx._dsc is None:
                ctx.transaction = None  # break the tx <-> context cycle (no GC needed)
            if self._closed:  # init() replaced this client: the current one counts it
                current = get_client()
                if current is not self and not current._closed:
                    current._finish_transaction(tx)
                return
            if (
                transport is not None
                and ctx.sampled is False
                and self._report_unsampled
                and self.reports.record_unsampled(tx._n_children)
            ):
                transport.send_reports_if_due()
            return
        if transport is None:
            return
        if self._closed:
            # Started before init() replaced this client: the current client sends it.
            current = get_client()
            if current is not self and not current._closed:
                tx._client = current
                current._finish_transaction(tx)
            else:
                logger.debug("transaction %r finished after close(): not sent", tx._name)
            return
        # Every recording child, finished or not: all are lost when the transaction is.
        n = tx._counted = tx._n_children
        status = tx._response_status
        if status is not None and status in self.options.trace_ignore_status_codes:
            self.reports.record_transaction("event_processor", n)
            return
        if not transport.submit(
            Pending(
                "transaction",
                functools.partial(self._prepare_transaction, tx),
                n,
                1024 + 400 * n + tx._extra_bytes,
            )
        ):
            # Dropped (and counted): let go of what it holds now, not at the next GC run
            # (a transaction and its context refer to each other).
            tx._request = None
            tx._spans = []
            if tx._ctx.transaction is tx:
                tx._ctx.transaction = None

    def _is_ignored(self, name: str) -> bool:
        if name in self._ignore_exact:
            return True
        return any(p.fullmatch(name) for p in self._ignore_whole) or any(
            p.search(name) for p in self._ignore_searched
        )

    def _prepare_transaction(
        self, tx: Transaction
    ) -> tuple[dict[str, Any], dict[str, str] | None] | None:
        """Runs on the transport's worker thread."""
        finished = list(tx._spans)  # a span that finishes from now on is not sent
        n = len(finished)
        # Children counted when the transaction ended but not finished by now (running
        # elsewhere, or never ended): not sent (protocol §6.4), counted once, here.
        unfinished = tx._counted - n
        if self._ignoring and self._is_ignored(tx._name):
            self._record_unfinished(unfinished)
            self.reports.record_transaction("event_processor", n)
            return None
        event: dict[str, Any] | None = transaction_event(tx, self.options, finished)
        dsc = tx._ctx.dsc()  # freezes the DSC (name and all) before the cycle is broken
        # Built: a failure before this point is counted by the transport, every span in it.
        self._record_unfinished(unfinished)
        if tx._ctx.transaction is tx:
            tx._ctx.transaction = None
        hook = self.options.before_send_transaction
        if hook is not None:
            try:
                event = hook(event)  # type: ignore[arg-type]
            except BaseException:  # (on the worker: even SystemExit is a failing filter)
                # A failing filter must not let unfiltered data out (as sentry-sdk does).
                logger.exception("before_send_transaction raised; the transaction is dropped")
                event = None
            if event is None:
                self.reports.record_transaction("before_send", n)
                return None
            if not isinstance(event, dict):
                logger.error("before_send_transaction must return a dict or None")
                self.reports.record_transaction("before_send", n)
                return None
            event = limit_depth(event)
            spans = event.get("spans")
            if type(spans) is tuple:  # ``tuple(s for s in spans if keep(s))``: sent as a list
                event["spans"] = spans = list(spans)
            if isinstance(spans, list) and not all(type(s) is dict for s in spans):
                event["spans"] = spans = [s for s in spans if type(s) is dict]
            removed = n - (len(spans) if isinstance(spans, list) else 0)
            if removed > 0:  # spans the hook dropped one by one (protocol §15)
                self.reports.record("before_send", "span", removed)
        assert event is not None
        return event, dsc

    def _record_unfinished(self, count: int) -> None:
        if count > 0:
            self.reports.record("buffer_overflow", "span", count)

    # -- errors ---------------------------------------------------------------------
    def _capture_context(self, span: Span | None) -> PropagationContext:
        """The trace context an error captured here (under ``span``) belongs to."""
        if span is not None:
            return span._context()
        return self._ambient_context()

    def _ambient_context(self) -> PropagationContext:
        """The trace current where no span is: the request's, else one started here and
        kept in the current context, so that later errors and ``get_trace_headers()`` here
        share it (§16). A kept one is *ambient*: outgoing calls made outside any request
        or span still get no trace headers (one trace per thread would join unrelated
        calls), and a request whose path is ignored reports no errors through it."""
        ctx = PROPAGATION_CONTEXT.get()
        if ctx is None or (ctx._ambient and ctx._client is not self):  # (init() again)
            ctx = self.continue_trace(None)
            ctx._ambient = True
            PROPAGATION_CONTEXT.set(ctx)
        return ctx

    def capture_exception(
        self,
        exc: BaseException | ExcInfo,
        *,
        span: Span | None = None,
        mechanism: str = "generic",
        handled: bool = True,
        request: dict[str, Any] | None = None,
    ) -> str | None:
        """Send an error event linked to ``span`` (default: the current span).

        ``exc`` is an exception or a ``sys.exc_info()`` tuple (as ``sentry-sdk`` accepts);
        anything else sends nothing and returns None, as does a client without a DSN.
        ``request``: the event's request interface when no transaction carries one (an
        integration's request whose method is not traced).
        """
        if not isinstance(exc, BaseException):
            value = exc[1] if isinstance(exc, tuple) and len(exc) == 3 else None
            if not isinstance(value, BaseException):
                logger.debug("capture_exception: %r is not an exception", type(exc))
                return None
            exc = value
        if _fork.CHECK_PID:  # uWSGI: a worker forked without our hook knowing
            _fork.check()
        transport = self.transport
        if transport is None or self._closed:
            return None  # no DSN (or closed): nothing will be sent, so no event id
        if span is None:
            span = CURRENT_SPAN.get()
        ctx = self._capture_context(span)
        if _seen_in(exc, ctx):
            return None
        opts = self.options
        if opts.sample_rate < 1.0 and random.random() >= opts.sample_rate:
            self.reports.record("sample_rate", "error")
            return None
        if ON_SENDER.get():
            # On the transport's worker: a before_send* hook capturing. Its event would
            # run the hook again, which would capture again, for ever.
            logger.debug("capture_exception inside a before_send hook: not sent")
            self.reports.record("internal_sdk_error", "error")
            return None
        event = error_event(
            exc,
            options=opts,
            ctx=ctx,
            span=span,
            mechanism=mechanism,
            handled=handled,
            request=request,
        )
        event_id: str = event["event_id"]
        transport.submit(
            Pending(
                "error",
                functools.partial(self._prepare_error, event, ctx.dsc()),
                0,
                error_event_bytes(event),
            )
        )
        return event_id

    def _prepare_error(
        self, event: dict[str, Any], dsc: dict[str, str]
    ) -> tuple[dict[str, Any], dict[str, str] | None] | None:
        hook = self.options.before_send
        if hook is not None:
            try:
                result = hook(event)
            except BaseException:  # (on the worker: even SystemExit is a failing filter)
                # A failing filter must not let unfiltered data out (as sentry-sdk does).
                logger.exception("before_send raised; the error event is dropped")
                result = None
            if not isinstance(result, dict):
                self.reports.record("before_send", "error")
                return None
            event = limit_depth(result)
        return event, dsc

    # -- lifecycle --------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued was sent; False on timeout."""
        if self.transport is None:
            return True
        return self.transport.flush(self.options.shutdown_timeout if timeout is None else timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush within ``shutdown_timeout`` and stop the worker.

        After a shutdown flush that used up ``shutdown_timeout`` (an ASGI server's lifespan
        shutdown, then its normal exit runs atexit), it does not wait a second time.
        """
        if self._closed:
            return
        self._closed = True
        if timeout is None:
            timeout = 0.0 if self._shutdown_spent else self.options.shutdown_timeout
        if self.transport is not None:
            self.transport.close(timeout)


# -- process-wide state -----------------------------------------------------------------

_lock = threading.Lock()
new_lock_in_child(globals(), "_lock", threading.Lock)
_client: Client | None = None
_default: Client | None = None
_initialized = False
#: init() patched the HTTP clients (a later init() without that option restores them).
_instrumented_by_init = False


def _sampling_context(
    name: str,
    op: str | None,
    source: str,
    ctx: PropagationContext,
    parent_sampled: bool | None,
    extra: dict[str, Any] | None,
) -> SamplingContext:
    """What ``traces_sampler`` receives (built only when there is one)."""
    data: dict[str, Any] = {
        "transaction_context": {"name": name, "op": op, "source": source},
        "parent_sampled": parent_sampled,
        "parent_sample_rate": ctx.sample_rate if parent_sampled is not None else None,
    }
    if extra:
        data.update(extra)
    return SamplingContext(data)


def get_client() -> Client:
    """The current client; a send-nothing default one before ``init()``."""
    client = _client
    if client is not None:
        return client
    global _default
    if _default is None:
        _default = Client(build_options(environ={}, instrument_http_clients=False))
    return _default


def is_initialized() -> bool:
    """True once ``init()`` has been called in this process."""
    return _initialized


#: What ``debug=True`` changed on the package logger (the handler it added, if any, and
#: the level before), undone by a client without ``debug`` and by ``close()``.
_debug_logging: tuple[logging.Handler | None, int] | None = None
_logging_lock = threading.Lock()
new_lock_in_child(globals(), "_logging_lock", threading.Lock)


def _configure_logging(debug: bool) -> None:
    global _debug_logging
    if not debug:
        _undo_debug_logging()
        return
    with _logging_lock:  # (inits racing on threads: one handler, removed by the undo)
        if _debug_logging is None:
            _debug_logging = (None, logger.level)
        logger.setLevel(logging.DEBUG)
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("[sentry_tracing_mw] %(levelname)s %(message)s"))
            logger.addHandler(handler)
            _debug_logging = (handler, _debug_logging[1])


def _undo_debug_logging() -> None:
    """Remove what ``debug=True`` set up; a level the app set since then is left alone."""
    global _debug_logging
    with _logging_lock:
        if _debug_logging is None:
            return
        handler, level = _debug_logging
        _debug_logging = None
        if handler is not None:
            logger.removeHandler(handler)
        if logger.level == logging.DEBUG:
            logger.setLevel(level)


def init(dsn: Any = None, **options: Any) -> Client:
    """Configure the process-wide client (see the API contract for every option).

    ``dsn`` may be given positionally, as ``sentry_sdk.init("https://...")`` users do.
    """
    if dsn is not None:
        options["dsn"] = dsn
    opts = build_options(**options)
    client = Client(opts)
    global _client, _initialized
    with _lock:
        old, _client = _client, client
        _initialized = True
    if old is not None and old._made_by is not None:
        _warn_replaced(*old._made_by, options)
    if old is not None:
        try:
            old.close()
            old.reports.hand_over(client.reports)  # its drops (close's too) are sent
        except Exception:
            logger.exception("closing the previous client failed")
    _configure_logging(opts.debug)
    if opts.dsn is not None and uwsgi_threads_disabled():
        logger.warning(
            "uWSGI is running without --enable-threads: uWSGI does not promise that an "
            "app's threads run then, and sentry_tracing_mw sends from a thread of its own "
            "(events may be late or lost). Add --enable-threads (or threads = N)."
        )
    chain_uwsgi()  # again: the app may have replaced uWSGI's post-fork hook since import
    _close_in_multiprocessing_child()
    global _instrumented_by_init
    if opts.instrument_http_clients:
        _instrumented_by_init = _instrument_clients(True) or _instrumented_by_init
    elif _instrumented_by_init:  # the replacing client asks for unpatched clients
        _instrumented_by_init = not _instrument_clients(False)
    logger.debug(
        "initialized (dsn %s, sample rate %s)",
        "set" if opts.dsn else "none",
        opts.traces_sample_rate,
    )
    return client


def _warn_replaced(where: str, made_with: dict[str, Any], options: dict[str, Any]) -> None:
    """Warn that ``init()`` replaces the client a middleware made: the middleware's options
    that this ``init()`` does not give again no longer apply (never silently)."""
    replaced = []
    for name, value in made_with.items():
        try:
            same = name in options and (options[name] is value or options[name] == value)
        except Exception:  # values that refuse comparison
            same = False
        if not same:
            replaced.append(name)
    if replaced:
        logger.warning(
            "init() replaces the client %s made with options %s; they no longer apply "
            "(give them to init() to keep them)",
            where,
            ", ".join(sorted(replaced)),
        )


def close(timeout: float | None = None) -> None:
    """Flush and close the process client; the process is then no longer initialized.

    Until the next ``init()`` the send-nothing default client is current (traces are still
    propagated), and the next middleware to start calls ``init()`` with its own options.
    """
    global _client, _initialized
    with _lock:
        client, _client = _client, None
        _initialized = False
    if client is not None:
        client.close(timeout)
    _undo_debug_logging()


def _instrument_clients(on: bool) -> bool:
    """Patch (``on``) or restore the HTTP clients; True when that was done."""
    try:
        if on:
            http_clients.instrument()
        else:
            http_clients.uninstrument()
    except Exception:
        logger.exception("%s HTTP clients failed", "instrumenting" if on else "restoring")
        return False
    return True


def _close_at_exit() -> None:
    client = _client
    if client is not None:
        try:
            client.close()
        except Exception:  # pragma: no cover
            pass


atexit.register(_close_at_exit)


class _ForkedChild:
    """The key ``multiprocessing``'s after-fork registry holds weakly."""


_FORKED_CHILD = _ForkedChild()


_finalized_in: int | None = None  # the process whose multiprocessing exit closes the client


def _close_at_process_exit(_: object = None) -> None:
    """In a ``multiprocessing`` child (fork start method), run after its bootstrap cleared
    the inherited finalizers: close the client when the child ends. It ends with
    ``os._exit``, so ``atexit`` never runs there."""
    global _finalized_in
    pid = os.getpid()
    if _finalized_in == pid:
        return
    try:
        import multiprocessing.util as mp_util

        mp_util.Finalize(None, _close_at_exit, exitpriority=0)
        _finalized_in = pid
    except Exception:  # pragma: no cover - never break the child
        logger.debug("cannot register the client's close in a multiprocessing child")


def _close_in_multiprocessing_child() -> None:
    """At ``init()`` in a ``multiprocessing`` child that imported us itself (no fork hook
    of ours ran there): close the client at the child's end too."""
    mp = sys.modules.get("multiprocessing")
    try:
        if mp is not None and mp.parent_process() is not None:
            _close_at_process_exit()
    except Exception:  # pragma: no cover - never break init()
        logger.debug("cannot tell whether this is a multiprocessing child", exc_info=True)


def _after_fork_in_child() -> None:
    # An ambient trace of the parent (an error captured or meta tags rendered before
    # gunicorn --preload forks) is not the child's: every worker would share it.
    ambient = PROPAGATION_CONTEXT.get()
    if ambient is not None and ambient._ambient:
        PROPAGATION_CONTEXT.set(None)
    span = CURRENT_SPAN.get()  # forked inside a start_span() on that trace (a fork Pool)
    if span is not None and span._context()._ambient:
        CURRENT_SPAN.set(None)
    # Registered whether a client exists yet or not: a child may call init() itself.
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is None:  # not a multiprocessing child
        return
    try:
        mp_util.register_after_fork(_FORKED_CHILD, _close_at_process_exit)
    except Exception:  # pragma: no cover - never break the child
        pass


in_forked_child(_after_fork_in_child)
