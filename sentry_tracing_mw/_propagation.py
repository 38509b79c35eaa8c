"""Codec for the trace propagation headers (protocol sections 8 to 10, 12.2).

Covers ``sentry-trace``, W3C ``traceparent`` / ``tracestate`` and ``baggage``, plus the
carrier getters used to read them from a header mapping, a WSGI environ or an ASGI scope.
Pure functions over strings: no knowledge of spans, clients or web frameworks. Parsers
never raise and run in linear time; every pattern is compiled at import.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar, overload
from urllib.parse import quote

__all__ = [
    "ASGI_GETTER",
    "BAGGAGE_HEADER",
    "DICT_GETTER",
    "MAX_BAGGAGE_BYTES",
    "MAX_BAGGAGE_MEMBERS",
    "MAX_BAGGAGE_MEMBER_BYTES",
    "SENTRY_TRACE_HEADER",
    "TRACEPARENT_HEADER",
    "TRACESTATE_HEADER",
    "WSGI_GETTER",
    "Baggage",
    "Getter",
    "IncomingTrace",
    "SentryTrace",
    "TraceParent",
    "extract",
    "extract_environ",
    "extract_values",
    "format_baggage",
    "format_sample_rand",
    "format_sample_rate",
    "format_sentry_trace",
    "format_traceparent",
    "merge_baggage",
    "parse_baggage",
    "parse_dsc",
    "parse_incoming_baggage",
    "parse_sample_rand",
    "parse_sample_rate",
    "parse_sentry_trace",
    "parse_traceparent",
    "parse_tracestate",
    "sentry_part",
]

_logger = logging.getLogger("sentry_tracing_mw")

_T = TypeVar("_T", bound=tuple[Any, ...])


class _TupleNew(Protocol):
    def __call__(self, cls: type[_T], iterable: tuple[Any, ...], /) -> _T: ...


# Builds a NamedTuple without its Python-level __new__ (about twice as fast).
_new_tuple: _TupleNew = tuple.__new__

SENTRY_TRACE_HEADER = "sentry-trace"
BAGGAGE_HEADER = "baggage"
TRACEPARENT_HEADER = "traceparent"
TRACESTATE_HEADER = "tracestate"

#: Outgoing baggage limits (bytes of UTF-8, list members).
MAX_BAGGAGE_BYTES = 8192
MAX_BAGGAGE_MEMBERS = 64
#: The older W3C drafts' per-member maximum, which OpenTelemetry's parsers still apply
#: (they drop a longer member): no forwarded or Sentry member is emitted over it (the
#: app's own members go as the app set them).
MAX_BAGGAGE_MEMBER_BYTES = 4096

_MAX_INCOMING_BAGGAGE_CHARS = 65536
_MAX_INCOMING_BAGGAGE_MEMBERS = 180
_MAX_TRACESTATE_MEMBERS = 32
_MAX_TRACESTATE_CHARS = 65536  # far above any valid value (32 members of <= 513 chars + OWS)
_MAX_NUMBER_CHARS = 512  # enough for any float in [0, 1] written without an exponent
_SENTRY_PREFIX = "sentry-"

_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16

# A list member with surrounding SP/HTAB trimmed. Each match starts on a non-OWS,
# non-comma character, so failed attempts are O(1) and the whole scan is linear.
_MEMBER_RE = re.compile(r"[^, \t](?:[^,]*[^, \t])?")
_FIRST_VALUE_CHAR_RE = re.compile(r"[^, \t]")

_SENTRY_TRACE_RE = re.compile(r"[0-9a-f]{32}-[0-9a-f]{16}(?:-[01])?")
_SAMPLED_FLAG: dict[str, bool | None] = {"": None, "1": True, "0": False}
# Version, trace id, parent id, flags; versions above 00 may add "-..." fields.
_TRACEPARENT_RE = re.compile(
    r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(?:-.*)?", re.DOTALL
)
_TRACEPARENT_FLAGS = {f"{i:02x}": (bool(i & 1), bool(i & 2)) for i in range(256)}
_TRACEPARENT_FLAG_STR = ("00", "01", "02", "03")

_TS_KEY_CHARS = r"[a-z0-9_\-*/]"
_TRACESTATE_MEMBER_RE = re.compile(
    rf"([a-z]{_TS_KEY_CHARS}{{0,255}}"
    rf"|[a-z0-9]{_TS_KEY_CHARS}{{0,240}}@[a-z]{_TS_KEY_CHARS}{{0,13}})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
_MAX_TRACESTATE_MEMBER_CHARS = 256 + 1 + 256

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A whole baggage member by the W3C grammar (protocol §10.1): key OWS "=" OWS value, then
# properties; a value is printable US-ASCII but space, DQUOTE, ",", ";" and backslash.
# Only members that match are forwarded as third-party members.
_VALUE_CHAR = r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]"
# OWS after "=" only before a non-empty value: two optional whitespace runs that meet
# around an empty value would make a failing match quadratic (a ReDoS on 64 KiB headers).
_BAGGAGE_MEMBER_RE = re.compile(
    rf"{_TOKEN_RE.pattern}[ \t]*=(?:[ \t]*{_VALUE_CHAR}+)?"
    rf"(?:[ \t]*;[ \t]*{_TOKEN_RE.pattern}(?:[ \t]*=(?:[ \t]*{_VALUE_CHAR}+)?)?)*"
)
_PCT_RUN_RE = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
_URL_SAFE_RE = re.compile(r"[A-Za-z0-9_.~\-]*")

_DECIMAL_CHARS = "0123456789.eE+-"
_CANONICAL_RAND_RE = re.compile(r"0\.[0-9]{6}")
_PLAIN_RAND_RE = re.compile(r"0\.[0-9]{1,24}")  # kept as received (bounded length)
_VALID_RATES: set[str] = set()  # sample_rate strings already known to be valid

_KNOWN_SENTRY_KEYS = {
    _SENTRY_PREFIX + k: k
    for k in (
        "trace_id",
        "public_key",
        "sample_rate",
        "sample_rand",
        "sampled",
        "release",
        "environment",
        "transaction",
        "org_id",
        "replay_id",
        "user_segment",
    )
}

# Small memo tables for percent-coding; the same release/transaction values repeat.
_CACHE_LIMIT = 512
_CACHEABLE_CHARS = 256
_OWN_CACHE: dict[str, tuple[tuple[str, str], ...]] = {}
_UNQUOTE_CACHE: dict[str, str] = {}
# Raw baggage member -> (DSC key, decoded value), for members whose values repeat a lot.
_MEMBER_CACHE: dict[str, tuple[str, str]] = {}
_CACHEABLE_DSC_KEYS = frozenset(
    ("public_key", "sample_rate", "sampled", "release", "environment", "transaction", "org_id")
)
_QUOTE_CACHE: dict[str, str] = {}


# --------------------------------------------------------------------------- sentry-trace


class SentryTrace(NamedTuple):
    """A parsed ``sentry-trace`` header."""

    trace_id: str
    span_id: str
    sampled: bool | None


def _only(text: str, chars: str) -> bool:
    """True when ``text`` consists of ``chars`` only (linear, fast on huge inputs)."""
    return sum(map(text.count, chars)) == len(text)


def _trimmed_id(value: str, pattern: re.Pattern[str]) -> str | None:
    """Trim SP/HTAB around an id-shaped value and fullmatch it against ``pattern``.

    ``str.strip()`` (all whitespace) is an order of magnitude faster than ``strip(" \t")``
    on huge inputs; the trimmed edges are then checked to be SP/HTAB only.
    """
    text = value.strip()
    if pattern.fullmatch(text) is None:
        return None
    if len(text) != len(value):
        start = value.find(text)
        if not (_only(value[:start], " \t") and _only(value[start + len(text) :], " \t")):
            return None
    return text


def parse_sentry_trace(value: str | None) -> SentryTrace | None:
    """Parse ``sentry-trace``; None unless both ids are valid (first of comma-joined values)."""
    parts = _sentry_trace(value)
    return None if parts is None else _new_tuple(SentryTrace, parts)


def _sentry_trace(value: str | None) -> tuple[str, str, bool | None] | None:
    """``parse_sentry_trace`` as a plain tuple (trace id, span id, sampled)."""
    if type(value) is str and _SENTRY_TRACE_RE.fullmatch(value) is not None:  # the usual
        trace_id = value[:32]
        span_id = value[33:49]
        if trace_id == _ZERO_TRACE_ID or span_id == _ZERO_SPAN_ID:
            return None
        return trace_id, span_id, _SAMPLED_FLAG[value[50:]]
    if not isinstance(value, str):
        return None
    if "," in value:
        # First non-empty comma-separated value (with OWS trimmed).
        start = len(value) - len(value.replace(",", " ").lstrip())
        if start and not _only(value[:start], ", \t"):
            return None  # other whitespace begins the first value: invalid
        end = value.find(",", start)
        value = value[start:end] if end >= 0 else value[start:]
    text = _trimmed_id(value, _SENTRY_TRACE_RE)
    if text is None:
        return None
    trace_id = text[:32]
    span_id = text[33:49]
    if trace_id == _ZERO_TRACE_ID or span_id == _ZERO_SPAN_ID:
        return None
    return trace_id, span_id, _SAMPLED_FLAG[text[50:]]


def format_sentry_trace(trace_id: str, span_id: str, sampled: bool | None) -> str:
    """Format ``sentry-trace``; the sampled suffix is left out when deferred (None)."""
    if sampled is None:
        return f"{trace_id}-{span_id}"
    return f"{trace_id}-{span_id}-1" if sampled else f"{trace_id}-{span_id}-0"


# --------------------------------------------------------------------------- traceparent


class TraceParent(NamedTuple):
    """A parsed W3C ``traceparent`` header (flags 0x01 sampled, 0x02 random)."""

    trace_id: str
    parent_id: str
    sampled: bool
    random: bool


def parse_traceparent(value: str | None) -> TraceParent | None:
    """Parse W3C ``traceparent`` (Level 2 rules, section 9); None when invalid."""
    if not isinstance(value, str) or "," in value:
        return None
    text = _trimmed_id(value, _TRACEPARENT_RE)
    if text is None:
        return None
    version = text[:2]
    if version == "ff" or (version == "00" and len(text) != 55):
        return None
    trace_id = text[3:35]
    parent_id = text[36:52]
    flags = text[53:55]
    if trace_id == _ZERO_TRACE_ID or parent_id == _ZERO_SPAN_ID:
        return None
    return _new_tuple(TraceParent, (trace_id, parent_id, *_TRACEPARENT_FLAGS[flags]))


def format_traceparent(trace_id: str, span_id: str, sampled: bool | None, random: bool) -> str:
    """Format a version 00 ``traceparent``."""
    flags = _TRACEPARENT_FLAG_STR[(1 if sampled else 0) | (2 if random else 0)]
    return f"00-{trace_id}-{span_id}-{flags}"


# --------------------------------------------------------------------------- tracestate


def parse_tracestate(value: str | None) -> str | None:
    """Validate ``tracestate``; return the normalized value, or None if invalid or empty."""
    if not isinstance(value, str) or len(value) > _MAX_TRACESTATE_CHARS:
        return None
    kept: list[str] = []
    seen: set[str] = set()
    match_member = _TRACESTATE_MEMBER_RE.fullmatch
    for count, member in enumerate(_MEMBER_RE.finditer(value), 1):
        if count > _MAX_TRACESTATE_MEMBERS:
            return None
        text = member.group()
        if len(text) > _MAX_TRACESTATE_MEMBER_CHARS:
            return None
        match = match_member(text)
        if match is None:
            return None
        key = match.group(1)
        if key not in seen:
            seen.add(key)
            kept.append(text)
    return ",".join(kept) if kept else None


# --------------------------------------------------------------------------- baggage


class Baggage(NamedTuple):
    """A parsed ``baggage`` header: the Sentry DSC and the third-party members."""

    sentry: dict[str, str]
    third_party: tuple[str, ...]


def _decode_pct_run(match: re.Match[str]) -> str:
    return bytes.fromhex(match.group().replace("%", "")).decode("utf-8", "replace")


def _unquote(value: str) -> str:
    """Percent-decode like ``urllib.parse.unquote`` (invalid sequences kept, never raises)."""
    cached = _UNQUOTE_CACHE.get(value)
    if cached is not None:
        return cached
    decoded = _PCT_RUN_RE.sub(_decode_pct_run, value)
    if len(value) <= _CACHEABLE_CHARS:
        if len(_UNQUOTE_CACHE) >= _CACHE_LIMIT:
            _UNQUOTE_CACHE.clear()
        _UNQUOTE_CACHE[value] = decoded
    return decoded


def _parse_baggage(value: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """Parse a non-empty ``baggage`` value (see parse_baggage) into plain tuples."""
    sentry: dict[str, str] = {}
    parts = value.split(",")
    if len(parts) > _MAX_INCOMING_BAGGAGE_MEMBERS:  # only non-empty members count
        parts = _within_member_cap(parts)
    third_party: list[str] | None = None
    seen: set[str] | None = None
    cache = _MEMBER_CACHE
    cached = cache.get
    known = _KNOWN_SENTRY_KEYS.get
    for member in parts:
        hit = cached(member)
        if hit is not None:
            if hit[0] not in sentry:
                sentry[hit[0]] = hit[1]
            continue
        key, sep, raw = member.partition("=")
        dsc_key = known(key) if sep else None
        if dsc_key is None:
            text = member.strip(" \t")
            key, sep, raw = text.partition("=")
            if not sep:
                continue
            key = key.rstrip(" \t")
            if _TOKEN_RE.fullmatch(key) is None:
                continue
            if not key.startswith(_SENTRY_PREFIX):
                if seen is None or third_party is None:
                    seen = set()
                    third_party = []
                if key not in seen and _BAGGAGE_MEMBER_RE.fullmatch(text) is not None:
                    seen.add(key)
                    third_party.append(text)
                continue
            dsc_key = key[7:]
            if not dsc_key:
                continue
        if ";" in raw:
            raw = raw.partition(";")[0]
        raw = raw.strip(" \t")
        decoded = _unquote(raw) if "%" in raw else raw
        if dsc_key not in sentry:
            sentry[dsc_key] = decoded
        if dsc_key in _CACHEABLE_DSC_KEYS and len(member) <= _CACHEABLE_CHARS:
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[member] = (dsc_key, decoded)
    return sentry, (tuple(third_party) if third_party else ())


def _within_member_cap(parts: list[str]) -> list[str]:
    """The non-empty members of an oversized baggage, at most 180 (W3C's maximum): the
    ``sentry-`` members wherever they stand (the DSC must survive), then the first
    third-party members that fit, in their original order."""
    parts = [p for p in filter(None, parts) if p.strip(" \t")]
    if len(parts) <= _MAX_INCOMING_BAGGAGE_MEMBERS:
        return parts
    is_sentry = [p.lstrip(" \t").startswith(_SENTRY_PREFIX) for p in parts]
    room = max(0, _MAX_INCOMING_BAGGAGE_MEMBERS - sum(is_sentry))
    kept: list[str] = []
    for part, sentry in zip(parts, is_sentry, strict=True):
        if sentry:
            if len(kept) < _MAX_INCOMING_BAGGAGE_MEMBERS:
                kept.append(part)
        elif room:
            room -= 1
            kept.append(part)
    return kept


def parse_baggage(value: str | None) -> Baggage:
    """Parse ``baggage`` into the Sentry DSC (decoded) and third-party members (verbatim)."""
    if not isinstance(value, str) or not value or len(value) > _MAX_INCOMING_BAGGAGE_CHARS:
        return _new_tuple(Baggage, ({}, ()))
    return _new_tuple(Baggage, _parse_baggage(value))


def _quote(value: str) -> str:
    """Percent-encode a baggage value like ``quote(value, safe="")``."""
    cached = _QUOTE_CACHE.get(value)
    if cached is not None:
        return cached
    if _URL_SAFE_RE.fullmatch(value) is not None:
        return value
    encoded = quote(value, safe="", errors="replace")
    if len(value) <= _CACHEABLE_CHARS:
        if len(_QUOTE_CACHE) >= _CACHE_LIMIT:
            _QUOTE_CACHE.clear()
        _QUOTE_CACHE[value] = encoded
    return encoded


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _member_key(member: str) -> str:
    return member.partition("=")[0].rstrip(" \t")


def format_baggage(
    sentry: Mapping[str, str], *, own: str | None = None, forwarded: Sequence[str] = ()
) -> str:
    """Build the outgoing ``baggage``: app's own members, forwarded members, then ours.

    Existing ``sentry-`` members in ``own`` are replaced, keys are never duplicated and
    the result stays within MAX_BAGGAGE_BYTES / MAX_BAGGAGE_MEMBERS: space goes to the
    Sentry members first (see ``sentry_part``), then to the app's own, then to forwarded
    ones (the order on the wire stays as above); a member that does not fit in what is
    left is dropped.
    """
    return merge_baggage(*sentry_part(sentry), own, forwarded)


# The DSC keys a downstream service needs most, in the order they are kept when the
# Sentry members alone would break the outgoing limits (unknown keys come last).
_SENTRY_KEY_PRIORITY = {
    k: i
    for i, k in enumerate(
        (
            "trace_id",
            "public_key",
            "sample_rate",
            "sample_rand",
            "sampled",
            "org_id",
            "environment",
            "release",
            "transaction",
            "replay_id",
            "user_segment",
        )
    )
}


def sentry_part(sentry: Mapping[str, str]) -> tuple[str, int]:
    """The DSC's ``sentry-`` members, comma-joined, and how many there are.

    Values are percent-encoded. An upstream DSC can be made of anything, so when its
    members alone would break MAX_BAGGAGE_BYTES / MAX_BAGGAGE_MEMBERS, members are kept
    by priority (trace and sampling keys first, unknown keys last) as long as they fit;
    the others are dropped (protocol §10.1: never an oversized header).
    """
    members = [
        f"sentry-{k}={v if v.isalnum() and v.isascii() else _quote(v)}" for k, v in sentry.items()
    ]
    text = ",".join(members)
    if len(text) > MAX_BAGGAGE_MEMBER_BYTES:  # (shorter: no member can be too long)
        long = [m for m in members if _utf8_len(m) > MAX_BAGGAGE_MEMBER_BYTES]
        if long:
            _logger.debug("outgoing baggage: %d Sentry members over 4096 bytes left out", len(long))
            members = [m for m in members if _utf8_len(m) <= MAX_BAGGAGE_MEMBER_BYTES]
            text = ",".join(members)
    if len(members) <= MAX_BAGGAGE_MEMBERS and _utf8_len(text) <= MAX_BAGGAGE_BYTES:
        return text, len(members)
    rank = _SENTRY_KEY_PRIORITY.get
    last = len(_SENTRY_KEY_PRIORITY)
    order = sorted(
        range(len(members)), key=lambda i: (rank(members[i][7:].partition("=")[0], last), i)
    )
    kept: list[int] = []
    used = -1  # no comma before the first member
    for i in order:
        size = _utf8_len(members[i]) + 1
        if used + size <= MAX_BAGGAGE_BYTES:
            used += size
            kept.append(i)
            if len(kept) == MAX_BAGGAGE_MEMBERS:
                break
    _logger.debug(
        "outgoing baggage: %d of %d Sentry members left out (over %d bytes / %d members)",
        len(members) - len(kept),
        len(members),
        MAX_BAGGAGE_BYTES,
        MAX_BAGGAGE_MEMBERS,
    )
    kept.sort()
    return ",".join([members[i] for i in kept]), len(kept)


def _own_members(own: str) -> tuple[tuple[str, str], ...]:
    """The app's own non-``sentry-`` members as (key, member), first of each key."""
    cached = _OWN_CACHE.get(own)
    if cached is not None:
        return cached
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for member in _MEMBER_RE.findall(own):
        key = _member_key(member)
        if not key.startswith(_SENTRY_PREFIX) and key not in seen:
            seen.add(key)
            found.append((key, member))
    members = tuple(found)
    if len(own) <= _CACHEABLE_CHARS:  # an app's own baggage tends to repeat call after call
        if len(_OWN_CACHE) >= _CACHE_LIMIT:
            _OWN_CACHE.clear()
        _OWN_CACHE[own] = members
    return members


def _fits_member(member: str) -> bool:
    """A member within MAX_BAGGAGE_MEMBER_BYTES (called for long ones only)."""
    if _utf8_len(member) <= MAX_BAGGAGE_MEMBER_BYTES:
        return True
    _logger.debug("outgoing baggage: a member over 4096 bytes left out (%.40s...)", member)
    return False


def merge_baggage(
    ours: str, count: int, own: str | None = None, forwarded: Sequence[str] = ()
) -> str:
    """``format_baggage`` with the Sentry part already formatted (``sentry_part``):
    ``ours`` holds ``count`` members (0 when empty)."""
    if not own and not forwarded:
        return ours
    extra: list[str] = []
    seen: set[str] = set()
    if own:
        for key, member in _own_members(own):  # the app's: sent as it set them
            seen.add(key)
            extra.append(member)
    for member in forwarded:
        if not isinstance(member, str) or "," in member:
            continue
        member = member.strip(" \t")
        key = _member_key(member)
        if key and key != member and not key.startswith(_SENTRY_PREFIX) and key not in seen:
            seen.add(key)
            if len(member) <= MAX_BAGGAGE_MEMBER_BYTES or _fits_member(member):
                extra.append(member)
    if not extra:
        return ours
    used = _utf8_len(ours) if count else -1  # -1: no leading comma when there is no DSC
    slots = MAX_BAGGAGE_MEMBERS - count
    if used + 1 + _utf8_len(",".join(extra)) > MAX_BAGGAGE_BYTES or len(extra) > slots:
        # Over a limit: keep members in order while they fit (a member too big for what
        # is left is dropped, smaller ones after it may still go).
        kept: list[str] = []
        for member in extra:
            if len(kept) >= slots:
                break
            size = _utf8_len(member) + 1
            if used + size <= MAX_BAGGAGE_BYTES:
                used += size
                kept.append(member)
        extra = kept
    if count:
        extra.append(ours)
    return ",".join(extra)


# --------------------------------------------------------------------------- sample_rand/rate


def _parse_unit_float(value: str | None) -> float | None:
    """Parse a plain unsigned decimal (no '_', whitespace, inf or nan); None otherwise."""
    if (
        not isinstance(value, str)
        or not value
        or len(value) > _MAX_NUMBER_CHARS
        or value.strip(_DECIMAL_CHARS)
        or value[0] in "+-"
    ):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def parse_sample_rand(value: str | None) -> float | None:
    """Return the value as a float in [0, 1), else None."""
    number = _parse_unit_float(value)
    if number is None or not 0.0 <= number < 1.0:
        return None
    return number


def parse_sample_rate(value: str | None) -> float | None:
    """Return the value as a finite float in [0, 1], else None."""
    number = _parse_unit_float(value)
    if number is None or not 0.0 <= number <= 1.0:
        return None
    return number


def format_sample_rand(value: float) -> str:
    """Format with 6 decimals, truncated; clamped to [0.000000, 0.999999]."""
    if not value > 0.0:  # also NaN
        return "0.000000"
    if value >= 1.0:
        return "0.999999"
    text = f"{value:.9f}"[:8]
    return "0.999999" if text[0] != "0" else text


def format_sample_rate(value: float) -> str:
    """Format like ``repr(float)`` but never in exponent notation (1e-07 -> "0.0000001")."""
    text = repr(float(value))
    if "e" not in text:
        return text
    from decimal import Decimal

    text = format(Decimal(text), "f")
    return text if "." in text else text + ".0"


# --------------------------------------------------------------------------- carriers

_C_contra = TypeVar("_C_contra", contravariant=True)
C = TypeVar("C")


class Getter(Protocol[_C_contra]):
    """Reads one header from a carrier; ``key`` is a lowercase header name."""

    def get(self, carrier: _C_contra, key: str) -> str | None:
        """Return the header value (repeats joined with ","), or None."""
        ...


def _as_text(value: object) -> str | None:
    """Coerce a carrier value to str (bytes are latin-1); None when unusable."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("latin-1")
    if isinstance(value, (list, tuple)):
        texts = [t for t in map(_as_text, value) if t is not None]
        return ",".join(texts) if texts else None
    return None


class _DictGetter:
    """Case-insensitive lookup in a header mapping."""

    __slots__ = ()

    def get(self, carrier: Mapping[str, str], key: str) -> str | None:
        try:
            value: object = carrier.get(key)
            if value is not None:
                return value if type(value) is str else _as_text(value)
            # A WSGI environ or Django's request.META (sentry-sdk's continue_trace takes
            # those too): "HTTP_SENTRY_TRACE" for "sentry-trace".
            value = carrier.get(_WSGI_KEYS.get(key) or "HTTP_" + key.upper().replace("-", "_"))
            if value is not None:
                return value if type(value) is str else _as_text(value)
            try:
                if key not in map(str.lower, carrier):
                    return None
            except TypeError:  # non-str keys: use the careful scan below
                pass
            found = [
                text
                for k, v in carrier.items()
                if isinstance(k, str) and k.lower() == key and (text := _as_text(v)) is not None
            ]
        except Exception:
            return None
        return ",".join(found) if found else None


_WSGI_KEYS = {
    name: "HTTP_" + name.upper().replace("-", "_")
    for name in (SENTRY_TRACE_HEADER, BAGGAGE_HEADER, TRACEPARENT_HEADER, TRACESTATE_HEADER)
}


class _WsgiGetter:
    """Lookup in a WSGI environ (``HTTP_*`` keys, latin-1 str values per PEP 3333)."""

    __slots__ = ()

    def get(self, carrier: Mapping[str, Any], key: str) -> str | None:
        env_key = _WSGI_KEYS.get(key)
        if env_key is None:
            env_key = "HTTP_" + key.upper().replace("-", "_")
        try:
            value: object = carrier.get(env_key)
        except Exception:
            return None
        if value is None or type(value) is str:
            return value
        return _as_text(value)


_ASGI_KEYS = {
    name: name.encode("ascii")
    for name in (SENTRY_TRACE_HEADER, BAGGAGE_HEADER, TRACEPARENT_HEADER, TRACESTATE_HEADER)
}


class _AsgiGetter:
    """Lookup in an ASGI scope's ``headers`` (byte pairs; repeats joined with ",")."""

    __slots__ = ()

    def get(self, carrier: Mapping[str, Any], key: str) -> str | None:
        try:
            headers = carrier.get("headers")
            if not headers:
                return None
            name = _ASGI_KEYS.get(key) or key.encode("latin-1")
            size = len(name)
            found: list[str] = []
            for item in headers:
                try:
                    header_name, header_value = item
                    if header_name != name and not (
                        isinstance(header_name, (bytes, str))
                        and len(header_name) == size
                        and (
                            header_name.lower() == name
                            if isinstance(header_name, bytes)
                            else header_name.lower() == key
                        )
                    ):
                        continue
                    text = _as_text(header_value)
                except Exception:
                    continue
                if text is not None:
                    found.append(text)
        except Exception:
            return None
        if not found:
            return None
        return found[0] if len(found) == 1 else ",".join(found)


DICT_GETTER: Getter[Mapping[str, str]] = _DictGetter()
WSGI_GETTER: Getter[Mapping[str, Any]] = _WsgiGetter()
ASGI_GETTER: Getter[Mapping[str, Any]] = _AsgiGetter()


# --------------------------------------------------------------------------- extract


class IncomingTrace(NamedTuple):
    """Everything an incoming request says about the trace it continues."""

    trace_id: str
    parent_span_id: str
    parent_sampled: bool | None
    dsc: dict[str, str] | None
    third_party: tuple[str, ...]
    tracestate: str | None
    random: bool
    #: The raw ``baggage`` while it is still unparsed (``extract(..., lazy=True)``); then
    #: ``dsc`` and ``third_party`` are empty until :func:`parse_incoming_baggage`.
    baggage: str | None = None


def parse_incoming_baggage(incoming: IncomingTrace) -> IncomingTrace:
    """``incoming`` with its deferred ``baggage`` parsed into ``dsc`` and ``third_party``."""
    raw = incoming.baggage
    if raw is None:
        return incoming
    try:
        dsc, third_party = parse_dsc(raw, incoming.trace_id)
    except Exception:
        _logger.debug("ignoring an incoming baggage that could not be read", exc_info=True)
        dsc, third_party = None, ()
    return _new_tuple(IncomingTrace, (*incoming[:3], dsc, third_party, *incoming[5:7], None))


_RECORDED = {"true": True, "false": False}


def _recorded_decision(dsc: dict[str, str] | None) -> bool | None:
    """The decision a Sentry DSC records (``sentry-sampled``), if any."""
    return _RECORDED.get(dsc.get("sampled", "")) if dsc else None


# Baggage shape -> (trace id position, sample_rand position, DSC, third-party members).
_SHAPE_CACHE: dict[str, tuple[int, int, dict[str, str], tuple[str, ...]]] = {}
_SHAPE_CACHE_LIMIT = 256
_MAX_SHAPE_CHARS = 2048
_TRACE_ID_KEY = _SENTRY_PREFIX + "trace_id="
_SAMPLE_RAND_KEY = _SENTRY_PREFIX + "sample_rand="


def parse_dsc(baggage: str | None, trace_id: str) -> tuple[dict[str, str] | None, tuple[str, ...]]:
    """The sanitized DSC (None when absent or from another trace) and the third-party
    members of an incoming ``baggage`` that came with a trace header for ``trace_id``.

    Within one upstream service the baggage differs from trace to trace only in its
    ``sentry-trace_id`` and ``sentry-sample_rand`` values. With those two values cut out,
    the rest (its shape) is the key of a small memo of finished results. A shape is only
    memoized when the parser took exactly those two cut-out values (canonical, at member
    boundaries, the first of their keys), so a hit gives what a full parse would.
    """
    if not isinstance(baggage, str) or not baggage or len(baggage) > _MAX_INCOMING_BAGGAGE_CHARS:
        return None, ()
    i = baggage.find(trace_id)
    k = baggage.find(_SAMPLE_RAND_KEY) + 19
    j = i + 32
    m = k + 8
    n = len(baggage)
    shape: str | None = None
    rand = ""
    if (
        i >= 16
        and k >= 19
        and len(trace_id) == 32
        and m <= n <= _MAX_SHAPE_CHARS
        and baggage.startswith(_TRACE_ID_KEY, i - 16)
        and (i == 16 or baggage[i - 17] == ",")
        and (j == n or baggage[j] == ",")
        and (k == 19 or baggage[k - 20] == ",")
        and (m == n or baggage[m] == ",")
        and _CANONICAL_RAND_RE.fullmatch(rand := baggage[k:m]) is not None
    ):
        shape = (
            baggage[:i] + baggage[j:k] + baggage[m:]
            if i < k
            else baggage[:k] + baggage[m:i] + baggage[j:]
        )
        hit = _SHAPE_CACHE.get(shape)
        if hit is not None and hit[0] == i and hit[1] == k:
            dsc = hit[2].copy()
            dsc["trace_id"] = trace_id
            dsc["sample_rand"] = rand
            return dsc, hit[3]
    sentry, third_party = _parse_baggage(baggage)
    found = _sanitize_dsc(sentry, trace_id) if sentry else None
    if (
        shape is not None
        and found is not None
        and found.get("trace_id") == trace_id
        and found.get("sample_rand") == rand
    ):
        if len(_SHAPE_CACHE) >= _SHAPE_CACHE_LIMIT:
            _SHAPE_CACHE.clear()
        _SHAPE_CACHE[shape] = (i, k, found.copy(), third_party)
    return found, third_party


def _sanitize_dsc(dsc: dict[str, str], trace_id: str) -> dict[str, str] | None:
    """Drop a DSC from another trace and invalid sampling entries; fill in trace_id."""
    dsc_trace_id = dsc.get("trace_id")
    if dsc_trace_id is not None and dsc_trace_id != trace_id:
        return None
    rate = dsc.get("sample_rate")
    if rate is not None and rate not in _VALID_RATES:
        if parse_sample_rate(rate) is None:
            del dsc["sample_rate"]
        elif len(_VALID_RATES) < _CACHE_LIMIT:
            _VALID_RATES.add(rate)
    rand = dsc.get("sample_rand")
    if rand is not None and _CANONICAL_RAND_RE.fullmatch(rand) is None:
        number = parse_sample_rand(rand)
        if number is None:
            del dsc["sample_rand"]
        elif _PLAIN_RAND_RE.fullmatch(rand) is None:
            # Valid but exotic ("1e-3", ".5", "0"): 6 decimals, as envelopes carry it. A
            # plain decimal ("0.5" from Java, full precision from JavaScript) stays exactly
            # as received: the DSC is frozen, and siblings must see the same value.
            dsc["sample_rand"] = format_sample_rand(number)
    sampled = dsc.get("sampled")
    if sampled is not None and sampled != "true" and sampled != "false":
        del dsc["sampled"]
    if not dsc:
        return None
    if dsc_trace_id is None:
        dsc["trace_id"] = trace_id
    return dsc


def _extract(carrier: Any, getter: Getter[Any], lazy: bool) -> IncomingTrace | None:
    get = getter.get
    raw_traceparent = get(carrier, TRACEPARENT_HEADER)
    return extract_values(
        get(carrier, SENTRY_TRACE_HEADER),
        raw_traceparent,
        get(carrier, BAGGAGE_HEADER),
        get(carrier, TRACESTATE_HEADER) if raw_traceparent else None,
        lazy,
    )


def extract_values(
    raw_sentry_trace: str | None,
    raw_traceparent: str | None,
    baggage: str | None,
    raw_tracestate: str | None,
    lazy: bool,
) -> IncomingTrace | None:
    """``extract`` from the four header values already read (None: absent); raises on
    values that are not text (``extract`` catches that)."""
    sentry_trace = _sentry_trace(raw_sentry_trace)
    traceparent = parse_traceparent(raw_traceparent) if raw_traceparent else None
    if sentry_trace is not None:
        trace_id, parent_span_id, parent_sampled = sentry_trace
    elif traceparent is not None:
        trace_id = traceparent.trace_id
        parent_span_id = traceparent.parent_id
        parent_sampled = True if traceparent.sampled else None
    else:
        return None
    tracestate = None
    random = False
    if traceparent is not None and traceparent.trace_id == trace_id:
        random = traceparent.random
        tracestate = parse_tracestate(raw_tracestate)
    dsc: dict[str, str] | None = None
    third_party: tuple[str, ...] = ()
    raw: str | None = None
    # A traceparent with the sampled bit clear is a deferred decision, unless it comes with
    # Sentry baggage recording the head's decision (a non-Sentry service between two
    # Sentry ones forwards the head's baggage with a traceparent of its own).
    deferred_w3c = sentry_trace is None and parent_sampled is None
    if baggage and len(baggage) <= _MAX_INCOMING_BAGGAGE_CHARS:
        if lazy and not deferred_w3c:
            raw = baggage
        else:
            dsc, third_party = parse_dsc(baggage, trace_id)
            if deferred_w3c:
                parent_sampled = _recorded_decision(dsc)
    return _new_tuple(
        IncomingTrace,
        (trace_id, parent_span_id, parent_sampled, dsc, third_party, tracestate, random, raw),
    )


def extract_environ(environ: Mapping[str, Any]) -> IncomingTrace | None:
    """``extract(environ, WSGI_GETTER, lazy=True)`` for a WSGI environ (or Django's
    ``request.META``), reading its keys directly when they hold text (never raises)."""
    try:
        sentry_trace = environ.get("HTTP_SENTRY_TRACE")
        traceparent = environ.get("HTTP_TRACEPARENT")
        if sentry_trace is None and traceparent is None:
            return None  # no trace header at all: the common case at a trace's head
        baggage = environ.get("HTTP_BAGGAGE")
        tracestate = environ.get("HTTP_TRACESTATE") if traceparent else None
        if (
            (sentry_trace is None or type(sentry_trace) is str)
            and (traceparent is None or type(traceparent) is str)
            and (baggage is None or type(baggage) is str)
            and (tracestate is None or type(tracestate) is str)
        ):
            return extract_values(sentry_trace, traceparent, baggage, tracestate, True)
    except Exception:  # a mapping that refuses a read, a value that refuses a test
        pass
    # Values that are not str (coerced), or reads that failed: the general reader, which
    # reads each header on its own.
    return extract(environ, WSGI_GETTER, lazy=True)


@overload
def extract(carrier: Mapping[str, str], *, lazy: bool = ...) -> IncomingTrace | None: ...
@overload
def extract(carrier: C, getter: Getter[C], *, lazy: bool = ...) -> IncomingTrace | None: ...
def extract(
    carrier: Any, getter: Getter[Any] = DICT_GETTER, *, lazy: bool = False
) -> IncomingTrace | None:
    """Read the incoming trace headers from ``carrier``; None when no valid trace header.

    ``lazy`` leaves the baggage unparsed in ``IncomingTrace.baggage`` (see
    :func:`parse_incoming_baggage`): most requests that inherit a decision never need it.
    """
    try:
        return _extract(carrier, getter, lazy)
    except Exception:
        _logger.debug("ignoring incoming trace headers that could not be read", exc_info=True)
        return None
