"""Event building: a finished transaction or an exception becomes an event dict.

Transaction events are built on the transport's worker thread, from the finished
transaction's immutable timing data. Error events are built where the exception is
captured (the traceback must still be alive) and serialized later on the worker.
"""

from __future__ import annotations

import builtins
import linecache
import logging
import math
import os
import platform
import re
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._ids import new_event_id
from ._request import client_ip
from ._serialize import _UNREPRESENTABLE, json_int, safe_repr
from ._version import VERSION

if TYPE_CHECKING:
    from ._options import Options
    from ._tracing import PropagationContext, Span, Transaction

__all__ = [
    "SDK_INFO",
    "error_event",
    "scrub_data",
    "transaction_event",
]

SDK_NAME = "sentry.python.tracemw"
SDK_INFO: dict[str, Any] = {
    "name": SDK_NAME,
    "version": VERSION,
    "packages": [{"name": "pypi:sentry-tracing-mw", "version": VERSION}],
}

#: The runtime context (``contexts.runtime``) every event carries, as sentry-sdk sends it.
RUNTIME: dict[str, str] = {
    "name": platform.python_implementation(),
    "version": "{}.{}.{}".format(*sys.version_info[:3]),
    "build": sys.version,
}

FILTERED = "[Filtered]"
_SENSITIVE_KEY = re.compile(
    r"pass(word|wd)?|secret|token|api[-_.]?key|apikey|auth|credential|session|cookie|"
    r"signature|private[-_.]?key|csrf|xsrf",
    re.IGNORECASE,
)
_SAFE_KEYS = frozenset(
    {
        "http.response.status_code",
        "http.request.method",
        "http.method",
        "url",
        "server.address",
        "http.query",
        "http.fragment",
        "db.system",
        "db.name",
        "thread.id",
        "thread.name",
        "http.route",
        "network.protocol.version",
        "db.operation",
        "template.name",
        "route",
    }
)
_MEASUREMENT_UNIT = re.compile(r"[A-Za-z0-9_]{0,15}")
_MEASUREMENT_NAME = re.compile(r"[a-zA-Z0-9_.-]+")
# protocol §6.4: "auto" or "manual", then up to three "."-separated parts, <= 128 chars.
_ORIGIN = re.compile(r"(?:auto|manual)(?:\.[A-Za-z0-9_]+){0,3}")
_VALID_ORIGINS = {"manual", "auto"}
_UNLABELED = "<unlabeled transaction>"


def _origin(value: object) -> str:
    """``value`` when it is a valid trace origin, else ``"manual"`` (with a debug log)."""
    if isinstance(value, str):
        if value in _VALID_ORIGINS:
            return value
        if len(value) <= 128 and _ORIGIN.fullmatch(value) is not None:
            if len(_VALID_ORIGINS) < 256:
                _VALID_ORIGINS.add(value)
            return value
    logger.debug(
        "invalid span origin %r: sending 'manual' (expected auto|manual[.part]{0,3})", value
    )
    return "manual"


def _tx_name(name: str) -> str:
    """The event's ``transaction``: the name (200 chars at most), never blank."""
    return _UNLABELED if not name or name.isspace() else name[:200]


def _sensitive(key: str) -> bool:
    """Whether a key (or a variable name) looks like it holds a secret."""
    return key not in _SAFE_KEYS and _SENSITIVE_KEY.search(key) is not None


#: Variable names sentry-sdk's default scrubber filters (its denylist, lower case) ...
_SECRET_NAMES = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "api_key",
        "apikey",
        "auth",
        "credentials",
        "mysql_pwd",
        "privatekey",
        "private_key",
        "token",
        "session",
        "csrftoken",
        "sessionid",
        "x_csrftoken",
        "x_forwarded_for",
        "set_cookie",
        "cookie",
        "authorization",
        "x_api_key",
        "aiohttp_session",
        "connect.sid",
        "csrf_token",
        "csrf",
        "_csrf",
        "_csrf_token",
        "phpsessid",
        "_session",
        "symfony",
        "user_session",
        "_xsrf",
        "xsrf-token",
    }
)
#: ... and the words naming a secret at the end of a name (``db_password``,
#: ``access_token``, ``stripe_api_key``, ``authToken``) or, for those never used for
#: anything else, anywhere in it (``password_hash``, ``private_key_pem``); ``author``,
#: ``token_count``, ``max_tokens`` or ``secret_santa`` hold none.
_SECRET_ENDINGS = ("password", "passwd", "pwd", "secret", "token", "credentials", "passphrase")
_SECRET_PAIRS = ("api_key", "private_key", "secret_key", "access_key", "signing_key")
_SECRET_SUFFIXES = tuple(f"_{word}" for word in _SECRET_ENDINGS + _SECRET_PAIRS)
_SECRET_ANYWHERE = re.compile(
    r"(?:^|_)(?:password|passwd|passphrase|credentials|private_key|signing_key|"
    r"encryption_key|api_key|jwt)(?:_|$)"
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def _secret_variable(name: str) -> bool:
    """Whether a local variable's name says it holds a secret (its value is filtered even
    with ``send_default_pii``)."""
    words = _CAMEL.sub("_", name).lower().replace("-", "_").rstrip("0123456789").strip("_")
    if words in _SECRET_NAMES or name.lower() in _SECRET_NAMES:
        return True
    return (
        words.endswith(_SECRET_SUFFIXES)
        or words in _SECRET_PAIRS
        or words in _SECRET_ENDINGS
        or _SECRET_ANYWHERE.search(words) is not None
    )


def scrub_data(data: Mapping[str, Any], depth: int = 0) -> dict[str, Any]:
    """Copy span data with the values of sensitive-looking keys replaced by ``[Filtered]``.

    Nested mappings (``set_data("params", {"password": ...})``) are scrubbed too.
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(key, str) and _sensitive(key):
            out[key] = FILTERED
        elif isinstance(value, Mapping) and depth < 8:
            out[key] = scrub_data(value, depth + 1)
        else:
            out[key] = value
    return out


def _measurements(raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, entry in raw.items():
        value = entry.get("value")
        unit = entry.get("unit")
        # A plain copy of a str subclass (a StrEnum): no app code (its __bool__) runs.
        unit = "" if unit is None else str.__str__(unit) if isinstance(unit, str) else None
        if isinstance(value, int) and not isinstance(value, bool):
            value = json_int(int(value))  # Sentry keeps 64 bits: wider as a float, else out
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or unit is None
            or not _MEASUREMENT_UNIT.fullmatch(unit)
            or not _MEASUREMENT_NAME.fullmatch(name)
        ):
            continue
        out[name] = {"value": value, "unit": unit or "none"}
    return out


def _span_json(span: Span, base: float, trace_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "trace_id": trace_id,
        "span_id": span._span_id,
        "parent_span_id": span._parent_span_id,
        "start_timestamp": base + span._start,
        "timestamp": base + (span._end if span._end is not None else span._start),
        "status": span._status or "ok",
        "origin": _origin(span._origin),
        "same_process_as_parent": True,
    }
    if span._op is not None:
        out["op"] = span._op[:128]
    if span._description is not None:
        out["description"] = span._description
    if span._tags:
        out["tags"] = dict(span._tags)
    if span._data:
        out["data"] = scrub_data(span._data)
    return out


def _spans_json(spans: list[Span], root: str, base: float, trace_id: str) -> list[dict[str, Any]]:
    """The payload's spans. A span whose parent is not sent (it had not finished when the
    transaction did) hangs from its nearest ancestor that is, else from the transaction:
    the tree stays connected (protocol §6.4)."""
    out = [_span_json(s, base, trace_id) for s in spans]
    sent: set[str | None] | None = None
    found: dict[int, str] = {}  # id() of an unsent ancestor -> the span id it resolved to
    for span, item in zip(spans, out, strict=True):
        parent = span._parent_span_id
        if parent == root:
            continue
        if sent is None:
            sent = {s._span_id for s in spans}
            sent.add(root)
        if parent in sent:
            continue
        # A chain of unsent ancestors, each made before its child: it always ends.
        unsent: list[Span] = []
        ancestor: Span | None = getattr(span, "_parent", None)
        target = root
        while ancestor is not None:
            if ancestor._span_id in sent:
                target = ancestor._span_id
                break
            known = found.get(id(ancestor))
            if known is not None:
                target = known
                break
            unsent.append(ancestor)
            ancestor = getattr(ancestor, "_parent", None)
        for s in unsent:
            found[id(s)] = target
        item["parent_span_id"] = target
    return out


def transaction_event(
    tx: Transaction, options: Options, spans: list[Span] | None = None
) -> dict[str, Any]:
    """Build the transaction event payload (protocol §6) for a finished transaction, with
    ``spans`` (default: its finished children)."""
    if spans is None:
        spans = list(tx._spans)
    ctx = tx._ctx
    trace_id = ctx.trace_id
    base = tx._start_wall - tx._start
    end = tx._end if tx._end is not None else tx._start
    trace: dict[str, Any] = {
        "trace_id": trace_id,
        "span_id": tx._span_id,
        "op": (tx._op or "default")[:128],
        "status": tx._status or "ok",
        "origin": _origin(tx._origin),
    }
    if tx._parent_span_id:
        trace["parent_span_id"] = tx._parent_span_id
    if tx._description:
        trace["description"] = tx._description
    if tx._data:
        trace["data"] = scrub_data(tx._data)
    contexts: dict[str, Any] = {"trace": trace, "runtime": dict(RUNTIME)}
    if tx._response_status is not None:
        contexts["response"] = {"status_code": tx._response_status}
    event: dict[str, Any] = {
        "type": "transaction",
        "event_id": new_event_id(),
        "platform": "python",
        "transaction": _tx_name(tx._name),
        "transaction_info": {"source": tx._source},
        "start_timestamp": base + tx._start,
        "timestamp": base + end,
        "contexts": contexts,
        "spans": _spans_json(spans, tx._span_id, base, trace_id),
        "environment": options.environment,
        "sdk": _sdk_info(),
    }
    if options.release:
        event["release"] = options.release
    if options.server_name:
        event["server_name"] = options.server_name
    if tx._tags:
        event["tags"] = dict(tx._tags)
    if tx._measurements:
        measurements = _measurements(tx._measurements)
        if measurements:
            event["measurements"] = measurements
    request = _request_of(tx)
    if request is not None:
        event["request"] = request = _own_copy(request)
    if options.send_default_pii:
        _add_user(event, tx._user, request)
    return event


def _add_user(
    event: dict[str, Any], known: dict[str, str] | None, request: Mapping[str, Any] | None
) -> None:
    """The event's ``user`` (PII only): who the integration found logged in (``known``),
    and the address the request came from."""
    user = dict(known) if known else {}
    ip = client_ip(request) if request is not None else None
    if ip is not None:
        user["ip_address"] = ip
    if user:
        event["user"] = user


def _request_of(tx: Transaction) -> dict[str, Any] | None:
    """The transaction's request interface, built now if the integration deferred it."""
    request = tx._request
    if request is None or type(request) is dict:
        return request
    try:
        built = request()  # type: ignore[operator]
    except Exception:
        logger.exception("sentry_tracing_mw: building the request data failed")
        built = None
    tx._request = built
    return built


def _own_copy(request: dict[str, Any]) -> dict[str, Any]:
    """The request interface for one event: its dict and nested containers (headers,
    env, data) copied, so a hook editing one event's request leaves the others' alone."""
    return {
        key: dict(value) if type(value) is dict else list(value) if type(value) is list else value
        for key, value in request.items()
    }


# -- error events -----------------------------------------------------------------

logger = logging.getLogger("sentry_tracing_mw")

_STDLIB_PATHS = tuple(
    {
        os.path.realpath(p) + os.sep
        for key in ("stdlib", "platstdlib")
        if (p := sysconfig.get_paths().get(key))
    }
)
_MAX_FRAMES = 100
#: Frames one event sends in all for an exception group's tree (its members share them).
_MAX_TREE_FRAMES = 300
_MAX_VALUE = 8192
_MAX_VARS = 50


def _in_app(filename: str, module: str | None) -> bool:
    if "site-packages" in filename or "dist-packages" in filename:
        return False
    if module and (module.startswith("sentry_tracing_mw.") or module == "sentry_tracing_mw"):
        return False
    real = os.path.realpath(filename) if filename and not filename.startswith("<") else filename
    return not real.startswith(_STDLIB_PATHS)


#: Source lines sent before and after a frame's line, as ``sentry-sdk`` sends them.
_CONTEXT_LINES = 5
_MAX_LINE = 512
_MAX_NAME = 256  # a function, module, type or variable name
_MAX_PATH = 1024


def _short_filename(module: str | None, path: str) -> str:
    """A frame's ``filename`` as ``sentry-sdk`` gives it: relative to the directory its
    top-level package sits in (``app.py``, ``mypkg/views.py``); ``abs_path`` keeps the path."""
    if not module or path.startswith("<"):
        return path
    try:
        if path.endswith(".pyc"):
            path = path[:-1]
        top = module.partition(".")[0]
        if top == module:
            return os.path.basename(path)
        top_file = getattr(sys.modules.get(top), "__file__", None)
        if not isinstance(top_file, str) or not top_file:
            return path
        return path.split(top_file.rsplit(os.sep, 2)[0], 1)[-1].lstrip(os.sep)
    except Exception:
        return path


def _source_lines(filename: str, frame: Any) -> list[str]:
    """The frame's source file as lines ([] when unknown; an odd loader never breaks the
    event)."""
    try:
        lines = linecache.getlines(filename, frame.f_globals)
    except Exception:
        return []
    return lines if type(lines) is list else []


def _line(line: Any) -> str:
    return line.rstrip("\r\n")[:_MAX_LINE] if type(line) is str else ""


def _frames(
    tb: TracebackType | None,
    with_locals: bool,
    limit: int = _MAX_FRAMES,
    with_source: bool = True,
) -> list[dict[str, Any]]:
    tbs: list[TracebackType] = []
    while tb is not None:
        tbs.append(tb)
        tb = tb.tb_next
    if len(tbs) > limit:  # the outermost and the innermost frames, decided before any work
        half = limit // 2
        tbs = tbs[:half] + tbs[len(tbs) - (limit - half) :]
    frames: list[dict[str, Any]] = []
    for tb in tbs:
        frame = tb.tb_frame
        code = frame.f_code
        filename = code.co_filename
        if type(filename) is not str:
            filename = "<unknown>"
        module = frame.f_globals.get("__name__")
        if type(module) is not str:
            module = None
        lineno = tb.tb_lineno
        entry: dict[str, Any] = {
            "filename": _short_filename(module, filename)[:_MAX_PATH],
            "abs_path": (os.path.abspath(filename) if not filename.startswith("<") else filename)[
                :_MAX_PATH
            ],
            "function": str(code.co_name)[:_MAX_NAME],
            "module": module[:_MAX_NAME] if module is not None else None,
            "lineno": lineno,
            "in_app": _in_app(filename, module),
        }
        lines = _source_lines(filename, frame) if with_source and lineno else []
        if lineno is not None and 0 < lineno <= len(lines):
            entry["pre_context"] = [
                _line(line) for line in lines[max(0, lineno - 1 - _CONTEXT_LINES) : lineno - 1]
            ]
            entry["context_line"] = _line(lines[lineno - 1])
            entry["post_context"] = [
                _line(line) for line in lines[lineno : lineno + _CONTEXT_LINES]
            ]
        if with_locals:  # secrets stay out even with PII on (sentry-sdk's scrubber)
            entry["vars"] = {
                str(k)[:_MAX_NAME]: FILTERED if _secret_variable(str(k)) else safe_repr(v)
                for k, v in list(frame.f_locals.items())[:_MAX_VARS]
            }
        frames.append(entry)
    return frames


_GROUP: type[BaseException] | None = getattr(builtins, "BaseExceptionGroup", None)
#: Most exceptions one event lists from an exception group's tree.
_MAX_TREE = 50


def _exception_tree(exc: BaseException) -> list[tuple[BaseException, dict[str, Any]]]:
    """``exc``, its causes and the members of exception groups, with the mechanism fields
    that let Sentry rebuild the tree (``exception_id``, ``parent_id``, ``source``,
    ``is_exception_group``), as ``sentry-sdk`` sends them: the root last."""
    out: list[tuple[BaseException, dict[str, Any]]] = []
    seen: set[int] = set()

    def walk(item: BaseException, parent_id: int | None, source: str | None) -> None:
        if id(item) in seen or len(out) >= _MAX_TREE:
            return
        seen.add(id(item))
        exception_id = len(out)
        fields: dict[str, Any] = {"exception_id": exception_id}
        if parent_id is not None:
            fields["parent_id"] = parent_id
        if source is not None:
            fields["source"] = source
        group = _GROUP is not None and isinstance(item, _GROUP)
        if group:
            fields["is_exception_group"] = True
        out.append((item, fields))
        if item.__cause__ is not None:
            walk(item.__cause__, exception_id, "__cause__")
        elif item.__context__ is not None and not item.__suppress_context__:
            walk(item.__context__, exception_id, "__context__")
        if group:
            for i, member in enumerate(getattr(item, "exceptions", ())):
                if isinstance(member, BaseException):
                    walk(member, exception_id, f"exceptions[{i}]")

    walk(exc, None, None)
    out.reverse()
    return out


#: Most exceptions one event lists from a chain (sentry-sdk sends all): a longer chain
#: keeps its innermost (the root cause) and outermost ones and leaves out the middle.
_MAX_CHAIN = 100
#: Frames one event sends in all for a chain longer than 10 (each keeps at least 6).
_MAX_CHAIN_FRAMES = 1000


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, the root cause first and ``exc`` last (as sentry-sdk)."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        if current.__cause__ is not None:
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            current = current.__context__
        else:
            current = None
    if len(chain) > _MAX_CHAIN:
        half = _MAX_CHAIN // 2
        chain = chain[:half] + chain[len(chain) - (_MAX_CHAIN - half) :]
    chain.reverse()  # Sentry wants the oldest first and the raised exception last
    return chain


#: Sentry's limit for one event or transaction item (protocol §17).
MAX_ITEM_BYTES = 1024 * 1024
_SHRUNK_TEXT = 1024


def _clip(value: Any, limit: int) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[: limit - 3] + "..."
    if isinstance(value, bytes) and len(value) > limit:
        return value[: limit - 3] + b"..."
    return value


def _clip_data(data: Any, dumps: Callable[[Any], bytes]) -> None:
    """Clip each value of a data mapping: texts, and containers (as their JSON text)."""
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, list | dict):
                text = dumps(value)
                if len(text) > _SHRUNK_TEXT:
                    value = text[: _SHRUNK_TEXT - 3].decode("utf-8", "ignore") + "..."
            data[key] = _clip(value, _SHRUNK_TEXT)


#: What a transaction's own tags may take in a shrunk event.
_SHRUNK_TAGS_BYTES = 64 * 1024


def _shrink_own_values(payload: dict[str, Any]) -> None:
    """The transaction's own tags and measurements, for an event still too large: tags
    up to ``_SHRUNK_TAGS_BYTES`` (the first set are kept), measurements with a
    reasonable name."""
    tags = payload.get("tags")
    if isinstance(tags, dict):
        kept: dict[Any, Any] = {}
        size = 0
        for key, value in tags.items():
            size += len(str(key)) + len(str(value)) + 8
            if size > _SHRUNK_TAGS_BYTES:
                break
            kept[key] = value
        payload["tags"] = kept
    measurements = payload.get("measurements")
    if isinstance(measurements, dict):
        payload["measurements"] = {
            k: v for k, v in measurements.items() if len(str(k)) <= _SHRUNK_TEXT
        }


def shrink_event(payload: dict[str, Any], dumps: Callable[[Any], bytes]) -> tuple[bytes, int]:
    """Make an event whose serialized form exceeds :data:`MAX_ITEM_BYTES` fit in it.

    First long texts and containers in span and transaction data, frame variables, the
    transaction's tags beyond 64 KiB and its measurements with overlong names are clipped
    or left out; then the source lines around each frame, then exception messages beyond
    1 KiB; then, for a transaction, the last spans are left out. Returns the new
    bytes and the number of spans left out (for the client report). ``payload`` is
    edited in place.
    """
    spans = payload.get("spans")
    if isinstance(spans, list):
        for span in spans:
            if isinstance(span, dict):
                if "description" in span:
                    span["description"] = _clip(span["description"], _SHRUNK_TEXT)
                _clip_data(span.get("data"), dumps)
    contexts = payload.get("contexts")
    trace = contexts.get("trace") if isinstance(contexts, dict) else None
    if isinstance(trace, dict):
        _clip_data(trace.get("data"), dumps)
    _shrink_own_values(payload)
    exception = payload.get("exception")
    values = exception.get("values") if isinstance(exception, dict) else None
    frames = [
        frame for exc in (values if isinstance(values, list) else ()) for frame in _frames_of(exc)
    ]
    for frame in frames:
        frame.pop("vars", None)
    data = dumps(payload)
    if len(data) > MAX_ITEM_BYTES and frames:  # then the source lines around each frame
        for frame in frames:
            frame.pop("pre_context", None)
            frame.pop("post_context", None)
        data = dumps(payload)
    if len(data) > MAX_ITEM_BYTES and isinstance(values, list):  # then long messages
        for exc in values:
            if isinstance(exc, dict) and "value" in exc:
                exc["value"] = _clip(exc["value"], _SHRUNK_TEXT)
        data = dumps(payload)
    dropped = 0
    while len(data) > MAX_ITEM_BYTES and isinstance(spans, list) and spans:
        # keep the share of spans that fits, with a margin; at least one span less per
        # round. The latest-started spans go first: a parent starts before its children,
        # so the kept spans still form a tree (parents finish last, so "last in the list"
        # would drop them first and orphan the rest).
        keep = min(len(spans) - 1, int(len(spans) * MAX_ITEM_BYTES * 0.9 / len(data)))
        order = sorted(range(len(spans)), key=lambda i: _start_of(spans[i]))
        kept = set(order[:keep])
        dropped += len(spans) - keep
        spans[:] = [span for i, span in enumerate(spans) if i in kept]
        data = dumps(payload)
    return data, dropped


def _frames_of(exc: Any) -> list[dict[str, Any]]:
    stack = exc.get("stacktrace") if isinstance(exc, dict) else None
    frames = stack.get("frames") if isinstance(stack, dict) else None
    return [f for f in frames if isinstance(f, dict)] if isinstance(frames, list) else []


def _start_of(span: Any) -> float:
    start = span.get("start_timestamp") if isinstance(span, dict) else None
    return float(start) if isinstance(start, int | float) else math.inf


def _text_bytes(text: str) -> int:
    """A JSON size bound for ``text`` without encoding it: ASCII as is (quotes and
    backslashes escaped), else 3 bytes a character (UTF-8's most for one UTF-16 unit)."""
    if text.isascii():
        return len(text) + text.count('"') + text.count("\\")
    return 3 * len(text)


def error_event_bytes(event: Mapping[str, Any]) -> int:
    """A size estimate of an error event, for the transport queue's byte bound.

    Counts what grows: exception values, frames and (with ``send_default_pii``) their
    local variables (each repr at most 512 characters).
    """
    size = 2048
    try:
        for exc in event.get("exception", {}).get("values", ()):
            size += 256 + _text_bytes(exc.get("value") or "")
            for frame in (exc.get("stacktrace") or {}).get("frames", ()):
                size += 320 + _text_bytes(frame.get("context_line") or "")
                size += len(frame.get("abs_path") or "") + len(frame.get("filename") or "")
                for key in ("pre_context", "post_context"):
                    size += sum(_text_bytes(line) + 4 for line in frame.get(key) or ())
                frame_vars = frame.get("vars")
                if frame_vars:
                    size += sum(_text_bytes(k) + _text_bytes(v) + 8 for k, v in frame_vars.items())
    except Exception:  # an event edited into an odd shape: a generous flat estimate
        return 65536
    return size


def _str(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return safe_repr(value)


def _exception_value(exc: BaseException) -> str:
    """The exception's message as ``sentry-sdk`` words it: its ``message`` or ``detail``
    attribute when set (Django's ``ValidationError``, Starlette's ``HTTPException``), else
    ``str()`` (``repr()`` when that fails); its notes (``add_note``) on lines after it.
    Never raises; at most 8 KiB."""
    text = ""
    try:
        given: Any = getattr(exc, "message", "") or getattr(exc, "detail", "")
        if given:
            text = given if type(given) is str else _str(given)
    except Exception:  # a value whose truth or text raises (an array as ``detail``)
        text = ""
    if not text or type(text) is not str:
        try:
            text = str(exc)
        except Exception:  # __str__ raised or gave a non-str: its repr, as sentry-sdk
            text = safe_repr(exc)
            if text == _UNREPRESENTABLE:
                text = "<unprintable exception>"
    parts = [text[:_MAX_VALUE]]
    try:
        notes = exc.__dict__.get("__notes__") if hasattr(exc, "__dict__") else None
        if type(notes) is list:  # a list, as add_note() makes it (not a subclass's iter)
            size = len(parts[0])
            for note in notes:
                if size >= _MAX_VALUE:
                    break
                if type(note) is str:
                    parts.append(note[: _MAX_VALUE - size])
                    size += len(parts[-1]) + 1
    except Exception:
        pass
    return "\n".join(parts)[:_MAX_VALUE]


def _type_name(cls: type) -> str:
    """An exception type's name for the event (a metaclass may make it anything)."""
    for attr in ("__qualname__", "__name__"):
        try:
            name = getattr(cls, attr, None)
        except Exception:
            continue
        if type(name) is str and name:
            return name[:_MAX_NAME]
    return "Exception"


def _sdk_info() -> dict[str, Any]:
    """A copy of ``SDK_INFO`` per event: a hook that edits its event edits only that one."""
    return {**SDK_INFO, "packages": [dict(p) for p in SDK_INFO["packages"]]}


def error_event(
    exc: BaseException,
    *,
    options: Options,
    ctx: PropagationContext,
    span: Span | None,
    mechanism: str = "generic",
    handled: bool = True,
    request: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build an error event (protocol §16) linked to ``span`` (or the request's trace).

    ``request``: the request interface of a request with no transaction (a method that
    is not traced); a transaction's own request data goes first."""
    with_locals = options.send_default_pii
    values = []
    chain = _exception_chain(exc)
    tree = None
    if _GROUP is not None and any(isinstance(item, _GROUP) for item in chain):
        tree = _exception_tree(exc)
        chain = [item for item, _ in tree]
    limit = _MAX_FRAMES
    if tree is not None:
        limit = max(6, min(_MAX_FRAMES, _MAX_TREE_FRAMES // len(chain)))
    elif len(chain) > 10:
        limit = max(6, min(_MAX_FRAMES, _MAX_CHAIN_FRAMES // len(chain)))
    for i, item in enumerate(chain):
        cls = type(item)
        entry: dict[str, Any] = {"type": _type_name(cls), "value": _exception_value(item)}
        try:
            module = getattr(cls, "__module__", None)
        except Exception:
            module = None
        if type(module) is str and module not in ("builtins", "__builtins__"):
            entry["module"] = module[:_MAX_NAME]
        frames = _frames(item.__traceback__, with_locals, limit, options.include_source_context)
        if frames:  # an exception that was never raised has no traceback
            entry["stacktrace"] = {"frames": frames}
        if tree is not None:
            fields = tree[i][1]
            kind = mechanism if fields["exception_id"] == 0 else "chained"  # as sentry-sdk
            entry["mechanism"] = {"type": kind, "handled": handled, **fields}
        else:  # each exception of a chain says how the one raised last was caught
            entry["mechanism"] = {"type": mechanism, "handled": handled}
        values.append(entry)
    trace: dict[str, Any] = {"trace_id": ctx.trace_id}
    tx = None
    if span is not None:
        trace["span_id"] = span._span_id
        if span._parent_span_id:
            trace["parent_span_id"] = span._parent_span_id
        if span._op:
            trace["op"] = span._op[:128]
        if span._status:
            trace["status"] = span._status
        tx = span._tx
    else:
        trace["span_id"] = ctx.span_id
        if ctx.parent_span_id:
            trace["parent_span_id"] = ctx.parent_span_id
    event: dict[str, Any] = {
        "event_id": new_event_id(),
        "level": "error",
        "platform": "python",
        "timestamp": time.time(),
        "exception": {"values": values},
        "contexts": {"trace": trace, "runtime": dict(RUNTIME)},
        "environment": options.environment,
        "sdk": _sdk_info(),
    }
    if tx is None:
        tx = ctx.transaction
    if tx is not None:
        if tx._namer is not None:
            tx._settle_name()
        event["transaction"] = _tx_name(tx._name)
        event["transaction_info"] = {"source": tx._source}
        request = _request_of(tx)
        if request is not None:
            event["request"] = request = _own_copy(request)
        if options.send_default_pii:
            _add_user(event, tx._user, request)
    elif request is not None:
        event["request"] = request
        if options.send_default_pii:
            _add_user(event, None, request)
    if options.release:
        event["release"] = options.release
    if options.server_name:
        event["server_name"] = options.server_name
    return event


def exc_info_from(exc: BaseException | None) -> BaseException | None:
    """The exception to capture: the argument, or the one being handled."""
    if exc is not None:
        return exc
    return sys.exc_info()[1]
