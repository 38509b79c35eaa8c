"""Privacy (issue 8; protocol §6.8): planted secrets never leave the process by default.

Every integration (generic WSGI and ASGI, Flask, Django under WSGI and ASGI, Starlette,
FastAPI) runs behind a real server with outgoing HTTP instrumented. The test client plants
secrets in cookies, ``Authorization``, ``X-Api-Key``, ``X-Forwarded-For`` / ``X-Real-Ip``,
sensitive query keys and the request body; the views put secrets in local variables of a
failing frame, in span data under sensitive-looking keys, and in the query string, userinfo
and headers of outgoing calls. The raw (decoded) envelope bytes the local Sentry receives
must contain none of them. With ``send_default_pii=True`` exactly what the README promises
appears (cookies, credential and forwarding headers, the client IP, the query verbatim,
local variables, ``http.query`` of outgoing calls) and nothing else. Finally the DSN's
secret key never appears in any log record, whatever Sentry answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.django_project import setup

setup()

import sentry_tracing_mw as stm  # noqa: E402
from sentry_tracing_mw._context import SUPPRESS_INSTRUMENTATION  # noqa: E402
from sentry_tracing_mw._request import (  # noqa: E402
    MAX_HEADERS,
    client_ip,
    filter_query,
    origin_form,
    request_info,
)

from .hostile import apps, privacy_apps  # noqa: E402
from .hostile.checks import capture_logs  # noqa: E402
from .hostile.privacy_apps import SECRETS  # noqa: E402
from .recording_server import running  # noqa: E402
from .sentry_server import SentryServer  # noqa: E402
from .servers import run_asgi, run_wsgi  # noqa: E402

S = SECRETS
FILTERED = "[Filtered]"
SPAN_SECRETS = ("span-password", "span-api-key", "span-token", "span-nested")
#: Never sent, even with send_default_pii (bodies and outgoing credentials are not captured).
NEVER = ("body", "out-auth", "out-userinfo", "local-password", *SPAN_SECRETS)


@pytest.fixture(autouse=True)
def _setup() -> Iterator[None]:
    from django.test import override_settings

    token = SUPPRESS_INSTRUMENTATION.set(True)  # the test's own client calls stay untraced
    try:
        with override_settings(ROOT_URLCONF="tests.hostile.privacy_urls"), running() as target:
            privacy_apps.TARGET["url"] = target.url
            yield
    finally:
        SUPPRESS_INSTRUMENTATION.reset(token)
        stm.close()  # uninstrument http clients before the next test


def _serve(kind: str, app: Any) -> Any:
    return run_wsgi(app) if kind in apps.WSGI_KINDS else run_asgi(app, proxy_headers=False)


def _drive(base: str) -> None:
    r = requests.post(
        f"{base}/page?{privacy_apps.page_query()}",
        data=f"user=alice&note={S['body']}".encode(),
        headers={**privacy_apps.request_headers(), "Content-Type": "text/plain"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert requests.get(f"{base}/boom", timeout=10).status_code == 500
    r = requests.get(f"{base}/call", headers=privacy_apps.request_headers(), timeout=10)
    assert r.status_code == 200, r.text


def _collect(server: SentryServer, kind: str, pii: bool) -> tuple[str, list[dict[str, Any]]]:
    stm.init(
        dsn=server.dsn,
        traces_sample_rate=1.0,
        send_default_pii=pii,
        instrument_http_clients=True,
    )
    with _serve(kind, privacy_apps.build(kind)) as base:
        _drive(base)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stm.flush(2)
            if len(server.transactions()) >= 3 and server.events():
                break
            time.sleep(0.05)
    blob = "\n".join(r.body.decode("utf-8", "replace") for r in server.received if r.body)
    return blob, server.transactions()


def _by_name(txs: list[dict[str, Any]], suffix: str) -> dict[str, Any]:
    (tx,) = [t for t in txs if t["request"]["url"].endswith(suffix)]
    return tx


def _check_flows(server: SentryServer, txs: list[dict[str, Any]]) -> dict[str, Any]:
    """The data did flow (so an absent secret means filtered, not lost)."""
    assert len(txs) == 3, [t["transaction"] for t in txs]
    (event,) = server.events()
    assert event["exception"]["values"][-1]["type"] == "ValueError"
    call = _by_name(txs, "/call")
    http = [s for s in call["spans"] if s["op"] == "http.client"]
    assert len(http) >= 2, call["spans"]
    page = _by_name(txs, "/page")
    (child,) = [s for s in page["spans"] if s.get("description") == "sensitive data"]
    assert child["data"] == {
        "password": FILTERED,
        "api_key": FILTERED,
        "rows": 3,
        "params": {"user": "alice", "nested": {"secret": FILTERED}},
    }
    assert page["contexts"]["trace"]["data"]["auth_token"] == FILTERED
    assert page["request"]["method"] == "POST"
    return event


@pytest.mark.parametrize("kind", apps.INTEGRATIONS)
def test_no_secret_leaves_by_default(sentry_server: SentryServer, kind: str) -> None:
    blob, txs = _collect(sentry_server, kind, pii=False)
    leaked = {name: value for name, value in S.items() if value in blob}
    assert not leaked, leaked
    event = _check_flows(sentry_server, txs)
    page = _by_name(txs, "/page")
    request = page["request"]
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert not {"authorization", "x-api-key", "cookie", "x-forwarded-for", "x-real-ip"} & set(
        headers
    )
    assert "cookies" not in request
    assert "REMOTE_ADDR" not in request.get("env", {})
    assert "REMOTE_ADDR" not in blob and "127.0.0.1, " not in blob
    assert request["query_string"] == f"token={FILTERED}&password={FILTERED}&page=2"
    frames = event["exception"]["values"][-1]["stacktrace"]["frames"]
    assert frames and all("vars" not in f for f in frames)
    call = _by_name(txs, "/call")
    for span in call["spans"]:
        if span["op"] == "http.client":
            assert "http.query" not in span.get("data", {})
            assert "?" not in span["description"] and "?" not in span["data"]["url"]


@pytest.mark.parametrize("kind", apps.INTEGRATIONS)
def test_send_default_pii_turns_on_exactly_what_the_docs_say(
    sentry_server: SentryServer, kind: str
) -> None:
    blob, txs = _collect(sentry_server, kind, pii=True)
    event = _check_flows(sentry_server, txs)
    request = _by_name(txs, "/page")["request"]
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert S["cookie"] in request["cookies"]
    assert headers["authorization"] == f"Bearer {S['authorization']}"
    assert headers["x-api-key"] == S["x-api-key"]
    assert S["forwarded-ip"] in headers["x-forwarded-for"]
    assert headers["x-real-ip"] == S["real-ip"]
    assert request["env"]["REMOTE_ADDR"] == "127.0.0.1"
    # the user's address, as sentry-sdk picks it: the first X-Forwarded-For entry
    assert _by_name(txs, "/page")["user"] == {"ip_address": S["forwarded-ip"]}
    assert event["user"] == {"ip_address": "127.0.0.1"}  # /boom: no forwarding header
    assert request["query_string"] == privacy_apps.page_query()
    frames = event["exception"]["values"][-1]["stacktrace"]["frames"]
    assert any(f.get("vars", {}).get("held_value") == repr(S["local"]) for f in frames)
    # a local named like a secret is "[Filtered]" even so, as sentry-sdk's scrubber does
    assert any(f.get("vars", {}).get("db_password") == "[Filtered]" for f in frames)
    http = [s for s in _by_name(txs, "/call")["spans"] if s["op"] == "http.client"]
    assert all(S["out-query"] in s["data"]["http.query"] for s in http), http
    leaked = {name: S[name] for name in NEVER if S[name] in blob}
    assert not leaked, leaked


# --------------------------------------------------------------------------- DSN secret

DSN_SECRET = "dsn7SECRETkey"


def test_dsn_secret_is_never_logged(sentry_server: SentryServer) -> None:
    dsn = f"http://public:{DSN_SECRET}@127.0.0.1:{sentry_server.port}/1"
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    with capture_logs("", "sentry_tracing_mw", "urllib3") as records:
        stm.init(dsn=dsn, debug=True, traces_sample_rate=1.0, shutdown_timeout=1.0)
        from sentry_tracing_mw.integrations.wsgi import TracingMiddleware

        with run_wsgi(TracingMiddleware(privacy_apps.wsgi_app)) as base:
            phases = [
                lambda: None,
                lambda: sentry_server.respond(429, {"Retry-After": "1"}),
                lambda: sentry_server.respond(500),
                sentry_server.go_down,
                lambda: (sentry_server.come_back(), sentry_server.respond(200)),
            ]
            for phase in phases:
                phase()
                _drive(base)
                stm.flush(3)
                time.sleep(1.05)  # let a 429's Retry-After run out
        stm.close()
    assert len(records) > 10  # debug logging did log (requests, failures, drops)
    assert any("429" in r.getMessage() or "rate" in r.getMessage().lower() for r in records)
    texts = []
    for record in records:
        text = formatter.format(record)
        texts.append(text)
        assert DSN_SECRET not in text, text
    assert sentry_server.accepted()  # the last phase delivered with the secret in the auth
    assert DSN_SECRET in sentry_server.accepted()[-1].headers.get("X-Sentry-Auth", "")
    # ... and only there: the envelopes name the DSN without it (the dsn envelope header)
    public_dsn = f"http://public@127.0.0.1:{sentry_server.port}/1"
    for received in sentry_server.received:
        assert received.body is not None and DSN_SECRET.encode() not in received.body
        assert received.envelope is not None
        assert received.envelope.headers.get("dsn", public_dsn) == public_dsn
    assert any("dsn" in r.envelope.headers for r in sentry_server.received if r.envelope)


def test_invalid_dsn_error_hides_the_secret() -> None:
    with pytest.raises(stm.ConfigurationError) as info:
        stm.init(dsn=f"https://public:{DSN_SECRET}@o1.ingest.sentry.io/not-a-number")
    assert DSN_SECRET not in str(info.value)
    assert "public" in str(info.value)


def _raw(base: str, request_line: str, host: str, body: bytes = b"") -> bytes:
    """Send one raw HTTP/1.1 request (what a client library would refuse to send)."""
    import socket
    from urllib.parse import urlsplit

    port = urlsplit(base).port
    assert port is not None
    head = (
        f"{request_line}\r\nHost: {host}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode("latin-1") + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("kind", apps.INTEGRATIONS)
def test_encoded_query_keys_absolute_targets_and_host_userinfo_stay_private(
    sentry_server: SentryServer, kind: str
) -> None:
    """``%74oken=`` is the app's ``token=``; an absolute-form target or a Host header with
    ``user:pass@`` puts no credentials (and no second authority) into ``request.url``; a
    lowercase method is sent upper-case (protocol §6.8)."""
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    query = "%74oken=PCT-SECRET-1&pass%77ord=PCT-SECRET-2&api%5Fkey=PCT-SECRET-3&page=2"
    with _serve(kind, privacy_apps.build(kind)) as base:
        authority = base.split("://", 1)[1]
        replies = [
            _raw(base, f"POST {base}/page?{query} HTTP/1.1", f"user:HOST-SECRET@{authority}"),
            _raw(base, f"POST http://user:ABS-SECRET@{authority}/page HTTP/1.1", authority),
            _raw(base, "post /page HTTP/1.1", authority, b"x"),
        ]
        assert all(r.startswith(b"HTTP/1.1 ") for r in replies), replies
        deadline = time.monotonic() + 10
        while len(sentry_server.transactions()) < 2 and time.monotonic() < deadline:
            stm.flush(2)
            time.sleep(0.05)
        stm.flush(2)
    txs = sentry_server.transactions()
    assert len(txs) >= 2, [t["request"] for t in txs]  # a server may refuse one outright
    blob = "\n".join(r.body.decode("utf-8", "replace") for r in sentry_server.received if r.body)
    for secret in ("PCT-SECRET", "HOST-SECRET", "ABS-SECRET"):
        assert secret not in blob
    for tx in txs:
        request = tx["request"]
        assert request["method"] == "POST"
        assert request["url"] == f"http://{authority}/page", request
    (with_query,) = [t for t in txs if t["request"].get("query_string")]
    assert with_query["request"]["query_string"] == (
        f"%74oken={FILTERED}&pass%77ord={FILTERED}&api%5Fkey={FILTERED}&page=2"
    )


def test_user_ip_is_the_first_valid_forwarded_address_else_the_peer() -> None:
    def ip(headers: dict[str, str], peer: str | None = "127.0.0.1") -> str | None:
        return client_ip({"headers": headers, "env": {"REMOTE_ADDR": peer} if peer else {}})

    assert ip({"X-Forwarded-For": " 2001:db8::1 , 10.0.0.1"}) == "2001:db8::1"
    assert ip({"x-forwarded-for": "203.0.113.9", "x-real-ip": "198.51.100.1"}) == "203.0.113.9"
    assert ip({"X-Forwarded-For": "unknown, 10.0.0.1", "X-Real-Ip": "198.51.100.1"}) == (
        "198.51.100.1"
    )
    assert ip({"X-Forwarded-For": "<script>", "X-Real-Ip": "1" * 500}) == "127.0.0.1"
    assert ip({"X-Forwarded-For": "fe80::1%eth0"}) == "fe80::1"  # Sentry refuses zone ids
    assert ip({}, peer="fe80::2%lo") == "fe80::2"
    assert ip({}, peer="not an ip") is None
    assert ip({}, peer=None) is None


def test_request_info_cleans_what_servers_pass_through() -> None:
    info = request_info(
        method="get",
        scheme="http",
        host="user:pw@example.com:8080",
        path="http://user:pw@example.com:8080/a/b",
        query="",
        headers=[("Host", "user:pw@example.com:8080")],
        send_default_pii=False,
    )
    assert info["url"] == "http://example.com:8080/a/b"
    assert info["method"] == "GET"
    assert info["headers"] == {"Host": "example.com:8080"}
    assert filter_query("a+token=1&%70asswd=2&%ZZ=3&k%65y=4&page=5", False) == (
        f"a+token={FILTERED}&%70asswd={FILTERED}&%ZZ=3&k%65y={FILTERED}&page=5"
    )
    # array-style names (forms, jQuery's $.param) and names ending in odd bytes
    query = "api_key%5B%5D=1&key%5B0%5D=2&auth%5Buser%5D=3&api_key[]=4&sig%00=5&keyboard=6"
    assert filter_query(query, False) == (
        f"api_key%5B%5D={FILTERED}&key%5B0%5D={FILTERED}&auth%5Buser%5D={FILTERED}"
        f"&api_key[]={FILTERED}&sig%00={FILTERED}&keyboard=6"
    )
    # an absolute-form target behind a root path; URLs with credentials in other headers
    info = request_info(
        method="GET",
        scheme="http",
        host="example.com",
        path="/apihttp://alice:pw@internal.example/x",
        query="",
        headers=[("Referer", "https://bob:pw@example.com/from"), ("X-Forwarded-Host", "c:pw@h")],
        send_default_pii=False,
    )
    assert "pw" not in repr(info), info
    assert info["headers"] == {"Referer": "https://example.com/from", "X-Forwarded-Host": "h"}


def test_credential_stripping_is_linear_in_hostile_paths_and_headers() -> None:
    """A long run of letters before ``@...://`` must not be rescanned from every position."""
    hostile = "a" * 64_000 + "@x://"
    started = time.monotonic()
    assert origin_form("/" + hostile) == "/" + hostile
    request_info(
        method="GET",
        scheme="http",
        host="h",
        path="/",
        query="",
        headers=[("Referer", hostile)],
        send_default_pii=False,
    )
    assert time.monotonic() - started < 1.0  # quadratic: about 20 s at this size


def _request_data(pii: bool = False, **kw: Any) -> dict[str, Any]:
    """The event ``request`` interface of a plain GET, with ``kw`` changed."""
    args: dict[str, Any] = dict(
        method="GET", scheme="http", host="h", path="/", query="", headers=[]
    )
    args.update(kw)
    return request_info(send_default_pii=pii, **args)


def _event_headers(headers: list[tuple[str, str]], pii: bool = False) -> dict[str, str]:
    """The headers an event of a plain GET with these request headers carries."""
    kept: dict[str, str] = _request_data(pii, headers=headers)["headers"]
    return kept


def test_credentials_and_client_addresses_under_other_names_stay_private() -> None:
    """Headers of proxies, CDNs and platforms that carry the client's address or a signed
    identity, names spelled with ``_`` (ASGI servers pass them as sent: the app sees the
    same header), credentials in the value of any header, and sensitive query values in a
    URL inside a header (protocol §6.8; sentry-sdk normalises ``_`` to ``-`` too)."""
    from sentry_tracing_mw.integrations.asgi import asgi_request_info

    private = {
        "X_Forwarded_For": "203.0.113.1",
        "X_Real_Ip": "203.0.113.2",
        "Cf_Connecting_Ip": "203.0.113.3",
        "Fastly-Client-IP": "203.0.113.4",
        "Client-IP": "203.0.113.5",
        "X-Original-Forwarded-For": "203.0.113.6",
        "X-Envoy-External-Address": "203.0.113.7",
        "X-Appengine-User-IP": "203.0.113.8",
        "X-Vercel-Forwarded-For": "203.0.113.9",
        "Fly-Client-IP": "203.0.113.10",
        "X-Forwarded": "for=203.0.113.11",
        "Forwarded-For": "203.0.113.12",
        "X-Azure-ClientIP": "203.0.113.13",
        "CF-Connecting-IPv6": "2001:db8::14",
        "X-Goog-IAP-JWT-Assertion": "SECRET-jwt",
        "X-Amzn-Oidc-Data": "SECRET-oidc",
        "X-MS-Client-Principal": "SECRET-principal",
        "X-Forwarded-Email": "alice@example.com",
        "X-Forwarded-User": "SECRET-user",
        "X-Remote-User": "SECRET-remote-user",
        "X-SSL-Client-Cert": "SECRET-cert",
        "X-Access-Key": "SECRET-access-key",
        "X-Hub-Signature-256": "sha256=SECRET-sig",
        "Sec-WebSocket-Protocol": "access_token, SECRET-ws",
        "X-Custom": "Bearer SECRET-bearer",
        "X-Upstream-Auth-Header": "Basic SECRET-basic",
        "CloudFront-Viewer-Address": "203.0.113.15:46532",
        "X-Azure-SocketIP": "203.0.113.16",
        "Cf-Pseudo-IPv4": "203.0.113.17",
        "Remote-Email": "bob@example.com",
        "Remote-Name": "SECRET-name",
        "Remote-Groups": "SECRET-groups",
        "X-Userinfo": "SECRET-userinfo",
        "X-User-Email": "carol@example.com",
        "Ocp-Apim-Subscription-Key": "SECRET-apim",
        "X-Functions-Key": "SECRET-functions",
    }
    public = {
        "X-Forwarded-Host": "shop.example.com",
        "X-Forwarded-Proto": "https",
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0",
        "Accept": "text/html",
        "X-Request-Id": "r-1",
        "Referer": f"https://shop.example.com/reset?token={FILTERED}&step=2;sid={FILTERED}#top",
        "X-Original-Url": f"/reset?token={FILTERED}&x=1",
        "Link": f"<https://a.example/p?page=2>; rel=next, <https://b.example/p?sig={FILTERED}>",
        "X-Plan": "Basic tier",
        "X-Note": "token bucket full",
        "X-Agent": "Token Bot/1.0",
        "X-Debug": "why? see it",
    }
    sent = {
        **public,
        "Referer": "https://shop.example.com/reset?token=S1&step=2;sid=S2#top",
        "X-Original-Url": "/reset?token=S3&x=1",
        "Link": "<https://a.example/p?page=2>; rel=next, <https://b.example/p?sig=S4>",
    }
    headers = [*private.items(), *sent.items(), ("X-Tabbed", "Bearer\tSECRET-tabbed-token")]
    # removed by name, but a credential in a header whose name says nothing: its value
    assert _event_headers(headers) == {**public, "X-Custom": FILTERED, "X-Tabbed": FILTERED}
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
    }
    assert asgi_request_info(scope, False)["headers"] == {
        k.title(): v for k, v in {**public, "X-Custom": FILTERED, "X-Tabbed": FILTERED}.items()
    }
    with_pii = _event_headers(headers, pii=True)
    assert with_pii["X_Forwarded_For"] == "203.0.113.1"  # what PII turns on
    assert with_pii["X-Custom"] == "Bearer SECRET-bearer"


def test_more_sensitive_query_keys_and_semicolon_pairs_are_filtered() -> None:
    secret = [
        "authorization",
        "pwd",
        "pass",
        "passphrase",
        "sid",
        "PHPSESSID",
        "jsessionid",
        "connect.sid",
        "session_id",
        "otp",
        "jwt",
        "csrf",
        "_csrf",
        "xsrf",
        "credential",
        "credentials",
        "private_key",
        "privateKey",
        "access_key",
        "AWSAccessKeyId",
        "X-Amz-Signature",
        "X-Amz-Credential",
        "api-key",
        "x-api-key",
    ]
    kept = [
        "page",
        "q",
        "sort",
        "author",
        "keyboard",
        "passenger",
        "id",
        "session_type",
        "sessions",
    ]
    query = "&".join(f"{k}=v{i}" for i, k in enumerate(secret + kept))
    expected = "&".join(
        f"{k}={FILTERED}" if k in secret else f"{k}=v{i}" for i, k in enumerate(secret + kept)
    )
    assert filter_query(query, False) == expected
    # a value runs to the next & (every framework reads token=a;b as "a;b"); a sensitive
    # key after a ; inside it hides the rest of the pair
    assert filter_query("token=abc;def&q=1", False) == f"token={FILTERED}&q=1"
    assert filter_query("a=1;token=T;b=2&sid=S", False) == f"a=1;token={FILTERED}&sid={FILTERED}"
    assert filter_query("a=1;b=2&c=3;", False) == "a=1;b=2&c=3;"
    # ... also one before the pair's first "=" (an app splitting on ";" reads x;sid=S as
    # x and sid=S); the key before it is no secret of its own
    assert filter_query("x;sid=S&flag;code=C&page=2", False) == (
        f"x;sid={FILTERED}&flag;code={FILTERED}&page=2"
    )
    assert filter_query("sid;x=V", False) == "sid;x=V"
    assert filter_query(query, True) == query


def test_url_credentials_with_an_at_sign_or_no_scheme_are_removed() -> None:
    kept = _event_headers(
        [
            ("Referer", "https://bob:S-p@ss3@example.com/from"),
            ("X-Original-Url", "//carol:S-pw@example.com/x"),
            ("X_Forwarded_Host", "alice:S-hostpw@example.com"),
        ]
    )
    assert "S-p" not in repr(kept) and "ss3" not in repr(kept), kept
    assert kept == {
        "Referer": "https://example.com/from",
        "X-Original-Url": "//example.com/x",
        "X_Forwarded_Host": "example.com",
    }
    # paths keep their @ unless a URL with a scheme holds it
    for path in ("/users/erin@example.com", "/npm//@babel/core", "/users//john@example.com"):
        assert origin_form(path) == path
    assert origin_form("/go/https://dave:S-p@w@example.com/y") == "/go/https://example.com/y"


def test_meta_tags_carry_only_the_sentry_baggage_members() -> None:
    """Third-party members a request brought go on to the services it calls, never into
    its HTML (a cached page shows them to other users; the browser SDK reads only
    ``sentry-`` members)."""
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    incoming = {
        "sentry-trace": "771a43a4192642f0b136d5159a501700-b0e6f15b45c36b12-1",
        "baggage": "userToken=S-bag-token,sentry-trace_id=771a43a4192642f0b136d5159a501700,"
        "sentry-public_key=k,sentry-sample_rand=0.250000,sentry-sampled=true,"
        "enduser.id=alice%40example.com",
    }
    with stm.start_transaction(name="/page", op="http.server", headers=incoming):
        forwarded = stm.get_trace_headers()["baggage"]
        tags = stm.trace_meta_tags()
    assert "userToken=S-bag-token" in forwarded and "enduser.id=" in forwarded
    assert "S-bag-token" not in tags and "alice" not in tags and "enduser" not in tags
    assert (
        'name="baggage" content="sentry-trace_id=771a43a4192642f0b136d5159a501700,'
        "sentry-public_key=k,sentry-sample_rand=0.250000,sentry-sampled=true" in tags
    )


# -- what the request interface keeps, filters and bounds, rule by rule ---------------------
# (each of these guards a rule a mutation check showed no other test watched)


def test_non_sensitive_array_and_padded_query_keys_are_kept() -> None:
    # only a *sensitive* name stripped of [..], spaces or control bytes is filtered:
    # "page[]" and "items[0]" are as public as "page"
    query = "page[]=2&items%5B0%5D=3&sort%20=asc&token[]=T&sid%00=S"
    assert filter_query(query, False) == (
        f"page[]=2&items%5B0%5D=3&sort%20=asc&token[]={FILTERED}&sid%00={FILTERED}"
    )


def test_query_keys_encoded_with_plus_are_decoded_before_matching() -> None:
    # "+" is a space in a query: "+sid" is the app's " sid" (a padded "sid")
    assert filter_query("+sid=S1&code+=S2&page=1", False) == (
        f"+sid={FILTERED}&code+={FILTERED}&page=1"
    )


def test_valueless_query_keys_are_left_as_sent() -> None:
    # a key without "=" has no value to hide: nothing is added, nothing after it is lost
    assert filter_query("token&debug&page=1", False) == "token&debug&page=1"
    assert filter_query("a=1;token;b=2&c=3", False) == "a=1;token;b=2&c=3"
    assert filter_query("a=1;token;sid=S&c=3", False) == f"a=1;token;sid={FILTERED}&c=3"


def test_request_limits_are_exact() -> None:
    # at most MAX_HEADERS (200) headers, the first ones sent; a header already kept still
    # merges its repeats; values, cookies and query strings are cut at fixed sizes
    assert MAX_HEADERS == 200
    headers = [(f"X-H{i}", "v") for i in range(300)] + [("X-H0", "again")]
    kept = _request_data(headers=headers)["headers"]
    assert len(kept) == 200
    assert list(kept)[-1] == "X-H199" and "X-H200" not in kept
    assert kept["X-H0"] == "v,again"
    for pii in (False, True):
        info = _request_data(pii, headers=[("X-Long", "x" * 5000)], query="q=" + "y" * 9000)
        assert info["headers"]["X-Long"] == "x" * 2048
        assert info["query_string"] == ("q=" + "y" * 9000)[:4096]
        merged = _request_data(pii, headers=[("X-Rep", "a" * 2000), ("X-Rep", "b" * 100)])[
            "headers"
        ]
        assert merged["X-Rep"] == ("a" * 2000 + "," + "b" * 100)[:2048]
    cookies = [("Cookie", "c=" + "z" * 5000), ("Cookie", "d=" + "w" * 5000)]
    info = _request_data(True, headers=cookies)
    assert info["cookies"] == ("c=" + "z" * 5000 + "; d=" + "w" * 5000)[:8192]
    assert info["headers"]["Cookie"] == ("c=" + "z" * 5000)[:2048]


def test_client_ip_skips_non_text_headers_and_values() -> None:
    # a request set by hand may hold anything: never an exception, the peer is used
    request = {"headers": {1: "x", "X-Real-Ip": 5}, "env": {"REMOTE_ADDR": "10.0.0.1"}}
    assert client_ip(request) == "10.0.0.1"
    request = {"headers": {"X-Forwarded-For": 5}, "env": {"REMOTE_ADDR": "10.0.0.2"}}
    assert client_ip(request) == "10.0.0.2"


def test_absolute_form_targets_without_a_path_or_unparsable_become_the_root() -> None:
    assert origin_form("http://user:pw@example.com") == "/"
    assert origin_form("http://user:pw@[::1/x") == "/"  # urlsplit: "Invalid IPv6 URL"
    assert _request_data(path="http://user:pw@example.com")["url"] == "http://h/"
    assert _request_data(path="http://user:pw@[::1/x")["url"] == "http://h/"
    assert _request_data(path="http://example.com/a/b")["url"] == "http://h/a/b"  # no "@" either


def test_headers_named_by_one_rule_only_are_removed() -> None:
    """Each name is caught by one member of SENSITIVE_HEADERS or one alternative of
    _SENSITIVE_HEADER_PART alone (docs/hardening.md: Forwarded, names containing token,
    secret, passw, api-key, private-key, session, cookie, credential, client-cert, csrf,
    xsrf; the user's identity)."""
    private = {
        "Forwarded": "for=192.0.2.60;proto=https",
        "X-Forwarded-Preferred-Username": "SECRET-username",
        "X-Forwarded-Groups": "SECRET-groups",
        "X-Refresh-Token": "SECRET-token",
        "X-Client-Secret": "SECRET-secret",
        "X-Password": "SECRET-password",
        "X-Goog-Api-Key": "SECRET-api-key",
        "X-Private-Key": "SECRET-private-key",
        "X-Session-Id": "SECRET-session",
        "Cookie2": "SECRET-cookie",
        "X-Credentials": "SECRET-credentials",
        "X-Forwarded-Client-Cert": "SECRET-xfcc",
        "X-SSL-Client-S-DN": "SECRET-dn",
        "X-CSRF": "SECRET-csrf",
        "X-XSRF": "SECRET-xsrf",
    }
    public = {"Accept": "text/html", "X-Request-Id": "r-1"}
    kept = _request_data(headers=[*private.items(), *public.items()])["headers"]
    assert kept == public
    assert _request_data(True, headers=list(private.items()))["headers"] == private


def test_query_keys_named_by_one_rule_only_are_filtered() -> None:
    """Each key is caught by one member of _SENSITIVE_QUERY_KEYS or one alternative of
    _SENSITIVE_QUERY_PART alone (protocol §6.8, docs/hardening.md: session, session_id,
    sid, code, keys containing secret/password; Tornado's _xsrf)."""
    secret = [
        "session",
        "sessionid",
        "session-id",
        "sessid",
        "code",
        "client_secret",
        "new_password",
        "old_passwd",
        "_xsrf",
    ]
    query = "&".join(f"{k}=S{i}" for i, k in enumerate(secret)) + "&page=1"
    expected = "&".join(f"{k}={FILTERED}" for k in secret) + "&page=1"
    assert filter_query(query, False) == expected
    assert filter_query(query, True) == query


def test_env_cookies_and_query_string_follow_send_default_pii() -> None:
    """protocol §6.8: env holds SERVER_NAME and SERVER_PORT, REMOTE_ADDR only with PII;
    cookies only with PII (all Cookie headers, joined with "; "); repeated headers merged
    ("; " for Cookie, "," otherwise); query_string only when there is a query."""
    headers = [
        ("Cookie", "a=1"),
        ("X-Rep", "x"),
        ("cookie", "b=2"),
        ("Cookie", "c=3"),
        ("X-Rep", "y"),
    ]
    common: dict[str, Any] = dict(
        query="page=1",
        server_name="srv",
        server_port="8080",
        peer="192.0.2.1",
        headers=headers,
    )
    off = _request_data(False, **common)
    assert off["env"] == {"SERVER_NAME": "srv", "SERVER_PORT": "8080"}
    assert "cookies" not in off and off["query_string"] == "page=1"
    assert off["headers"] == {"X-Rep": "x,y"}
    on = _request_data(True, **common)
    assert on["env"] == {"SERVER_NAME": "srv", "SERVER_PORT": "8080", "REMOTE_ADDR": "192.0.2.1"}
    assert on["cookies"] == "a=1; b=2; c=3"
    assert on["headers"] == {"Cookie": "a=1; c=3", "X-Rep": "x,y", "cookie": "b=2"}
    bare = _request_data(True)
    assert "env" not in bare and "cookies" not in bare and "query_string" not in bare
    assert _request_data(True, peer="192.0.2.1")["env"] == {"REMOTE_ADDR": "192.0.2.1"}
