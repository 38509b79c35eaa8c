"""DSN parsing: endpoint URL, auth header and org id (protocol §1)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from ._errors import ConfigurationError
from ._log import logger
from ._version import VERSION

__all__ = ["SDK_NAME", "USER_AGENT", "Dsn"]

SDK_NAME = "sentry.python.tracemw"
USER_AGENT = f"{SDK_NAME}/{VERSION}"

_DEFAULT_PORTS = {"http": 80, "https": 443}
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_ORG_RE = re.compile(r"^o([0-9]+)\.")
# Keys go verbatim into the X-Sentry-Auth header (``key=value`` pairs split on commas):
# printable ASCII without the pair separators, quotes, backslash and userinfo delimiters.
_KEY_RE = re.compile(r"[!#-+\--9;-?A-\[\]-~]+")


@dataclass(frozen=True, slots=True)
class Dsn:
    """A parsed, validated DSN with its derived envelope URL and auth header."""

    scheme: str
    public_key: str
    secret_key: str | None
    host: str
    port: int | None
    path: str
    project_id: str
    org_id: str | None
    envelope_url: str
    auth_header: str

    @classmethod
    def parse(cls, value: str) -> Dsn:
        """Parse ``value``; raise ``ConfigurationError`` naming the problem."""
        if not isinstance(value, str):
            raise ConfigurationError(f"dsn: expected a string, got {type(value).__name__}")
        raw = value.strip()
        value = _redacted(value)  # error messages never show a secret key
        if not raw:
            raise ConfigurationError("dsn: empty string")
        if any(c in raw for c in " \t\r\n"):
            raise ConfigurationError(f"dsn {value!r}: contains whitespace")
        try:
            parts = urlsplit(raw)
        except ValueError as exc:
            raise ConfigurationError(f"dsn {value!r}: not a URL ({exc})")
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ConfigurationError(
                f"dsn {value!r}: unsupported scheme {parts.scheme!r} (expected http or https)"
            )
        netloc = parts.netloc
        if "@" not in netloc:
            raise ConfigurationError(
                f"dsn {value!r}: no public key (expected scheme://key@host/id)"
            )
        userinfo, _, hostport = netloc.rpartition("@")
        public, sep, secret = userinfo.partition(":")
        public = unquote(public)
        if not public:
            raise ConfigurationError(f"dsn {value!r}: no public key")
        if not _KEY_RE.fullmatch(public):
            raise ConfigurationError(
                f"dsn {value!r}: the public key may only hold visible ASCII characters "
                'other than , " \\ : @ (it is sent in the X-Sentry-Auth header)'
            )
        secret_key = unquote(secret) if sep and secret else None
        if secret_key is not None and not _KEY_RE.fullmatch(secret_key):
            raise ConfigurationError(
                f"dsn {value!r}: the secret key may only hold visible ASCII characters "
                'other than , " \\ : @ (it is sent in the X-Sentry-Auth header)'
            )
        host, port = _split_hostport(hostport, value)
        path_all = parts.path
        if parts.query or parts.fragment:
            # Raven-era DSNs carried client options there (``?verify_ssl=0``): sentry-sdk
            # ignores them, and so does this (with a warning, as they are not applied).
            logger.warning(
                "dsn %r: its query string and fragment are ignored (client options are "
                "init() options: ca_certs for certificates)",
                _redacted(raw.partition("#")[0].partition("?")[0]),
            )
        prefix, _, project_id = path_all.rstrip("/").rpartition("/")
        # a self-hosted path prefix with spaces or non-ASCII (``/中/1``): percent-encoded,
        # as sentry-sdk sends it (kept as is, it cannot go into a request line)
        prefix = quote(prefix, safe=_PATH_SAFE)
        if not project_id:
            raise ConfigurationError(f"dsn {value!r}: no project id in the path")
        if not (project_id.isascii() and project_id.isdigit()):
            raise ConfigurationError(f"dsn {value!r}: project id {project_id!r} is not numeric")
        m = _ORG_RE.match(host)
        org_id = m.group(1) if m else None
        shown_port = "" if port is None or port == _DEFAULT_PORTS[scheme] else f":{port}"
        host_fmt = f"[{host}]" if ":" in host else host
        envelope_url = f"{scheme}://{host_fmt}{shown_port}{prefix}/api/{project_id}/envelope/"
        auth = f"Sentry sentry_version=7, sentry_client={USER_AGENT}, sentry_key={public}"
        if secret_key:
            auth += f", sentry_secret={secret_key}"
        return cls(
            scheme=scheme,
            public_key=public,
            secret_key=secret_key,
            host=host,
            port=port,
            path=prefix,
            project_id=project_id,
            org_id=org_id,
            envelope_url=envelope_url,
            auth_header=auth,
        )

    def __str__(self) -> str:
        """Return the DSN in its canonical string form."""
        return self._format(self.public_key + (f":{self.secret_key}" if self.secret_key else ""))

    def without_secret(self) -> str:
        """The DSN without its secret key: the envelope ``dsn`` header (the secret goes in
        ``X-Sentry-Auth`` only, never in a body something may log or store)."""
        return self._format(self.public_key)

    def _format(self, cred: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{cred}@{host}{port}{self.path}/{self.project_id}"


def _redacted(value: str) -> str:
    """The DSN for messages: a secret key (``key:secret@host``) shown as ``***``."""
    head, at, tail = value.rpartition("@")
    scheme, sep, userinfo = head.rpartition("//")
    public, colon, _ = userinfo.partition(":")
    if not at or not colon:
        return value
    return f"{scheme}{sep}{public}:***@{tail}"


def _split_hostport(hostport: str, value: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (IPv6 in brackets) and validate both parts."""
    port_s: str | None = None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ConfigurationError(f"dsn {value!r}: unterminated IPv6 address")
        host = hostport[1:end]
        rest = hostport[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigurationError(f"dsn {value!r}: garbage after IPv6 address")
            port_s = rest[1:]
        if not host:
            raise ConfigurationError(f"dsn {value!r}: empty host")
    else:
        host, sep, p = hostport.partition(":")
        if sep:
            port_s = p
        if not host:
            raise ConfigurationError(f"dsn {value!r}: empty host")
        if any(c in host for c in "/?#[]"):
            raise ConfigurationError(f"dsn {value!r}: invalid host {host!r}")
    if not host.isprintable() or any(c.isspace() for c in host):
        # a NUL would cut the host short on the wire, others fail only when sending
        raise ConfigurationError(f"dsn {value!r}: invalid host {host!r}")
    if not host.isascii():  # an internationalized name: its ASCII (punycode) form
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ConfigurationError(f"dsn {value!r}: invalid host {host!r} ({exc})") from None
    port: int | None = None
    if port_s is not None:
        if not port_s.isdigit() or not port_s.isascii():
            raise ConfigurationError(f"dsn {value!r}: port {port_s!r} is not numeric")
        port = int(port_s)
        if not 0 < port < 65536:
            raise ConfigurationError(f"dsn {value!r}: port {port} out of range")
    return host.lower(), port
