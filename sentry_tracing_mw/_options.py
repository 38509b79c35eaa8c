"""``init()`` options: defaults, environment variables and validation.

Everything is checked once, at configuration time; a bad value raises
:class:`ConfigurationError` naming the option and the value. The result is an immutable
:class:`Options` whose derived fields (compiled patterns, DSN parts) keep the per-request
path free of parsing.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import ipaddress
import math
import os
import re
import socket
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ._dsn import Dsn, _redacted
from ._errors import ConfigurationError
from ._sampling import as_rate

__all__ = ["DEFAULT_OPTIONS", "Options", "build_options"]

EventHook = Callable[[dict[str, Any]], "dict[str, Any] | None"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_MATCH_ALL = (".*",)
_RELEASE_FORBIDDEN = {".", "..", " ", "latest"}
#: What Relay refuses in an environment (it then drops the value from every event).
_ENVIRONMENT_FORBIDDEN = {".", "..", "none"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Options:
    """Validated client options (see ``init()`` in the API contract)."""

    dsn: Dsn | None = None
    traces_sample_rate: float | None = None
    traces_sampler: Callable[[Any], Any] | None = None
    trace_propagation_targets: tuple[re.Pattern[str], ...] = ()
    propagate_to_all: bool = True
    environment: str = "production"
    release: str | None = None
    server_name: str | None = None
    send_default_pii: bool = False
    before_send_transaction: EventHook | None = None
    before_send: EventHook | None = None
    sample_rate: float = 1.0
    ignore_transactions: tuple[str | re.Pattern[str], ...] = ()
    trace_ignore_status_codes: frozenset[int] = frozenset()
    max_spans: int = 1000
    shutdown_timeout: float = 2.0
    send_client_reports: bool = True
    #: Source lines around each frame of an error event (as sentry-sdk's option of the name).
    include_source_context: bool = True
    http_proxy: str | None = None
    https_proxy: str | None = None
    ca_certs: str | None = None
    """A PEM file of CA certificates that verify the Sentry server's HTTPS certificate
    (a self-hosted Sentry behind a private CA). None: the system's trust store, and
    certifi's bundle when that store is empty (sentry-sdk always uses certifi's)."""
    org_id: str | None = None
    strict_trace_continuation: bool = False
    max_inherited_sampled_per_second: float | None = None
    """Cap (token bucket, one second of burst) on transactions sampled only because an
    upstream said so (``sentry-trace: ...-1``). None = no cap, as ``sentry-sdk``. Dropped
    decisions propagate ``-0``, keep the frozen DSC and are client-reported (``sample_rate``).
    Recommended for public endpoints: a small multiple of the traffic you expect to be
    sampled, e.g. ``traces_sample_rate * peak requests/s * 2`` (see docs/operations.md)."""
    trust_incoming_traces: bool | tuple[Network, ...] | Callable[[Any], Any] = True
    """Whose incoming trace headers are continued: True (everyone), False (nobody: every
    request starts a new trace), CIDR networks matched against the connection's peer address
    (``REMOTE_ADDR`` / ``scope["client"]``, never ``X-Forwarded-For``), or a callable given
    the WSGI environ / ASGI scope. Recommended for public endpoints: False, or your own
    networks (e.g. ``["10.0.0.0/8"]``) when internal services call this one."""
    debug: bool = False
    instrument_http_clients: bool = True
    propagate_traceparent: bool = True
    # Derived, never passed by users.
    public_key: str | None = field(default=None)
    dsn_host: str | None = field(default=None)

    @property
    def tracing_enabled(self) -> bool:
        """True when transactions can be sampled (a rate or a sampler is configured)."""
        return self.traces_sample_rate is not None or self.traces_sampler is not None


_OPTION_NAMES = frozenset(
    name
    for name in Options.__dataclass_fields__
    if name not in {"public_key", "dsn_host", "propagate_to_all"}
)


def _fail(name: str, value: Any, why: str) -> ConfigurationError:
    try:
        shown = repr(value)
    except ValueError:  # an int too long to print (over 4300 digits)
        shown = f"<{type(value).__name__} too large to show>"
    if len(shown) > 120:
        shown = shown[:117] + "..."
    return ConfigurationError(f"invalid option {name}={shown}: {why}")


def _rate(name: str, value: Any, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    rate = None if isinstance(value, bool) else as_rate(value)  # Fraction, Decimal too
    if rate is None:
        raise _fail(name, value, "expected a number between 0 and 1")
    return rate


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(name, value, "expected True or False")
    return value


def _callable(name: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise _fail(name, value, "expected a callable or None")
    return value


def _not_async(name: str, value: Any) -> None:
    """Refuse an ``async def`` (or an object whose ``__call__`` is one): it is called
    synchronously, and the coroutine it returns is neither a decision nor an event."""
    if inspect.iscoroutinefunction(value) or inspect.iscoroutinefunction(
        getattr(value, "__call__", None)  # noqa: B004  (is it async, not is it callable)
    ):
        raise _fail(name, value, "expected a plain function: an async def is called synchronously")


def _one_arg_callable(name: str, value: Any, what: str) -> Any:
    """A callable (or None) that takes one positional argument, ``what``."""
    function = _callable(name, value)
    if function is None:
        return None
    _not_async(name, function)
    try:
        # Its own signature: a decorator's wrapper may supply arguments of the function
        # it wraps (functools.wraps gives it the wrapped one's signature).
        signature = inspect.signature(function, follow_wrapped=False)
    except Exception:  # no signature to read (some builtins): as given
        return function
    try:
        signature.bind(None)
    except TypeError:
        raise _fail(name, value, f"expected a callable taking one argument ({what})") from None
    return function


def _event_hook(name: str, value: Any) -> Any:
    """A ``before_send``-style hook, called with the event only.

    ``sentry-sdk``'s hooks take ``(event, hint)``: one that needs a second positional
    argument gets an empty hint dict, so it filters instead of raising on every event.
    """
    hook = _callable(name, value)
    if hook is None:
        return None
    _not_async(name, hook)
    try:
        signature = inspect.signature(hook)
    except (TypeError, ValueError):  # no signature to read (some builtins): as given
        return hook
    try:
        signature.bind(None)
    except TypeError:
        try:
            signature.bind(None, None)
        except TypeError:
            raise _fail(name, value, "expected a callable taking the event (or event, hint)")
        return functools.partial(_with_hint, hook)
    return hook


def _with_hint(hook: Callable[[Any, Any], Any], event: Any) -> Any:
    return hook(event, {})


def _opt_str(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        # From JSON (Flask's from_prefixed_env(), a config file): not coerced, as the
        # number may already have lost characters (1.10 -> 1.1, 1.0 -> 1).
        raise _fail(
            name,
            value,
            "expected a string, not a number: quote it where it is decoded as JSON, e.g. "
            f"FLASK_SENTRY_{name.upper()}='\"...\"' for app.config.from_prefixed_env() "
            "(as a number it may have lost characters: 1.10 is read as 1.1)",
        )
    if not isinstance(value, str):
        raise _fail(name, value, "expected a string")
    return value


_PROXY_SCHEMES = frozenset({"http", "https", "socks4", "socks4a", "socks5", "socks5h"})


def redacted_url(url: str) -> str:
    """``url`` without its credentials (with or without a scheme), for messages."""
    if "@" not in url:
        return url
    head, sep, _ = url.partition("://")
    return (head + sep if sep else "") + "[redacted]@" + url.rpartition("@")[2]


def _proxy(name: str, value: Any) -> str | None:
    """A proxy URL (``scheme://[user:pass@]host[:port]``, scheme defaulting to http), or
    ``""`` for no proxy; credentials are redacted from the error message."""
    url = _opt_str(name, value)
    if not url:
        return url
    shown = redacted_url(url)
    try:
        parts = urlsplit(url if "://" in url else "http://" + url)
        port = parts.port  # out of range or not a number: ValueError
        host = parts.hostname
    except ValueError:  # the parser's own message may quote a password: not shown
        raise _fail(name, shown, "not a proxy URL (its host or port does not parse)") from None
    if parts.scheme not in _PROXY_SCHEMES:
        raise _fail(name, shown, "expected a proxy URL with scheme http, https or socks*")
    if not host or not url.isprintable() or any(c.isspace() for c in url):
        raise _fail(name, shown, "expected a proxy URL like http://proxy.example:3128")
    if port == 0:
        raise _fail(name, shown, "port 0 is not a proxy port")
    return url


def explicit_proxy(
    dsn: Dsn, http_proxy: str | None, https_proxy: str | None
) -> tuple[str, str | None]:
    """The proxy option that applies to ``dsn`` (its name, its value): ``https_proxy`` for
    an https DSN when set, else ``http_proxy``; a None value defers to the environment."""
    if dsn.scheme == "https" and https_proxy is not None:
        return "https_proxy", https_proxy
    return "http_proxy", http_proxy


def _check_socks(dsn: Dsn | None, http_proxy: str | None, https_proxy: str | None) -> None:
    """The proxy option the transport will use cannot be SOCKS without PySocks: urllib3
    needs it, and sending around the proxy is not what was asked for."""
    if dsn is None:
        return
    name, url = explicit_proxy(dsn, http_proxy, https_proxy)
    if url and url.lower().startswith("socks") and importlib.util.find_spec("socks") is None:
        raise _fail(name, redacted_url(url), "a SOCKS proxy needs PySocks (pip install pysocks)")


def _ca_certs(value: Any) -> str | None:
    path = _opt_str("ca_certs", os.fspath(value) if isinstance(value, os.PathLike) else value)
    if path is None:
        return None
    if not os.path.isfile(path):
        raise _fail("ca_certs", value, "no such file (expected a PEM file of CA certificates)")
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise _fail(
            "ca_certs", value, f"not a usable PEM file of CA certificates ({exc})"
        ) from None
    return os.path.abspath(path)


def _patterns(name: str, value: Any) -> tuple[re.Pattern[str], ...]:
    if isinstance(value, str | re.Pattern):
        value = (value,)
    if not isinstance(value, Iterable) or isinstance(value, bytes | bytearray):
        raise _fail(name, value, "expected a list of regular expressions (str)")
    out: list[re.Pattern[str]] = []
    for item in value:
        if isinstance(item, re.Pattern):
            if not isinstance(item.pattern, str):  # a bytes pattern never matches a URL
                raise _fail(name, item, "compiled patterns must be of str, not bytes")
            out.append(item)
        elif isinstance(item, str):
            try:
                out.append(re.compile(item))
            except re.error as exc:
                raise _fail(name, item, f"not a valid regular expression ({exc})") from None
        else:
            raise _fail(name, item, "entries must be strings or compiled patterns")
    return tuple(out)


def _ignore_names(name: str, value: Any) -> tuple[str | re.Pattern[str], ...]:
    """Exact names (str) or patterns; a str that is also a valid regex matches both ways."""
    if isinstance(value, str | re.Pattern):
        value = (value,)
    if not isinstance(value, Iterable) or isinstance(value, bytes | bytearray):
        raise _fail(name, value, "expected a list of names or regular expressions (str)")
    out: list[str | re.Pattern[str]] = []
    for item in value:
        if not isinstance(item, str | re.Pattern):
            raise _fail(name, item, "entries must be strings or compiled patterns")
        if isinstance(item, re.Pattern) and not isinstance(item.pattern, str):
            raise _fail(name, item, "compiled patterns must be of str, not bytes")
        out.append(item)
    return tuple(out)


def _finite(value: float) -> bool:
    """A finite number (an int too large for a float is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _status_codes(name: str, value: Any) -> frozenset[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, Iterable) or isinstance(value, str | bytes):
        raise _fail(name, value, "expected status codes, ranges or (low, high) pairs")
    codes: set[int] = set()
    for item in value:
        if isinstance(item, range):
            low, high = (min(item[0], item[-1]), max(item[0], item[-1])) if item else (100, 100)
            if not 100 <= low <= high <= 599:
                raise _fail(name, item, "status codes must be between 100 and 599")
            codes.update(item)
        elif (
            isinstance(item, tuple)
            and len(item) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in item)
        ):
            if not 100 <= item[0] <= item[1] <= 599:
                raise _fail(name, item, "expected (low, high) with 100 <= low <= high <= 599")
            codes.update(range(item[0], item[1] + 1))
        elif isinstance(item, int) and not isinstance(item, bool):
            codes.add(item)
        else:
            raise _fail(name, item, "expected an int, a range or a (low, high) pair")
    if any(not 100 <= c <= 599 for c in codes):
        raise _fail(name, value, "status codes must be between 100 and 599")
    return frozenset(codes)


_IP_OBJECTS = (
    ipaddress.IPv4Network | ipaddress.IPv6Network | ipaddress.IPv4Address | ipaddress.IPv6Address
)


def _trust(value: Any) -> bool | tuple[Network, ...] | Callable[[Any], Any]:
    if isinstance(value, bool):
        return value
    if callable(value):
        return _one_arg_callable(  # type: ignore[no-any-return]
            "trust_incoming_traces", value, "the WSGI environ or ASGI scope"
        )
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, Iterable):
        raise _fail(
            "trust_incoming_traces", value, "expected True, False, CIDR networks or a callable"
        )
    nets: list[Network] = []
    for item in value:
        try:
            # text or ipaddress objects only: ip_network() also takes ints and packed bytes
            if not isinstance(item, str | _IP_OBJECTS):
                raise TypeError(item)
            nets.append(ipaddress.ip_network(item, strict=False))
        except (ValueError, TypeError):
            raise _fail("trust_incoming_traces", item, "not a valid CIDR network") from None
    return tuple(nets)


def _release(value: Any, name: str = "release") -> str | None:
    release = _opt_str(name, value)
    if release is None:
        return None
    if (
        not release.strip()  # Relay trims whitespace, then compares "latest" in any case
        or len(release) > 200
        or release.strip().lower() in _RELEASE_FORBIDDEN
        or "/" in release
        or "\\" in release
        or _CONTROL.search(release)
    ):
        raise _fail(
            name,
            value,
            "must be 1-200 characters without control characters, '/' or '\\' and not '.', "
            "'..', ' ' or 'latest'",
        )
    return release


def _environment(value: Any, name: str = "environment") -> str:
    env = _opt_str(name, value)
    if env is None:
        return "production"
    if (
        not env.strip()
        or len(env) > 64
        or env.strip().lower() in _ENVIRONMENT_FORBIDDEN
        or "/" in env
        or _CONTROL.search(env)
    ):
        raise _fail(
            name,
            value,
            "must be 1-64 characters without control characters or '/' and not '.', '..' or 'none'",
        )
    return env


def _env_rate(environ: Mapping[str, str]) -> float | None:
    raw = environ.get("SENTRY_TRACES_SAMPLE_RATE")
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        raise _fail("SENTRY_TRACES_SAMPLE_RATE", raw, "expected a number between 0 and 1") from None
    return _rate("SENTRY_TRACES_SAMPLE_RATE", value, allow_none=False)


def _env_dsn(raw: str | None) -> Dsn | None:
    """``SENTRY_DSN``: unset when empty or blank; an error names the variable (and never
    shows a secret key)."""
    if raw is None or not raw.strip():
        return None
    try:
        return Dsn.parse(raw)
    except ConfigurationError as exc:
        shown = _redacted(raw)
        why = str(exc).removeprefix(f"dsn {shown!r}: ")
        raise _fail("SENTRY_DSN", shown, why) from None


def _env_bool(raw: str | None) -> bool:
    return raw is not None and raw.strip().lower() in {"1", "true", "yes", "on", "t", "y"}


def build_options(environ: Mapping[str, str] | None = None, **kwargs: Any) -> Options:
    """Validate ``init()`` keyword arguments, filling gaps from ``SENTRY_*`` env vars."""
    unknown = set(kwargs) - _OPTION_NAMES
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigurationError(f"unknown option {name}={kwargs[name]!r}")
    env = os.environ if environ is None else environ

    raw_dsn = kwargs.get("dsn")
    if raw_dsn is None:
        dsn = _env_dsn(env.get("SENTRY_DSN"))
    elif isinstance(raw_dsn, Dsn):
        dsn = raw_dsn
    elif isinstance(raw_dsn, str):
        dsn = Dsn.parse(raw_dsn) if raw_dsn else None
    else:
        raise _fail("dsn", raw_dsn, "expected a DSN string")

    rate = kwargs.get("traces_sample_rate")
    rate = _env_rate(env) if rate is None else _rate("traces_sample_rate", rate, allow_none=True)

    targets = kwargs.get("trace_propagation_targets", _MATCH_ALL)
    patterns = _patterns("trace_propagation_targets", targets)
    propagate_to_all = any(p.pattern in {".*", "", ".+"} for p in patterns)

    max_spans = kwargs.get("max_spans", 1000)
    if isinstance(max_spans, bool) or not isinstance(max_spans, int) or max_spans < 0:
        raise _fail("max_spans", max_spans, "expected a non-negative integer")
    timeout = kwargs.get("shutdown_timeout", 2.0)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not _finite(timeout)
        or timeout < 0
    ):
        raise _fail("shutdown_timeout", timeout, "expected a finite number of seconds >= 0")

    cap = kwargs.get("max_inherited_sampled_per_second")
    if cap is not None and (
        isinstance(cap, bool) or not isinstance(cap, int | float) or not _finite(cap) or cap < 0
    ):
        raise _fail(
            "max_inherited_sampled_per_second", cap, "expected a finite number >= 0, or None"
        )

    org_id = kwargs.get("org_id")
    if org_id is not None:
        if isinstance(org_id, int) and not isinstance(org_id, bool):
            org_id = str(org_id) if 0 <= org_id < 10**30 else None  # (None: refused below)
        if not isinstance(org_id, str) or not (org_id.isascii() and org_id.isdigit()):
            raise _fail("org_id", kwargs.get("org_id"), "expected digits")
    elif dsn is not None:
        org_id = dsn.org_id

    debug = kwargs.get("debug")
    debug = _env_bool(env.get("SENTRY_DEBUG")) if debug is None else _bool("debug", debug)

    server_name = _opt_str("server_name", kwargs.get("server_name"))
    if server_name is None:
        try:
            server_name = socket.gethostname() or None
        except OSError:  # pragma: no cover
            server_name = None

    def flag(name: str, default: bool) -> bool:
        return _bool(name, kwargs.get(name, default))

    http_proxy = _proxy("http_proxy", kwargs.get("http_proxy"))
    https_proxy = _proxy("https_proxy", kwargs.get("https_proxy"))
    _check_socks(dsn, http_proxy, https_proxy)
    return Options(
        dsn=dsn,
        traces_sample_rate=rate,
        traces_sampler=_one_arg_callable(
            "traces_sampler", kwargs.get("traces_sampler"), "the sampling context"
        ),
        trace_propagation_targets=patterns,
        propagate_to_all=propagate_to_all,
        # An explicit argument is validated as given (an empty one is an error); an
        # environment variable that is set but empty counts as unset.
        environment=(
            _environment(kwargs["environment"])
            if kwargs.get("environment") is not None
            else _environment(env.get("SENTRY_ENVIRONMENT") or None, "SENTRY_ENVIRONMENT")
        ),
        release=(
            _release(kwargs["release"])
            if kwargs.get("release") is not None
            else _release(env.get("SENTRY_RELEASE") or None, "SENTRY_RELEASE")
        ),
        server_name=server_name,
        send_default_pii=flag("send_default_pii", False),
        before_send_transaction=_event_hook(
            "before_send_transaction", kwargs.get("before_send_transaction")
        ),
        before_send=_event_hook("before_send", kwargs.get("before_send")),
        sample_rate=_rate("sample_rate", kwargs.get("sample_rate", 1.0), allow_none=False) or 0.0,
        ignore_transactions=_ignore_names(
            "ignore_transactions", kwargs.get("ignore_transactions", ())
        ),
        trace_ignore_status_codes=_status_codes(
            "trace_ignore_status_codes", kwargs.get("trace_ignore_status_codes", ())
        ),
        max_spans=max_spans,
        shutdown_timeout=float(timeout),
        send_client_reports=flag("send_client_reports", True),
        include_source_context=flag("include_source_context", True),
        http_proxy=http_proxy,
        https_proxy=https_proxy,
        ca_certs=_ca_certs(kwargs.get("ca_certs")),
        org_id=org_id,
        strict_trace_continuation=flag("strict_trace_continuation", False),
        max_inherited_sampled_per_second=None if cap is None else float(cap),
        trust_incoming_traces=_trust(kwargs.get("trust_incoming_traces", True)),
        debug=debug,
        instrument_http_clients=flag("instrument_http_clients", True),
        propagate_traceparent=flag("propagate_traceparent", True),
        public_key=dsn.public_key if dsn else None,
        dsn_host=dsn.host if dsn else None,
    )


DEFAULT_OPTIONS = Options()
