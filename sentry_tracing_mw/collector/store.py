"""SQLite store of the local collector: envelopes become transactions, spans, errors, reports.

One database file in WAL mode. Writes go through one connection guarded by a lock (one
writer at a time, each envelope in one SQL transaction: stored whole or not at all); reads
use a connection per thread, which WAL lets run next to the writer.

Storage model: a *unit* is one service's piece of a trace, either a ``transaction`` event or
a span-streaming *segment* (span v2 items grouped by ``(trace_id, sentry.segment.id)``). Every
span of a unit, its root included, is a row of ``spans``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._envelope import Envelope, EnvelopeError
from .tree import FAILED_EXCLUDED

__all__ = [
    "CATEGORY_OF_ITEM",
    "DEFAULT_MAX_ENVELOPES",
    "MAX_JSON_DEPTH",
    "MAX_TIMESTAMP",
    "IngestResult",
    "PreparedEnvelope",
    "Store",
    "json_too_deep",
    "parse_timestamp",
    "prepare_envelope",
]

SCHEMA_VERSION = 1

logger = logging.getLogger("sentry_tracing_mw.collector")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS envelopes(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received REAL NOT NULL,
    project TEXT NOT NULL,
    headers TEXT NOT NULL,
    item_types TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS units(
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    name TEXT NOT NULL,
    op TEXT,
    description TEXT,
    status TEXT NOT NULL,
    start_ts REAL NOT NULL,
    end_ts REAL NOT NULL,
    duration_ms REAL NOT NULL,
    service TEXT NOT NULL,
    project TEXT NOT NULL,
    sample_rate REAL,
    complete INTEGER NOT NULL DEFAULT 1,
    received REAL NOT NULL,
    envelope_id INTEGER,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS units_trace ON units(trace_id);
CREATE INDEX IF NOT EXISTS units_parent ON units(parent_span_id);
CREATE INDEX IF NOT EXISTS units_name ON units(name);
CREATE INDEX IF NOT EXISTS units_end ON units(end_ts);
CREATE INDEX IF NOT EXISTS units_received ON units(received);
CREATE INDEX IF NOT EXISTS units_envelope ON units(envelope_id);
CREATE TABLE IF NOT EXISTS spans(
    unit_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    parent_span_id TEXT,
    is_root INTEGER NOT NULL DEFAULT 0,
    op TEXT,
    description TEXT,
    status TEXT NOT NULL,
    start_ts REAL NOT NULL,
    end_ts REAL NOT NULL,
    origin TEXT,
    tags TEXT NOT NULL DEFAULT '{}',
    data TEXT NOT NULL DEFAULT '{}',
    segment_name TEXT,
    PRIMARY KEY(unit_id, span_id)
);
CREATE INDEX IF NOT EXISTS spans_trace ON spans(trace_id, span_id);
CREATE TABLE IF NOT EXISTS errors(
    event_id TEXT PRIMARY KEY,
    trace_id TEXT,
    span_id TEXT,
    transaction_name TEXT,
    level TEXT,
    title TEXT NOT NULL,
    timestamp REAL,
    received REAL NOT NULL,
    project TEXT NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS errors_trace ON errors(trace_id);
CREATE INDEX IF NOT EXISTS errors_received ON errors(received);
CREATE TABLE IF NOT EXISTS client_reports(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received REAL NOT NULL,
    timestamp REAL,
    project TEXT NOT NULL,
    reason TEXT NOT NULL,
    category TEXT NOT NULL,
    quantity INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS client_reports_received ON client_reports(received);
"""

#: Envelopes a store keeps by default (``--max-envelopes``): about 70 MB of typical traces.
DEFAULT_MAX_ENVELOPES = 50_000

#: Rate-limit data category of each item type (protocol §14).
CATEGORY_OF_ITEM = {
    "transaction": "transaction",
    "event": "error",
    "span": "span",
    "client_report": "internal",
    "attachment": "attachment",
    "session": "session",
    "sessions": "session",
    "profile": "profile",
    "profile_chunk": "profile_chunk",
    "replay_event": "replay",
    "replay_recording": "replay",
    "feedback": "feedback",
    "check_in": "monitor",
    "log": "log_item",
    "statsd": "metric_bucket",
    "user_report": "default",
}

SPAN_V2_CONTENT_TYPE = "application/vnd.sentry.items.span.v2+json"
MAX_SPANS_PER_ITEM = 1000

#: Latest accepted timestamp: 9999-12-31T23:59:59Z (what a ``datetime`` can show). The
#: earliest is the epoch: Relay drops a transaction whose timestamps are before 1970
#: ("timestamp is too stale"). Beyond these, a timestamp is a bug (often milliseconds sent as
#: seconds) and would make durations overflow to infinity, which JSON cannot carry.
MAX_TIMESTAMP = 253402300799.0
#: Deepest JSON nesting accepted in an item payload or header (about serde_json's recursion
#: limit of 128, which Relay parses with). Python's own encoder and decoder give up near
#: 1000 levels, so deeper data could be parsed but neither stored nor shown.
MAX_JSON_DEPTH = 128

_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX16 = re.compile(r"[0-9a-f]{16}")
_FRACTION = re.compile(r"\.(\d+)")


# -- value helpers --------------------------------------------------------------------


_MAX_QUANTITY = 2**53  # counts beyond this are not counts (and overflow SQLite's INTEGER)


def parse_timestamp(value: Any) -> float | None:
    """Epoch seconds from a number or an RFC 3339 string (what SDKs send), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float (e.g. 10**400)
            return None
        return number if math.isfinite(number) else None
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python 3.10's fromisoformat wants 3 or 6 fraction digits
    text = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _timestamp_in_range(value: float | None) -> float | None:
    return value if value is not None and 0.0 <= value <= MAX_TIMESTAMP else None


def json_too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether decoded JSON nests arrays/objects deeper than ``limit`` (top level is 1)."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def _check_depth(value: Any, where: str) -> None:
    if json_too_deep(value):
        raise EnvelopeError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")


def _may_hold_surrogates(raw: bytes) -> bool:
    return b"\\ud" in raw or b"\\uD" in raw


def _check_text(value: Any, where: str) -> None:
    """Refuse a lone surrogate escape (``"\\ud800"``): valid JSON syntax, but no text that
    UTF-8 (SQLite, the viewer's responses) can carry; Relay refuses it too."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise EnvelopeError(f"{where}: a string holds a lone surrogate (not valid Unicode)")


def _trace_id(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.replace("-", "").lower()
    return text if _HEX32.fullmatch(text) and text != "0" * 32 else None


def _span_id(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.lower()
    return text if _HEX16.fullmatch(text) and text != "0" * 16 else None


def _opt_str(value: Any, limit: int = 8192) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:limit]


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _sample_rate(value: Any, where: str) -> float | None:
    """A sample rate in (0, 1], else ``None``; ``EnvelopeError`` for a number no float holds
    (a 400-digit integer), which is refused like any other."""
    if isinstance(value, bool):
        return None
    try:
        rate = float(value)
    except (TypeError, ValueError):
        return None
    except OverflowError:
        raise EnvelopeError(f"{where} is a number no float holds")
    return rate if 0.0 < rate <= 1.0 else None


def _service(release: Any, server_name: Any, explicit: Any, project: str) -> str:
    for candidate in (explicit,):
        if isinstance(candidate, str) and candidate:
            return candidate[:100]
    if isinstance(release, str) and release:
        return release.split("@", 1)[0][:100] or release[:100]
    if isinstance(server_name, str) and server_name:
        return server_name[:100]
    return f"project {project}"


# -- envelope -> rows (validation happens here, before anything is written) -----------


@dataclass(slots=True)
class _SpanRow:
    span_id: str
    trace_id: str
    parent_span_id: str | None
    is_root: bool
    op: str | None
    description: str | None
    status: str
    start: float
    end: float
    origin: str | None
    tags: dict[str, Any]
    data: dict[str, Any]
    segment_name: str | None = None


@dataclass(slots=True)
class _Transaction:
    event_id: str
    trace_id: str
    root: _SpanRow
    name: str
    service: str
    sample_rate: float | None
    event: dict[str, Any]
    spans: list[_SpanRow]


@dataclass(slots=True)
class _Segment:
    trace_id: str
    segment_id: str
    service: str
    sample_rate: float | None
    spans: list[_SpanRow]


@dataclass(slots=True)
class _Error:
    event_id: str
    trace_id: str | None
    span_id: str | None
    transaction: str | None
    level: str | None
    title: str
    timestamp: float | None
    event: dict[str, Any]


@dataclass(slots=True)
class _Report:
    timestamp: float | None
    reason: str
    category: str
    quantity: int


@dataclass(slots=True)
class PreparedEnvelope:
    """An envelope validated and converted to rows, ready to be written in one go."""

    headers: dict[str, Any]
    project: str
    size: int
    item_types: list[str]
    transactions: list[_Transaction] = field(default_factory=list)
    segments: dict[tuple[str, str], _Segment] = field(default_factory=dict)
    errors: list[_Error] = field(default_factory=list)
    reports: list[_Report] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


@dataclass(slots=True)
class IngestResult:
    """What one stored envelope added."""

    envelope_id: int
    transactions: int = 0
    spans: int = 0
    errors: int = 0
    client_reports: int = 0
    ignored: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (the collector's response body)."""
        return {
            "envelope_id": self.envelope_id,
            "transactions": self.transactions,
            "spans": self.spans,
            "errors": self.errors,
            "client_reports": self.client_reports,
            "ignored_item_types": self.ignored,
        }


def _span_ids(
    raw: dict[str, Any], where: str, default_trace: str | None = None
) -> tuple[str, str, str | None]:
    """A span's validated (trace id, span id, parent span id or None)."""
    trace_id = _trace_id(raw.get("trace_id", default_trace))
    span_id = _span_id(raw.get("span_id"))
    if trace_id is None:
        raise EnvelopeError(f"{where}: missing or invalid trace_id")
    if span_id is None:
        raise EnvelopeError(f"{where}: missing or invalid span_id")
    parent = raw.get("parent_span_id")
    parent_id = _span_id(parent) if parent is not None else None
    if parent is not None and parent_id is None:
        raise EnvelopeError(f"{where}: invalid parent_span_id {parent!r}")
    return trace_id, span_id, parent_id


def _span_from_event(raw: Any, where: str, default_trace: str, root: bool) -> _SpanRow:
    if not isinstance(raw, dict):
        raise EnvelopeError(f"{where}: not a JSON object")
    trace_id, span_id, parent_id = _span_ids(raw, where, default_trace)
    tags = raw.get("tags")
    data = raw.get("data")
    return _SpanRow(
        span_id=span_id,
        trace_id=trace_id,
        parent_span_id=parent_id,
        is_root=root,
        op=_opt_str(raw.get("op"), 256),
        description=_opt_str(raw.get("description")),
        status=_opt_str(raw.get("status"), 64) or "unknown",
        start=0.0,
        end=0.0,
        origin=_opt_str(raw.get("origin"), 256),
        tags=tags if isinstance(tags, dict) else {},
        data=data if isinstance(data, dict) else {},
    )


def _out_of_range(where: str, key: str, value: float) -> EnvelopeError:
    hint = " (milliseconds? timestamps are seconds)" if value > MAX_TIMESTAMP else ""
    return EnvelopeError(
        f"{where}: {key} {value!r} is out of range: seconds since the epoch from 0 "
        f"(1970-01-01) to {MAX_TIMESTAMP:.0f} (9999-12-31){hint}"
    )


def _timed(row: _SpanRow, raw: dict[str, Any], where: str, end_key: str = "timestamp") -> None:
    start = parse_timestamp(raw.get("start_timestamp"))
    end = parse_timestamp(raw.get(end_key))
    if start is None:
        raise EnvelopeError(f"{where}: missing or invalid start_timestamp")
    if end is None:
        raise EnvelopeError(f"{where}: missing or invalid {end_key}")
    if _timestamp_in_range(start) is None:
        raise _out_of_range(where, "start_timestamp", start)
    if _timestamp_in_range(end) is None:
        raise _out_of_range(where, end_key, end)
    if end < start:  # like Relay: no tolerance ("end timestamp is smaller than start timestamp")
        raise EnvelopeError(f"{where}: {end_key} is before start_timestamp")
    row.start, row.end = start, end


def _load_object(item_payload: Any, where: str) -> dict[str, Any]:
    if not isinstance(item_payload, dict):
        raise EnvelopeError(f"{where}: payload is not a JSON object")
    return item_payload


def _prepare_transaction(
    payload: dict[str, Any], where: str, env_headers: dict[str, Any], project: str
) -> _Transaction:
    contexts = payload.get("contexts")
    trace = contexts.get("trace") if isinstance(contexts, dict) else None
    if not isinstance(trace, dict):
        raise EnvelopeError(f"{where}: missing contexts.trace")
    root = _span_from_event(trace, f"{where} contexts.trace", "", True)
    _timed(root, payload, where)
    event_id = _event_id(payload, env_headers, where)
    raw_spans = payload.get("spans") or []
    if not isinstance(raw_spans, list):
        raise EnvelopeError(f"{where}: 'spans' is not a list")
    spans: list[_SpanRow] = []
    seen = {root.span_id}
    for i, raw in enumerate(raw_spans):
        row = _span_from_event(raw, f"{where} span {i}", root.trace_id, False)
        _timed(row, raw, f"{where} span {i}")
        if row.span_id in seen:
            raise EnvelopeError(f"{where} span {i}: duplicate span_id {row.span_id}")
        seen.add(row.span_id)
        spans.append(row)
    name = payload.get("transaction")
    name = name[:200] if isinstance(name, str) and name else "<unlabeled transaction>"
    if not root.description:
        root.description = name
    tags = payload.get("tags")
    root.tags = tags if isinstance(tags, dict) else {}
    dsc = env_headers.get("trace")
    rate = (
        _sample_rate(dsc.get("sample_rate"), "envelope header trace.sample_rate")
        if isinstance(dsc, dict)
        else None
    )
    explicit = root.tags.get("service") or root.data.get("service.name")
    service = _service(payload.get("release"), payload.get("server_name"), explicit, project)
    event = {k: v for k, v in payload.items() if k != "spans"}
    return _Transaction(event_id, root.trace_id, root, name, service, rate, event, spans)


def _attr_value(raw: Any) -> Any:
    if isinstance(raw, dict) and "value" in raw:
        return raw["value"]
    return raw


def _prepare_span_v2(
    raw: Any, where: str, env_headers: dict[str, Any], project: str, out: PreparedEnvelope
) -> None:
    if not isinstance(raw, dict):
        raise EnvelopeError(f"{where}: not a JSON object")
    attrs_raw = raw.get("attributes")
    attrs = (
        {str(k): _attr_value(v) for k, v in attrs_raw.items()}
        if isinstance(attrs_raw, dict)
        else {}
    )
    trace_id, span_id, parent_id = _span_ids(raw, where)
    is_segment = raw.get("is_segment") is True
    segment_id = _span_id(attrs.get("sentry.segment.id")) or _span_id(raw.get("segment_id"))
    if segment_id is None:
        # without a segment id, a segment span is its own segment; others hang off their parent
        segment_id = span_id if is_segment or parent_id is None else parent_id
    is_root = is_segment or span_id == segment_id
    name = raw.get("name") if isinstance(raw.get("name"), str) else raw.get("description")
    seg_name = attrs.get("sentry.segment.name")
    row = _SpanRow(
        span_id=span_id,
        trace_id=trace_id,
        parent_span_id=parent_id,
        is_root=is_root,
        op=_opt_str(attrs.get("sentry.op") or raw.get("op"), 256),
        description=_opt_str(name),
        status=_opt_str(raw.get("status"), 64) or "unknown",
        start=0.0,
        end=0.0,
        origin=_opt_str(attrs.get("sentry.origin"), 256),
        tags={},
        data=attrs,
        segment_name=seg_name[:200] if isinstance(seg_name, str) and seg_name else None,
    )
    end_key = "end_timestamp" if "end_timestamp" in raw else "timestamp"
    _timed(row, raw, where, end_key)
    key = (trace_id, segment_id)
    segment = out.segments.get(key)
    if segment is None:
        dsc = env_headers.get("trace")
        rate = _sample_rate(
            attrs.get("sentry.sample_rate"), f"{where}: attribute sentry.sample_rate"
        )
        if rate is None and isinstance(dsc, dict):
            rate = _sample_rate(dsc.get("sample_rate"), "envelope header trace.sample_rate")
        service = _service(attrs.get("sentry.release"), None, attrs.get("service.name"), project)
        segment = out.segments[key] = _Segment(trace_id, segment_id, service, rate, [])
    segment.spans.append(row)


_DECODED_TYPES = frozenset({"transaction", "event", "span", "client_report"})


def prepare_envelope(envelope: Envelope, project: str, size: int) -> PreparedEnvelope:
    """Validate every item we store and convert it to rows; ``EnvelopeError`` if unusable."""
    out = PreparedEnvelope(
        headers=envelope.headers,
        project=project,
        size=size,
        item_types=[it.type for it in envelope.items],
    )
    headers = envelope.headers
    _check_depth(headers, "envelope header")
    _check_text(headers, "envelope header")
    for index, item in enumerate(envelope.items):
        _check_text(item.headers, f"item {index} header")  # before its type is echoed
        kind = item.type
        where = f"item {index} ({kind})"
        decoded = item.json() if kind in _DECODED_TYPES else None
        _check_depth(decoded, where)
        if decoded is not None and _may_hold_surrogates(item.payload):
            _check_text(decoded, where)
        if kind == "transaction":
            payload = _load_object(decoded, where)
            out.transactions.append(_prepare_transaction(payload, where, headers, project))
        elif kind == "event":
            payload = _load_object(decoded, where)
            out.errors.append(_prepare_error(payload, where, headers))
        elif kind == "span":
            if isinstance(decoded, dict) and isinstance(decoded.get("items"), list):
                spans = decoded["items"]
                if len(spans) > MAX_SPANS_PER_ITEM:
                    raise EnvelopeError(f"{where}: more than {MAX_SPANS_PER_ITEM} spans")
            elif isinstance(decoded, dict) and "span_id" in decoded:
                spans = [decoded]  # a single (v1) span
            else:
                raise EnvelopeError(
                    f"{where}: expected {{'version': 2, 'items': [...]}} ({SPAN_V2_CONTENT_TYPE})"
                )
            for i, raw in enumerate(spans):
                _prepare_span_v2(raw, f"{where} span {i}", headers, project, out)
        elif kind == "client_report":
            payload = _load_object(decoded, where)
            out.reports.extend(_prepare_report(payload, where))
        else:
            out.ignored.append(kind)
    return out


def _event_id(payload: dict[str, Any], headers: dict[str, Any], where: str) -> str:
    """The item's event id: the envelope header's when it has one (§4: it wins over the
    payload's), else the payload's; 32 lowercase hex characters."""
    event_id = headers.get("event_id") or payload.get("event_id")
    if not isinstance(event_id, str) or not _HEX32.fullmatch(event_id.replace("-", "").lower()):
        raise EnvelopeError(f"{where}: missing or invalid event_id")
    return event_id.replace("-", "").lower()


def _prepare_error(payload: dict[str, Any], where: str, headers: dict[str, Any]) -> _Error:
    event_id = _event_id(payload, headers, where)
    contexts = payload.get("contexts")
    trace = contexts.get("trace") if isinstance(contexts, dict) else None
    trace = trace if isinstance(trace, dict) else {}
    title = "<no message>"
    exc = payload.get("exception")
    values = exc.get("values") if isinstance(exc, dict) else exc
    if isinstance(values, list) and values and isinstance(values[-1], dict):
        last = values[-1]
        title = f"{last.get('type') or 'Error'}: {last.get('value') or ''}".rstrip(": ")
    else:
        message = payload.get("message") or payload.get("logentry")
        if isinstance(message, dict):
            message = message.get("formatted") or message.get("message")
        if isinstance(message, str) and message:
            title = message
    name = payload.get("transaction")
    level = payload.get("level")
    return _Error(
        event_id=event_id,
        trace_id=_trace_id(trace.get("trace_id")),
        span_id=_span_id(trace.get("span_id")),
        transaction=name[:200] if isinstance(name, str) else None,
        level=level if isinstance(level, str) else "error",
        title=title[:500],
        # an impossible timestamp is dropped, not the error (Relay moves one too far in the
        # future to the receive time)
        timestamp=_timestamp_in_range(parse_timestamp(payload.get("timestamp"))),
        event=payload,
    )


def _prepare_report(payload: dict[str, Any], where: str) -> list[_Report]:
    discarded = payload.get("discarded_events", [])
    if not isinstance(discarded, list):
        raise EnvelopeError(f"{where}: 'discarded_events' is not a list")
    ts = _timestamp_in_range(parse_timestamp(payload.get("timestamp")))
    out: list[_Report] = []
    for i, entry in enumerate(discarded):
        if not isinstance(entry, dict):
            raise EnvelopeError(f"{where}: discarded_events[{i}] is not an object")
        reason, category, qty = entry.get("reason"), entry.get("category"), entry.get("quantity")
        if not isinstance(reason, str) or not isinstance(category, str):
            raise EnvelopeError(f"{where}: discarded_events[{i}] needs reason and category")
        if isinstance(qty, bool) or not isinstance(qty, int) or not 0 <= qty <= _MAX_QUANTITY:
            raise EnvelopeError(f"{where}: discarded_events[{i}] has an invalid quantity")
        out.append(_Report(ts, reason[:64], category[:64], qty))
    return out


# -- the store ---------------------------------------------------------------------------


def _casefold(value: Any) -> Any:
    """SQL ``casefold(x)``: Python's full Unicode case folding (SQLite's ``lower()`` folds
    ASCII only, so ``'Ö'`` never matched a search lowercased by Python)."""
    return value.casefold() if isinstance(value, str) else value


def _connect(path: str, read_only: bool = False) -> sqlite3.Connection:
    if read_only:  # never creates the file, never writes (not even a schema)
        conn = sqlite3.connect(
            f"{Path(path).resolve().as_uri()}?mode=ro",
            uri=True,
            timeout=30.0,
            check_same_thread=False,
            isolation_level=None,
        )
        conn.execute("PRAGMA query_only = ON")
    else:
        conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.create_function("casefold", 1, _casefold, deterministic=True)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _check_ours(conn: sqlite3.Connection, path: str) -> None:
    """Refuse a database that holds tables but no collector ``meta`` (an app's database
    given as ``--db`` by mistake): the schema is never added to it."""
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    if tables and "meta" not in tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise sqlite3.DatabaseError(f"{path!r} holds other tables ({shown})")


class Store:
    """The collector's SQLite database (thread-safe; one writer, per-thread readers).

    With ``max_envelopes`` it keeps the data of the newest envelopes only: once it holds
    1% more, the oldest envelopes are dropped with their transactions, spans, errors and
    client reports (freed pages are reused, so the file stops growing).
    """

    def __init__(
        self, path: str, *, read_only: bool = False, max_envelopes: int | None = None
    ) -> None:
        """Open (or create) the database at ``path``; ``read_only`` opens an existing
        collector database for reading only (``show``), else ``sqlite3.DatabaseError``."""
        if max_envelopes is not None and (type(max_envelopes) is not int or max_envelopes < 1):
            raise ValueError(
                f"max_envelopes must be a positive integer or None, not {max_envelopes!r}"
            )
        self.path = path
        self.read_only = read_only
        self.max_envelopes = max_envelopes
        #: Envelopes dropped by ``max_envelopes`` since this store was opened.
        self.pruned_envelopes = 0
        self._stored = 0
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._writer = _connect(path, read_only)
        try:
            _check_ours(self._writer, path)
            if read_only:
                version = "SELECT value FROM meta WHERE key = 'schema_version'"
                if self._writer.execute(version).fetchone() is None:
                    raise sqlite3.DatabaseError(f"{path!r} is not a collector database")
                return
            self._writer.execute("PRAGMA journal_mode = WAL")
            self._writer.execute("PRAGMA synchronous = NORMAL")
            with self._write_lock:
                self._writer.executescript(_SCHEMA)
                self._writer.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                count = "SELECT COUNT(*) FROM envelopes"
                self._stored = int(self._writer.execute(count).fetchone()[0])
            if max_envelopes is not None and self._stored > max_envelopes:
                with self._transaction() as db:  # a database kept without a limit before
                    self._prune(db, max_envelopes)
        except sqlite3.Error:  # not a database (or not ours): no connection left open
            self._writer.close()
            raise

    # connections ------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, self.read_only)
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection (checkpointing the WAL into the main file)."""
        if self._closed:
            return
        self._closed = True
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        with self._write_lock:
            if not self.read_only:
                try:
                    self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass
            self._writer.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a read-only query; rows as dicts."""
        return [dict(row) for row in self._reader().execute(sql, params).fetchall()]

    # writing ------------------------------------------------------------------------

    def ingest(self, prepared: PreparedEnvelope, received: float | None = None) -> IngestResult:
        """Write one prepared envelope atomically."""
        now = time.time() if received is None else received
        try:
            return self._ingest(prepared, now)
        except BaseException:
            self._stored = -1  # rolled back, perhaps after a prune: counted again next time
            raise

    def _ingest(self, prepared: PreparedEnvelope, now: float) -> IngestResult:
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO envelopes(received, project, headers, item_types, size) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    now,
                    prepared.project,
                    _json(prepared.headers),
                    _json(prepared.item_types),
                    prepared.size,
                ),
            )
            env_id = int(cur.lastrowid or 0)
            result = IngestResult(env_id, ignored=list(prepared.ignored))
            for tx in prepared.transactions:
                if self._write_transaction(db, tx, prepared.project, now, env_id):
                    result.transactions += 1
                    result.spans += len(tx.spans) + 1
            for segment in prepared.segments.values():
                self._write_segment(db, segment, prepared.project, now, env_id)
                result.spans += len(segment.spans)
            for err in prepared.errors:
                cur = db.execute(  # the first event with an id is kept, as Sentry does
                    "INSERT OR IGNORE INTO errors(event_id, trace_id, span_id, "
                    "transaction_name, level, title, timestamp, received, project, event) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        err.event_id,
                        err.trace_id,
                        err.span_id,
                        err.transaction,
                        err.level,
                        err.title,
                        err.timestamp,
                        now,
                        prepared.project,
                        _json(err.event),
                    ),
                )
                result.errors += cur.rowcount > 0
            for rep in prepared.reports:
                db.execute(
                    "INSERT INTO client_reports(received, timestamp, project, reason, "
                    "category, quantity) VALUES (?, ?, ?, ?, ?, ?)",
                    (now, rep.timestamp, prepared.project, rep.reason, rep.category, rep.quantity),
                )
                result.client_reports += 1
            if self._stored < 0:
                self._stored = int(db.execute("SELECT COUNT(*) FROM envelopes").fetchone()[0])
            else:
                self._stored += 1
            keep = self.max_envelopes
            if keep is not None and self._stored > keep + max(1, keep // 100):
                self._prune(db, keep)
        return result

    def _prune(self, db: sqlite3.Connection, keep: int) -> None:
        """Drop every envelope older than the newest ``keep``, with all stored from them."""
        cut = db.execute(
            "SELECT id, received FROM envelopes ORDER BY id DESC LIMIT 1 OFFSET ?", (keep,)
        ).fetchone()
        if cut is None:
            return
        env_id, received = cut
        old_units = "SELECT id FROM units WHERE envelope_id <= ?"
        db.execute(f"DELETE FROM spans WHERE unit_id IN ({old_units})", (env_id,))
        db.execute("DELETE FROM units WHERE envelope_id <= ?", (env_id,))
        db.execute("DELETE FROM errors WHERE received <= ?", (received,))
        db.execute("DELETE FROM client_reports WHERE received <= ?", (received,))
        dropped = db.execute("DELETE FROM envelopes WHERE id <= ?", (env_id,)).rowcount
        self._stored -= dropped
        if not self.pruned_envelopes:
            logger.info(
                "the store holds its limit of %d envelopes: dropping the oldest from now on "
                "(--max-envelopes)",
                keep,
            )
        self.pruned_envelopes += dropped

    @staticmethod
    def _insert_spans(db: sqlite3.Connection, unit_id: str, rows: Iterable[_SpanRow]) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO spans(unit_id, span_id, trace_id, parent_span_id, is_root, "
            "op, description, status, start_ts, end_ts, origin, tags, data, segment_name) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    unit_id,
                    r.span_id,
                    r.trace_id,
                    r.parent_span_id,
                    int(r.is_root),
                    r.op,
                    r.description,
                    r.status,
                    r.start,
                    r.end,
                    r.origin,
                    _json(r.tags),
                    _json(r.data),
                    r.segment_name,
                )
                for r in rows
            ],
        )

    def _write_transaction(
        self, db: sqlite3.Connection, tx: _Transaction, project: str, now: float, env_id: int
    ) -> bool:
        """Store ``tx``; False when a transaction with its event id is stored already (the
        first one is kept, as Sentry deduplicates by event id: a resend changes nothing and
        a reused id cannot replace another trace's transaction)."""
        root = tx.root
        if db.execute(
            "SELECT 1 FROM units WHERE id = ? AND kind = 'transaction'", (tx.event_id,)
        ).fetchone():
            return False
        db.execute("DELETE FROM spans WHERE unit_id = ?", (tx.event_id,))
        db.execute(
            "INSERT OR REPLACE INTO units(id, kind, trace_id, span_id, parent_span_id, name, op, "
            "description, status, start_ts, end_ts, duration_ms, service, project, sample_rate, "
            "complete, received, envelope_id, event) "
            "VALUES (?, 'transaction', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)",
            (
                tx.event_id,
                tx.trace_id,
                root.span_id,
                root.parent_span_id,
                tx.name,
                root.op,
                root.description,
                root.status,
                root.start,
                root.end,
                (root.end - root.start) * 1000.0,
                tx.service,
                project,
                tx.sample_rate,
                now,
                env_id,
                _json(tx.event),
            ),
        )
        self._insert_spans(db, tx.event_id, [root, *tx.spans])
        return True

    def _write_segment(
        self, db: sqlite3.Connection, seg: _Segment, project: str, now: float, env_id: int
    ) -> None:
        unit_id = f"seg-{seg.trace_id}-{seg.segment_id}"
        self._insert_spans(db, unit_id, seg.spans)
        root = db.execute(
            "SELECT * FROM spans WHERE unit_id = ? AND is_root = 1", (unit_id,)
        ).fetchone()
        agg = db.execute(
            "SELECT MIN(start_ts), MAX(end_ts), MAX(segment_name) FROM spans WHERE unit_id = ?",
            (unit_id,),
        ).fetchone()
        existing = db.execute(
            "SELECT service, sample_rate, received, envelope_id FROM units WHERE id = ?",
            (unit_id,),
        ).fetchone()
        if root is not None:
            name = root["segment_name"] or root["description"] or agg[2] or "<unnamed segment>"
            start, end = root["start_ts"], root["end_ts"]
            fields = (root["parent_span_id"], root["op"], root["description"], root["status"])
        else:
            name = agg[2] or "<segment root not received yet>"
            start, end = agg[0], agg[1]
            fields = (None, None, None, "unknown")
        service = seg.service
        rate = seg.sample_rate
        received, first_env = now, env_id
        if existing is not None:
            if service.startswith("project ") and not existing["service"].startswith("project "):
                service = existing["service"]
            rate = existing["sample_rate"] if existing["sample_rate"] is not None else rate
            received, first_env = existing["received"], existing["envelope_id"]
        event = {"segment_id": seg.segment_id, "trace_id": seg.trace_id}
        db.execute(
            "INSERT OR REPLACE INTO units(id, kind, trace_id, span_id, parent_span_id, name, op, "
            "description, status, start_ts, end_ts, duration_ms, service, project, sample_rate, "
            "complete, received, envelope_id, event) "
            "VALUES (?, 'segment', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                unit_id,
                seg.trace_id,
                seg.segment_id,
                fields[0],
                name[:200],
                fields[1],
                fields[2],
                fields[3],
                start,
                end,
                (end - start) * 1000.0,
                service,
                project,
                rate,
                int(root is not None),
                received,
                first_env,
                _json(event),
            ),
        )

    # reading ------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Row counts per table."""
        out: dict[str, int] = {}
        for table in ("envelopes", "units", "spans", "errors", "client_reports"):
            out[table] = int(self._reader().execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        return out

    def unit(self, unit_id: str) -> dict[str, Any] | None:
        """One transaction or segment by id."""
        rows = self.query("SELECT * FROM units WHERE id = ?", (unit_id,))
        return _decode_unit(rows[0]) if rows else None

    def units_of_trace(self, trace_id: str) -> list[dict[str, Any]]:
        """Every unit of a trace, oldest first."""
        rows = self.query(
            "SELECT * FROM units WHERE trace_id = ? ORDER BY start_ts", (trace_id.lower(),)
        )
        return [_decode_unit(r) for r in rows]

    def spans_of_units(self, unit_ids: Sequence[str]) -> list[dict[str, Any]]:
        """All spans of the given units."""
        out: list[dict[str, Any]] = []
        for start in range(0, len(unit_ids), 500):
            chunk = list(unit_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            out.extend(
                self.query(
                    f"SELECT * FROM spans WHERE unit_id IN ({marks}) ORDER BY start_ts", chunk
                )
            )
        for row in out:
            _sane_times(row)
            row["tags"] = _stored_object(row["tags"], "span tags")
            row["data"] = _stored_object(row["data"], "span data")
        return out

    def errors_of_trace(self, trace_id: str) -> list[dict[str, Any]]:
        """Error events of a trace (without their full payload)."""
        rows = self.query(
            "SELECT event_id, trace_id, span_id, transaction_name, level, title, timestamp, "
            "received, project FROM errors WHERE trace_id = ? ORDER BY timestamp",
            (trace_id.lower(),),
        )
        for row in rows:
            row["timestamp"] = _stored_timestamp(row["timestamp"])
        return rows

    def error(self, event_id: str) -> dict[str, Any] | None:
        """One error event with its payload."""
        rows = self.query("SELECT * FROM errors WHERE event_id = ?", (event_id,))
        if not rows:
            return None
        row = rows[0]
        row["timestamp"] = _stored_timestamp(row["timestamp"])
        row["event"] = _stored_object(row["event"], "event")
        return row

    def children_of_spans(self, trace_id: str, span_ids: Sequence[str]) -> dict[str, list[Any]]:
        """Units of ``trace_id`` whose parent span is one of ``span_ids``."""
        out: dict[str, list[Any]] = {}
        wanted = set(span_ids)
        for row in self.query(
            "SELECT id, name, service, kind, parent_span_id, status, duration_ms FROM units "
            "WHERE trace_id = ? AND parent_span_id IS NOT NULL",
            (trace_id,),
        ):
            if row["parent_span_id"] in wanted:
                row["duration_ms"] = _clamp(row["duration_ms"], MAX_TIMESTAMP * 1000.0)
                out.setdefault(row["parent_span_id"], []).append(row)
        return out

    def find_traces(self, prefix: str, limit: int = 20) -> list[str]:
        """Trace ids starting with ``prefix`` (lowercased, dashes ignored)."""
        clean = prefix.replace("-", "").lower()
        if not re.fullmatch(r"[0-9a-f]{1,32}", clean):
            return []
        rows = self.query(
            "SELECT trace_id, MAX(received) AS r FROM units WHERE trace_id >= ? AND trace_id < ? "
            "GROUP BY trace_id ORDER BY r DESC LIMIT ?",
            (clean, clean + "g", limit),
        )
        return [r["trace_id"] for r in rows]

    def recent_traces(self, limit: int = 10) -> list[dict[str, Any]]:
        """The most recently received traces with a summary each."""
        # the same failure definition as the viewer's (tree.is_failure)
        excluded = sorted(FAILED_EXCLUDED)
        rows = self.query(
            "SELECT trace_id, COUNT(*) AS units, MIN(start_ts) AS start_ts, "
            "MAX(end_ts) AS end_ts, MAX(received) AS received, "
            "GROUP_CONCAT(DISTINCT service) AS services, "
            f"SUM(CASE WHEN status NOT IN ({','.join('?' * len(excluded))}) THEN 1 ELSE 0 END) "
            "AS failed FROM units GROUP BY trace_id ORDER BY received DESC LIMIT ?",
            (*excluded, limit),
        )
        return [_sane_times(row) for row in rows]

    def root_unit_of_trace(self, trace_id: str) -> dict[str, Any] | None:
        """The head unit of a trace (no parent), else its earliest unit."""
        rows = self.query(
            "SELECT * FROM units WHERE trace_id = ? "
            "ORDER BY parent_span_id IS NOT NULL, start_ts LIMIT 1",
            (trace_id,),
        )
        return _decode_unit(rows[0]) if rows else None

    def summary_rows(
        self,
        *,
        since: float | None = None,
        name: str | None = None,
        exact_name: str | None = None,
        min_duration_ms: float | None = None,
    ) -> list[dict[str, Any]]:
        """Units matching the filters, for the transaction list aggregates: ``name`` is
        contained in theirs, ignoring case; ``exact_name`` is theirs exactly."""
        clauses: list[str] = []
        params: list[Any] = []
        if since is not None:
            clauses.append("end_ts >= ?")
            params.append(since)
        if name:
            clauses.append("instr(casefold(name), ?) > 0")
            params.append(name.casefold())
        if exact_name is not None:
            clauses.append("name = ?")
            params.append(exact_name)
        if min_duration_ms is not None:
            clauses.append("duration_ms >= ?")
            params.append(min_duration_ms)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.query(
            "SELECT id, kind, trace_id, name, op, status, start_ts, end_ts, duration_ms, service, "
            f"project, sample_rate, received FROM units {where} ORDER BY end_ts DESC",
            params,
        )
        return [_sane_times(row) for row in rows]

    def client_report_totals(self) -> list[dict[str, Any]]:
        """Client report quantities summed by reason and category."""
        return self.query(
            "SELECT reason, category, SUM(quantity) AS quantity FROM client_reports "
            "GROUP BY reason, category ORDER BY quantity DESC"
        )


def _decode_unit(row: dict[str, Any]) -> dict[str, Any]:
    _sane_times(row)
    row["event"] = _stored_object(row["event"], "event")
    row["complete"] = bool(row["complete"])
    return row


# -- reading rows written before the checks above existed --------------------------------
#
# Older versions stored timestamps out of range (durations of infinity, which JSON cannot
# carry) and JSON too deep to encode again. Reads repair such values so one bad row can
# neither fail a viewer page nor ``show``.

_TOO_DEEP = f"<not shown: nested deeper than {MAX_JSON_DEPTH} levels>"


def _clamp(value: Any, high: float) -> float:
    """``value`` as a float within [0, high]; NaN and non-numbers become 0."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    if number != number:
        return 0.0
    return min(max(number, 0.0), high)


def _sane_times(row: dict[str, Any]) -> dict[str, Any]:
    """Clamp a row's ``start_ts``/``end_ts`` into range (end not before start) and keep its
    ``duration_ms`` finite (recomputed when the times had to be repaired)."""
    if "start_ts" in row and "end_ts" in row:
        start = _clamp(row["start_ts"], MAX_TIMESTAMP)
        end = max(_clamp(row["end_ts"], MAX_TIMESTAMP), start)
        if start != row["start_ts"] or end != row["end_ts"]:
            row["start_ts"], row["end_ts"] = start, end
            if "duration_ms" in row:
                row["duration_ms"] = (end - start) * 1000.0
    if "duration_ms" in row:
        duration = row["duration_ms"]
        if not isinstance(duration, int | float) or not 0.0 <= duration <= MAX_TIMESTAMP * 1000:
            row["duration_ms"] = _clamp(duration, MAX_TIMESTAMP * 1000.0)
    return row


def _stored_timestamp(value: Any) -> float | None:
    if not isinstance(value, int | float):
        return None
    return _timestamp_in_range(float(value))


def _prune_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> Any:
    """Replace what lies deeper than ``limit`` levels by a note (in place; iterative)."""
    if not isinstance(value, dict | list):
        return value
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        keys = list(node.keys()) if isinstance(node, dict) else range(len(node))
        for key in keys:
            child = node[key]
            if isinstance(child, dict | list):
                if depth >= limit:
                    node[key] = _TOO_DEEP
                else:
                    stack.append((child, depth + 1))
    return value


def _stored_object(text: Any, what: str) -> dict[str, Any]:
    """A JSON object column decoded for reading; never raises."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return {"_collector": f"the stored {what} could not be decoded"}
    if not isinstance(value, dict):
        note = f"the stored {what} is not a JSON object"
        return {"_collector": note, "value": _prune_depth(value, MAX_JSON_DEPTH - 1)}
    if isinstance(text, str) and text.count("[") + text.count("{") > MAX_JSON_DEPTH:
        _prune_depth(value)
    return value
