"""Counting a span the Django hooks do not start because its parent does not record."""

from __future__ import annotations

from ..._tracing import Span

__all__ = ["count_unsent"]


def count_unsent(parent: Span) -> None:
    """Count the child ``parent`` does not record as ``start_child`` would have: dropped
    (``buffer_overflow``) past ``max_spans`` or after the end of a sampled transaction, or
    one more span of an unsampled transaction (its ``sample_rate`` report)."""
    tx = parent._tx
    if tx is None:
        return
    if tx._recording:
        tx._client.reports.record("buffer_overflow", "span")
    else:
        tx._n_children += 1
