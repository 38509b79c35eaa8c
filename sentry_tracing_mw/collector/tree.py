"""Trace trees: stitch a trace's transactions and segments by parent span ids; render as text.

Shared by the ``show`` command and the viewer's JSON API. Input rows come from the store:
*units* (transactions and span-stream segments) and their *spans* (each unit's root included).
A unit whose ``parent_span_id`` is a span of another unit hangs under that span; a unit whose
parent is nowhere in the trace is an *orphan* (shown at the top level, marked).
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FAILED_EXCLUDED",
    "Node",
    "build_forest",
    "find_gaps",
    "flatten",
    "format_time",
    "is_failure",
    "printable",
    "render_trace",
]

#: Statuses that do not count as failures: Sentry's failure_rate counts every status but ok,
#: cancelled and unknown; ``unset`` (OpenTelemetry's "no status") is taken as unknown. The one
#: definition shared by the viewer, ``show`` and the store's trace list (app.js mirrors it).
FAILED_EXCLUDED = frozenset({"ok", "cancelled", "unknown", "unset"})

#: Tree levels ``show`` draws; deeper spans keep this indentation and show their depth as
#: a number (every line repeating a deeper prefix made the output grow with depth squared).
MAX_DRAWN_DEPTH = 32

#: A gap counts as missing instrumentation above this share of its transaction...
GAP_MIN_SHARE = 0.10
#: ...and above this many milliseconds.
GAP_MIN_MS = 5.0


#: What a terminal or log must not get raw from an envelope: C0 and C1 controls and DEL
#: (escape sequences, BEL, newlines that forge lines), line/paragraph separators, bidi
#: controls (text shown in another order than stored) and surrogates (no valid text); and
#: the backslash itself, so that a name holding the text "\x1b" never reads as one holding ESC.
_UNPRINTABLE = re.compile(
    r"[\\\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: object) -> str:
    """``text`` safe for a terminal or a log line: control characters and the like become
    visible escapes (``\\x1b``, ``\\n``, ``\\u202e``); everything else is kept."""
    return _UNPRINTABLE.sub(_escape, text if isinstance(text, str) else str(text))


def is_failure(status: str | None) -> bool:
    """Sentry's failure definition: any status but ok, cancelled and unknown (or unset)."""
    return (status or "unknown") not in FAILED_EXCLUDED


@dataclass(eq=False)
class Node:
    """One span in the stitched tree (a unit root is the span its transaction describes)."""

    span_id: str
    parent_span_id: str | None
    unit_id: str
    op: str | None
    description: str | None
    status: str
    start: float
    end: float
    is_unit_root: bool = False
    unit: dict[str, Any] | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    orphan: bool = False
    synthetic: bool = False
    children: list[Node] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        """Duration in milliseconds."""
        return max(0.0, (self.end - self.start) * 1000.0)


def _node(span: dict[str, Any], unit: dict[str, Any] | None) -> Node:
    return Node(
        span_id=span["span_id"],
        parent_span_id=span.get("parent_span_id"),
        unit_id=span["unit_id"],
        op=span.get("op"),
        description=span.get("description"),
        status=span.get("status") or "unknown",
        start=float(span["start_ts"]),
        end=float(span["end_ts"]),
        is_unit_root=bool(span.get("is_root")),
        unit=unit if span.get("is_root") else None,
        tags=span.get("tags") or {},
        data=span.get("data") or {},
    )


def build_forest(units: Sequence[dict[str, Any]], spans: Iterable[dict[str, Any]]) -> list[Node]:
    """Stitch ``units`` and their ``spans`` into top-level nodes (heads first, orphans after)."""
    by_unit: dict[str, dict[str, Any]] = {u["id"]: u for u in units}
    nodes: list[Node] = []
    roots: dict[str, Node] = {}
    for span in spans:
        unit = by_unit.get(span["unit_id"])
        if unit is None:
            continue
        node = _node(span, unit)
        if node.is_unit_root and node.unit_id not in roots:
            roots[node.unit_id] = node
        elif node.is_unit_root:
            node.is_unit_root = False
            node.unit = None
        nodes.append(node)
    for unit in units:  # a segment whose root span has not arrived: stand in for it
        if unit["id"] not in roots:
            stand_in = Node(
                span_id=unit["span_id"],
                parent_span_id=unit.get("parent_span_id"),
                unit_id=unit["id"],
                op=unit.get("op"),
                description=unit.get("name"),
                status=unit.get("status") or "unknown",
                start=float(unit["start_ts"]),
                end=float(unit["end_ts"]),
                is_unit_root=True,
                unit=unit,
                synthetic=True,
            )
            roots[unit["id"]] = stand_in
            nodes.append(stand_in)
    local: dict[tuple[str, str], Node] = {(n.unit_id, n.span_id): n for n in nodes}
    anywhere: dict[str, Node] = {}
    for n in nodes:
        anywhere.setdefault(n.span_id, n)
    top: list[Node] = []
    orphans: list[Node] = []
    for n in nodes:
        parent_id = n.parent_span_id
        if n.is_unit_root:
            parent = anywhere.get(parent_id) if parent_id else None
            if parent is not None and parent.unit_id == n.unit_id:
                parent = None  # a root pointing into its own unit would be a cycle
            if parent is not None:
                parent.children.append(n)
            elif parent_id:
                n.orphan = True
                orphans.append(n)
            else:
                top.append(n)
            continue
        parent = local.get((n.unit_id, parent_id)) if parent_id else None
        if parent is None and parent_id:
            parent = anywhere.get(parent_id)
        if parent is None or parent is n:
            n.orphan = True
            parent = roots[n.unit_id]
        parent.children.append(n)
    # anything unreachable (a parent cycle) becomes an orphan at the top level
    reached: set[int] = set()
    stack = [*top, *orphans]
    while stack:
        cur = stack.pop()
        if id(cur) in reached:
            continue
        reached.add(id(cur))
        stack.extend(cur.children)
    for n in nodes:
        if id(n) not in reached:
            n.orphan = True
            orphans.append(n)
            reached.add(id(n))
            stack = list(n.children)
            while stack:
                cur = stack.pop()
                if id(cur) not in reached:
                    reached.add(id(cur))
                    stack.extend(cur.children)
    for n in nodes:
        n.children.sort(key=lambda c: (c.start, c.end))
    top.sort(key=lambda c: c.start)
    orphans.sort(key=lambda c: c.start)
    return top + orphans


def flatten(forest: Sequence[Node]) -> list[tuple[Node, int]]:
    """Depth-first (node, depth) pairs; safe against cycles."""
    out: list[tuple[Node, int]] = []
    seen: set[int] = set()
    stack: list[tuple[Node, int]] = [(n, 0) for n in reversed(forest)]
    while stack:
        node, depth = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append((node, depth))
        stack.extend((c, depth + 1) for c in reversed(node.children))
    return out


def find_gaps(root: Node) -> list[tuple[float, float]]:
    """Stretches of a unit root not covered by any of its unit's spans (missing instrumentation).

    A gap counts when it is longer than ``GAP_MIN_SHARE`` of the unit's duration and
    than ``GAP_MIN_MS``.
    """
    duration = root.end - root.start
    if duration <= 0:
        return []
    intervals: list[tuple[float, float]] = []
    stack = list(root.children)
    while stack:
        cur = stack.pop()
        if cur.unit_id != root.unit_id:
            continue  # a downstream transaction is covered by the span that called it
        lo, hi = max(cur.start, root.start), min(cur.end, root.end)
        if hi > lo:
            intervals.append((lo, hi))
        stack.extend(cur.children)
    intervals.sort()
    threshold = max(duration * GAP_MIN_SHARE, GAP_MIN_MS / 1000.0)
    gaps: list[tuple[float, float]] = []
    cursor = root.start
    for lo, hi in intervals:
        if lo - cursor > threshold:
            gaps.append((cursor, lo))
        cursor = max(cursor, hi)
    if root.end - cursor > threshold:
        gaps.append((cursor, root.end))
    return gaps


# -- text rendering (the ``show`` command) ---------------------------------------------


def format_time(ts: float, fmt: str = "%Y-%m-%d %H:%M:%S UTC", *, local: bool = False) -> str:
    """``ts`` (epoch seconds) formatted, in UTC unless ``local``; never raises (a value no
    ``datetime`` can hold, such as milliseconds taken for seconds, is shown as a number)."""
    try:
        tz = None if local else datetime.timezone.utc
        return datetime.datetime.fromtimestamp(ts, tz).strftime(fmt)
    except (ValueError, OverflowError, OSError, TypeError):
        return f"<invalid time {ts!r}>"


def _fmt_ms(ms: float) -> str:
    if not math.isfinite(ms):
        return "?"
    if ms >= 10000:
        return f"{ms / 1000:.1f}s"
    if ms >= 100:
        return f"{ms:.0f}ms"
    return f"{ms:.1f}ms"


def _bar(start: float, end: float, t0: float, total: float, width: int) -> str:
    if not total > 0 or not math.isfinite(total):
        return "█" * width
    if not (math.isfinite(start) and math.isfinite(end)):
        return "░" * width
    a = int((start - t0) / total * width)
    b = round((end - t0) / total * width)
    a = min(max(a, 0), width - 1)
    b = min(max(b, a + 1), width)
    return "·" * a + "█" * (b - a) + "·" * (width - b)


def _short(text: str | None, limit: int) -> str:
    """``text`` on one line (whitespace runs become a space), printable, at most ``limit``."""
    if not text:
        return ""
    flat = printable(" ".join(text.split()))
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def render_trace(
    trace_id: str,
    units: Sequence[dict[str, Any]],
    spans: Iterable[dict[str, Any]],
    errors: Sequence[dict[str, Any]] = (),
    *,
    bar_width: int = 30,
    label_width: int = 64,
) -> str:
    """The stitched trace as an indented text tree with duration bars.

    Indentation is drawn for ``MAX_DRAWN_DEPTH`` levels; the label column is ``label_width``
    wide, or as wide as that indentation needs: each line's length is bounded, so the
    output is linear in the number of spans whatever the depth.
    """
    forest = build_forest(units, spans)
    if not forest:
        return f"trace {trace_id}: no transactions stored\n"
    rows = flatten(forest)
    deepest = min(max(depth for _, depth in rows), MAX_DRAWN_DEPTH)
    label_width = max(label_width, 3 * deepest + 3 + 40)  # prefix, glyph, 40 of label
    t0 = min(n.start for n, _ in rows)
    t1 = max(n.end for n, _ in rows)
    total = t1 - t0
    errors_by_span: dict[str, list[dict[str, Any]]] = {}
    for err in errors:
        if err.get("span_id"):
            errors_by_span.setdefault(err["span_id"], []).append(err)
    n_orphans = sum(1 for n, _ in rows if n.orphan and n.is_unit_root)
    services = sorted({printable(u.get("service")) for u in units})
    when = format_time(t0)
    head = (
        f"trace {trace_id}  {when}  {_fmt_ms(total * 1000)}  "
        f"{len(units)} transaction{'s' if len(units) != 1 else ''}"
        f" ({', '.join(services)})"
    )
    if n_orphans:
        head += f"  {n_orphans} orphan{'s' if n_orphans != 1 else ''}"
    if errors:
        head += f"  {len(errors)} error{'s' if len(errors) != 1 else ''}"
    lines = [head]
    # prefixes with tree glyphs
    prefix_of: dict[int, str] = {}
    last_child: dict[int, bool] = {}
    for top_index, top in enumerate(forest):
        last_child[id(top)] = top_index == len(forest) - 1
    parent_of: dict[int, Node] = {}
    for node, _depth in rows:
        for i, child in enumerate(node.children):
            last_child[id(child)] = i == len(node.children) - 1
            parent_of[id(child)] = node
    for node, depth in rows:
        if depth == 0:
            lead = ""
            prefix_of[id(node)] = ""
        else:
            parent_prefix = prefix_of.get(id(parent_of.get(id(node))), "")
            glyph = "└─ " if last_child.get(id(node)) else "├─ "
            lead = parent_prefix + glyph
            if depth < MAX_DRAWN_DEPTH:
                prefix_of[id(node)] = parent_prefix + ("   " if last_child.get(id(node)) else "│  ")
            else:  # no wider: the depth is shown as a number instead
                prefix_of[id(node)] = parent_prefix
        label = _label(node)
        if depth > MAX_DRAWN_DEPTH:
            label = f"[depth {depth}] {label}"
        marks = []
        if node.orphan:
            what = "transaction" if node.is_unit_root else "span"
            marks.append(f"[ORPHAN {what}: parent {node.parent_span_id or '?'} not found]")
        if node.synthetic:
            marks.append("[segment root not received]")
        for err in errors_by_span.get(node.span_id, []):
            marks.append(f"[ERROR {_short(err.get('title'), 60)}]")
        text = lead + _short(label, max(label_width - len(lead), 16))
        lines.append(
            f"{text:<{label_width}} {_short(node.status, 64):<16} {_fmt_ms(node.duration_ms):>8} "
            f"|{_bar(node.start, node.end, t0, total, bar_width)}|"
            + ("  " + " ".join(marks) if marks else "")
        )
        if node.is_unit_root and not node.synthetic:
            for g0, g1 in find_gaps(node):
                gap_lead = prefix_of[id(node)] + ("│  " if node.children else "   ")
                gap = gap_lead + _short(
                    "~ missing instrumentation (not covered by any span)",
                    max(label_width - len(gap_lead), 16),
                )
                lines.append(
                    f"{gap:<{label_width}} {'':<16} {_fmt_ms((g1 - g0) * 1000):>8} "
                    f"|{_bar(g0, g1, t0, total, bar_width).replace('█', '░')}|"
                )
    shown = {n.span_id for n, _ in rows}
    for err in errors:
        if not err.get("span_id") or err["span_id"] not in shown:
            lines.append(f"  error not linked to a stored span: {_short(err.get('title'), 80)}")
    return "\n".join(lines) + "\n"


def _label(node: Node) -> str:
    op = node.op or "default"
    if node.is_unit_root and node.unit is not None:
        unit = node.unit
        kind = "segment" if unit.get("kind") == "segment" else "transaction"
        return f"[{unit.get('service')}] {kind} {unit.get('name')!s} ({op})"
    # raw text: the caller makes the whole label printable once (twice would escape the
    # escapes' backslashes)
    desc = " ".join(node.description.split())[:200] if node.description else ""
    return f"{op} {desc}" if desc else op
