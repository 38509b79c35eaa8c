r"""Transaction names from Django's ``ResolverMatch``: route templates and view names.

``ResolverMatch.route`` is the matched pattern chain joined by Django itself (``include()``
and ``i18n_patterns`` prefixes included), mixing ``path()`` syntax and ``re_path()`` regexes.
:func:`route_name` turns it into ``sentry-sdk``'s url style: ``<int:pk>`` and ``(?P<pk>..)``
become ``{pk}``, unnamed groups ``{var}``, anchors go, optional non-capturing groups keep
their content; character classes of plain characters (``[0-9]+``) and alternations of
plain words (``(?:edit|view)``) keep their text, as sentry-sdk keeps it, others (``\d+``,
``[^/]+``) are ``{var}``, where sentry-sdk garbles them. Results are cached per route string,
so each distinct route is converted once per process.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

__all__ = ["endpoint_name", "route_name"]

_CACHE_MAX = 4096
_route_cache: dict[tuple[str, Any], str] = {}
_endpoint_cache: dict[Any, str] = {}

_CONVERTER = re.compile(r"<(?:[^>:]+:)?([^>]+)>")
_NAMED = re.compile(r"\?P<(\w+)>")
_QUANTIFIER = re.compile(r"[?*+]|\{\d*(?:,\d*)?\}")
_SLASHES = re.compile(r"/{2,}")
#: A character class of plain characters (``[a-f0-9]``) and an alternation of plain words
#: (``edit|view``): sentry-sdk keeps their text in the name, and so do we (a class with
#: escapes or a negation, which it garbles, is ``{var}``).
_SCOPED_FLAGS = re.compile(r"\?[aiLmsux]*(?:-[imsx]+)?:")
_PLAIN_CLASS = re.compile(r"\[[\w.~%-]+\]")
_PLAIN_ALTERNATION = re.compile(r"(?:[\w.~%/-]|\\[.~%/-])+(?:\|(?:[\w.~%/-]|\\[.~%/-])+)+")
_ANCHOR_ESCAPES = frozenset("AZbBzG")


def _group_end(text: str, start: int) -> int:
    """Index just past the ``)`` closing the group opened at ``text[start]``."""
    depth = 0
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            i = _class_end(text, i)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def _class_end(text: str, start: int) -> int:
    """Index just past the ``]`` closing the character class at ``text[start]``."""
    i = start + 1
    n = len(text)
    if i < n and text[i] == "^":
        i += 1
    if i < n and text[i] == "]":
        i += 1
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "]":
            return i + 1
        i += 1
    return n


def _skip_quantifier(text: str, i: int) -> int:
    while True:
        m = _QUANTIFIER.match(text, i)
        if m is None:
            return i
        i = m.end()


def _has_top_level_alternation(text: str) -> bool:
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
        elif c == "[":
            i = _class_end(text, i)
        elif c == "(":
            i = _group_end(text, i)
        elif c == "|":
            return True
        else:
            i += 1
    return False


def _convert(text: str) -> str:
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            nxt = text[i + 1 : i + 2]
            i += 2
            if not nxt or nxt in _ANCHOR_ESCAPES:
                continue
            if nxt.isalnum():  # \d, \w, \s ...: a variable part
                out.append("{var}")
                i = _skip_quantifier(text, i)
            else:
                out.append(nxt)
        elif c in "^$":
            i += 1
        elif c == "(":
            end = _group_end(text, i)
            inner = text[i + 1 : end - 1]
            i = _skip_quantifier(text, end)
            if inner.startswith("?"):
                named = _NAMED.match(inner)
                if named is not None:
                    out.append("{" + named.group(1) + "}")
                elif inner.startswith("?:"):
                    body = inner[2:]
                    if not _has_top_level_alternation(body):
                        out.append(_convert(body))
                    elif _PLAIN_ALTERNATION.fullmatch(body):
                        out.append(body.replace("\\", ""))  # "a\.b|c": "a.b|c"
                    else:
                        out.append("{var}")
                elif inner.startswith("?P="):
                    out.append("{var}")  # a back-reference matches a path segment again
                elif _SCOPED_FLAGS.match(inner):
                    out.append("{var}")  # "(?i:edit|view)" matches text (sentry-sdk: {var})
                # lookarounds, global flags, comments: nothing in the path
            else:
                out.append("{var}")
        elif c == "[":
            end = _class_end(text, i)
            after = _skip_quantifier(text, end)
            if _PLAIN_CLASS.fullmatch(text, i, end):
                out.append(text[i:after].replace("?", ""))  # "[0-9]+", "[a-f0-9]{32}"
            else:
                out.append("{var}")
            i = after
        elif c == "<":
            m = _CONVERTER.match(text, i)
            if m is not None:
                out.append("{" + m.group(1) + "}")
                i = m.end()
            else:
                out.append(c)
                i += 1
        elif c in "?*+":
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def route_to_name(route: str) -> str:
    """Convert a Django route string (``path()`` syntax and/or regex) to a name."""
    name = _SLASHES.sub("/", _convert(route))
    if not name.startswith("/"):
        name = "/" + name
    return name


#: Characters a ``path()`` route means literally but a regex does not.
_REGEX_SYNTAX = frozenset("()[]{}?*+^$\\|")
_typed_cache: dict[int, tuple[Any, dict[str, str]]] = {}


def route_name(route: str, urlconf: Any = None) -> str:
    """Cached :func:`route_to_name`.

    ``ResolverMatch.route`` joins ``path()`` text (literal) and ``re_path()`` regexes into
    one string, so ``path("c++/<int:pk>/")`` would read as a regex. A route holding regex
    syntax is looked up in the patterns of ``urlconf`` (the request's; None: the
    project's, walked once per URLconf), where each part's kind is known.
    """
    key = (route, urlconf if urlconf is None or type(urlconf) is str else id(urlconf))
    name = _route_cache.get(key)
    if name is None:
        name = None
        if not _REGEX_SYNTAX.isdisjoint(route):
            try:
                from django.urls import get_resolver

                name = _typed_names(get_resolver(urlconf)).get(route)
            except Exception:  # no Django URLconf to read: the regex reading below
                name = None
        if name is None:
            name = route_to_name(route)
        if len(_route_cache) < _CACHE_MAX:
            _route_cache[key] = name
    return name


def _typed_names(root: Any) -> dict[str, str]:
    """Every route string of a URLconf (as Django joins them) -> its name, each part read
    as what it is: ``path()`` text literally, regexes as regexes (built once per URLconf)."""
    cached = _typed_cache.get(id(root))
    if cached is not None and cached[0] is root:
        return cached[1]
    names: dict[str, str] = {}
    try:
        _walk(getattr(root, "url_patterns", ()), "", "", names, 0)
    except Exception:  # a URLconf that cannot be listed: regex reading only
        names = {}
    if len(_typed_cache) < 64:
        _typed_cache[id(root)] = (root, names)
    return names


def _walk(patterns: Any, route: str, name: str, out: dict[str, str], depth: int) -> None:
    if depth > 32 or len(out) >= 100_000:
        return
    for entry in patterns:
        pattern = getattr(entry, "pattern", None)
        text = str(pattern)
        joined_route = route + text.removeprefix("^") if route else text
        part = _CONVERTER.sub(r"{\1}", text) if hasattr(pattern, "_route") else _convert(text)
        joined_name = name + part
        children = getattr(entry, "url_patterns", None) if hasattr(entry, "urlconf_name") else None
        if children is None:
            full = _SLASHES.sub("/", joined_name)
            out.setdefault(joined_route, full if full.startswith("/") else "/" + full)
        else:
            _walk(children, joined_route, joined_name, out, depth + 1)


def _qualname(func: Any) -> str | None:
    prefix = suffix = ""
    if isinstance(func, functools.partial):
        prefix, suffix = "partial(<function ", ">)"
        func = func.func
    else:
        pm = getattr(func, "_partialmethod", None) or getattr(func, "__partialmethod__", None)
        if isinstance(pm, functools.partialmethod):
            prefix, suffix = "partialmethod(<function ", ">)"
            func = pm.func
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if not isinstance(name, str):
        return None
    module = getattr(func, "__module__", None)
    if isinstance(module, str):
        name = f"{module}.{name}"
    return prefix + name + suffix


def endpoint_name(func: Callable[..., Any]) -> str | None:
    """The view's dotted name (its ``view_class`` for class-based views), cached."""
    try:
        name = _endpoint_cache.get(func)
    except TypeError:  # unhashable callable
        return _qualname(getattr(func, "view_class", func))
    if name is None:
        name = _qualname(getattr(func, "view_class", func))
        if name is None:
            return None
        if len(_endpoint_cache) < _CACHE_MAX:
            _endpoint_cache[func] = name
    return name
