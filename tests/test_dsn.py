"""DSN parsing (protocol §1)."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from sentry_tracing_mw._dsn import Dsn
from sentry_tracing_mw._errors import ConfigurationError
from sentry_tracing_mw._version import VERSION


def test_saas_dsn() -> None:
    dsn = Dsn.parse("https://abc123def4567890abc123def4567890@o42.ingest.sentry.io/7")
    assert dsn.scheme == "https"
    assert dsn.public_key == "abc123def4567890abc123def4567890"
    assert dsn.secret_key is None
    assert dsn.host == "o42.ingest.sentry.io"
    assert dsn.port is None
    assert dsn.path == ""
    assert dsn.project_id == "7"
    assert dsn.org_id == "42"
    assert dsn.envelope_url == "https://o42.ingest.sentry.io/api/7/envelope/"
    assert dsn.auth_header == (
        f"Sentry sentry_version=7, sentry_client=sentry.python.tracemw/{VERSION}, "
        "sentry_key=abc123def4567890abc123def4567890"
    )
    assert str(dsn) == "https://abc123def4567890abc123def4567890@o42.ingest.sentry.io/7"


def test_path_prefix_and_port() -> None:
    dsn = Dsn.parse("http://key@localhost:9000/sentry/3")
    assert dsn.port == 9000
    assert dsn.path == "/sentry"
    assert dsn.org_id is None
    assert dsn.envelope_url == "http://localhost:9000/sentry/api/3/envelope/"
    assert str(dsn) == "http://key@localhost:9000/sentry/3"


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("http://k@h:80/1", "http://h/api/1/envelope/"),
        ("https://k@h:443/1", "https://h/api/1/envelope/"),
        ("https://k@h:80/1", "https://h:80/api/1/envelope/"),
        ("http://k@h/a/b/12/", "http://h/a/b/api/12/envelope/"),
        ("HTTP://k@H.example/1", "http://h.example/api/1/envelope/"),
    ],
)
def test_envelope_url(value: str, url: str) -> None:
    assert Dsn.parse(value).envelope_url == url


def test_secret_key_in_auth() -> None:
    dsn = Dsn.parse("https://pub:sec@sentry.example.com/5")
    assert dsn.secret_key == "sec"
    assert dsn.auth_header.endswith("sentry_key=pub, sentry_secret=sec")
    assert str(dsn) == "https://pub:sec@sentry.example.com/5"


def test_ipv6() -> None:
    dsn = Dsn.parse("http://k@[::1]:8969/2")
    assert dsn.host == "::1"
    assert dsn.port == 8969
    assert dsn.envelope_url == "http://[::1]:8969/api/2/envelope/"
    assert str(dsn) == "http://k@[::1]:8969/2"
    assert (
        Dsn.parse("https://k@[2001:db8::5]/1").envelope_url
        == "https://[2001:db8::5]/api/1/envelope/"
    )


def test_frozen_and_roundtrip() -> None:
    dsn = Dsn.parse("https://k@o1.example.com:8443/p/9")
    with pytest.raises(dataclasses.FrozenInstanceError):
        dsn.host = "x"  # type: ignore[misc]
    assert Dsn.parse(str(dsn)) == dsn
    assert not hasattr(dsn, "__dict__")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "empty"),
        ("ftp://k@h/1", "scheme"),
        ("h/1", "scheme"),
        ("https://h.example.com/1", "public key"),
        ("https://@h.example.com/1", "public key"),
        ("https://:secret@h.example.com/1", "public key"),
        ("https://k@h.example.com", "project id"),
        ("https://k@h.example.com/", "project id"),
        ("https://k@h.example.com/abc", "not numeric"),
        ("https://k@h.example.com:port/1", "port"),
        ("https://k@h.example.com:99999/1", "port"),
        ("https://k@:80/1", "empty host"),
        ("https://k@/1", "empty host"),
        ("https://k@[::1/1", "IPv6"),
        ("https://k@h /1", "whitespace"),
        # a NUL cut the host short on the wire; other control characters failed on sending
        ("http://k@127.0.0.1\x00.evil.example/1", "invalid host"),
        ("http://k@bad\x7fhost/1", "invalid host"),
        # Keys go into the X-Sentry-Auth header: no decoded CR/LF (header injection), no
        # pair separators or quotes, nothing outside ASCII (latin-1 failures at send time).
        ("https://k%0D%0AX-Injected:%201@h/1", "public key"),
        ("https://k%0Ay@h/1", "public key"),
        ("https://k,ey@h/1", "public key"),
        ("https://k%40y@h/1", "public key"),
        ("https://k%E2%82%ACy@h/1", "public key"),
        ("https://k:s%0D%0Ax@h/1", "secret key"),
        ("https://k:s%22@h/1", "secret key"),
        ("https://k@h/\uff15", "not numeric"),  # a fullwidth digit is not a project id
    ],
)
def test_invalid(value: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Dsn.parse(value)
    assert fragment.lower() in str(info.value).lower()


@pytest.mark.parametrize(
    "value",
    [
        "https://k@h.example.com/1?verify_ssl=0",
        "https://k:s@h.example.com/sub/1/?timeout=3#frag",
        "https://k@h.example.com/1#x",
    ],
)
def test_query_and_fragment_are_ignored_with_a_warning(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Raven-era DSNs carry client options in the query; sentry-sdk ignores them, so a
    # user moving over keeps a working DSN instead of an app that fails to start.
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        dsn = Dsn.parse(value)
    assert dsn.project_id == "1"
    assert "?" not in dsn.envelope_url and "#" not in dsn.envelope_url
    assert "?" not in str(dsn) and "#" not in str(dsn)
    assert dsn.envelope_url.endswith("/api/1/envelope/")
    assert "ignored" in caplog.text and ":s@" not in caplog.text


def test_not_a_string() -> None:
    with pytest.raises(ConfigurationError):
        Dsn.parse(42)  # type: ignore[arg-type]


def test_org_id_is_ascii_digits_only() -> None:
    assert Dsn.parse("https://k@o12.ingest.example/1").org_id == "12"
    assert Dsn.parse("https://k@o\u0661\u0662.ingest.example/1").org_id is None


def test_non_ascii_hosts_and_path_prefixes_are_sent_in_ascii() -> None:
    dsn = Dsn.parse("https://k@sentry.bücher.example/中/é x/7".replace(" ", "%20"))
    assert dsn.host == "sentry.xn--bcher-kva.example"
    assert dsn.envelope_url == (
        "https://sentry.xn--bcher-kva.example/%E4%B8%AD/%C3%A9%20x/api/7/envelope/"
    )
    assert Dsn.parse(str(dsn)) == dsn  # the canonical form parses to itself
    with pytest.raises(ConfigurationError, match="invalid host"):
        Dsn.parse("https://k@a..b\u00e9/1")


# -- an empty secret, hosts and ports that cannot be sent to, secrets in errors --
# (each of these guards a line a mutation check showed no other test watched)


def test_empty_secret_after_colon_is_no_secret() -> None:
    # "key:@host": the secret is optional (§1) and an empty one is none, not an error
    dsn = Dsn.parse("https://pub:@sentry.example.com/5")
    assert dsn.secret_key is None
    assert dsn.auth_header.endswith(", sentry_key=pub")
    assert "sentry_secret" not in dsn.auth_header
    assert dsn.envelope_url == "https://sentry.example.com/api/5/envelope/"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("https://k@[::1]x8080/1", "IPv6"),  # not a port: garbage after the address
        ("https://k@a[v1.x]/1", "invalid host"),  # urlsplit lets a bracket through here
        ("https://k@h:0/1", "port"),
        ("https://k@h:65536/1", "port"),
    ],
)
def test_hosts_and_ports_that_cannot_be_sent_to(value: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Dsn.parse(value)
    assert fragment.lower() in str(info.value).lower()


@pytest.mark.parametrize("port", [1, 65535])
def test_extreme_valid_ports(port: int) -> None:
    dsn = Dsn.parse(f"https://k@h.example.com:{port}/1")
    assert dsn.port == port
    assert dsn.envelope_url == f"https://h.example.com:{port}/api/1/envelope/"


def test_configuration_errors_never_show_the_secret_key() -> None:
    with pytest.raises(ConfigurationError) as info:
        Dsn.parse("https://pub:TOPSECRET@h.example.com/not-a-number")
    assert "TOPSECRET" not in str(info.value)
    assert "pub" in str(info.value)


def test_a_real_sentry_host_in_a_test_dsn_is_never_looked_up() -> None:
    # tests/conftest.py's network fence: the tests' DSNs may name real Sentry hosts (the
    # org id is read from them), and the transport must not reach for them from a test
    import socket

    with pytest.raises(socket.gaierror, match=r"stay on 127\.0\.0\.1"):
        socket.getaddrinfo("o42.ingest.sentry.io", 443)
    with socket.socket() as s, pytest.raises(OSError, match=r"stay on 127\.0\.0\.1"):
        s.connect(("192.0.2.1", 80))
    assert socket.getaddrinfo("127.0.0.1", 80)[0][4][0] == "127.0.0.1"
    assert socket.getaddrinfo("localhost", 80)
