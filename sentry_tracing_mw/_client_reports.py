"""Client reports: counts of discarded events (protocol §15)."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from typing import Any

from ._fork import renew_in_child
from ._ratelimits import KNOWN_CATEGORIES

__all__ = ["FLUSH_INTERVAL", "MAX_ENTRIES", "VALID_REASONS", "ClientReports"]

VALID_REASONS = frozenset(
    {
        "queue_overflow",
        "cache_overflow",
        "ratelimit_backoff",
        "network_error",
        "sample_rate",
        "before_send",
        "event_processor",
        "send_error",
        "internal_sdk_error",
        "insufficient_data",
        "backpressure",
        "buffer_overflow",
        "ignored",
        "invalid",
    }
)

#: Seconds between reports piggy-backed on ordinary envelopes.
FLUSH_INTERVAL = 30.0
#: Entries per report; keeps the item well under its 4 KiB limit (the rest waits).
MAX_ENTRIES = 40
_FOLD_EVERY = 256
_UNSAMPLED_TX = ("sample_rate", "transaction")
_UNSAMPLED_SPANS = ("sample_rate", "span")


class ClientReports:
    """Thread-safe aggregation of discarded-event counts, read and reset atomically.

    Clocks: ``due(now)`` takes ``time.monotonic()`` values.
    """

    __slots__ = (
        "__weakref__",
        "_children",
        "_fold_ticks",
        "_folded",
        "_forward",
        "_last_take",
        "_lock",
        "_pending",
        "_total",
        "_unsampled",
    )

    def __init__(self) -> None:
        # Reentrant: a signal handler may record a drop while its thread holds the lock.
        self._lock = threading.RLock()
        self._pending: dict[tuple[str, str], int] = {}
        self._total: dict[tuple[str, str], int] = {}
        self._last_take = time.monotonic()
        self._forward: ClientReports | None = None  # the replacing client's, after hand_over
        self._new_unsampled_counters()
        renew_in_child(self)

    def _new_unsampled_counters(self) -> None:
        # Unsampled transactions are counted lock-free on the request path: ``next()`` of
        # an itertools.count is atomic. ``_fold`` reads it with one more ``next()`` (under
        # the lock) and subtracts its own ticks. Span counts of their children (rare) go
        # to a deque (``append`` is atomic too).
        self._unsampled = itertools.count()
        self._fold_ticks = 0
        self._folded = 0
        self._children: deque[int] = deque()

    def _reset_after_fork(self) -> None:
        """Child side of ``fork()``: a fresh lock; the parent reports what was pending."""
        self._lock = threading.RLock()
        self._pending = {}
        self._new_unsampled_counters()
        self._last_take = time.monotonic()

    def record(self, reason: str, category: str, quantity: int = 1) -> None:
        """Count ``quantity`` discarded items of ``category`` for ``reason``."""
        if quantity <= 0 or reason not in VALID_REASONS or category not in KNOWN_CATEGORIES:
            return
        self._add_to_last((((reason, category), quantity),))  # a replaced client's: its successor's

    def record_transaction(self, reason: str, span_count: int) -> None:
        """Count a dropped transaction: ``transaction`` x1 and ``span`` x(span_count + 1)."""
        if reason not in VALID_REASONS:
            return
        spans = max(0, span_count) + 1
        self._add_to_last((((reason, "transaction"), 1), ((reason, "span"), spans)))

    def record_unsampled(self, span_count: int) -> bool:
        """Count an unsampled transaction (``sample_rate``) without taking the lock.

        Returns True every ``_FOLD_EVERY`` calls, so the caller can check whether a report
        is due.
        """
        if span_count > 0:
            self._children.append(span_count)
        return not next(self._unsampled) % _FOLD_EVERY

    def _interrupted(self) -> bool:
        """This thread holds the lock already: a signal handler interrupted it there (the
        counters may be half updated: leave them to the interrupted code)."""
        return bool(self._lock._is_owned())  # type: ignore[attr-defined]

    def _fold(self) -> None:
        """Move the unsampled counts into the totals (safe against concurrent records)."""
        if self._interrupted():
            return
        children = self._children
        with self._lock:
            recorded = self._recorded()
            transactions = recorded - self._folded
            self._folded = recorded
            spans = transactions
            while True:
                try:
                    spans += children.popleft()
                except IndexError:
                    break
            for key, qty in ((_UNSAMPLED_TX, transactions), (_UNSAMPLED_SPANS, spans)):
                if qty:
                    self._pending[key] = self._pending.get(key, 0) + qty
                    self._total[key] = self._total.get(key, 0) + qty

    def pending(self) -> bool:
        """True when counts wait to be sent."""
        return bool(self._pending) or self._has_unsampled()

    def _has_unsampled(self) -> bool:
        """Whether unsampled transactions were recorded since the last fold."""
        if self._interrupted():
            return False
        with self._lock:
            return self._recorded() > self._folded

    def _recorded(self) -> int:
        """Unsampled transactions recorded so far (under the lock: reading ticks the
        counter once more, which is subtracted)."""
        recorded = next(self._unsampled) - self._fold_ticks
        self._fold_ticks += 1
        return recorded

    def due(self, now: float) -> bool:
        """True when counts are pending and the last report is ``FLUSH_INTERVAL`` old."""
        return self.pending() and now - self._last_take >= FLUSH_INTERVAL

    def take(self) -> dict[str, Any] | None:
        """Atomically read and reset; the ``client_report`` payload, or None when empty."""
        self._fold()
        with self._lock:
            self._last_take = time.monotonic()
            if not self._pending:
                return None
            items = sorted(self._pending.items())
            taken, rest = items[:MAX_ENTRIES], items[MAX_ENTRIES:]
            self._pending = dict(rest)
        return {
            "timestamp": time.time(),
            "discarded_events": [
                {"reason": reason, "category": category, "quantity": qty}
                for (reason, category), qty in taken
            ],
        }

    def restore(self, payload: dict[str, Any]) -> None:
        """Put back counts from a ``take()`` payload whose envelope was not delivered."""
        entries = payload.get("discarded_events") if isinstance(payload, dict) else None
        if not isinstance(entries, list):
            return
        counts = []
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            reason, category, qty = (
                entry.get("reason"),
                entry.get("category"),
                entry.get("quantity"),
            )
            if (
                isinstance(reason, str)
                and isinstance(category, str)
                and isinstance(qty, int)
                and qty > 0
            ):
                counts.append(((reason, category), qty))
        self._add_to_last(tuple(counts), total=False)  # (already in the totals)

    def _add_locked(self, counts: tuple[tuple[tuple[str, str], int], ...], total: bool) -> None:
        for key, qty in counts:
            self._pending[key] = self._pending.get(key, 0) + qty
            if total:
                self._total[key] = self._total.get(key, 0) + qty

    def _add_to_last(
        self, counts: tuple[tuple[tuple[str, str], int], ...], total: bool = True
    ) -> None:
        """Add ``counts`` here, or to the reports that replaced these last (``init()`` may
        have run many times since): followed in a loop, and re-checked under each lock, so
        a concurrent ``hand_over`` never strands them."""
        reports: ClientReports = self
        seen: set[int] = set()
        while id(reports) not in seen:
            seen.add(id(reports))
            with reports._lock:
                following = reports._forward
                if following is None:
                    reports._add_locked(counts, total)
                    return
            reports = following
        with self._lock:  # a cycle: keep them here rather than lose them
            self._add_locked(counts, total)

    def hand_over(self, other: ClientReports) -> None:
        """Move the counts waiting to be sent to ``other`` (a client that replaces this
        one sends them); later drops recorded here go there too."""
        if other is self:
            return
        self._fold()
        with self._lock:
            pending, self._pending = self._pending, {}
            self._forward = other
        if pending:  # to ``other``, or to what replaced it meanwhile (concurrent init()s)
            other._add_to_last(tuple(pending.items()))

    def snapshot(self) -> dict[tuple[str, str], int]:
        """Cumulative counts recorded since creation (not reset by ``take()``)."""
        self._fold()
        with self._lock:
            return dict(self._total)
