"""Rate-limit header grammar and enforcement (protocol §14)."""

from __future__ import annotations

import threading
import time
from email.utils import formatdate

import pytest

from sentry_tracing_mw._ratelimits import RateLimits, parse_rate_limits

NOW = 1000.0


def limits(header: str, status: int = 200) -> RateLimits:
    rl = RateLimits()
    rl.update_from_response(status, {"X-Sentry-Rate-Limits": header}, NOW)
    return rl


def test_protocol_example() -> None:
    rl = limits("60:transaction:key, 2700:default;error;security:organization:quota_exceeded")
    assert rl.is_limited("transaction", NOW + 59)
    assert not rl.is_limited("transaction", NOW + 61)
    assert rl.is_limited("error", NOW + 2699)
    assert rl.is_limited("default", NOW + 100)
    assert rl.is_limited("security", NOW + 100)
    assert not rl.is_limited("error", NOW + 2701)
    assert not rl.is_limited("span", NOW + 1)
    assert not rl.is_limited("internal", NOW + 1)


def test_empty_categories_mean_all() -> None:
    rl = limits("30::organization")
    for cat in ("transaction", "error", "internal", "span"):
        assert rl.is_limited(cat, NOW + 29)
    assert not rl.is_limited("error", NOW + 31)


def test_minimal_and_extra_fields() -> None:
    assert limits("10:").is_limited("error", NOW + 5)
    # no ":" at all is not a quota_limit (§14 grammar; sentry-sdk skips it too): a
    # malformed header must not stop every category
    assert not limits("10").is_limited("error", NOW + 5)
    assert not limits("60, 10 ,abc").is_limited("transaction", NOW + 5)
    rl = limits("10:metric_bucket:organization:reason:custom;spans:extra:more")
    assert rl.is_limited("metric_bucket", NOW + 5)
    assert not rl.is_limited("error", NOW + 5)


def test_decimal_retry_after_and_spaces() -> None:
    rl = limits("2.5:transaction:key,   7.25:error")
    assert rl.is_limited("transaction", NOW + 2.4)
    assert not rl.is_limited("transaction", NOW + 2.6)
    assert rl.is_limited("error", NOW + 7.2)


def test_unknown_categories() -> None:
    rl = limits("60:foo;bar:key")
    assert not rl.is_limited("error", NOW + 1)
    assert not rl.is_limited("transaction", NOW + 1)
    rl = limits("60:foo;transaction:key")
    assert rl.is_limited("transaction", NOW + 1)
    assert not rl.is_limited("error", NOW + 1)


def test_garbage_limits_skipped() -> None:
    rl = limits("abc:error, -5:error, , nan:error, 20:transaction")
    assert not rl.is_limited("error", NOW + 1)
    assert rl.is_limited("transaction", NOW + 1)
    assert parse_rate_limits("") == []


def test_max_of_existing_and_new() -> None:
    rl = limits("100:transaction")
    rl.update_from_response(200, {"X-Sentry-Rate-Limits": "10:transaction"}, NOW)
    assert rl.is_limited("transaction", NOW + 50)
    rl.update_from_response(200, {"X-Sentry-Rate-Limits": "200:transaction"}, NOW)
    assert rl.is_limited("transaction", NOW + 150)


def test_case_insensitive_header_on_any_status() -> None:
    rl = RateLimits()
    rl.update_from_response(200, {"x-sentry-rate-limits": "60:error"}, NOW)
    assert rl.is_limited("error", NOW + 1)


def test_429_without_header_uses_retry_after_seconds() -> None:
    rl = RateLimits()
    rl.update_from_response(429, {"retry-after": "17"}, NOW)
    assert rl.is_limited("error", NOW + 16)
    assert rl.is_limited("transaction", NOW + 16)
    assert not rl.is_limited("transaction", NOW + 18)


def test_429_retry_after_http_date() -> None:
    rl = RateLimits()
    rl.update_from_response(429, {"Retry-After": formatdate(time.time() + 120, usegmt=True)}, NOW)
    assert rl.is_limited("error", NOW + 100)
    assert not rl.is_limited("error", NOW + 130)


@pytest.mark.parametrize("headers", [{}, {"Retry-After": "soon"}])
def test_429_default_60s(headers: dict[str, str]) -> None:
    rl = RateLimits()
    rl.update_from_response(429, headers, NOW)
    assert rl.is_limited("span", NOW + 59)
    assert not rl.is_limited("span", NOW + 61)


def test_429_header_wins_over_retry_after() -> None:
    rl = RateLimits()
    rl.update_from_response(
        429, {"X-Sentry-Rate-Limits": "5:transaction", "Retry-After": "100"}, NOW
    )
    assert rl.is_limited("transaction", NOW + 4)
    assert not rl.is_limited("error", NOW + 1)
    assert not rl.is_limited("transaction", NOW + 6)


def test_non_429_without_header_is_ignored() -> None:
    rl = RateLimits()
    rl.update_from_response(500, {"Retry-After": "100"}, NOW)
    rl.update_from_response(200, {}, NOW)
    assert not rl.is_limited("error", NOW + 1)
    assert rl.snapshot() == {}


def test_expired_entries_pruned_and_clear() -> None:
    rl = limits("1:error")
    rl.update_from_response(200, {"X-Sentry-Rate-Limits": "5:transaction"}, NOW + 10)
    assert set(rl.snapshot()) == {"transaction"}
    assert rl.expiry("transaction") == NOW + 15
    rl.clear()
    assert not rl.is_limited("transaction", NOW + 11)


def test_concurrent_reads_during_updates() -> None:
    rl = RateLimits()
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                rl.is_limited("error", NOW)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(2000):
        rl.update_from_response(200, {"X-Sentry-Rate-Limits": f"{i % 7}:error;transaction"}, NOW)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert rl.is_limited("error", NOW + 5.5)


# -- every category, the 60 s default, unusable and past retry times --
# (each of these guards a line a mutation check showed no other test watched)


# §14 "Category names Relay uses" (the explicit list).
RELAY_CATEGORIES = [
    "default",
    "error",
    "transaction",
    "span",
    "security",
    "attachment",
    "session",
    "profile",
    "profile_chunk",
    "replay",
    "feedback",
    "monitor",
    "log_item",
    "log_byte",
    "trace_metric",
    "internal",
    "metric_bucket",
]


def after_429(headers: dict[str, str]) -> RateLimits:
    rl = RateLimits()
    rl.update_from_response(429, headers, NOW)
    return rl


@pytest.mark.parametrize("category", RELAY_CATEGORIES)
def test_every_relay_category_can_be_limited_on_its_own(category: str) -> None:
    # e.g. "internal" is what client_report items are checked against (§14 item categories)
    rl = limits(f"60:{category}:key")
    assert rl.is_limited(category, NOW + 1)
    other = "error" if category != "error" else "transaction"
    assert not rl.is_limited(other, NOW + 1)


def test_429_default_is_60_seconds_not_more() -> None:
    rl = after_429({})
    assert rl.is_limited("error", NOW + 59.9)
    assert not rl.is_limited("error", NOW + 60.5)


@pytest.mark.parametrize("value", ["inf", "-inf", "-5", "nan", "1e999"])
def test_non_finite_or_negative_retry_times_are_not_limits(value: str) -> None:
    # an "inf" limit would stop the category for the life of the process
    assert parse_rate_limits(f"{value}:error") == []
    rl = limits(f"{value}:error")
    assert not rl.is_limited("error", NOW + 1)
    assert not rl.is_limited("error", NOW + 1e9)
    # on a 429 an unusable Retry-After falls back to the 60 s default
    rl = after_429({"Retry-After": value})
    assert rl.is_limited("error", NOW + 59)
    assert not rl.is_limited("error", NOW + 61)


def test_429_retry_after_zero_means_no_wait() -> None:
    assert not after_429({"Retry-After": "0"}).is_limited("error", NOW + 0.5)
    assert not after_429({"Retry-After": "0.0"}).is_limited("error", NOW + 0.5)


def test_429_retry_after_date_in_the_past_means_no_wait() -> None:
    past = formatdate(time.time() - 3600, usegmt=True)
    assert not after_429({"Retry-After": past}).is_limited("error", NOW + 0.5)
