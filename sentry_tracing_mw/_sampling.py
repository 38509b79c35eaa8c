"""Head-based sampling: the sampling context, the decision, the inherited-sampling cap.

Precedence (protocol §12.1): an explicit ``sampled`` argument, then ``traces_sampler``,
then the parent's decision, then ``traces_sample_rate``. A decision never draws a fresh
random number: it compares the trace's ``sample_rand`` with the rate, so every service
of a trace that uses the same rate makes the same decision.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from numbers import Real
from typing import Any

from ._fork import renew_in_child
from ._ids import trace_sample_rand
from ._log import raised_at, warn_once
from ._propagation import IncomingTrace, format_sample_rand, parse_sample_rand, parse_sample_rate

__all__ = ["SamplingContext", "TokenBucket", "as_rate", "continued_sampling", "sampler_decision"]

logger = logging.getLogger("sentry_tracing_mw")


class SamplingContext(Mapping[str, Any]):
    """What ``traces_sampler`` receives: a mapping with ``sentry-sdk``'s keys.

    ``transaction_context`` (``name``, ``op``, ``source``), ``parent_sampled``,
    ``parent_sample_rate``, and in web requests ``wsgi_environ`` or ``asgi_scope`` and
    ``route``, plus any ``custom_sampling_context`` keys.
    """

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"SamplingContext({self._data!r})"


def as_rate(value: Any) -> float | None:
    """A sampler result (or a rate option) as a rate in [0, 1], or None when it is garbage."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if not isinstance(value, Real | Decimal):  # Fraction, Decimal, numpy too: as sentry-sdk
        return None
    try:
        rate = float(value)
    except Exception:  # an int too large for a float, an odd Real
        return None
    if not math.isnan(rate) and 0.0 <= rate <= 1.0:
        return rate
    return None


def sampler_decision(
    sampler: Callable[[Any], Any], sample_rand: float, context: Callable[[], Any]
) -> tuple[bool, float]:
    """``(sampled, rate_used)`` by ``traces_sampler`` (called with ``context()``): sampled
    when ``sample_rand`` is below the rate it returns; a sampler that raises or returns no
    rate decides "not sampled", at rate 0 (with a warning once). Without a sampler the
    client decides inline (``Client._start_transaction``: the parent's decision, else
    ``traces_sample_rate``)."""
    try:
        raw = sampler(context())
    except Exception as exc:
        warn_once(
            ("traces_sampler", _name(sampler), *raised_at(exc)),
            "traces_sampler %s raised %s; the transaction is not sampled",
            _name(sampler),
            type(exc).__name__,
            exc_info=True,
        )
        return False, 0.0
    rate = as_rate(raw)
    if rate is None:
        warn_once(
            ("traces_sampler", _name(sampler), "returned", type(raw).__qualname__),
            "traces_sampler %s returned %s, not a rate in [0, 1] or a bool; "
            "the transaction is not sampled",
            _name(sampler),
            _shown(raw),
        )
        return False, 0.0
    return sample_rand < rate, rate


def _name(function: Any) -> str:
    """A callable's name for messages (its qualified name, else its type's)."""
    name = getattr(function, "__qualname__", None)
    return name if isinstance(name, str) else type(function).__qualname__


def _shown(value: Any) -> str:
    """``repr(value)``, short, never raising."""
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__qualname__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def continued_sampling(
    incoming: IncomingTrace, public_key: str | None
) -> tuple[float | None, float | None, dict[str, str] | None]:
    """``(sample_rate, sample_rand, dsc)`` for a trace continued from a parsed ``incoming``.

    ``sample_rand`` None (no upstream DSC at all): derived from the trace id on first use.

    The upstream ``sample_rand`` is kept when it is consistent with the upstream decision;
    otherwise one is derived from the trace id (protocol §12.2, as ``sentry-sdk`` does)
    that reproduces the parent's decision at its rate, and it is backfilled into the DSC
    only when it reproduces the DSC's recorded decision (an envelope whose DSC contradicts
    itself is rejected by the checker). A DSC without a public key gets ours (Relay cannot
    use it otherwise).
    """
    dsc = incoming.dsc
    parent_sampled = incoming.parent_sampled
    rate = parse_sample_rate(dsc.get("sample_rate")) if dsc else None
    rand = parse_sample_rand(dsc.get("sample_rand")) if dsc else None
    recorded = dsc.get("sampled") if dsc else None
    if (
        rand is not None
        and rate is not None
        and recorded is not None
        and (rand < rate) is not (recorded == "true")
    ):
        # An inconsistent upstream DSC (hostile or buggy): its sample_rand cannot have
        # made its decision. Drop it; a consistent one is backfilled below.
        dsc = {k: v for k, v in dsc.items() if k != "sample_rand"}  # type: ignore[union-attr]
        rand = None
    if rand is None and dsc is None:
        # No DSC to backfill: the context derives it from the trace id if it is ever
        # needed (a Python generator seeded per trace costs microseconds).
        return rate, None, None
    if rand is None:  # derived from the trace id: every service continuing it agrees
        low, high = 0.0, 1.0
        if parent_sampled is not None and rate is not None:
            low, high = (0.0, rate) if parent_sampled else (rate, 1.0)
        if low >= high:  # no value reproduces the decision (rate 0 and sampled, ...)
            low, high = 0.0, 1.0
        rand = trace_sample_rand(incoming.trace_id, low, high)
        # Backfilled only when it reproduces the parent's decision and the DSC's recorded
        # one: with an empty interval the DSC goes without one, as sentry-sdk leaves it.
        if dsc is not None and (
            rate is None
            or (
                (parent_sampled is None or (rand < rate) is parent_sampled)
                and (recorded is None or (rand < rate) is (recorded == "true"))
            )
        ):
            dsc = {**dsc, "sample_rand": format_sample_rand(rand)}
    if dsc is not None and "public_key" not in dsc and public_key:
        dsc = {**dsc, "public_key": public_key}
    return rate, rand, dsc


class TokenBucket:
    """A thread-safe token bucket: ``take()`` is True at most ``rate`` times per second."""

    __slots__ = ("__weakref__", "_capacity", "_lock", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate if burst is None else burst)
        self._tokens = self._capacity if rate > 0 else 0.0
        self._stamp = time.monotonic()
        self._lock = threading.Lock()
        renew_in_child(self)

    def _reset_after_fork(self) -> None:
        """In a forked child: the parent's lock may have been held by a thread not there."""
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Consume one token if available."""
        with self._lock:
            now = time.monotonic()
            tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            if tokens >= 1.0:
                self._tokens = tokens - 1.0
                return True
            self._tokens = tokens
            return False
