"""Compact JSON serialization that never fails (payloads built from user data)."""

from __future__ import annotations

import datetime
import itertools
import json
import math
from collections.abc import Mapping
from sys import exc_info
from typing import Any

from ._context import ON_SENDER

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
    "safe_repr",
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
_TEXTS = (str, bytes, bytearray)
_OPEN_CLOSE = {
    dict: ("{", "}"),
    list: ("[", "]"),
    tuple: ("(", ")"),
    set: ("{", "}"),
    frozenset: ("frozenset({", "})"),
}


def _base_of(kind: type, bases: tuple[type, ...]) -> Any:
    """The built-in among ``bases`` that ``kind`` derives from (by its real type: a lazy
    proxy's ``__class__`` is never asked, so nothing is evaluated), else None."""
    for base in bases:
        if issubclass(kind, base):
            return base
    return None


def _small_and_flat(obj: Any, kind: type) -> bool:
    """A dict, list or tuple (exactly) of at most ``_REPR_ITEMS`` short scalars: the built-in
    ``repr`` is bounded and fastest there."""
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


def bounded_repr(obj: Any) -> str:
    """``repr(obj)`` whose cost and size are bounded for texts and the built-in containers
    (their subclasses too: a 200,000-key ``defaultdict`` costs what a small one does):
    ``_REPR_ITEMS`` items, ``_REPR_LEVELS`` levels, about ``MAX_REPR`` characters, texts cut
    before they are quoted. Other objects get their own ``repr``. Dispatch is by the real
    type: a lazy proxy (Django's ``request.user``) is not evaluated. Raises what an
    object's own ``repr`` raises."""
    return _bounded(obj, _REPR_LEVELS, [MAX_REPR])


def _bounded(obj: Any, level: int, room: list[int]) -> str:
    kind = type(obj)
    text_base = _base_of(kind, _TEXTS)
    if text_base is not None:
        if text_base.__len__(obj) > MAX_REPR:
            text = repr(text_base(text_base.__getitem__(obj, slice(0, MAX_REPR)))) + "..."
        else:
            text = repr(text_base(obj)) if kind is not text_base else repr(obj)
    else:
        base = None if kind in _SMALL_SCALARS else _base_of(kind, _CONTAINERS)
        if base is None or _small_and_flat(obj, kind):
            text = repr(obj)
        elif level <= 0 or room[0] <= 0:
            opening, closing = _OPEN_CLOSE[base]
            text = opening + "..." + closing
        elif (
            kind is not base
            and kind.__repr__ is not base.__repr__
            and base.__len__(obj) <= _REPR_ITEMS
        ):
            text = repr(obj)  # a small namedtuple or a subclass with a repr of its own
        else:
            text = _container(obj, kind, base, level, room)
    room[0] -= len(text)
    return text


def _container(obj: Any, kind: type, base: Any, level: int, room: list[int]) -> str:
    opening, closing = _OPEN_CLOSE[base]
    if kind is not base:  # a subclass: defaultdict({...}), Counter({...})
        opening, closing = f"{kind.__name__}({opening}", f"{closing})"
    size = base.__len__(obj)
    if not size:
        return f"{kind.__name__}()" if base in (set, frozenset) else opening + closing
    if base is dict:
        items: Any = itertools.islice(dict.items(obj), _REPR_ITEMS)
    else:
        items = itertools.islice(base.__iter__(obj), _REPR_ITEMS)
    parts = []
    for item in items:
        if room[0] <= 0:
            break
        if base is dict:
            key, value = item
            parts.append(f"{_bounded(key, level - 1, room)}: {_bounded(value, level - 1, room)}")
        else:
            parts.append(_bounded(item, level - 1, room))
    if len(parts) < size:
        parts.append("...")
    elif base is tuple and size == 1:
        parts[0] += ","
    return opening + ", ".join(parts) + closing


def safe_repr(obj: Any) -> str:
    """A bounded ``repr(obj)``, truncated, or a marker when ``repr`` itself raises."""
    try:
        text = bounded_repr(obj)
    except (Exception, SystemExit):
        return _UNREPRESENTABLE
    except BaseException:
        # On the sender nothing may stop it; in the app's own threads a gevent Timeout
        # arriving in a repr doing I/O is the app's.
        if isinstance(exc_info()[1], KeyboardInterrupt) or not ON_SENDER.get():
            raise
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
    return safe_repr(obj)


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
    return _clean_str(safe_repr(key))


def _float_key(key: float) -> str:
    return repr(float(key)) if math.isfinite(key) else "null"


def _size(value: Any) -> int:
    base = _base_of(type(value), _ITERATED)
    return 0 if base is None else 1 + int(base.__len__(value))


def _weight(pair: tuple[Any, Any]) -> int:
    """About how much of a copy's budget a mapping's value takes: its size and its
    children's (two levels; scalars weigh nothing), so small values are copied first."""
    value = pair[1]
    try:
        weight = _size(value)
        if weight > 1:
            children = dict.values(value) if isinstance(value, dict) else value
            for child in itertools.islice(children, 1000):
                weight += _size(child)
        return weight
    except Exception:
        return 1


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
            if budget is None:
                for k, v in list(items):
                    out[_key(k)] = _sanitize(v, depth + 1, path, budget)
                return out
            # Small values first: an event's ids, names and trace context are kept whole
            # and a huge value is what gets cut.
            pairs = sorted(itertools.islice(items, budget[0] + 1), key=_weight)
            for k, v in pairs:
                if budget[0] <= 0:
                    break
                out[_key(k)] = _sanitize(v, depth + 1, path, budget)
            return out
        except Exception:
            return safe_repr(obj)
        finally:
            path.discard(ident)
    if isinstance(obj, (list, tuple, set, frozenset)):
        ident = id(obj)
        if ident in path:
            return _CIRCULAR
        path.add(ident)
        try:
            if budget is None:
                return [_sanitize(v, depth + 1, path, budget) for v in list(obj)]
            out_list = []
            for v in obj:
                if budget[0] <= 0:
                    out_list.append(_TOO_BIG)  # items remain: say they are left out
                    break
                out_list.append(_sanitize(v, depth + 1, path, budget))
            return out_list
        except Exception:
            return safe_repr(obj)
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
_ITERATED = (dict, list, tuple, set, frozenset)  # what json (or our default) iterates


def _needs_copy(obj: Any) -> bool:
    """Whether ``obj`` must go through ``_sanitize`` before ``json.dumps``: nested past
    ``MAX_DEPTH``, a container referenced twice (a cycle or a shared sub-object, which
    json would write out at every reference), or a container json would iterate through
    code of its own (a subclass, a set), or over ``MAX_NODES`` values (at least 2 bytes of
    JSON each: an event Sentry refuses anyway, so cutting it harms no event that fits)."""
    if type(obj) not in _PLAIN:
        return issubclass(type(obj), _ITERATED)
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
                if kind is int and not INT_MIN <= child < INT_END:
                    return True  # wider than Sentry keeps: the copy makes it a float
                continue
            if isinstance(child, int) and kind is not bool:
                return True  # an int subclass: json writes its digits, any width
            if kind in _PLAIN:
                stack.append((child, depth + 1))
            elif issubclass(kind, _ITERATED):  # (by the real type: no proxy is evaluated)
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
    except KeyboardInterrupt:
        raise
    except BaseException:  # a container that refuses to be walked: dumps() copes with it
        return obj  # (on the worker, where even a SystemExit from app code is caught)


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
        return json.dumps(_clean_str(safe_repr(obj)), ensure_ascii=True).encode("ascii")
