"""JSON views for the trace viewer page (the ``/api/ui/...`` endpoints), built from the store."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from .store import Store
from .tree import Node, build_forest, find_gaps, flatten, is_failure

__all__ = [
    "WINDOWS",
    "json_safe",
    "percentile",
    "summary",
    "trace_view",
    "transaction_list",
    "transaction_view",
]

#: Time windows the list page offers (seconds; ``None`` = everything stored).
WINDOWS: dict[str, float | None] = {
    "5m": 300.0,
    "15m": 900.0,
    "1h": 3600.0,
    "24h": 86400.0,
    "7d": 7 * 86400.0,
    "all": None,
}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in [0, 1]) of ascending values."""
    if not sorted_values:
        return 0.0
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = math.ceil(pos)
    if lo == hi:
        return float(sorted_values[lo])
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def json_safe(value: Any, max_depth: int = 256) -> Any:
    """A copy of ``value`` that strict JSON can carry: non-finite floats become ``None``,
    anything nested deeper than ``max_depth`` a note, unknown types their ``str``.

    The viewer's last resort when a response cannot be encoded (the store already repairs
    the rows it knows to be bad); iterative, so any depth is fine.
    """
    holder: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(value, holder, 0, 1)]
    while stack:
        node, parent, key, depth = stack.pop()
        out: Any
        if node is None or isinstance(node, str | bool | int):
            out = node
        elif isinstance(node, float):
            out = node if math.isfinite(node) else None
        elif isinstance(node, dict | list | tuple):
            if depth > max_depth:
                out = f"<not shown: nested deeper than {max_depth} levels>"
            elif isinstance(node, dict):
                out = {}
                for k, v in node.items():
                    out[str(k)] = None
                    stack.append((v, out, str(k), depth + 1))
            else:
                out = [None] * len(node)
                for i, v in enumerate(node):
                    stack.append((v, out, i, depth + 1))
        else:
            out = str(node)
        parent[key] = out
    return holder[0]


def _status_matches(status: str, wanted: str | None) -> bool:
    if not wanted:
        return True
    if wanted == "failed":
        return is_failure(status)
    if wanted == "not_failed":
        return not is_failure(status)
    return status == wanted


def _window(window: str | None) -> float | None:
    if window is None or window == "":
        return None
    if window in WINDOWS:
        return WINDOWS[window]
    try:
        seconds = float(window)
    except ValueError:
        raise ValueError(f"unknown window {window!r} (use one of {', '.join(WINDOWS)})")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"window must be a positive number of seconds, not {window!r}")
    return seconds


def _filtered(
    store: Store,
    window: str | None,
    name: str | None,
    status: str | None,
    min_duration_ms: float | None,
    now: float | None,
    exact_name: str | None = None,
) -> tuple[list[dict[str, Any]], float | None]:
    seconds = _window(window)
    now = time.time() if now is None else now
    since = now - seconds if seconds is not None else None
    rows = store.summary_rows(
        since=since, name=name, exact_name=exact_name, min_duration_ms=min_duration_ms
    )
    return [r for r in rows if _status_matches(r["status"], status)], seconds


def summary(
    store: Store,
    *,
    window: str | None = None,
    name: str | None = None,
    status: str | None = None,
    min_duration_ms: float | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """One row per transaction name: count, avg/p75/p95, tpm, failure rate, extrapolated count."""
    rows, seconds = _filtered(store, window, name, status, min_duration_ms, now)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["name"], []).append(row)
    if seconds is not None:
        minutes = seconds / 60.0
    elif rows:
        span = max(r["end_ts"] for r in rows) - min(r["start_ts"] for r in rows)
        minutes = max(span / 60.0, 1.0)
    else:
        minutes = 1.0
    out: list[dict[str, Any]] = []
    for tx_name, members in groups.items():
        durations = sorted(float(r["duration_ms"]) for r in members)
        count = len(members)
        failures = sum(1 for r in members if is_failure(r["status"]))
        extrapolated = sum(1.0 / (r["sample_rate"] or 1.0) for r in members)
        ops = sorted({r["op"] or "default" for r in members})
        out.append(
            {
                "name": tx_name,
                "ops": ops,
                "services": sorted({r["service"] for r in members}),
                "count": count,
                "avg_ms": sum(durations) / count,
                "p75_ms": percentile(durations, 0.75),
                "p95_ms": percentile(durations, 0.95),
                "tpm": count / minutes,
                "failure_rate": failures / count,
                "failures": failures,
                "extrapolated_count": round(extrapolated, 3),
                "last_seen": max(r["end_ts"] for r in members),
            }
        )
    out.sort(key=lambda r: (-r["count"], r["name"]))
    return {
        "window": window or "all",
        "minutes": minutes,
        "total": len(rows),
        "rows": out,
    }


def transaction_list(
    store: Store,
    *,
    name: str | None = None,
    exact_name: str | None = None,
    window: str | None = None,
    status: str | None = None,
    min_duration_ms: float | None = None,
    limit: int = 100,
    now: float | None = None,
) -> dict[str, Any]:
    """Individual transactions (newest first) matching the filters."""
    if exact_name is not None:
        name = None  # the exact name wins
    rows, _ = _filtered(store, window, name, status, min_duration_ms, now, exact_name)
    return {"rows": rows[: max(1, min(limit, 1000))], "total": len(rows)}


def _node_json(node: Node, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "span_id": node.span_id,
        "parent_span_id": node.parent_span_id,
        "unit_id": node.unit_id,
        "op": node.op,
        "description": node.description,
        "status": node.status,
        "start": node.start,
        "end": node.end,
        "duration_ms": node.duration_ms,
        "depth": depth,
        "tags": node.tags,
        "data": node.data,
        "is_unit_root": node.is_unit_root,
        "orphan": node.orphan,
        "synthetic": node.synthetic,
        "failed": is_failure(node.status),
    }
    if node.is_unit_root and node.unit is not None:
        unit = node.unit
        out["unit"] = {
            k: unit.get(k)
            for k in ("id", "kind", "name", "service", "project", "sample_rate", "complete")
        }
    return out


def _tree_json(
    store: Store, trace_id: str, units: list[dict[str, Any]], spans: list[dict[str, Any]]
) -> dict[str, Any]:
    forest = build_forest(units, spans)
    rows = flatten(forest)
    errors = store.errors_of_trace(trace_id)
    errors_by_span: dict[str, list[dict[str, Any]]] = {}
    for err in errors:
        if err.get("span_id"):
            errors_by_span.setdefault(err["span_id"], []).append(err)
    in_view = {u["id"] for u in units}
    children = store.children_of_spans(trace_id, [n.span_id for n, _ in rows])
    out_rows: list[dict[str, Any]] = []
    gaps: list[dict[str, Any]] = []
    for node, depth in rows:
        item = _node_json(node, depth)
        linked = children.get(node.span_id, [])
        # links to the downstream transactions this span caused (another unit)
        item["child_units"] = [c for c in linked if c["id"] != node.unit_id]
        item["child_units_in_view"] = [c["id"] for c in linked if c["id"] in in_view]
        item["errors"] = errors_by_span.get(node.span_id, [])
        out_rows.append(item)
        if node.is_unit_root and not node.synthetic:
            for g0, g1 in find_gaps(node):
                gaps.append(
                    {
                        "unit_id": node.unit_id,
                        "span_id": node.span_id,
                        "start": g0,
                        "end": g1,
                        "duration_ms": (g1 - g0) * 1000.0,
                    }
                )
    start = min((n.start for n, _ in rows), default=0.0)
    end = max((n.end for n, _ in rows), default=0.0)
    return {
        "trace_id": trace_id,
        "start": start,
        "end": end,
        "duration_ms": (end - start) * 1000.0,
        "rows": out_rows,
        "gaps": gaps,
        "errors": errors,
    }


def _unit_summary(unit: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "id",
        "kind",
        "trace_id",
        "span_id",
        "parent_span_id",
        "name",
        "op",
        "status",
        "start_ts",
        "end_ts",
        "duration_ms",
        "service",
        "project",
        "sample_rate",
        "complete",
        "received",
    )
    return {k: unit.get(k) for k in keep}


def transaction_view(store: Store, unit_id: str) -> dict[str, Any] | None:
    """A transaction's (or segment's) span tree, gaps, errors and links up and down."""
    unit = store.unit(unit_id)
    if unit is None:
        return None
    trace_id = unit["trace_id"]
    spans = store.spans_of_units([unit_id])
    view = _tree_json(store, trace_id, [unit], spans)
    parent = None
    if unit.get("parent_span_id"):
        hits = store.query(
            "SELECT s.unit_id, s.span_id, s.op, s.description, u.name, u.service "
            "FROM spans s JOIN units u ON u.id = s.unit_id "
            "WHERE s.trace_id = ? AND s.span_id = ? AND s.unit_id != ? LIMIT 1",
            (trace_id, unit["parent_span_id"], unit_id),
        )
        if hits:
            hit = hits[0]
            parent = {
                "unit_id": hit["unit_id"],
                "name": hit["name"],
                "service": hit["service"],
                "span": {k: hit[k] for k in ("span_id", "op", "description")},
            }
    event = unit.get("event") or {}
    trace_units = store.units_of_trace(trace_id)
    view.update(
        {
            "transaction": _unit_summary(unit),
            "event": {
                k: event.get(k)
                for k in (
                    "release",
                    "environment",
                    "server_name",
                    "tags",
                    "request",
                    "measurements",
                    "sdk",
                    "transaction_info",
                    "contexts",
                )
                if event.get(k) is not None
            },
            "parent": parent,
            "orphan": bool(unit.get("parent_span_id")) and parent is None,
            "trace_units": len(trace_units),
        }
    )
    view["errors"] = [
        e for e in view["errors"] if any(r["span_id"] == e.get("span_id") for r in view["rows"])
    ]
    return view


def trace_view(store: Store, trace_id: str) -> dict[str, Any] | None:
    """Every transaction of a trace across services, stitched, orphans marked."""
    clean = trace_id.replace("-", "").lower()
    units = store.units_of_trace(clean)
    if not units:
        matches = store.find_traces(clean, limit=2) if len(clean) >= 6 else []
        if len(matches) == 1:
            clean = matches[0]
            units = store.units_of_trace(clean)
        elif not store.errors_of_trace(clean):
            return None
    spans = store.spans_of_units([u["id"] for u in units])
    view = _tree_json(store, clean, units, spans)
    unit_rows = {r["unit_id"]: r for r in view["rows"] if r["is_unit_root"]}
    view["units"] = [
        dict(_unit_summary(u), orphan=bool(unit_rows.get(u["id"], {}).get("orphan"))) for u in units
    ]
    return view
