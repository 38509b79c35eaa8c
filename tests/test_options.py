"""init() option validation and environment variables."""

from __future__ import annotations

import logging
import re
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

import sentry_tracing_mw as stm
from sentry_tracing_mw._options import build_options


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("traces_sample_rate", 1.5),
        ("traces_sample_rate", -0.1),
        ("traces_sample_rate", float("nan")),
        ("traces_sample_rate", "0.5"),
        ("traces_sample_rate", True),
        ("sample_rate", 2),
        ("traces_sampler", "not callable"),
        ("before_send", 3),
        ("before_send_transaction", "x"),
        ("trace_propagation_targets", ["(unclosed"]),
        ("trace_propagation_targets", [3]),
        ("ignore_transactions", [3]),
        ("trace_ignore_status_codes", ["404"]),
        ("trace_ignore_status_codes", [99]),
        ("max_spans", -1),
        ("max_spans", 1.5),
        ("shutdown_timeout", -1),
        ("shutdown_timeout", float("inf")),
        ("environment", ""),
        ("release", ""),
        ("max_inherited_sampled_per_second", float("inf")),
        ("send_default_pii", "yes"),
        ("environment", "a/b"),
        ("environment", "x" * 65),
        ("release", "latest"),
        ("release", "a/b"),
        ("release", "line\nbreak"),
        # what Relay refuses and then drops from every event
        ("environment", "none"),
        ("environment", "None"),
        ("environment", ".."),
        ("environment", "a\x0cb"),
        ("environment", " none"),  # Relay trims first
        ("release", "Latest"),
        ("release", "  "),
        ("release", "1.0\x0cb"),
        ("release", "a\x00b"),
        ("org_id", "abc"),
        ("org_id", "\u0661\u0662"),  # Arabic-Indic digits: isdigit(), but not an org id
        ("shutdown_timeout", 10**400),  # too large for a float: no OverflowError
        ("max_inherited_sampled_per_second", 10**400),
        ("trace_ignore_status_codes", [(100, 10**8)]),  # refused before it is expanded
        ("trace_ignore_status_codes", [range(100, 10**12)]),
        ("trace_ignore_status_codes", [(500, 400)]),  # inverted: would ignore nothing
        ("max_inherited_sampled_per_second", -5),
        ("trust_incoming_traces", ["not-a-network"]),
        ("trust_incoming_traces", [5]),  # ip_network() would take it as 0.0.0.5/32
        ("trust_incoming_traces", [b"\x7f\x00\x00\x01"]),  # and this as 127.0.0.1/32
        ("trace_propagation_targets", [re.compile(b"127")]),  # never matches a URL
        ("ignore_transactions", [re.compile(b"/health")]),
        ("traces_sample_rate", Decimal("1.5")),
        ("http_proxy", "://bad"),
        ("http_proxy", "not a url"),
        ("http_proxy", "http://:99999"),
        ("https_proxy", "ftp://proxy:21"),
        ("https_proxy", "http://proxy\n:3128"),
        ("dsn", "not a dsn"),
        ("dsn", "ftp://key@host/1"),
        ("dsn", 42),
        ("no_such_option", 1),
    ],
)
def test_invalid_options_raise_configuration_error_naming_option_and_value(
    option: str, value: Any
) -> None:
    with pytest.raises(stm.ConfigurationError) as info:
        stm.init(**{option: value})
    message = str(info.value)
    assert option in message or option == "dsn"
    if option != "dsn":
        shown = value[0] if isinstance(value, list) else value  # the offending entry
        assert repr(shown)[:20] in message


def test_a_status_code_string_is_refused_naming_the_whole_value() -> None:
    with pytest.raises(stm.ConfigurationError, match=r"trace_ignore_status_codes='404'"):
        stm.init(trace_ignore_status_codes="404")


@pytest.mark.parametrize("rate", [Decimal("0.5"), Fraction(1, 2)])
def test_decimal_and_fraction_rates_are_accepted(rate: Any) -> None:
    # sentry-sdk accepts any real number or Decimal for its rates
    stm.init(traces_sample_rate=rate, sample_rate=rate)
    options = stm.get_client().options
    assert options.traces_sample_rate == 0.5 and type(options.traces_sample_rate) is float
    assert options.sample_rate == 0.5


def test_valid_options_are_normalized() -> None:
    opts = build_options(
        environ={},
        traces_sample_rate=1,
        trace_propagation_targets=["api\\.example\\.com", re.compile("internal")],
        ignore_transactions=["/health", re.compile("/static/.*")],
        trace_ignore_status_codes=[404, range(500, 503), (520, 521)],
        org_id=12,
        trust_incoming_traces=["10.0.0.0/8"],
    )
    assert opts.traces_sample_rate == 1.0
    assert [p.pattern for p in opts.trace_propagation_targets] == [
        "api\\.example\\.com",
        "internal",
    ]
    assert opts.propagate_to_all is False
    assert opts.trace_ignore_status_codes == frozenset({404, 500, 501, 502, 520, 521})
    assert opts.org_id == "12"
    assert opts.environment == "production"
    assert build_options(environ={}).propagate_to_all is True


def test_environment_variables_are_read_once_at_init(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTRY_DSN", "https://abc@o7.ingest.sentry.io/3")
    monkeypatch.setenv("SENTRY_TRACES_SAMPLE_RATE", "0.25")
    monkeypatch.setenv("SENTRY_ENVIRONMENT", "staging")
    monkeypatch.setenv("SENTRY_RELEASE", "app@9")
    monkeypatch.setenv("SENTRY_DEBUG", "1")
    client = stm.init(instrument_http_clients=False)
    opts = client.options
    assert opts.dsn is not None and opts.dsn.public_key == "abc"
    assert opts.traces_sample_rate == 0.25
    assert (opts.environment, opts.release, opts.debug, opts.org_id) == (
        "staging",
        "app@9",
        True,
        "7",
    )
    monkeypatch.setenv("SENTRY_TRACES_SAMPLE_RATE", "0.75")
    assert stm.get_client().options.traces_sample_rate == 0.25  # read once
    # Explicit options win over the environment.
    assert (
        stm.init(traces_sample_rate=1.0, instrument_http_clients=False).options.traces_sample_rate
        == 1.0
    )


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTRY_TRACES_SAMPLE_RATE", "lots")
    with pytest.raises(stm.ConfigurationError, match="SENTRY_TRACES_SAMPLE_RATE"):
        stm.init()


def test_no_dsn_everything_works_nothing_is_sent() -> None:
    client = stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    assert client.transport is None
    with stm.start_transaction("offline") as tx:
        with stm.start_span("db"):
            pass
    assert tx.sampled and len(tx.spans) == 1
    assert stm.flush(0.1) is True
    assert stm.capture_exception(ValueError("x")) is None  # nothing sent: no id (sentry-sdk)


def test_init_twice_replaces_and_closes_the_old_client() -> None:
    first = stm.init(dsn="http://key@127.0.0.1:9/1", instrument_http_clients=False)
    second = stm.init(dsn="http://key@127.0.0.1:9/2", instrument_http_clients=False)
    assert stm.get_client() is second
    assert first._closed is True


def test_empty_environment_variables_count_as_unset() -> None:
    """``SENTRY_ENVIRONMENT=`` (set but empty) is the default, not an error."""
    opts = build_options(environ={"SENTRY_ENVIRONMENT": "", "SENTRY_RELEASE": ""})
    assert opts.environment == "production"
    assert opts.release is None


@pytest.mark.parametrize("proxy", ["", "http://proxy:3128", "proxy:3128", "http://[::1]:8080"])
def test_valid_proxy_urls_are_accepted(proxy: str) -> None:
    opts = build_options(dsn="http://k@127.0.0.1:9/1", http_proxy=proxy, https_proxy=proxy)
    assert opts.http_proxy == proxy


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("https://public@sentry.example.com/my-project", "project id 'my-project' is not numeric"),
        ("https://public:s3cret@sentry.example.com", "no project id in the path"),
        ("ftp://public@sentry.example.com/1", "unsupported scheme 'ftp'"),
    ],
)
def test_a_bad_sentry_dsn_variable_is_named_without_its_secret(value: str, why: str) -> None:
    with pytest.raises(stm.ConfigurationError) as info:
        build_options(environ={"SENTRY_DSN": value})
    message = str(info.value)
    assert message.startswith("invalid option SENTRY_DSN='") and why in message
    assert "s3cret" not in message


@pytest.mark.parametrize("value", ["", "   ", "\n"])
def test_a_blank_sentry_dsn_variable_is_unset(value: str) -> None:
    assert build_options(environ={"SENTRY_DSN": value}).dsn is None


def test_proxy_credentials_are_not_shown_in_the_error() -> None:
    with pytest.raises(stm.ConfigurationError, match="http_proxy") as info:
        stm.init(http_proxy="http://user:hunter2@:0")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("variable", "value"), [("SENTRY_ENVIRONMENT", "None"), ("SENTRY_RELEASE", "latest")]
)
def test_bad_environment_or_release_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(stm.ConfigurationError, match=rf"^invalid option {variable}="):
        stm.init()


def test_socks_proxy_from_the_environment_is_logged_without_its_password(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The environment's proxy is not refused at init (a variable shared with other tools):
    # without PySocks the transport sends directly and says so, without the credentials.
    import importlib.util

    if importlib.util.find_spec("socks") is not None:
        pytest.skip("PySocks is installed: the SOCKS proxy is used")
    monkeypatch.setenv("HTTP_PROXY", "socks5://alice:hunter2@127.0.0.1:1")
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        stm.init(dsn="http://k@127.0.0.1:1/1", traces_sample_rate=1.0)
        with stm.start_transaction("t"):
            pass
        stm.flush(5)  # the first send makes the connection pool
    assert "socks5://[redacted]@127.0.0.1:1" in caplog.text
    assert "hunter2" not in caplog.text


_PROXY_VARIABLES = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "no_proxy",
    "NO_PROXY",
)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HTTP_PROXY", "http://alice:hunter2@proxy:notaport"),
        ("HTTPS_PROXY", "ftp://alice:hunter2@proxy:21"),
        ("https_proxy", "alice:hunter2@proxy example:3128"),
    ],
)
def test_a_malformed_environment_proxy_for_the_dsn_is_warned_about_at_init(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, variable: str, value: str
) -> None:
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value)
    dsn = ("https" if "s_" in variable.lower() else "http") + "://k@sentry.example/1"
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        stm.init(dsn=dsn, instrument_http_clients=False)  # a shared variable: not an error
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"environment proxy {variable}=") and "[redacted]@" in message
    assert "hunter2" not in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        monkeypatch.setenv("NO_PROXY", "sentry.example")  # not used for the DSN: not checked
        stm.init(dsn=dsn, instrument_http_clients=False)
        monkeypatch.delenv("NO_PROXY")
        stm.init(instrument_http_clients=False)  # no DSN: nothing is sent
        stm.init(dsn=dsn, http_proxy="", https_proxy="", instrument_http_clients=False)
    assert not caplog.records


def test_socks_proxy_needs_pysocks_at_init() -> None:
    # Without PySocks urllib3 cannot use it: refused at init rather than bypassed at send,
    # but only when it is the proxy that would be used (a DSN, and not overridden).
    import importlib.util

    dsn = "https://k@sentry.example/1"
    if importlib.util.find_spec("socks") is not None:
        assert build_options(dsn=dsn, https_proxy="socks5h://h:1080").https_proxy
        return
    with pytest.raises(stm.ConfigurationError, match=r"https_proxy.*PySocks") as info:
        stm.init(dsn=dsn, https_proxy="socks5h://u:hunter2@h:1080")
    assert "hunter2" not in str(info.value) and "socks5h://[redacted]@h:1080" in str(info.value)
    assert build_options(https_proxy="socks5h://h:1080").https_proxy  # no DSN: never used
    unused = build_options(dsn=dsn, http_proxy="socks5://h:1", https_proxy="http://p:3128")
    assert unused.http_proxy == "socks5://h:1"  # the https DSN goes through https_proxy


@pytest.mark.parametrize(
    "proxy", ["user:hunter2@proxy:99999", "http://u:hunter2/x@proxy:3128", "http://u:hunter2@:1"]
)
def test_proxy_credentials_never_appear_in_the_error(proxy: str) -> None:
    with pytest.raises(stm.ConfigurationError, match="http_proxy") as info:
        stm.init(http_proxy=proxy)
    assert "hunter2" not in str(info.value) and "[redacted]@" in str(info.value)


@pytest.mark.parametrize("timeout", [1e10, float("inf"), 10**400, float("nan"), -1])
def test_flush_and_close_take_any_number_of_seconds(timeout: Any) -> None:
    # Waits beyond what a lock can wait (threading.TIMEOUT_MAX) are capped, not an
    # OverflowError; NaN and negatives do not wait.
    stm.init(dsn="http://public@127.0.0.1:9/1", shutdown_timeout=1e10)
    assert stm.flush(timeout) is True  # nothing queued
    assert stm.flush() is True
    stm.close()


@pytest.mark.parametrize(
    "option",
    ["shutdown_timeout", "max_inherited_sampled_per_second", "org_id", "trace_ignore_status_codes"],
)
def test_an_int_too_long_to_print_is_a_configuration_error(option: str) -> None:
    with pytest.raises(stm.ConfigurationError, match=f"invalid option {option}="):
        stm.init(**{option: 10**5000})


async def _async_hook(arg: Any) -> Any:
    return arg


class _AsyncCall:
    async def __call__(self, arg: Any) -> Any:
        return arg


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("traces_sampler", lambda: 1.0),
        ("traces_sampler", lambda ctx, hint: 1.0),
        ("traces_sampler", _async_hook),
        ("traces_sampler", _AsyncCall()),
        ("trust_incoming_traces", lambda: True),
        ("trust_incoming_traces", _async_hook),  # a coroutine is truthy: would trust all
        ("before_send", _async_hook),
        ("before_send_transaction", _async_hook),
    ],
)
def test_callables_that_would_fail_every_call_are_refused_at_init(option: str, value: Any) -> None:
    with pytest.raises(stm.ConfigurationError, match=f"invalid option {option}="):
        stm.init(**{option: value})


def test_callables_taking_one_argument_are_accepted() -> None:
    class Sampler:
        def __call__(self, ctx: Any) -> float:
            return 1.0

    def with_default(ctx: Any, hint: Any = None) -> float:
        return 1.0

    for sampler in (Sampler(), with_default, lambda *args: 1.0):
        build_options(environ={}, traces_sampler=sampler, trust_incoming_traces=sampler)


def test_a_failing_sampler_is_warned_about_once_per_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def raising(ctx: Any) -> float:
        return 1.0 if ctx["wsgi_environ"] else 0.0  # KeyError outside a web request

    def forgetful(ctx: Any) -> Any:
        if ctx["transaction_context"]["name"] == "health":
            return 0.0
        return None  # forgot the rate

    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        for sampler in (raising, forgetful):
            stm.init(traces_sampler=sampler, instrument_http_clients=False)
            for _ in range(3):
                with stm.start_transaction("checkout") as tx:
                    pass
                assert tx.sampled is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "raising raised KeyError" in warnings[0]
    assert "forgetful returned None" in warnings[1]


def test_an_ignore_paths_string_is_split_on_commas_and_whitespace() -> None:
    # app.config.from_prefixed_env() / an environment variable give one string
    from sentry_tracing_mw.integrations._common import MiddlewareConfig

    pattern = MiddlewareConfig(ignore_paths="/health,/metrics /static/*").ignore_paths
    assert pattern is not None
    assert all(pattern.fullmatch(p) for p in ("/health", "/metrics", "/static/app.js"))
    assert not pattern.fullmatch("/health,/metrics")


def test_an_ignore_paths_glob_that_can_never_match_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from sentry_tracing_mw.integrations._common import MiddlewareConfig

    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        MiddlewareConfig(ignore_paths=["/ok", "*.ico", "?ok", "[/]ok", "healthz-probe"])
    (message,) = [r.getMessage() for r in caplog.records]
    assert "'healthz-probe' never matches" in message and "'/healthz-probe'" in message


@pytest.mark.parametrize("value", [1.1, 20240501])
def test_a_release_given_as_a_number_says_to_quote_it(value: Any) -> None:
    with pytest.raises(stm.ConfigurationError, match=rf"release={value}: .*not a number: quote"):
        stm.init(release=value)


@pytest.mark.parametrize("option", ["trace_propagation_targets", "ignore_transactions"])
@pytest.mark.parametrize("value", [b"api", bytearray(b"api")])
def test_bytes_for_a_list_of_patterns_are_refused_naming_the_whole_value(
    option: str, value: Any
) -> None:
    with pytest.raises(stm.ConfigurationError) as info:
        stm.init(**{option: value})
    assert f"{option}={value!r}:" in str(info.value)


def test_a_sampler_behind_a_decorator_supplying_an_argument_is_accepted() -> None:
    """``functools.wraps`` gives a wrapper the wrapped function's signature: the one
    argument the wrapper itself takes is what counts (a decorator injecting a config)."""
    import functools

    def with_config(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(ctx: Any) -> Any:
            return fn(ctx, {"rate": 0.25})

        return wrapper

    @with_config
    def sampler(ctx: Any, config: Any) -> float:
        return float(config["rate"])

    client = stm.init(traces_sampler=sampler)
    assert client.options.traces_sampler is sampler
