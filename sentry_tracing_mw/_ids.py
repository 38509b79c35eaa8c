"""Fast random identifiers: trace ids, span ids, event ids and sample_rand values.

A private ``random.Random`` seeded from ``os.urandom`` gives ids in a fraction of a
microsecond (``uuid4()`` costs several). Trace and span ids are drawn 64 at a time (one
``getrandbits`` call and one hex formatting per batch) into pools that the hot paths take
from with ``pop_trace_id()`` / ``pop_span_id()``: a C-level ``list.pop``, atomic under the
GIL, so two threads never get the same id. It raises IndexError when the pool is empty;
``new_trace_id()`` / ``new_span_id()`` refill it. A forked child reseeds the generator and
empties the pools, so pre-fork workers never produce the same ids.
"""

from __future__ import annotations

import os
import random

from ._fork import in_forked_child

__all__ = [
    "new_event_id",
    "new_sample_rand",
    "new_span_id",
    "new_trace_id",
    "pop_span_id",
    "pop_trace_id",
    "reseed",
    "trace_sample_rand",
]

_rng = random.Random(os.urandom(32))
_bits = _rng.getrandbits

# uuid4: version nibble 4 and variant bits 10xx, as 32 lowercase hex characters.
_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62))
_UUID4_SET = (0x4 << 76) | (0x2 << 62)


_BATCH = 64
_trace_ids: list[str] = []
_span_ids: list[str] = []
#: Take a drawn id; IndexError when the pool is empty (then call ``new_*_id()``).
pop_trace_id = _trace_ids.pop
pop_span_id = _span_ids.pop


def reseed() -> None:
    """Reseed the generator from the OS and forget drawn ids (called in forked children)."""
    _rng.seed(os.urandom(32))
    _trace_ids.clear()
    _span_ids.clear()


def _draw(pool: list[str], width: int) -> str:
    """Refill ``pool`` with ids of ``width`` hex characters (never all zero); take one."""
    size = width // 2 * _BATCH  # bytes
    zero = "0" * width
    while True:
        # One draw, one hex formatting and one split (C loops) for the whole batch.
        text = _bits(8 * size).to_bytes(size, "big").hex(" ", width // 2)
        ids = text.split()
        if zero in text:  # only a whole id can be all zeros (spaces between ids)
            ids = [i for i in ids if i != zero]
        pool.extend(ids)
        try:
            return pool.pop()
        except IndexError:  # pragma: no cover - a batch of zeros only
            continue


def new_trace_id() -> str:
    """32 lowercase hex characters, never all zero."""
    try:
        return pop_trace_id()
    except IndexError:
        return _draw(_trace_ids, 32)


def new_span_id() -> str:
    """16 lowercase hex characters, never all zero."""
    try:
        return pop_span_id()
    except IndexError:
        return _draw(_span_ids, 16)


def new_event_id() -> str:
    """A uuid4 as 32 lowercase hex characters."""
    return f"{(_bits(128) & _UUID4_CLEAR) | _UUID4_SET:032x}"


def new_sample_rand() -> float:
    """A random value in ``[0, 1)`` on the 6-decimal grid used by ``sample_rand`` (a new
    trace's own; multiples of 1e-6, so the 6-decimal string form is exact)."""
    value = _bits(20)
    while value >= 1_000_000:
        value = _bits(20)
    return value / 1_000_000


def _grid(low: float, high: float) -> tuple[int, int]:
    """``[lo, hi)`` in millionths: every ``n / 10**6`` for ``lo <= n < hi`` lies in
    ``[low, high)``, so a value drawn there reproduces the decision ``value < rate`` that
    the interval stands for (``hi <= lo``: the interval holds no grid value)."""
    lo = max(0, min(999_999, int(low * 1_000_000)))
    while lo < 999_999 and lo / 1_000_000 < low:
        lo += 1
    hi = max(lo, min(1_000_000, int(high * 1_000_000) + 1))
    while hi > lo and (hi - 1) / 1_000_000 >= high:
        hi -= 1
    return lo, hi


in_forked_child(reseed)


def trace_sample_rand(trace_id: str, low: float = 0.0, high: float = 1.0) -> float:
    """The ``sample_rand`` that the trace id itself gives, in ``[low, high)`` (6 decimals).

    Protocol §12.2's recommended derivation, as ``sentry-sdk`` does it: a generator seeded
    with the trace id draws an integer in the interval scaled by 10**6 (the same value as
    ``sentry-sdk`` for any rate of up to 6 decimals). Used to backfill a continued trace
    that came without one, so every service continuing it (ours, other replicas,
    ``sentry-sdk`` siblings) gets the same value and makes the same decision. An empty
    interval (rate 0 with a sampled parent) gives the grid value nearest ``low``.
    """
    lo, hi = _grid(low, high)
    if hi <= lo:
        return lo / 1_000_000
    return random.Random(trace_id).randrange(lo, hi) / 1_000_000
