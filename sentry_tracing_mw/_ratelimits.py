"""Rate limits from Sentry responses (protocol §14)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from ._fork import renew_in_child

__all__ = ["ALL", "DEFAULT_RETRY_AFTER", "KNOWN_CATEGORIES", "RateLimits", "header_get"]

#: Key of the bucket that limits every category.
ALL = "all"
DEFAULT_RETRY_AFTER = 60.0

KNOWN_CATEGORIES = frozenset(
    {
        "default",
        "error",
        "transaction",
        "span",
        "security",
        "attachment",
        "session",
        "profile",
        "profile_chunk",
        "replay",
        "feedback",
        "monitor",
        "log_item",
        "log_byte",
        "trace_metric",
        "internal",
        "metric_bucket",
        "user_report_v2",
        "profile_duration",
        "profile_duration_ui",
        "attachment_item",
        "uptime",
    }
)


def header_get(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup on any mapping."""
    value = headers.get(name)
    if value is not None:
        return value
    lname = name.lower()
    for key, val in headers.items():
        if key.lower() == lname:
            return val
    return None


def _parse_seconds(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value


def _parse_retry_after(text: str) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date."""
    seconds = _parse_seconds(text)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:  # pragma: no cover - older Pythons returned None
        return None
    try:
        return max(0.0, when.timestamp() - time.time())
    except (OverflowError, ValueError, OSError):
        return None


def parse_rate_limits(header: str) -> list[tuple[float, frozenset[str]]]:
    """Parse ``X-Sentry-Rate-Limits`` into ``(seconds, categories)``; ``{ALL}`` for all.

    Limits with an unparseable retry time or only unknown categories are left out.
    """
    out: list[tuple[float, frozenset[str]]] = []
    for limit in header.split(","):
        limit = limit.strip()
        if not limit:
            continue
        fields = limit.split(":")
        if len(fields) < 2:  # the grammar needs "retry_after:categories": not a limit
            continue
        seconds = _parse_seconds(fields[0])
        if seconds is None:
            continue
        raw = fields[1].strip()
        if not raw:
            out.append((seconds, frozenset((ALL,))))
            continue
        cats = frozenset(c.strip() for c in raw.split(";") if c.strip() in KNOWN_CATEGORIES)
        if cats:
            out.append((seconds, cats))
    return out


class RateLimits:
    """Per-transport rate-limit state: category -> expiry on the caller's clock."""

    __slots__ = ("__weakref__", "_limits", "_lock")

    def __init__(self) -> None:
        self._limits: dict[str, float] = {}
        self._lock = threading.Lock()
        renew_in_child(self)

    def _reset_after_fork(self) -> None:
        """Child side of ``fork()``: a fresh lock (limits stay valid)."""
        self._lock = threading.Lock()

    def update_from_response(self, status: int, headers: Mapping[str, str], now: float) -> None:
        """Apply the limits a response carries (any status; 429 falls back to Retry-After)."""
        header = header_get(headers, "X-Sentry-Rate-Limits")
        updates: list[tuple[float, frozenset[str]]]
        if header and header.strip():  # an empty one is no header (sentry-sdk's reading)
            updates = parse_rate_limits(header)
        elif status == 429:
            retry = header_get(headers, "Retry-After")
            seconds = _parse_retry_after(retry) if retry is not None else None
            updates = [(DEFAULT_RETRY_AFTER if seconds is None else seconds, frozenset((ALL,)))]
        else:
            return
        if not updates:
            return
        with self._lock:
            limits = dict(self._limits)
            for seconds, cats in updates:
                expiry = now + seconds
                for cat in cats:
                    if expiry > limits.get(cat, 0.0):
                        limits[cat] = expiry
            # drop expired entries so the dict never grows without bound
            self._limits = {k: v for k, v in limits.items() if v > now}

    def is_limited(self, category: str, now: float) -> bool:
        """True while ``category`` (or every category) is limited."""
        limits = self._limits  # copy-on-write: a consistent snapshot without locking
        if not limits:
            return False
        return limits.get(category, 0.0) > now or limits.get(ALL, 0.0) > now

    def expiry(self, category: str) -> float:
        """When the limit on ``category`` (own bucket or all) ends; 0.0 when none."""
        limits = self._limits
        return max(limits.get(category, 0.0), limits.get(ALL, 0.0))

    def snapshot(self) -> dict[str, float]:
        """A copy of the current ``category -> expiry`` map."""
        return dict(self._limits)

    def clear(self) -> None:
        """Forget every limit."""
        with self._lock:
            self._limits = {}
