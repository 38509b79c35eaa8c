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
    "bounded_repr",
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


#: Items of a container a bounded repr shows, and how deep it looks into nested ones.
_REPR_ITEMS = 20
_REPR_LEVELS = 3
_SMALL_SCALARS = (int, float, bool, type(None))
_CONTAINERS = (dict, list, tuple, set, frozenset)
_OPEN_CLOSE = {
    dict: ("{", "}"),
    list: ("[", "]"),
    tuple: ("(", ")"),
    set: ("{", "}"),
    frozenset: ("frozenset({", "})"),
}


def _small_and_flat(obj: Any) -> bool:
    """A dict, list or tuple (exactly) of at most ``_REPR_ITEMS`` short scalars: the built-in
    ``repr`` is bounded and fastest there."""
    kind = type(obj)
    if kind is dict:
        if len(obj) > _REPR_ITEMS:
            return False
        values: Any = itertools.chain(dict.keys(obj), dict.values(obj))
    elif kind is list or kind is tuple:
        if len(obj) > _REPR_ITEMS:
            return False
        values = obj
    else:
        return False
    for value in values:
        if type(value) is str or type(value) is bytes:
            if len(value) > MAX_REPR:
                return False
        elif type(value) not in _SMALL_SCALARS:
            return False
    return True


def bounded_repr(obj: Any, level: int = _REPR_LEVELS) -> str:
    """``repr(obj)`` whose cost and size are bounded for the built-in containers (their
    subclasses included: a 200,000-key ``defaultdict`` costs what a small one does):
    ``_REPR_ITEMS`` items each, ``_REPR_LEVELS`` levels, long strings cut before they are
    quoted. Other objects get their own ``repr``. Raises what that ``repr`` raises."""
    kind = type(obj)
    if kind is str or kind is bytes:
        return repr(obj[:MAX_REPR]) if len(obj) > MAX_REPR else repr(obj)
    if kind in _SMALL_SCALARS or not isinstance(obj, _CONTAINERS) or _small_and_flat(obj):
        return repr(obj)
    base: Any = next(b for b in _CONTAINERS if isinstance(obj, b))
    opening, closing = _OPEN_CLOSE[base]
    if kind is not base:  # a subclass: defaultdict({...}), Counter({...})
        opening, closing = f"{kind.__name__}({opening}", f"{closing})"
    size = len(obj)
    if not size:
        return f"{kind.__name__}()" if base in (set, frozenset) else opening + closing
    if level <= 0:
        return opening + "..." + closing
    if base is dict:
        mapping: Any = obj
        pairs = itertools.islice(dict.items(mapping), _REPR_ITEMS)
        parts = [f"{bounded_repr(k, level - 1)}: {bounded_repr(v, level - 1)}" for k, v in pairs]
    else:
        iterate: Any = base.__iter__  # the built-in's: a subclass's own __iter__ may not end
        items = itertools.islice(iterate(obj), _REPR_ITEMS)
        parts = [bounded_repr(item, level - 1) for item in items]
    if size > _REPR_ITEMS:
        parts.append("...")
    elif base is tuple and size == 1:
        parts[0] += ","
    return opening + ", ".join(parts) + closing


def _safe_repr(obj: Any) -> str:
    """A bounded ``repr(obj)``, truncated, or a marker when ``repr`` itself raises."""
    try:
        text = bounded_repr(obj)
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
                if budget is not None and budget[0] <= 0:
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
                if budget is not None and budget[0] <= 0:
                    if out_list[-1] != _TOO_BIG:
                        out_list.append(_TOO_BIG)  # says the rest is left out
                    break
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
#: is left out (``"[MaxSize]"``): json.dumps writes it in C holding the GIL, a shared
#: sub-object at every reference.
MAX_NODES = 1_000_000
_TOO_BIG = "[MaxSize]"
_PLAIN = (dict, list, tuple)
_JSON_SCALARS = (str, int, float, bool, type(None))


def _needs_copy(obj: Any) -> bool:
    """Whether ``obj`` must go through ``_sanitize`` before ``json.dumps``: nested past
    ``MAX_DEPTH``, a container referenced twice (a cycle or a shared sub-object, which
    json would write out at every reference), or a container json would iterate through
    code of its own (a subclass, a set), or over ``MAX_NODES`` values (at least 2 bytes of
    JSON each: an event Sentry refuses anyway, so cutting it harms no event that fits)."""
    if type(obj) not in _PLAIN:
        return isinstance(obj, (*_PLAIN, set, frozenset))
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(obj, 0)]
    values = 0
    while stack:
        item, depth = stack.pop()
        if depth >= MAX_DEPTH or id(item) in seen:
            return True
        seen.add(id(item))
        values += len(item)
        if values > MAX_NODES:  # over 1 MiB of JSON whatever it holds: the copy bounds it
            return True
        for child in dict.values(item) if type(item) is dict else item:
            kind = type(child)
            if kind in _JSON_SCALARS:
                continue
            if kind in _PLAIN:
                stack.append((child, depth + 1))
            elif isinstance(child, (*_PLAIN, set, frozenset)):
                return True
    return False


def limit_depth(obj: Any) -> Any:
    """``obj`` itself, or a JSON-safe copy with containers past ``MAX_DEPTH`` replaced by
    ``"[MaxDepth]"`` (Sentry refuses a payload nested deeper than about 128 levels, and how
    deep ``json.dumps`` goes before a RecursionError depends on the Python version) and
    shared sub-objects written out at most ``MAX_NODES`` values in all.

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
