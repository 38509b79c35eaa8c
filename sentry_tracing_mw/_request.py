"""Request data for events, with the privacy rules applied (protocol §6.8).

Framework-free: integrations hand in method, URL parts, headers and the peer address;
this module decides what may leave the process. Without ``send_default_pii`` no cookies,
credentials, forwarding headers, client IPs or sensitive query values are kept.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote_plus, urlsplit

__all__ = [
    "SENSITIVE_HEADERS",
    "client_ip",
    "compile_ignore_paths",
    "filter_query",
    "origin_form",
    "request_info",
]

FILTERED = "[Filtered]"

#: Header names (lowercase, ``-`` for ``_``) removed from events unless ``send_default_pii``;
#: and any name ``_SENSITIVE_HEADER_PART`` finds.
SENSITIVE_HEADERS = frozenset(
    {
        "authorization",
        "cookie",
        "set-cookie",
        "proxy-authorization",
        "x-api-key",
        "x-forwarded-for",
        "x-real-ip",
        "forwarded",
        "x-forwarded",
        "x-client-ip",
        "cf-connecting-ip",
        "true-client-ip",
        "x-cluster-client-ip",
        "x-csrftoken",
        "x-csrf-token",
        "x-xsrf-token",
        "x-auth-token",
        "x-amz-security-token",
        "x-envoy-external-address",
        "x-remote-user",
        "x-forwarded-email",
        "x-forwarded-user",
        "x-forwarded-preferred-username",
        "x-forwarded-groups",
        "sec-websocket-protocol",  # browsers' only way to send a token with a websocket
    }
)
#: Credentials (tokens, keys, sessions, signed identities, client certificates), the user
#: (``Remote-User``, ``X-User-Email``) and client addresses (``*-IP``, ``*-IPv4/6``,
#: ``*ClientIP``, ``*-For``, ``*-Address``: the forwarding headers of proxies, CDNs and
#: platforms) in a header's name.
_SENSITIVE_HEADER_PART = re.compile(
    r"token|secret|passw|api-?key|access-?key|private-?key|subscription-?key|functions-?key|"
    r"auth|session|cookie|jwt|signature|credential|principal|oidc|client-?cert|ssl-client|"
    r"csrf|xsrf|email|user-?info|^(?:x-)?remote-|"
    r"(?:^|-)ip(?:v[46])?$|clientip|socketip|-for$|-address$",
    re.IGNORECASE,
)
_SENSITIVE_QUERY_KEYS = frozenset(
    {
        "token",
        "access_token",
        "password",
        "passwd",
        "pwd",
        "pass",
        "passphrase",
        "secret",
        "api_key",
        "apikey",
        "auth",
        "authorization",
        "session",
        "sessionid",
        "session_id",
        "session-id",
        "sessid",
        "jsessionid",
        "phpsessid",
        "sid",
        "connect.sid",
        "signature",
        "sig",
        "code",
        "key",
        "otp",
        "jwt",
        "csrf",
        "xsrf",
        "awsaccesskeyid",
    }
)
#: In a query key's name: a token, secret, password, credential, signature or key.
_SENSITIVE_QUERY_PART = re.compile(
    r"token|secret|password|passwd|credential|signature|csrf|xsrf|"
    r"api[-_]?key|access[-_]?key|private[-_]?key",
    re.IGNORECASE,
)
_MAX_HEADER_VALUE = 2048
_MAX_COOKIES = 8192  # the event's cookies string (PII only), however many Cookie headers came
#: Request headers kept in an event (the first ones sent): a hostile request with thousands
#: of header lines must not cost more than a bounded amount per request.
MAX_HEADERS = 200
_MAX_QUERY = 4096


#: Where a query key's name ends: ``api_key[]``, ``key[0]``, ``auth[user]``, ``sig\x00``.
_KEY_NAME_END = re.compile(r"[\[\]\s\x00-\x1f\x7f]")


def _sensitive_query_key(key: str) -> bool:
    """Whether a query key (as sent: ``%74oken`` and ``api%5Fkey%5B%5D`` are the apps'
    ``token`` and ``api_key[]``) names a secret, itself or as the name of an array."""
    if "%" in key or "+" in key:
        key = unquote_plus(key, errors="replace")
    low = key.lower()
    if low in _SENSITIVE_QUERY_KEYS or _SENSITIVE_QUERY_PART.search(low):
        return True
    name = low.strip()
    end = _KEY_NAME_END.search(name)
    if end is not None:
        name = name[: end.start()]
    return name != low and name in _SENSITIVE_QUERY_KEYS


def filter_query(query: str, send_default_pii: bool) -> str:
    """The query string with sensitive values replaced by ``[Filtered]`` (unless PII is on).

    A value runs to the next ``&`` (``token=a;b`` is ``a;b`` to every framework), and a
    sensitive key after a ``;`` anywhere in a pair (``a=1;token=T``, ``x;sid=S``: an older
    separator, which some apps still split on) hides the rest of the pair from there.
    """
    if send_default_pii or not query:
        return query[:_MAX_QUERY]
    parts = query[:_MAX_QUERY].split("&")
    for i, part in enumerate(parts):
        key, sep, _ = part.partition("=")
        if not sep:
            continue
        if _sensitive_query_key(key):
            parts[i] = f"{key}={FILTERED}"
        elif ";" in part:
            parts[i] = _filter_after_semicolon(part)
    return "&".join(parts)


def _filter_after_semicolon(pair: str) -> str:
    """``pair`` up to the first ``;``-separated sensitive key's ``=``, then ``[Filtered]``."""
    pieces = pair.split(";")
    for j in range(1, len(pieces)):
        key, sep, _ = pieces[j].partition("=")
        if sep and _sensitive_query_key(key):
            return ";".join([*pieces[:j], f"{key}={FILTERED}"])
    return pair


def _without_userinfo(host: str) -> str:
    """A Host value without ``user:pass@`` (invalid in Host, but clients send it)."""
    return host.rpartition("@")[2] if "@" in host else host


#: ``scheme://user:pass@`` inside a text (a URL in a path or header): the credentials, up
#: to the last ``@`` before the host (a password may hold a raw ``@``). The scheme's length
#: is bounded: unbounded, a long run of letters before ``://`` would be rescanned from
#: every position (quadratic in a hostile path).
_URL_USERINFO = re.compile(r"(?i)([a-z][a-z0-9+.-]{0,31}://)[^/?#\s]*@")
#: A header value that starts with a scheme-relative URL with credentials (``//u:p@h/x``).
_RELATIVE_USERINFO = re.compile(r"^([ \t]*//)[^/?#\s]*@")


def origin_form(path: str) -> str:
    """A request path fit for an event: the path of an absolute-form request target
    (``GET http://user:pw@host/p``: servers may pass it on as the path, after a root
    path too), and never the credentials of a URL inside it."""
    if path[:1] != "/" and "://" in path:
        try:
            return urlsplit(path).path or "/"
        except ValueError:
            return "/"
    if "@" in path and "://" in path:
        return _URL_USERINFO.sub(r"\1", path)
    return path


@functools.lru_cache(maxsize=1024)
def _header_kept(name: str) -> bool:
    # "X_Forwarded_For" is the same header to the app: ASGI servers pass names as sent.
    low = name.lower().replace("_", "-")
    return low not in SENSITIVE_HEADERS and not _SENSITIVE_HEADER_PART.search(low)


#: A header value that is a credential whatever the header's name: an HTTP auth scheme
#: and its credential (RFC 7235 token68, 8 characters or more: ``Basic tier`` and
#: ``Token Bot/1.0`` are not), or Digest's parameters.
_CREDENTIAL_VALUE = re.compile(
    r"(?i)[ \t]*(?:(?:bearer|basic|token|negotiate)[ \t]+[a-z0-9._~+/-]{8,}=*[ \t]*$"
    r"|digest[ \t]+[a-z]+=)"
)
#: The query of each URL or request target in a header value (``Referer``,
#: ``X-Original-URL: /reset?token=...``, several URLs in ``Link``): up to whitespace, ``#``,
#: a quote or an angle bracket.
_VALUE_QUERY = re.compile(r"\?([^\s#<>\"']+)")


def _kept_value(name: str, value: str) -> str:
    """A kept header's value for an event: ``[Filtered]`` when it is a credential (a bearer
    token in a custom header); a URL's userinfo and its sensitive query values removed
    (``Referer: https://host/reset?token=...``)."""
    if _CREDENTIAL_VALUE.match(value):
        return FILTERED
    if "@" in value:  # Host: user:pw@h (X-Forwarded-Host too); Referer: a URL's
        low = name.lower().replace("_", "-")
        if low == "host" or low.endswith("-host"):
            value = _without_userinfo(value)
        else:
            if "://" in value:
                value = _URL_USERINFO.sub(r"\1", value)
            if "//" in value:
                value = _RELATIVE_USERINFO.sub(r"\1", value, count=1)
    if "?" in value and "=" in value:
        value = _VALUE_QUERY.sub(_filtered_query, value)
    return value


def _filtered_query(found: re.Match[str]) -> str:
    return "?" + filter_query(found.group(1), False)


def request_info(
    *,
    method: str,
    scheme: str,
    host: str,
    path: str,
    query: str,
    headers: Iterable[tuple[str, str]],
    send_default_pii: bool,
    server_name: str | None = None,
    server_port: str | None = None,
    peer: str | None = None,
) -> dict[str, Any]:
    """The event ``request`` interface for an incoming request."""
    kept: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        if send_default_pii:
            if name.lower() == "cookie":
                cookies.append(value)
        elif not _header_kept(name):
            continue
        elif "@" in value or "?" in value or " " in value or "\t" in value:
            value = _kept_value(name, value)
        before = kept.get(name)
        if before is not None:  # a repeated header (ASGI lists each): merged per HTTP rules
            sep = "; " if name.lower() == "cookie" else ","
            kept[name] = f"{before}{sep}{value}"[:_MAX_HEADER_VALUE]
        elif len(kept) < MAX_HEADERS:
            kept[name] = value[:_MAX_HEADER_VALUE]
    if "@" in host:
        host = _without_userinfo(host)
    if path[:1] != "/" or "@" in path:
        path = origin_form(path)
    info: dict[str, Any] = {
        "method": method if method.isupper() else method.upper(),
        "url": f"{scheme}://{host}{path}",
        "headers": kept,
    }
    if query:
        info["query_string"] = filter_query(query, send_default_pii)
    env: dict[str, str] = {}
    if server_name:
        env["SERVER_NAME"] = server_name
    if server_port:
        env["SERVER_PORT"] = server_port
    if send_default_pii:
        if peer:
            env["REMOTE_ADDR"] = peer
        if cookies:  # HTTP/2 clients may split them over several headers
            info["cookies"] = "; ".join(cookies)[:_MAX_COOKIES]
    if env:
        info["env"] = env
    return info


def _ip(value: Any) -> str | None:
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    text = value.strip().partition("%")[0]  # no IPv6 zone id: Sentry refuses it
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return None
    return text


def client_ip(request: Mapping[str, Any]) -> str | None:
    """The user's address for an event's ``user.ip_address`` (call it only with
    ``send_default_pii``): the first ``X-Forwarded-For`` entry, else ``X-Real-IP``, else
    the peer (``env.REMOTE_ADDR``), as ``sentry-sdk`` picks it; one that is not an IP
    address is skipped."""
    headers = request.get("headers")
    if isinstance(headers, Mapping):
        forwarded = real = None
        for name, value in headers.items():
            if not isinstance(name, str):
                continue
            low = name.lower()
            if low == "x-forwarded-for" and isinstance(value, str):
                forwarded = _ip(value.partition(",")[0])
            elif low == "x-real-ip":
                real = _ip(value)
        if forwarded or real:
            return forwarded or real
    env = request.get("env")
    return _ip(env.get("REMOTE_ADDR")) if isinstance(env, Mapping) else None


def compile_ignore_paths(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One anchored regex for a list of globs on the path (``/health``, ``/static/*``)."""
    parts = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            from ._errors import ConfigurationError

            raise ConfigurationError(f"invalid option ignore_paths={pattern!r}: expected globs")
        parts.append(fnmatch.translate(pattern))
    if not parts:
        return None
    return re.compile("|".join(f"(?:{p})" for p in parts))
