"""Compact JSON serialization that never fails (payloads built from user data)."""

from __future__ import annotations

import datetime
import itertools
import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "INT_END",
    "INT_MIN",
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_REPR",
    "dumps",
    "json_int",
    "limit_depth",
]

MAX_DEPTH = 20
MAX_REPR = 512
_CIRCULAR = "[Circular]"
_TOO_DEEP = "[MaxDepth]"
_UNREPRESENTABLE = "<unrepresentable>"
#: Sentry stores integers as 64-bit (i64 or u64) and zeroes wider ones without a word.
INT_MIN = -(2**63)
INT_END = 2**64


def json_int(value: int) -> int | float | str:
    """An int as Sentry can keep it: as is within 64 bits, else a float, else a marker."""
    if INT_MIN <= value < INT_END:
        return value
    try:
        return float(value)
    except OverflowError:
        return f"<int of {value.bit_length()} bits>"


def _safe_repr(obj: Any) -> str:
    """``repr(obj)`` truncated, or a marker when ``repr`` itself raises."""
    try:
        text = repr(obj)
    except Exception:
        return _UNREPRESENTABLE
    if not isinstance(text, str):  # pragma: no cover - repr() always returns str
        return _UNREPRESENTABLE
    if len(text) > MAX_REPR:
        text = text[: MAX_REPR - 3] + "..."
    return text


def _default(obj: Any) -> Any:
    """``json.dumps`` hook for the types JSON does not know."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).decode("utf-8", "replace")
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    if isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
        return obj.isoformat()
    return _safe_repr(obj)


def _clean_str(value: str) -> str:
    """Replace lone surrogates (not encodable as UTF-8) with U+FFFD; join valid pairs."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _key(key: Any) -> str:
    if isinstance(key, str):
        return _clean_str(key)
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        try:
            return str(int(key))  # a key is text: no 64-bit limit
        except ValueError:  # too long to print
            return str(json_int(int(key)))
    if isinstance(key, float):
        return _float_key(key)
    if isinstance(key, bytes):
        return key.decode("utf-8", "replace")
    return _clean_str(_safe_repr(key))


def _float_key(key: float) -> str:
    return repr(float(key)) if math.isfinite(key) else "null"


def _sanitize(obj: Any, depth: int, path: set[int], budget: list[int] | None = None) -> Any:
    """Return a JSON-safe copy of ``obj`` (the slow path); ``budget`` (a one-item list) is
    the number of values it may still hold."""
    if budget is not None:
        budget[0] -= 1
        if budget[0] < 0:
            return _TOO_BIG
    if obj is None or obj is True or obj is False:
        return obj
    if isinstance(obj, str):
        return _clean_str(str(obj))
    if isinstance(obj, int):
        return json_int(int(obj))
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if depth >= MAX_DEPTH:
        return _TOO_DEEP
    if isinstance(obj, Mapping):
        ident = id(obj)
        if ident in path:
            return _CIRCULAR
        path.add(ident)
        try:
            out: dict[str, Any] = {}
            items = obj.items()
            pairs = list(items) if budget is None else itertools.islice(items, budget[0] + 1)
            for k, v in pairs:
                out[_key(k)] = _sanitize(v, depth + 1, path, budget)
                if budget is not None and budget[0] < 0:
                    break
            return out
        except Exception:
            return _safe_repr(obj)
        finally:
            path.discard(ident)
    if isinstance(obj, (list, tuple, set, frozenset)):
        ident = id(obj)
        if ident in path:
            return _CIRCULAR
        path.add(ident)
        try:
            out_list = []
            for v in list(obj) if budget is None else itertools.islice(obj, budget[0] + 1):
                out_list.append(_sanitize(v, depth + 1, path, budget))
            return out_list
        except Exception:
            return _safe_repr(obj)
        finally:
            path.discard(ident)
    try:
        converted = _default(obj)
    except Exception:
        return _UNREPRESENTABLE
    if isinstance(converted, str):
        return _clean_str(converted)
    return _sanitize(converted, depth + 1, path, budget)


#: Values (containers and scalars) a payload from a user hook may hold; past it the rest
#: of a container is left out (``"[MaxSize]"``): json.dumps expands a shared sub-object
#: at every reference, in C, holding the GIL.
MAX_NODES = 100_000
_TOO_BIG = "[MaxSize]"
_PLAIN = (dict, list, tuple)


def _needs_copy(obj: Any) -> bool:
    """Whether ``obj`` must go through ``_sanitize`` before ``json.dumps``: nested past
    ``MAX_DEPTH``, over ``MAX_NODES`` values, a container referenced twice (a cycle or a
    shared sub-object), or a container json would iterate through code of its own (a
    subclass, a set)."""
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(obj, 0)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            return True
        kind = type(item)
        if kind not in _PLAIN:
            if isinstance(item, (dict, list, tuple, set, frozenset)):
                return True
            continue
        if depth >= MAX_DEPTH or id(item) in seen:
            return True
        seen.add(id(item))
        if nodes + len(stack) + len(item) > MAX_NODES:
            return True
        children: Any = dict.values(item) if kind is dict else item
        stack.extend((child, depth + 1) for child in children)
    return False


def limit_depth(obj: Any) -> Any:
    """``obj`` itself, or a JSON-safe copy bounded in depth (``"[MaxDepth]"`` past
    ``MAX_DEPTH``: Sentry refuses a payload nested deeper than about 128 levels, and how
    deep ``json.dumps`` goes before a RecursionError depends on the Python version) and in
    size (``"[MaxSize]"`` past ``MAX_NODES`` values).

    For payloads a user hook returned: the SDK's own payloads are bounded by construction.
    """
    try:
        if not _needs_copy(obj):
            return obj
        return _sanitize(obj, 0, set(), [MAX_NODES])
    except Exception:  # a container that refuses to be walked: dumps() copes with it
        return obj


def dumps(obj: Any) -> bytes:
    """Serialize ``obj`` to compact UTF-8 JSON; never raises."""
    try:
        return json.dumps(
            obj,
            separators=(",", ":"),
            allow_nan=False,
            ensure_ascii=False,
            check_circular=True,
            default=_default,
        ).encode("utf-8")
    except Exception:
        pass
    try:
        clean = _sanitize(obj, 0, set())
        return json.dumps(clean, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode(
            "utf-8", "replace"
        )
    except Exception:
        return json.dumps(_clean_str(_safe_repr(obj)), ensure_ascii=True).encode("ascii")
