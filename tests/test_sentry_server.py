"""The fake Sentry's own checks: what it receives can fail a test.

The ``sentry_server`` fixture (``serve_and_validate``) is driven by hand here so that the
failure it raises at teardown can be asserted.
"""

from __future__ import annotations

import gzip
import http.client
import json
from collections.abc import Iterator

import pytest

from sentry_tracing_mw._envelope import serialize_envelope

from .payload_checks import sample_dsc, sample_error
from .sentry_server import SentryServer, serve_and_validate


def post(server: SentryServer, body: bytes, encoding: str = "gzip") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request(
            "POST",
            "/api/1/envelope/",
            body=body,
            headers={"Content-Type": "application/x-sentry-envelope", "Content-Encoding": encoding},
        )
        return conn.getresponse().status
    finally:
        conn.close()


def error_envelope(event: dict[str, object]) -> bytes:
    dsc = sample_dsc(str(event["contexts"]["trace"]["trace_id"]))  # type: ignore[index]
    headers = {"event_id": event["event_id"], "trace": dsc}
    return gzip.compress(
        serialize_envelope(headers, [({"type": "event"}, json.dumps(event).encode())])
    )


@pytest.fixture
def driven() -> Iterator[tuple[SentryServer, Iterator[SentryServer]]]:
    """The fixture body, stepped by the test (its teardown is ``next(steps)``)."""
    steps = serve_and_validate(SentryServer())
    server = next(steps)
    yield server, steps
    server.stop()


def finish(steps: Iterator[SentryServer]) -> None:
    """Run the fixture's teardown; it raises when the received bodies fail a check."""
    with pytest.raises(StopIteration):
        next(steps)


@pytest.mark.parametrize("validate", [True, False])
def test_a_body_that_did_not_parse_fails_the_test(
    driven: tuple[SentryServer, Iterator[SentryServer]], validate: bool
) -> None:
    server, steps = driven
    server.validate = validate  # turning validation off does not hide garbage
    assert post(server, error_envelope(sample_error())) == 200
    assert post(server, b"\x1f\x8b not gzip at all") == 400
    with pytest.raises(AssertionError, match=r"1 received bodies did not parse"):
        next(steps)


def test_expected_garbage_is_an_exact_count(
    driven: tuple[SentryServer, Iterator[SentryServer]],
) -> None:
    server, steps = driven
    assert post(server, b"not an envelope", encoding="identity") == 400
    assert post(server, gzip.compress(b'{"event_id": 3}\n{"type": 7}\n')) == 400
    server.expect_malformed(1)  # one fewer than arrived: still a failure
    with pytest.raises(AssertionError, match=r"2 received bodies did not parse"):
        server.check_parsed()
    server.expect_malformed(2)
    finish(steps)  # the two are declared: the good rest (none here) is validated


def test_an_envelope_relay_rejects_fails_the_test(
    driven: tuple[SentryServer, Iterator[SentryServer]],
) -> None:
    server, steps = driven
    event = sample_error()
    event["exception"] = {"values": "not a list"}
    assert post(server, error_envelope(event)) == 200  # parses: the fake Sentry accepts it
    with pytest.raises(AssertionError, match=r"relay normalization errors"):
        next(steps)


def test_valid_envelopes_pass(driven: tuple[SentryServer, Iterator[SentryServer]]) -> None:
    server, steps = driven
    for _ in range(3):
        assert post(server, error_envelope(sample_error())) == 200
    finish(steps)
