"""``show``: print stored traces as indented trees (no web stack needed)."""

from __future__ import annotations

import os
import sqlite3
from typing import TextIO

from .store import Store
from .tree import format_time, printable, render_trace

__all__ = ["show"]


def _when(ts: float) -> str:
    return format_time(ts, "%Y-%m-%d %H:%M:%S", local=True)


def show(db: str, trace_id: str | None, out: TextIO, *, limit: int = 10) -> int:
    """Print one trace (``trace_id``, a prefix works) or the recent ones; returns an exit code
    (2 when ``db`` is no collector database)."""
    if not os.path.exists(db):
        out.write(f"no collector database at {db!r} (start the collector first)\n")
        return 1
    try:  # the store opens read-only: show never writes a schema into anything
        return _show(db, trace_id, out, limit)
    except sqlite3.Error as exc:
        out.write(f"{db!r} is not a collector database that can be read ({exc})\n")
        return 2


def _show(db: str, trace_id: str | None, out: TextIO, limit: int) -> int:
    store = Store(db, read_only=True)
    try:
        if trace_id:
            matches = store.find_traces(trace_id, limit=5)
            if not matches:
                out.write(f"trace {trace_id!r} not found in {db}\n")
                return 1
            exact = trace_id.replace("-", "").lower()
            if exact not in matches and len(matches) > 1:
                out.write(f"{trace_id!r} is ambiguous: {', '.join(matches)}\n")
                return 1
            chosen = exact if exact in matches else matches[0]
            _print_trace(store, chosen, out)
            return 0
        recent = store.recent_traces(limit)
        if not recent:
            out.write(f"no traces stored yet in {db}\n")
            return 0
        out.write(f"recent traces ({len(recent)} shown, newest first):\n")
        for row in recent:
            root = store.root_unit_of_trace(row["trace_id"])
            name = root["name"] if root else "?"
            duration = (row["end_ts"] - row["start_ts"]) * 1000.0
            failed = f"  {row['failed']} failed" if row["failed"] else ""
            out.write(
                f"  {row['trace_id']}  {_when(row['received'])}  {duration:9.1f}ms  "
                f"{row['units']} tx  {printable(name)}  [{printable(row['services'])}]{failed}\n"
            )
        out.write("\nlatest trace:\n")
        _print_trace(store, recent[0]["trace_id"], out)
        return 0
    finally:
        store.close()


def _print_trace(store: Store, trace_id: str, out: TextIO) -> None:
    units = store.units_of_trace(trace_id)
    spans = store.spans_of_units([u["id"] for u in units])
    out.write(render_trace(trace_id, units, spans, store.errors_of_trace(trace_id)))
