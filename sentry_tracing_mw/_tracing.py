"""The tracing model: the propagation context of a trace, spans and transactions.

Timing uses one wall-clock reading per transaction plus ``time.perf_counter()`` for every
start and end, so a clock step never yields a negative or wrong duration. Unsampled
transactions keep no span objects and build no event; they still carry the trace id and
the negative decision downstream.
"""

from __future__ import annotations

import datetime
import functools
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from contextvars import Token
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ._context import CURRENT_SPAN
from ._fork import in_forked_child
from ._ids import new_sample_rand, new_span_id, pop_span_id, trace_sample_rand
from ._propagation import (
    BAGGAGE_HEADER,
    SENTRY_TRACE_HEADER,
    TRACEPARENT_HEADER,
    TRACESTATE_HEADER,
    IncomingTrace,
    format_sample_rand,
    format_sample_rate,
    format_sentry_trace,
    format_traceparent,
    merge_baggage,
    parse_incoming_baggage,
    sentry_part,
)
from ._sampling import continued_sampling
from ._serialize import INT_END, INT_MIN, json_int

if TYPE_CHECKING:
    from ._client import Client

__all__ = [
    "SOURCES",
    "PropagationContext",
    "Span",
    "Transaction",
    "http_status_to_span_status",
]

logger = logging.getLogger("sentry_tracing_mw")

#: Transaction name sources an SDK may send (protocol §6.2).
SOURCES = frozenset({"custom", "url", "route", "view", "component", "task"})

SPAN_STATUSES = frozenset(
    {
        "ok",
        "cancelled",
        "unknown",
        "invalid_argument",
        "deadline_exceeded",
        "not_found",
        "already_exists",
        "permission_denied",
        "resource_exhausted",
        "failed_precondition",
        "aborted",
        "out_of_range",
        "unimplemented",
        "internal_error",
        "unavailable",
        "data_loss",
        "unauthenticated",
    }
)

_HTTP_STATUS = {
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    409: "already_exists",
    413: "failed_precondition",
    429: "resource_exhausted",
    499: "cancelled",
    501: "unimplemented",
    503: "unavailable",
    504: "deadline_exceeded",
}
_TAG_KEY_BAD = re.compile(r"[^a-zA-Z0-9_.:-]")
#: Longest span description or string/bytes data value kept (longer ones end in "...");
#: it keeps one span far below Sentry's 1 MiB item limit and bounds what a queued
#: transaction holds.
MAX_TEXT = 8192
#: Texts up to this length are covered by the per-span allowance of the queue's byte count.
_SMALL_TEXT = 256


def _clip_text(value: Any) -> Any:
    """A str/bytes clipped to MAX_TEXT (ending in "...")."""
    if len(value) > MAX_TEXT:
        return value[: MAX_TEXT - 3] + ("..." if isinstance(value, str) else b"...")
    return value


#: A container data value is copied when set, keeping at most this many values in all
#: (nested ones included) and this depth: what a queued transaction holds stays bounded,
#: and the app may change its own object while the transport still holds the copy.
MAX_DATA_ITEMS = 1000
MAX_DATA_DEPTH = 10
_CONTAINERS = (dict, list, tuple, set, frozenset)


class _Bounded:
    """The copy of one container value and what it holds (see ``_bounded``)."""

    __slots__ = ("budget", "held")

    def __init__(self) -> None:
        self.budget = MAX_DATA_ITEMS
        self.held = 0

    def copy(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is str or kind is bytes:
            value = _clip_text(value)
            self.held += len(value)
            return value
        if not isinstance(value, _CONTAINERS):
            self.held += 16
            if kind is int:
                return json_int(value)
            if isinstance(value, int) and kind is not bool:  # an IntEnum, a subclass
                return json_int(int(value))
            return value
        if depth >= MAX_DATA_DEPTH:
            self.held += 16
            return "[MaxDepth]"
        self.held += 64
        out: Any
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if self.budget <= 0:
                    break
                self.budget -= 1
                out[self.key(key)] = self.copy(item, depth + 1)
            return out
        out = []
        for item in value:
            if self.budget <= 0:
                break
            self.budget -= 1
            out.append(self.copy(item, depth + 1))
        return out  # sets and tuples are sent as JSON arrays anyway

    def key(self, key: Any) -> Any:
        """A dict key, clipped and counted like a value (JSON keys are text anyway)."""
        kind = type(key)
        if kind is str or kind is bytes:
            key = _clip_text(key)
            self.held += len(key)
            return key
        if (kind is int and INT_MIN <= key < INT_END) or kind is float or kind is bool:
            self.held += 16
            return key
        if key is None:
            self.held += 16
            return key
        text = _clip_text(_safe_repr(key))  # a tuple or object key: its repr, bounded
        self.held += len(text)
        return text


def _bounded(value: Any) -> tuple[Any, int]:
    """A bounded copy of a container value and the bytes it holds."""
    bounded = _Bounded()
    try:
        return bounded.copy(value, 0), bounded.held
    except Exception:  # a container whose iteration fails: keep its repr only
        text = _clip_text(_safe_repr(value))
        return text, len(text)


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return "<unrepresentable>"


def _text(value: Any) -> str:
    """``value`` as text for a name, op or description given as something else: a str
    subclass's own text (a ``(str, Enum)`` member's value), else ``str()``, else its
    ``repr``, else a marker; clipped to MAX_TEXT."""
    try:
        text = str.__str__(value) if isinstance(value, str) else str(value)
    except Exception:  # a raising __str__, an int too long to print
        text = str(json_int(int(value))) if isinstance(value, int) else _safe_repr(value)
        logger.debug("a value's str() failed: sent as %s", text[:80])
    if type(text) is not str:  # pragma: no cover - str() returns str
        text = "<unrepresentable>"
    return _clip_text(text)  # type: ignore[no-any-return]


_MAX_TIMESTAMP = 253402300799.0  # 9999-12-31T23:59:59Z


def _timestamp(value: Any) -> float | None:
    """A user's end timestamp as seconds since the epoch (a number, or a ``datetime`` as
    ``sentry-sdk`` accepts, naive meaning local time); None when unusable."""
    try:
        seconds = float(value.timestamp() if isinstance(value, datetime.datetime) else value)
    except Exception:
        seconds = math.nan
    if not 0.0 <= seconds <= _MAX_TIMESTAMP:  # NaN, infinite, before 1970, after 9999
        logger.debug("ignoring invalid end timestamp %r: using the current time", value)
        return None
    return seconds


def valid_source(source: Any) -> str:
    """A transaction name source given to the public API, ``custom`` when invalid."""
    if type(source) is not str or source not in SOURCES:
        logger.debug("invalid transaction source %r; using 'custom'", source)
        return "custom"
    return source


def names(name: Any, op: Any, source: Any) -> tuple[str, str | None, str]:
    """A transaction's name, op and source as given to the public API: text, and a
    valid source."""
    if type(name) is not str:
        name = _text(name)
    if op is not None and type(op) is not str:
        op = _text(op)
    return name, op, valid_source(source)


def _http_code(value: Any) -> int | None:
    """An HTTP status given as something else than a 3-digit int (``"404"``, a status line
    ``"404 Not Found"``, a float), or None when it is not one (it has three digits)."""
    try:
        if isinstance(value, (str, bytes)):
            value = value.split(None, 1)[0] if value.strip() else value
        code = int(value)
    except Exception:  # not a number, inf, NaN
        code = -1
    if 0 <= code <= 999:
        return code
    logger.debug("invalid HTTP status %r: status 'unknown'", value)
    return None


def _held_size(value: Any) -> int:
    """What a data value adds to a queued transaction beyond the per-span allowance."""
    kind = type(value)
    if kind is str or kind is bytes:
        n = len(value)
        return n if n > _SMALL_TEXT else 0
    if isinstance(value, _CONTAINERS):
        return _bounded(value)[1]  # copies made by set_data: small and bounded
    return 0


#: ``time.perf_counter`` in a partial: a test's clock mock that replaces module attributes
#: bound to the time functions (freezegun) leaves durations real (4 ns a call).
_perf = functools.partial(time.perf_counter)


def http_status_to_span_status(code: int) -> str:
    """Map an HTTP status code to a span status (protocol §7, ``sentry-sdk``'s table)."""
    if code < 400:
        return "ok" if code >= 0 else "unknown"
    found = _HTTP_STATUS.get(code)
    if found is not None:
        return found
    if code < 500:
        return "invalid_argument"
    if code < 600:
        return "internal_error"
    return "unknown"


class PropagationContext:
    """One trace as seen by this service: ids, the sampling decision and the DSC.

    ``sampled`` is the decision propagated downstream (None = deferred). The dynamic
    sampling context is frozen on first use: taken as received from upstream, or built
    from this service's values when it is the head. A continued trace may hold its
    upstream ``baggage`` unparsed (``pending``): ``sample_rate``, ``sample_rand``,
    ``third_party`` and the DSC are then worked out on first use, which a request that
    inherits its decision and calls nothing downstream never needs.
    """

    __slots__ = (
        "_ambient",
        "_baggage",
        "_client",
        "_dsc",
        "_ours",
        "_pending",
        "_sample_rand",
        "_sample_rate",
        "_span_id",
        "_third_party",
        "parent_span_id",
        "random",
        "sampled",
        "trace_id",
        "tracestate",
        "transaction",
    )

    def __init__(
        self,
        client: Client,
        trace_id: str,
        parent_span_id: str | None = None,
        sampled: bool | None = None,
        sample_rate: float | None = None,
        sample_rand: float | None = 0.0,
        dsc: dict[str, str] | None = None,
        third_party: tuple[str, ...] = (),
        tracestate: str | None = None,
        random: bool = True,
        pending: IncomingTrace | None = None,
    ) -> None:
        self._client = client
        self.trace_id = trace_id
        self._span_id: str | None = None
        self.parent_span_id = parent_span_id
        self.sampled = sampled
        self._sample_rate = sample_rate
        self._sample_rand = sample_rand
        self._dsc = dsc
        self._baggage: str | None = None
        self._ours: tuple[str, int] | None = None
        self._third_party = third_party
        self.tracestate = tracestate
        self.random = random
        self.transaction: Transaction | None = None
        self._pending = pending
        #: Started on first read outside any request or span (``Client._ambient_context``): read
        #: by the API and error events, never given to outgoing calls or request hooks.
        self._ambient = False

    def _resolve(self) -> None:
        """Parse the pending upstream baggage into the sampling values and the DSC."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        incoming = parse_incoming_baggage(pending)
        rate, rand, dsc = continued_sampling(incoming, self._client.options.public_key)
        self._sample_rate = rate
        self._sample_rand = rand
        self._third_party = incoming.third_party
        if self._dsc is None:
            self._dsc = dsc

    @property
    def sample_rate(self) -> float | None:
        """The rate behind ``sampled`` (None when unknown or deferred)."""
        if self._pending is not None:
            self._resolve()
        return self._sample_rate

    @property
    def sample_rand(self) -> float:
        """The trace's random value in [0, 1) that every sampling decision compares with."""
        if self._pending is not None:
            self._resolve()
        rand = self._sample_rand
        if rand is None:  # drawn on first use: most requests never need it
            if self.parent_span_id is None:  # a new trace (our own): any random value
                rand = self._sample_rand = new_sample_rand()
            else:  # continued without one: the trace id's, as every service derives it
                rand = self._sample_rand = trace_sample_rand(self.trace_id)
        return rand

    @property
    def third_party(self) -> tuple[str, ...]:
        """Upstream baggage members of other vendors, forwarded downstream."""
        if self._pending is not None:
            self._resolve()
        return self._third_party

    @property
    def span_id(self) -> str:
        """A span id for this trace when no span is active (kept for the whole request)."""
        span_id = self._span_id
        if span_id is None:
            span_id = self._span_id = new_span_id()
        return span_id

    @property
    def frozen(self) -> bool:
        """True once the DSC has left the process (or came frozen from upstream)."""
        if self._pending is not None:
            self._resolve()
        return self._dsc is not None

    def dsc(self) -> dict[str, str]:
        """The dynamic sampling context, frozen on first call (protocol §11)."""
        if self._pending is not None:
            self._resolve()
        dsc = self._dsc
        if dsc is None:
            dsc = self._dsc = self._build_dsc()
        return dsc

    def _build_dsc(self) -> dict[str, str]:
        opts = self._client.options
        dsc = {"trace_id": self.trace_id}
        if opts.public_key:
            dsc["public_key"] = opts.public_key
        sampled = self.sampled
        if sampled is not None:
            rate = self.sample_rate
            if rate is None or (self.sample_rand < rate) is not sampled:
                rate = 1.0 if sampled else 0.0  # keep the rand/rate/sampled invariant
            dsc["sample_rate"] = format_sample_rate(rate)
        dsc["sample_rand"] = format_sample_rand(self.sample_rand)
        if sampled is not None:
            dsc["sampled"] = "true" if sampled else "false"
        if opts.release:
            dsc["release"] = opts.release
        dsc["environment"] = opts.environment
        if opts.org_id:
            dsc["org_id"] = opts.org_id
        tx = self.transaction
        if tx is not None and tx._namer is not None:
            tx._settle_name()
        if (
            sampled is not None
            and tx is not None
            and tx._source != "url"
            and tx._name
            and not tx._name.isspace()  # the event says "<unlabeled transaction>"
        ):
            dsc["transaction"] = tx._name[:200]
        return dsc

    def sentry_baggage(self) -> str:
        """``baggage`` of the DSC's ``sentry-`` members alone (freezes the DSC)."""
        return self._sentry_members()[0]

    def _sentry_members(self) -> tuple[str, int]:
        ours = self._ours
        if ours is None:  # the DSC is frozen from here on: format its members once
            ours = self._ours = sentry_part(self.dsc())
        return ours

    def headers(self, span_id: str | None = None, own_baggage: str | None = None) -> dict[str, str]:
        """Outgoing trace headers for a call made while ``span_id`` is active."""
        span_id = span_id or self.span_id
        sampled = self.sampled
        headers = {SENTRY_TRACE_HEADER: format_sentry_trace(self.trace_id, span_id, sampled)}
        baggage = self._baggage
        if baggage is None or own_baggage:
            baggage = merge_baggage(*self._sentry_members(), own_baggage, self.third_party)
            if not own_baggage:
                self._baggage = baggage
        if baggage:
            headers[BAGGAGE_HEADER] = baggage
        if self._client.options.propagate_traceparent:
            headers[TRACEPARENT_HEADER] = format_traceparent(
                self.trace_id, span_id, sampled, self.random
            )
            if self.tracestate:
                headers[TRACESTATE_HEADER] = self.tracestate
        return headers


def _ignored_after_finish(span: Span, what: str) -> None:
    """A change to a finished span: ignored, so what is sent is its state at ``finish()``
    (the event is built later, on the sender, from the span itself)."""
    logger.debug("ignoring %s on the finished span %r", what, span)


#: ``with start_transaction(...) as tx`` gives a Transaction to a type checker, not a Span.
_SpanT = TypeVar("_SpanT", bound="Span")


class Span:
    """A timed operation inside a transaction. Use as a context manager or call ``finish()``."""

    __slots__ = (
        "_data",
        "_description",
        "_end",
        "_op",
        "_origin",
        "_parent",
        "_parent_span_id",
        "_recording",
        "_seq",
        "_span_id",
        "_start",
        "_status",
        "_tags",
        "_tokens",
        "_tx",
    )

    _tx: Transaction | None
    #: Set by ``start_child`` on recording children only (read them with getattr): the
    #: span it was called on, and the child's number among its transaction's.
    _parent: Span
    _seq: int

    def __init__(
        self,
        tx: Transaction | None,
        parent_span_id: str | None,
        op: str | None,
        description: str | None,
        recording: bool,
        origin: str = "manual",
    ) -> None:
        self._tx = tx
        try:  # a drawn id without a Python call (see _ids)
            self._span_id = pop_span_id()
        except IndexError:
            self._span_id = new_span_id()
        self._parent_span_id = parent_span_id
        self._op = op
        if type(description) is str and len(description) > _SMALL_TEXT:
            description = _clip_text(description)
            if recording and tx is not None:
                tx._extra_bytes += len(description)
        self._description = description
        self._origin = origin
        self._status: str | None = None
        self._tags: dict[str, str] | None = None
        self._data: dict[str, Any] | None = None
        self._recording = recording
        self._start = _perf()
        self._end: float | None = None
        self._tokens: Token[Span | None] | list[Token[Span | None]] | None = None

    # -- copies -----------------------------------------------------------------
    # A span is live state (its transaction, the client): a copy of a WSGI environ or
    # ASGI scope that holds the request's transaction (``copy.deepcopy(scope)``) shares
    # the span, and a pickled one holds None in its place.
    def __copy__(self) -> Span:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Span:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(None), ())

    # -- read-only attributes -------------------------------------------------
    @property
    def trace_id(self) -> str:
        """The trace this span belongs to (32 hex)."""
        return self._context().trace_id

    @property
    def span_id(self) -> str:
        """This span's id (16 hex)."""
        return self._span_id

    @property
    def parent_span_id(self) -> str | None:
        """The parent span's id, None at the head of a trace."""
        return self._parent_span_id

    @property
    def op(self) -> str | None:
        """The operation, e.g. ``http.client``."""
        return self._op

    @property
    def description(self) -> str | None:
        """A human description, e.g. the SQL or ``GET /path``."""
        return self._description

    @property
    def origin(self) -> str:
        """``manual`` or ``auto.<integration>``."""
        return self._origin

    @property
    def status(self) -> str | None:
        """The span status (protocol §7), None until set."""
        return self._status

    @property
    def sampled(self) -> bool:
        """True when this span is recorded and will be sent with its transaction."""
        return self._recording

    @property
    def start_timestamp(self) -> float:
        """Start time, seconds since the epoch."""
        return self._wall(self._start)

    @property
    def timestamp(self) -> float | None:
        """End time, seconds since the epoch; None until finished."""
        return None if self._end is None else self._wall(self._end)

    @property
    def tags(self) -> Mapping[str, str]:
        """Tags (read-only view)."""
        return MappingProxyType(self._tags or {})

    @property
    def data(self) -> Mapping[str, Any]:
        """Span data (read-only view)."""
        return MappingProxyType(self._data or {})

    @property
    def containing_transaction(self) -> Transaction | None:
        """The transaction this span belongs to."""
        return self._tx

    # -- helpers --------------------------------------------------------------
    def _context(self) -> PropagationContext:
        tx = self._tx
        if tx is None:  # pragma: no cover - detached spans override this
            raise RuntimeError("span has no transaction")
        return tx._ctx

    def _wall(self, mono: float) -> float:
        tx = self._tx
        if tx is None:
            return time.time() - (_perf() - mono)
        return tx._start_wall + (mono - tx._start)

    # -- mutation -------------------------------------------------------------
    def set_tag(self, key: str, value: Any) -> None:
        """Set a tag; key and value are truncated to 200 characters. A tag whose key or
        value is empty or blank (Sentry refuses those) is ignored."""
        if self._end is not None:
            return _ignored_after_finish(self, "set_tag")
        key = (key if type(key) is str else _text(key))[:200]
        text = value if type(value) is str else _text(value)
        if _TAG_KEY_BAD.search(key):
            key = _TAG_KEY_BAD.sub("_", key.replace(" ", "-"))
        if "\n" in text or "\r" in text:
            text = text.replace("\r", " ").replace("\n", " ")
        if not key or not text or text.isspace():  # Relay refuses a blank value too
            logger.debug("ignoring tag %r with an empty key or value", key)
            return
        tags = self._tags
        if tags is None:
            tags = self._tags = {}
        tags[key] = text[:200]

    def set_data(self, key: str, value: Any) -> None:
        """Attach structured data to the span."""
        if self._end is not None:
            return _ignored_after_finish(self, "set_data")
        if type(key) is not str:
            key = _text(key)
        data = self._data
        if data is None:
            data = self._data = {}
        kind = type(value)
        held = 0
        if kind is int:
            value = json_int(value)
        elif isinstance(value, int) and kind is not bool:  # an IntEnum, a subclass
            value = json_int(int(value))
        elif kind is str or kind is bytes:
            if len(value) > MAX_TEXT:
                value = _clip_text(value)
            if len(value) > _SMALL_TEXT:
                held = len(value)
        elif isinstance(value, _CONTAINERS):
            value, held = _bounded(value)
        tx = self._tx
        if tx is not None and self._recording:  # what a queued transaction will hold
            tx._extra_bytes += held - _held_size(data.get(key))
        data[key] = value

    def set_status(self, status: str) -> None:
        """Set the span status; must be one of the 17 canonical values."""
        if self._end is not None:
            return _ignored_after_finish(self, "set_status")
        if type(status) is not str or status not in SPAN_STATUSES:
            logger.debug("ignoring invalid span status %r", status)
            return
        self._status = status

    def set_http_status(self, code: int) -> None:
        """Set ``http.response.status_code`` data and the matching span status."""
        if self._end is not None:
            return _ignored_after_finish(self, "set_http_status")
        if type(code) is not int or not 0 <= code <= 999:
            code = _http_code(code)  # type: ignore[assignment]
            if code is None:
                self._status = "unknown"  # protocol §7: unparsable -> unknown
                return
        data = self._data
        if data is None:
            data = self._data = {}
        data["http.response.status_code"] = code
        self._status = http_status_to_span_status(code)

    # -- children -------------------------------------------------------------
    def start_child(
        self,
        op: str | None = None,
        description: str | None = None,
        *,
        origin: str = "manual",
        name: str | None = None,
    ) -> Span:
        """Start a child span (not current until entered with ``with``); ``name`` is
        ``sentry-sdk``'s newer spelling of ``description``."""
        if name is not None and description is None:
            description = name
        if op is not None and type(op) is not str:
            op = _text(op)
        if description is not None and type(description) is not str:
            description = _text(description)
        tx = self._tx
        if tx is None:
            return _DetachedSpan(self._context(), self._span_id, op, description, origin)
        recording = tx._recording
        seq = 0
        if recording and (tx._n_children >= tx._max_spans or tx._end is not None):
            recording = False
            tx._client.reports.record("buffer_overflow", "span")
        else:  # a sampled transaction's recording children; all of an unsampled one's
            seq = tx._n_children + 1
            tx._n_children = seq
            if recording and seq > tx._counted:
                # The transaction ended (and counted its children) since the check above.
                recording = False
                tx._client.reports.record("buffer_overflow", "span")
        child = Span(tx, self._span_id, op, description, recording, origin)
        if recording:  # (not for others: a chain of them would stay alive)
            child._parent = self
            child._seq = seq
        return child

    # -- lifecycle ------------------------------------------------------------
    def finish(self, end_timestamp: float | None = None) -> None:
        """End the span (idempotent). A span finished after its transaction is not sent
        (counted as dropped when the transaction is, see ``Client._prepare_transaction``)."""
        if self._end is not None:
            return
        end = _perf()
        if end_timestamp is not None and (seconds := _timestamp(end_timestamp)) is not None:
            end = self._start + max(0.0, seconds - self.start_timestamp)
        elif end < self._start:  # a test's clock mock went back (freezegun)
            end = self._start
        self._end = end
        if not self._recording:
            return
        tx = self._tx
        if tx is None or tx is self:
            return
        if tx._end is None:
            tx._spans.append(self)
        elif self._seq > tx._counted:
            # Started while the transaction ended, after its children were counted: not
            # sent, and counted here (the others are counted with the transaction).
            tx._client.reports.record("buffer_overflow", "span")

    def __enter__(self: _SpanT) -> _SpanT:
        token = CURRENT_SPAN.set(self)
        with _TOKENS_LOCK:  # threads may enter one span at overlapping times
            held = self._tokens
            if held is None:
                self._tokens = token
            elif isinstance(held, list):  # re-entered while already current
                held.append(token)
            else:
                self._tokens = [held, token]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with _TOKENS_LOCK:
            held = self._tokens
            if held is not None:
                if isinstance(held, list):
                    _reset_own(held)
                    if not held:
                        self._tokens = None
                else:
                    self._tokens = None
                    try:
                        CURRENT_SPAN.reset(held)
                    except (ValueError, RuntimeError):  # entered in another context
                        _restore(held)
        if exc_type is not None and self._status is None and _is_failure(exc_type, exc):
            self._status = "internal_error"
        if exc is not None and type(self) is Transaction:
            from ._client import carry_capture_mark

            carry_capture_mark(self, exc)
        self.finish()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} op={self._op!r} description={self._description!r} "
            f"span_id={self._span_id} sampled={self._recording}>"
        )


#: Guards every span's ``_tokens`` (read, then changed): reentrant, so a signal handler
#: that enters a span while its thread is inside this bookkeeping does not deadlock.
_TOKENS_LOCK = threading.RLock()


def _new_tokens_lock() -> None:
    """In a forked child: the parent's lock may have been held by a thread not there."""
    global _TOKENS_LOCK
    _TOKENS_LOCK = threading.RLock()


in_forked_child(_new_tokens_lock)


def _reset_own(tokens: list[Token[Span | None]]) -> None:
    """Reset the newest token of ``tokens`` made in this context and drop it: tasks or
    threads that enter one span at overlapping times each get their own current span back
    (another's token would raise, and leave both without one)."""
    for i in range(len(tokens) - 1, -1, -1):
        try:
            CURRENT_SPAN.reset(tokens[i])
        except (ValueError, RuntimeError):  # another context's (or used) token
            continue
        del tokens[i]
        return
    _restore(tokens.pop())  # entered elsewhere, left here


_CAPTURED_MARK = "__sentry_tracing_mw_captured__"


def capture_mark(ctx: PropagationContext) -> str:
    """What an exception captured in the unit of work of ``ctx`` is marked with."""
    return ctx.trace_id + ctx.span_id


def _is_failure(exc_type: type[BaseException], exc: BaseException | None) -> bool:
    """Whether an exception leaving a span's block fails it: ``sys.exit()`` / ``exit(0)``
    is a clean end (as sentry-sdk reads it)."""
    if issubclass(exc_type, SystemExit):
        return getattr(exc, "code", None) not in (0, None)
    return True


def _restore(token: Token[Span | None]) -> None:
    """Without a token of this context: make current what that entry replaced."""
    old = token.old_value
    CURRENT_SPAN.set(None if old is Token.MISSING else old)


class _DetachedSpan(Span):
    """A span started with no transaction: carries the trace, records nothing."""

    __slots__ = ("_ctx",)

    def __init__(
        self,
        ctx: PropagationContext,
        parent_span_id: str | None,
        op: str | None,
        description: str | None,
        origin: str = "manual",
    ) -> None:
        super().__init__(None, parent_span_id, op, description, False, origin)
        self._ctx = ctx

    def _context(self) -> PropagationContext:
        return self._ctx


class Transaction(Span):
    """The root span of a service's part of a trace; sent as one event when it finishes."""

    __slots__ = (
        "_client",
        "_counted",
        "_ctx",
        "_extra_bytes",
        "_max_spans",
        "_measurements",
        "_n_children",
        "_name",
        "_namer",
        "_request",
        "_response_status",
        "_source",
        "_spans",
        "_start_wall",
        "_user",
    )

    def __init__(
        self,
        client: Client,
        ctx: PropagationContext,
        name: str,
        op: str | None,
        source: str,
        origin: str,
        recording: bool,
    ) -> None:
        self._ctx = ctx
        self._client = client
        try:  # a drawn id without a Python call (see _ids)
            self._span_id = pop_span_id()
        except IndexError:
            self._span_id = new_span_id()
        self._parent_span_id = ctx.parent_span_id
        self._op = op
        self._description = None
        self._origin = origin
        self._status = None
        self._tags = None
        self._data = None
        self._recording = recording
        self._end = None
        self._tokens = None
        self._start = _perf()
        self._start_wall = time.time()
        self._name = name
        self._source = source
        self._spans: list[Span] = []
        self._n_children = 0
        #: How many recording children the client counted with the transaction when it
        #: ended (a child numbered past it, ending late, counts itself).
        self._counted = 1 << 62
        self._extra_bytes: int = 0
        self._max_spans = client.options.max_spans
        self._measurements: dict[str, dict[str, Any]] | None = None
        #: The event's ``request`` interface, or a callable that builds it (deferred by
        #: the integrations to the transport worker; see ``_event._request_of``).
        self._request: dict[str, Any] | Callable[[], dict[str, Any]] | None = None
        self._response_status: int | None = None
        #: The event's ``user`` (id, username, email) an integration found, PII only.
        self._user: dict[str, str] | None = None
        #: ``(resolve, *args)``: an integration that did not watch the request's routing
        #: (an unsampled request) names it only when the name is needed, by calling
        #: ``resolve(self, *args)`` (see ``_settle_name``).
        self._namer: tuple[Any, ...] | None = None
        ctx.transaction = self

    @property
    def _tx(self) -> Transaction:  # type: ignore[override]
        """A transaction is its own transaction (a property: no self-reference cycle)."""
        return self

    @property
    def name(self) -> str:
        """The transaction name."""
        if self._namer is not None:
            self._settle_name()
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        if self._end is not None:
            return _ignored_after_finish(self, "name")
        self._namer = None
        self._name = value if type(value) is str else _text(value)

    @property
    def source(self) -> str:
        """How the name was chosen (``route``, ``url``, ``component``, ``custom`` ...)."""
        if self._namer is not None:
            self._settle_name()
        return self._source

    def _settle_name(self) -> None:
        """Name the transaction now if its integration deferred that (never raises): the
        name is about to be read (trace headers, an error event, the attribute)."""
        namer = self._namer
        if namer is None:
            return
        self._namer = None
        try:
            namer[0](self, *namer[1:])
        except Exception:
            logger.debug("naming the transaction failed", exc_info=True)

    @property
    def propagation_context(self) -> PropagationContext:
        """The trace state shared by every span of this transaction."""
        return self._ctx

    def set_name(self, name: str, source: str | None = None) -> None:
        """Rename the transaction, optionally with a new source."""
        if self._end is not None:
            return _ignored_after_finish(self, "set_name")
        self._namer = None
        self._name = name if type(name) is str else _text(name)
        if source is not None:
            try:  # (no type check on this per-request path: an unhashable one raises)
                if source in SOURCES:
                    self._source = source
                    return
            except TypeError:
                pass
            logger.debug("ignoring invalid transaction source %r", source)

    def set_measurement(self, name: str, value: float, unit: str = "") -> None:
        """Record a measurement, e.g. ``set_measurement("items", 3, "none")``."""
        if self._end is not None:
            return _ignored_after_finish(self, "set_measurement")
        measurements = self._measurements
        if measurements is None:
            measurements = self._measurements = {}
        measurements[name if type(name) is str else _text(name)] = {"value": value, "unit": unit}

    def set_http_status(self, code: int) -> None:
        """Set the response status: span status, data, tag and response context."""
        if self._end is not None:
            return _ignored_after_finish(self, "set_http_status")
        if type(code) is not int or not 0 <= code <= 999:
            code = _http_code(code)  # type: ignore[assignment]
            if code is None:
                self._status = "unknown"  # protocol §7: unparsable -> unknown
                return
        self._response_status = code
        self._status = http_status_to_span_status(code)
        if self._recording:  # data and tags only matter for an event that is sent
            data = self._data
            if data is None:
                data = self._data = {}
            data["http.response.status_code"] = code
            tags = self._tags
            if tags is None:
                tags = self._tags = {}
            tags["http.status_code"] = str(code)

    def finish(self, end_timestamp: float | None = None) -> None:
        """End the transaction; a sampled one is handed to the transport."""
        if self._end is not None:
            return
        if end_timestamp is None:
            end = _perf()  # (never before the start: a test's clock mock may go back)
            self._end = end if end > self._start else self._start
        else:
            Span.finish(self, end_timestamp)
        try:
            self._client._finish_transaction(self)
        except Exception:
            logger.exception("sentry_tracing_mw: failed to hand off a transaction")

    @property
    def spans(self) -> tuple[Span, ...]:
        """Finished, recorded child spans."""
        return tuple(self._spans)

    def __repr__(self) -> str:
        return (
            f"<Transaction name={self._name!r} op={self._op!r} trace_id={self._ctx.trace_id} "
            f"sampled={self._recording}>"
        )
